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

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import InvaspreadError
from ..engine.checkpoint import load_run
from ..engine.features import evaluation_network
from ..locks import held
from ..outputs import check_new_path, check_out, new_folder, publish_folder
from ..data.bundle import usable_workers
from ..data.sources import DataError, FileImages, describe_unreadable, scan_image_folder

INDEX_VERSION = 2   # 2: meta.json holds each file's size and SHA-256, verified by search
INDEX_FILES = ("embeddings.f32", "paths.jsonl", "model.pt", "faiss.index")
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
    """Every image file under ``folder``: the same files, in the same order, as ``train``, ``eval`` and ``embed``
    read (``scan_image_folder``); unreadable ones are skipped later, one by one, instead of refused up front."""
    return scan_image_folder(folder, check=False, log=None).paths


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
                log: Callable[[str], None] = print, overrides=()) -> dict:
    """Embed every image under ``images`` with the run's network (its evaluation transform) into the index
    folder ``out``; returns its meta. ``backend``: also build a FAISS index ("auto": when faiss is installed);
    ``ivf``: number of inverted lists (0: exact ``IndexFlatIP``); ``overrides`` ("key=value"): changes to the run's
    config, as ``embed``'s ``--set``.

    ``out`` is built under a unique hidden name beside it while a lock (``.NAME.lock``) keeps a second ``index``
    into the same ``out`` away, and appears whole, by one rename, only when complete: an interrupted or failed
    build leaves nothing, and an existing ``out`` is never touched."""
    out = Path(out)
    for flag, value, least in (("--batch-size", batch_size, 1), ("--workers", num_workers, 0), ("--ivf", ivf, 0)):
        if value < least:
            raise InvaspreadError(f"{flag} {value}: expected {'a positive number' if least else '0 or more'}")
    out = check_out(out, "--out")
    check_new_path(out, "--out")
    faiss = faiss_module(required=backend == "faiss") if backend != "torch" else None
    paths = collection_files(images)
    if ivf and faiss is not None and ivf > len(paths):
        raise InvaspreadError(f"--ivf {ivf}: more inverted lists than the {len(paths)} images under {images}; use "
                              f"at most {len(paths)} (or about sqrt(N)), or 0 for exact search")
    cfg, state, model, dev = load_run(run, [*overrides, *([f"train.device={device}"] if device else [])])
    with held(out.parent / f".{out.name}.lock", f"index {out}", remove=True):
        check_new_path(out, "--out")   # again, now that no other index command can be creating it
        _remove_dead_buildings(out, log)
        building = new_folder(out, "--out")
        try:
            meta = _build(building, run, cfg, state, model, dev, paths, images, batch_size, num_workers, faiss, ivf,
                          progress)
            publish_folder(building, out)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    if meta["skipped"]:
        log(f"{images}: skipped {len(meta['skipped'])} unreadable file{'s' * (len(meta['skipped']) > 1)}: "
            f"{describe_unreadable([(printable(s['path']), s['error']) for s in meta['skipped']])} (all of them in "
            f"{out / 'meta.json'}, key skipped; data.unreadable=error in the run's config stops instead)")
    log(f"{meta['count']} images -> {out} ({meta['dim']}-d, {meta['count'] / meta['seconds']:.0f} images/s"
        + (f", {len(meta['skipped'])} unreadable files skipped" if meta["skipped"] else "")
        + (f", FAISS {meta['faiss']['kind']}" if meta["faiss"] else ", exact torch search") + ")")
    return meta


def _remove_dead_buildings(out: Path, log) -> None:
    """``.NAME.XXXXXXXX.building`` folders beside ``out`` that a killed ``index --out NAME`` left: with the index's
    lock held, none has a living writer; removed when they hold only an index's files."""
    pattern = re.compile(rf"^\.{re.escape(out.name[:200])}\.[a-z0-9_]{{8}}\.building$")
    for path in sorted(out.parent.iterdir()):
        if (pattern.match(path.name) and path.is_dir() and not path.is_symlink()
                and all(p.is_file() and p.name in (*INDEX_FILES, "meta.json") for p in path.iterdir())):
            shutil.rmtree(path)
            log(f"removed {path}: the unfinished index of an interrupted index command")


def embed_into(vectors, paths: Sequence[str], cfg, model, dev, batch_size: int, num_workers: int, progress: bool,
               network: str):
    """Append the float32 L2-normalised embeddings of the readable ``paths`` (the run's evaluation network and
    transform) to the open file ``vectors``; returns (kept paths, skipped [{path, error}], dim or None)."""
    from tqdm.auto import tqdm

    from ..data.eval_transform import run_eval_transform

    loader = DataLoader(_Readable(paths, run_eval_transform(cfg)), batch_size=batch_size,
                        num_workers=usable_workers(num_workers), collate_fn=_collate)
    features = evaluation_network(model, cfg)
    kept, skipped, dim = [], [], None
    with torch.no_grad():
        for indices, batch, failed in tqdm(loader, desc="index", unit="batch", disable=not progress):
            skipped += [{"path": paths[i], "error": err} for i, err in failed]
            if batch is None:
                continue
            z = torch.nn.functional.normalize(features(batch.to(dev)).float(), dim=1).cpu().numpy()
            refuse_non_finite(z, [paths[i] for i in indices], network)
            dim = z.shape[1]
            vectors.write(np.ascontiguousarray(z, dtype=np.float32).tobytes())
            kept += [paths[i] for i in indices]
    return kept, skipped, dim


