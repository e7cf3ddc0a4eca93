"""``invaspread index --add INDEX --images DIR``: new images appended to an existing index.

The index's own network and transform (its ``model.pt``, checked against ``meta.json`` like every file of the
index) embed only the images it does not hold yet; what is there is copied, never embedded again. The grown
index is built beside the old one and takes its place in one step (``outputs.replace_folder``): a search, or
a kill at any moment, sees the old index or the new one, whole.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..engine.checkpoint import load_run
from ..errors import InvaspreadError
from ..locks import held
from ..outputs import new_folder, replace_folder
from .index import (INDEX_FILES, SearchIndex, _embeddings, _remove_dead_buildings, collection_files, embed_into,
                    faiss_module, file_checksum, printable)
from ..data.sources import describe_unreadable

COPY_BLOCK = 1 << 24   # bytes per read when the old embeddings are copied (16 MiB: memory stays bounded)


def _same_file_key(path: str) -> str:
    """What makes two spellings of one file name the same entry (relative names: against the working folder)."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def add_to_index(index_folder, images, batch_size: int = 256, num_workers: int = 0, device: Optional[str] = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Embed the images under ``images`` that ``index_folder`` does not hold yet and append them (rows, paths,
    the FAISS index when it has one); returns the new meta. An index that fails its checks is refused whole."""
    folder = Path(index_folder)
    for flag, value, least in (("--batch-size", batch_size, 1), ("--workers", num_workers, 0)):
        if value < least:
            raise InvaspreadError(f"{flag} {value}: expected {'a positive number' if least else '0 or more'}")
    if not folder.is_dir() or folder.is_symlink():
        raise InvaspreadError(f"index --add {folder}: not an index folder (build one first: invaspread index RUN "
                              f"--images DIR --out {folder})")
    with held(folder.parent / f".{folder.name}.lock", f"index --add {folder}", remove=True):
        _remove_dead_buildings(folder, log)
        old = SearchIndex(folder)   # every file checked against meta.json before anything is read from it
        held_keys = {_same_file_key(p) for p in old.paths}
        found = collection_files(images)
        new = [p for p in found if _same_file_key(p) not in held_keys]
        if not new:
            log(f"{folder}: all {len(found)} images under {images} are in the index already; nothing added")
            return old.meta
        faiss = faiss_module(required=True) if old.meta.get("faiss") else None
        building = new_folder(folder, "index --add")
        try:
            meta, skipped = _grow(building, old, new, images, batch_size, num_workers, device, progress, faiss)
            replace_folder(building, folder)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    added = meta["added"][-1]
    if skipped:
        log(f"{images}: skipped {len(skipped)} unreadable file{'s' * (len(skipped) > 1)}: "
            f"{describe_unreadable([(printable(s['path']), s['error']) for s in skipped])} (all of them in "
            f"{folder / 'meta.json'}, key skipped)")
    log(f"{added['count']} new images -> {folder} ({meta['count']} in all; {len(found) - len(new)} under {images} "
        f"were in it already)")
    return meta


def _grow(building: Path, old: SearchIndex, new, images, batch_size, num_workers, device, progress, faiss):
    """The grown index's files in the empty folder ``building``: the old rows copied, the new ones appended;
    returns (its meta, the new files skipped as unreadable)."""
    meta = old.meta
    cfg, state, model, dev = load_run(old.folder / "model.pt", [f"train.device={device}"] if device else [])
    started = time.perf_counter()
    with open(building / "embeddings.f32", "wb") as vectors:
        with open(old.folder / "embeddings.f32", "rb") as source:
            shutil.copyfileobj(source, vectors, COPY_BLOCK)
        kept, skipped, dim = embed_into(vectors, new, cfg, model, dev, batch_size, num_workers, progress,
                                        f"the network of {old.folder} (epoch {state['epoch']})")
    if dim is not None and dim != meta["dim"]:
        raise InvaspreadError(f"{old.folder}/model.pt gives {dim}-d embeddings but the index holds {meta['dim']}-d "
                              f"rows; build the index again")
    if skipped and cfg.data.unreadable == "error":
        raise InvaspreadError(f"{len(skipped)} of {len(new)} new files under {images} are not readable images: "
                              f"{describe_unreadable([(printable(s['path']), s['error']) for s in skipped])} "
                              f"(data.unreadable=error in the index's config; remove or replace them)")
    with open(building / "paths.jsonl", "w") as fh:
        fh.write("".join(json.dumps(p) + "\n" for p in [*old.paths, *kept]))
    try:   # the network is the index's own, unchanged: a second name for the same file where possible
        os.link(old.folder / "model.pt", building / "model.pt")
    except OSError:
        shutil.copyfile(old.folder / "model.pt", building / "model.pt")
    count = meta["count"] + len(kept)
    grown = {**meta, "count": count, "skipped": _merged_skipped(meta.get("skipped", []), skipped, kept),
             "added": [*meta.get("added", []), {"images": str(images), "count": len(kept), "skipped": len(skipped),
                                                 "seconds": time.perf_counter() - started,
                                                 "created": time.strftime("%Y-%m-%d %H:%M:%S")}]}
    if faiss is not None:
        index = faiss.read_index(str(old.folder / "faiss.index"))
        if kept:
            index.add(np.ascontiguousarray(_embeddings(building, count, meta["dim"])[meta["count"]:]))
        faiss.write_index(index, str(building / "faiss.index"))
    grown["files"] = {name: file_checksum(building / name) for name in INDEX_FILES if (building / name).is_file()}
    (building / "meta.json").write_text(json.dumps(grown, indent=1))
    return grown, skipped


def _merged_skipped(before, now, kept):
    """Unreadable files of every build and add, once each; a file that reads now leaves the list."""
    readable = {_same_file_key(p) for p in kept}
    merged = {_same_file_key(s["path"]): s for s in [*before, *now] if _same_file_key(s["path"]) not in readable}
    return list(merged.values())
