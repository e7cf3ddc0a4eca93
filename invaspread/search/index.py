"""Embed an image collection once, then search it by image: ``invaspread index`` / ``invaspread search``.

An index is a folder::

    meta.json         count, dim, the run and epoch it came from, the files skipped as unreadable
    paths.jsonl       one JSON string per embedded image, row order
    embeddings.f32    (count, dim) float32, L2-normalised rows, read through a memory map
    model.pt          the encoder and config that embedded it (queries go through the same network,
                      even after the run trains on or is deleted)
    faiss.index       optional: FAISS inner-product index (exact, or IVF with ``ivf`` lists)

Building streams batches to disk (memory bounded by a batch, whatever the collection's size). Searching is
exact inner product (= cosine) over the memory map in chunks with torch, or FAISS when the index has one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import InvaspreadError
from ..data.sources import IMAGE_SUFFIXES, DataError, FileImages

INDEX_VERSION = 1
SEARCH_CHUNK_ROWS = 1 << 18   # torch search: 262,144 rows (128 MiB of float32 at d = 128) per matrix product


def faiss_module(required: bool):
    """The faiss module, or None (``required``: a one-line error saying how to install it)."""
    try:
        import faiss
    except ImportError:
        if required:
            raise InvaspreadError("--backend faiss needs FAISS: pip install 'invaspread[faiss]' (faiss-cpu), or use "
                                  "--backend torch (exact, no extra package)") from None
        return None
    return faiss


def collection_files(folder) -> List[str]:
    """Every image file under ``folder`` (recursively, sorted; hidden folders skipped)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InvaspreadError(f"--images {root}: no such folder")
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise InvaspreadError(f"--images {root}: no image files ({', '.join(IMAGE_SUFFIXES)}) under it")
    return files


class _Readable(Dataset):
    """Images after ``transform``; an unreadable file yields its error instead of stopping the whole index."""

    def __init__(self, paths: Sequence[str], transform):
        self.files, self.transform = FileImages(list(paths)), transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return i, self.transform(self.files.image(i)), None
        except (DataError, OSError, ValueError) as err:
            return i, None, str(err)