def _build(building: Path, run, cfg, state, model, dev, paths, images, batch_size, num_workers, faiss, ivf,
           progress) -> dict:
    """Write every file of an index into the (empty) folder ``building``; returns its meta."""
    from ..engine.checkpoint import CHECKPOINT_VERSION, save_checkpoint

    started = time.perf_counter()
    with open(building / "embeddings.f32", "wb") as vectors:
        kept, skipped, dim = embed_into(vectors, paths, cfg, model, dev, batch_size, num_workers, progress,
                                        f"the network of {run} (epoch {state['epoch']})")
    seconds = time.perf_counter() - started
    if not kept:
        raise InvaspreadError(f"--images {images}: none of the {len(paths)} files could be read "
                              f"(first: {printable(skipped[0]['path'])}: {skipped[0]['error']})")
    if skipped and cfg.data.unreadable == "error":
        raise InvaspreadError(f"{len(skipped)} of {len(paths)} files under {images} are not readable images: "
                              f"{describe_unreadable([(printable(s['path']), s['error']) for s in skipped])} "
                              f"(data.unreadable=error in the run's config; remove or replace them)")
    (building / "paths.jsonl").write_text("".join(json.dumps(p) + "\n" for p in kept))
    config = cfg.to_dict()   # with the --set changes (the queries must go through the same features) ...
    config["train"]["device"] = state["config"].get("train", {}).get("device", "auto")   # ... but not this machine's
    save_checkpoint({"version": CHECKPOINT_VERSION, "model": state["model"], "config": config,
                     "epoch": state["epoch"]}, building / "model.pt")
    meta = {"version": INDEX_VERSION, "count": len(kept), "dim": dim, "run": str(run), "epoch": int(state["epoch"]),
            "images": str(images), "skipped": skipped, "faiss": None, "seconds": seconds,
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if faiss is not None:
        meta["faiss"] = _build_faiss(faiss, _embeddings(building, len(kept), dim), building / "faiss.index", ivf)
    meta["files"] = {name: file_checksum(building / name) for name in INDEX_FILES if (building / name).is_file()}
    (building / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def refuse_non_finite(z: np.ndarray, names: Sequence[str], network: str) -> None:
    """A NaN or infinite embedding (a diverged network) is an error naming the first image, never a result."""
    bad = ~np.isfinite(z).all(axis=1)
    if bad.any():
        first = names[int(np.flatnonzero(bad)[0])]
        raise InvaspreadError(f"{network} gives NaN or infinite embeddings ({int(bad.sum())} of {len(z)} images in a "
                              f"batch, e.g. {printable(first)}): a diverged model; use an earlier checkpoint "
                              f"(train.keep / train.save_epochs) or train again with a lower lr")


def printable(path: str) -> str:
    """A file name as text that any terminal takes: bytes that are not UTF-8 shown as \\xNN (like ``ls -b``)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def file_checksum(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


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
        self.meta = read_meta(self.folder)
        verify_files(self.folder, self.meta)
        self.paths = read_paths(self.folder, self.meta["count"])
        self.embeddings = _embeddings(self.folder, self.meta["count"], self.meta["dim"])
        for start in range(0, self.meta["count"], SEARCH_CHUNK_ROWS):
            rows = np.asarray(self.embeddings[start:start + SEARCH_CHUNK_ROWS])
            if not np.isfinite(rows).all():
                raise InvaspreadError(f"{self.folder}/embeddings.f32 holds NaN or infinite rows (first: row "
                                      f"{start + int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])}); build "
                                      f"the index again from a finite checkpoint")

    def embed(self, files: Sequence[str], device: Optional[str] = None) -> np.ndarray:
        """(Q, d) L2-normalised embeddings of query images, with the network and transform of the index."""
        from ..data.eval_transform import run_eval_transform

        cfg, _, model, dev = load_run(self.folder / "model.pt", [f"train.device={device}"] if device else [])
        features, transform = evaluation_network(model, cfg), run_eval_transform(cfg)
        for f in files:
            if not Path(f).is_file():
                raise InvaspreadError(f"query {f}: no such file")
        source, out = FileImages(list(files)), []
        with torch.no_grad():
            for start in range(0, len(source), 256):
                x = torch.stack([transform(source.image(i)) for i in range(start, min(start + 256, len(source)))])
                z = torch.nn.functional.normalize(features(x.to(dev)).float(), dim=1).cpu().numpy()
                refuse_non_finite(z, list(files)[start:start + 256], f"the network of {self.folder}")
                out.append(z)
        return np.concatenate(out)

    def search(self, queries: np.ndarray, k: int, backend: str = "auto",
               nprobe: int = 16) -> Tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), rows (Q, k)) of the ``k`` highest inner products, best first."""
        if k < 1:
            raise InvaspreadError(f"-k {k}: expected a positive number")
        if nprobe < 1:
            raise InvaspreadError(f"--nprobe {nprobe}: expected a positive number of inverted lists to visit")
        k = min(k, self.meta["count"])
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        has_faiss = (self.folder / "faiss.index").is_file()
        if backend == "faiss" and not has_faiss:
            raise InvaspreadError(f"{self.folder} has no FAISS index (built with --backend torch or without faiss "
                                  f"installed): use --backend torch, or index again with faiss installed")
        faiss = faiss_module(required=backend == "faiss") if has_faiss and backend != "torch" else None
        if faiss is not None:
            try:
                index = faiss.read_index(str(self.folder / "faiss.index"))
            except RuntimeError as err:
                raise InvaspreadError(f"{self.folder}/faiss.index is not a readable FAISS index "
                                      f"({' '.join(str(err).split())[:160]}); use --backend torch or index again") from err
            if index.ntotal != self.meta["count"] or index.d != self.meta["dim"]:
                raise InvaspreadError(f"{self.folder}/faiss.index holds {index.ntotal} x {index.d} vectors but the "
                                      f"index has {self.meta['count']} x {self.meta['dim']}: build it again")
            if (self.meta.get("faiss") or {}).get("ivf"):
                index.nprobe = nprobe
            scores, rows = index.search(queries, k)
            return scores, rows
        return exact_search(self.embeddings, queries, k)


def read_meta(folder: Path) -> dict:
    """``meta.json`` of an index folder, checked: one line for each way it can be missing or wrong."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise InvaspreadError(f"{folder} is not an invaspread index (no meta.json); build one with "
                              f"invaspread index RUN --images DIR --out {folder}")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise InvaspreadError(f"{meta_path} is not valid JSON ({err}); build the index again") from err
    if not isinstance(meta, dict):
        raise InvaspreadError(f"{meta_path} holds a {type(meta).__name__}, not an index description; build the index "
                              f"again")
    if meta.get("version") != INDEX_VERSION:
        raise InvaspreadError(f"{folder}: index version {meta.get('version')}, this invaspread reads "
                              f"{INDEX_VERSION}: build it again")
    for key in ("count", "dim"):
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvaspreadError(f"{meta_path}: {key}={value!r}, expected a positive whole number; build the index "
                                  f"again")
    if not isinstance(meta.get("files"), dict):
        raise InvaspreadError(f"{meta_path} lists no file checksums; build the index again")
    return meta


def verify_files(folder: Path, meta: dict) -> None:
    """Every file the index was built with is there, with its size and SHA-256; the embeddings hold count x dim."""
    for name in ("embeddings.f32", "paths.jsonl", "model.pt"):
        if name not in meta["files"]:
            raise InvaspreadError(f"{folder}/meta.json lists no checksum for {name}; build the index again")
    for name, want in meta["files"].items():
        path = folder / name
        if name not in INDEX_FILES or not isinstance(want, dict):
            raise InvaspreadError(f"{folder}/meta.json: unexpected entry {name!r} in files; build the index again")
        if not path.is_file():
            raise InvaspreadError(f"{path} is missing; build the index again")
        if file_checksum(path) != want:
            raise InvaspreadError(f"{path} was changed or damaged since the index was built (its size or SHA-256 "
                                  f"differs from meta.json); build the index again")
    expected = meta["count"] * meta["dim"] * 4
    if meta["files"]["embeddings.f32"].get("bytes") != expected:
        raise InvaspreadError(f"{folder}/embeddings.f32 holds {meta['files']['embeddings.f32'].get('bytes')} bytes, "
                              f"not count x dim x 4 = {expected} (meta.json edited?); build the index again")
    if (meta.get("faiss") is not None) != ("faiss.index" in meta["files"]):
        raise InvaspreadError(f"{folder}/meta.json and its files disagree on the FAISS index; build the index again")


def read_paths(folder: Path, count: int) -> List[str]:
    try:
        paths = [json.loads(line) for line in (folder / "paths.jsonl").read_text().splitlines()]
    except (ValueError, UnicodeDecodeError) as err:
        raise InvaspreadError(f"{folder}/paths.jsonl is not one JSON string per line ({err})") from err
    if len(paths) != count or not all(isinstance(p, str) for p in paths):
        raise InvaspreadError(f"{folder}/paths.jsonl holds {len(paths)} entries for {count} embeddings; build the "
                              f"index again")
    return paths


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