def _collate(items):
    ok = [(i, x) for i, x, err in items if err is None]
    failed = [(i, err) for i, _, err in items if err is not None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, failed


def build_index(run, images, out, batch_size: int = 256, num_workers: int = 0, backend: str = "auto",
                ivf: int = 0, device: Optional[str] = None, progress: bool = True,
                log: Callable[[str], None] = print) -> dict:
    """Embed every image under ``images`` with the run's network (its evaluation transform) into the index
    folder ``out``; returns its meta. ``backend``: also build a FAISS index ("auto": when faiss is installed);
    ``ivf``: number of inverted lists (0: exact ``IndexFlatIP``)."""
    from tqdm.auto import tqdm

    from ..data.transforms import run_eval_transform
    from ..engine.checkpoint import CHECKPOINT_VERSION, load_run, save_checkpoint

    out = Path(out)
    if out.exists():
        raise InvaspreadError(f"--out {out} exists; an index is written into a new folder (remove it or choose "
                              f"another name)")
    if batch_size < 1:
        raise InvaspreadError(f"--batch-size {batch_size}: expected a positive number")
    faiss = faiss_module(required=backend == "faiss") if backend != "torch" else None
    paths = collection_files(images)
    cfg, state, model, dev = load_run(run, [f"train.device={device}"] if device else [])
    transform = run_eval_transform(cfg)
    loader = DataLoader(_Readable(paths, transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)
    building = out.with_name(f".{out.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    kept, skipped, dim, started = [], [], None, time.perf_counter()
    with open(building / "embeddings.f32", "wb") as vectors, torch.no_grad():
        for indices, batch, failed in tqdm(loader, desc="index", unit="batch", disable=not progress):
            skipped += [{"path": paths[i], "error": err} for i, err in failed]
            if batch is None:
                continue
            z = torch.nn.functional.normalize(model(batch.to(dev)).float(), dim=1).cpu().numpy()
            dim = z.shape[1]
            vectors.write(np.ascontiguousarray(z, dtype=np.float32).tobytes())
            kept += [paths[i] for i in indices]
    seconds = time.perf_counter() - started
    if not kept:
        shutil.rmtree(building)
        raise InvaspreadError(f"--images {images}: none of the {len(paths)} files could be read "
                              f"(first: {skipped[0]['path']}: {skipped[0]['error']})")
    (building / "paths.jsonl").write_text("".join(json.dumps(p) + "\n" for p in kept))
    save_checkpoint({"version": CHECKPOINT_VERSION, "model": state["model"], "config": state["config"],
                     "epoch": state["epoch"]}, building / "model.pt")
    meta = {"version": INDEX_VERSION, "count": len(kept), "dim": dim, "run": str(run), "epoch": int(state["epoch"]),
            "images": str(images), "skipped": skipped, "faiss": None, "seconds": seconds,
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if faiss is not None:
        meta["faiss"] = _build_faiss(faiss, _embeddings(building, len(kept), dim), building / "faiss.index", ivf)
    (building / "meta.json").write_text(json.dumps(meta, indent=1))
    building.rename(out)
    for item in skipped:
        log(f"skipped (unreadable): {item['path']}: {item['error']}")
    log(f"{len(kept)} images -> {out} ({dim}-d, {len(kept) / seconds:.0f} images/s"
        + (f", {len(skipped)} unreadable files skipped" if skipped else "")
        + (f", FAISS {meta['faiss']['kind']}" if meta["faiss"] else ", exact torch search") + ")")
    return meta


def _embeddings(folder: Path, count: int, dim: int) -> np.ndarray:
    return np.memmap(folder / "embeddings.f32", dtype=np.float32, mode="r", shape=(count, dim))


def _build_faiss(faiss, vectors: np.ndarray, path: Path, ivf: int) -> dict:
    """An inner-product FAISS index over ``vectors``: exact ``IndexFlatIP``, or ``IndexIVFFlat`` with ``ivf``
    lists (trained on up to 256 vectors per list) for collections too large for exact search."""
    count, dim = vectors.shape
    if ivf:
        if ivf > count:
            raise InvaspreadError(f"--ivf {ivf}: more inverted lists than the {count} images")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, ivf, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(count, min(count, 256 * ivf), replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(sample)]))
    else:
        index = faiss.IndexFlatIP(dim)
    for start in range(0, count, SEARCH_CHUNK_ROWS):
        index.add(np.ascontiguousarray(vectors[start:start + SEARCH_CHUNK_ROWS]))
    faiss.write_index(index, str(path))
    return {"kind": f"IndexIVFFlat({ivf} lists)" if ivf else "IndexFlatIP (exact)", "ivf": ivf}


class SearchIndex:
    """An index folder opened for search (embeddings memory-mapped, FAISS and the network loaded lazily)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise InvaspreadError(f"{self.folder} is not an invaspread index (no meta.json); build one with "
                                  f"invaspread index RUN --images DIR --out {self.folder}")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("version") != INDEX_VERSION:
            raise InvaspreadError(f"{self.folder}: index version {self.meta.get('version')}, this invaspread reads "
                                  f"{INDEX_VERSION}: build it again")
        self.paths = [json.loads(line) for line in (self.folder / "paths.jsonl").read_text().splitlines()]
        self.embeddings = _embeddings(self.folder, self.meta["count"], self.meta["dim"])

    def embed(self, files: Sequence[str], device: Optional[str] = None) -> np.ndarray:
        """(Q, d) L2-normalised embeddings of query images, with the network and transform of the index."""
        from ..data.transforms import run_eval_transform
        from ..engine.checkpoint import load_run

        cfg, _, model, dev = load_run(self.folder / "model.pt", [f"train.device={device}"] if device else [])
        transform = run_eval_transform(cfg)
        for f in files:
            if not Path(f).is_file():
                raise InvaspreadError(f"query {f}: no such file")
        source, out = FileImages(list(files)), []
        with torch.no_grad():
            for start in range(0, len(source), 256):
                x = torch.stack([transform(source.image(i)) for i in range(start, min(start + 256, len(source)))])
                out.append(torch.nn.functional.normalize(model(x.to(dev)).float(), dim=1).cpu().numpy())
        return np.concatenate(out)

    def search(self, queries: np.ndarray, k: int, backend: str = "auto",
               nprobe: int = 16) -> Tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), rows (Q, k)) of the ``k`` highest inner products, best first."""
        if k < 1:
            raise InvaspreadError(f"-k {k}: expected a positive number")
        k = min(k, self.meta["count"])
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        has_faiss = (self.folder / "faiss.index").is_file()
        if backend == "faiss" and not has_faiss:
            raise InvaspreadError(f"{self.folder} has no FAISS index (built with --backend torch or without faiss "
                                  f"installed): use --backend torch, or index again with faiss installed")
        faiss = faiss_module(required=backend == "faiss") if has_faiss and backend != "torch" else None
        if faiss is not None:
            index = faiss.read_index(str(self.folder / "faiss.index"))
            if self.meta["faiss"].get("ivf"):
                index.nprobe = nprobe
            scores, rows = index.search(queries, k)
            return scores, rows
        return exact_search(self.embeddings, queries, k)


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int,
                 chunk_rows: int = SEARCH_CHUNK_ROWS) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` (Q, d) against ``embeddings`` (N, d), a chunk of rows at a
    time (memory O(Q x chunk_rows)), merged into a running top-k. Returns (scores, rows) as numpy arrays."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_scores = torch.full((q.shape[0], 0), -float("inf"))
    best_rows = torch.zeros((q.shape[0], 0), dtype=torch.int64)
    for start in range(0, embeddings.shape[0], chunk_rows):
        chunk = torch.from_numpy(np.array(embeddings[start:start + chunk_rows], dtype=np.float32))  # a copy: maps are read-only
        scores = q @ chunk.t()
        top = scores.topk(min(k, chunk.shape[0]), dim=1)
        merged_scores = torch.cat([best_scores, top.values], dim=1)
        merged_rows = torch.cat([best_rows, top.indices + start], dim=1)
        keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
        best_scores, best_rows = merged_scores.gather(1, keep), merged_rows.gather(1, keep)
    return best_scores.numpy(), best_rows.numpy()
