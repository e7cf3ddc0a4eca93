"""The decoded-image cache: one checked ``.npz`` entry per archive content, shared safely between processes.

- Key: a SHA-1 of the archive's *bytes* (and the splits read), so a replaced archive never serves the old
  images, whatever its size and mtime; a subset is sliced from the full entry (one entry per archive).
- Integrity: every entry stores a SHA-256 of its arrays, verified on load; a truncated or corrupt entry is
  rebuilt, never fatal.
- Concurrency: one lock file per entry (``flock``): a second process decoding the same archive waits for the
  first and reads its entry. Entries are written to a unique temporary file created exclusively (``mkstemp``:
  never through a planted link) and renamed into place.

``invaspread cache list`` / ``invaspread cache clear`` show and empty the folder (``data.cache_dir``, else
``$INVASPREAD_CACHE``, else ``~/.cache/invaspread``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

import numpy as np

from ..atomic import atomic_file

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; entries are still written atomically and checked
    fcntl = None


def cache_folder(cache_dir: Optional[str] = None) -> Path:
    return Path(cache_dir or os.environ.get("INVASPREAD_CACHE", Path.home() / ".cache" / "invaspread")).expanduser()


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's bytes (about 1 s per GB here): the content, not its name, size or mtime."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _arrays_digest(arrays: Dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def load_entry(path: Path) -> Optional[Dict[str, np.ndarray]]:
    """The arrays of a cache entry, or None when it is missing, unreadable or fails its checksum."""
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        stored = str(arrays.pop("__digest__"))
    except Exception:  # truncated zip, bad CRC, missing digest, ...: rebuilt by the caller
        return None
    return arrays if stored == _arrays_digest(arrays) else None


def store_entry(path: Path, arrays: Dict[str, np.ndarray]) -> bool:
    """Write ``arrays`` (plus their checksum) atomically; False when the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, shared=True, durable=True) as fh:   # readable by the cache's other users
            np.savez(fh, __digest__=np.asarray(_arrays_digest(arrays)), **arrays)
        return True
    except OSError:
        return False  # a full or read-only cache is not an error: the data are in memory already


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Exclusive lock of one entry across processes (blocking); a no-op where the folder is not writable."""
    handle = None
    if fcntl is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path.with_suffix(".lock"), "a")
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def list_entries(cache_dir: Optional[str] = None):
    """[(path, size in bytes, metadata dict)] of the entries in the cache folder."""
    folder = cache_folder(cache_dir)
    out = []
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        meta = {}
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}
        except Exception:
            meta = {"state": "unreadable (rebuilt on next use)"}
        out.append((path, path.stat().st_size, meta))
    return out


def clear_entries(cache_dir: Optional[str] = None) -> int:
    """Remove every entry, lock and leftover temporary file; returns the bytes freed."""
    folder = cache_folder(cache_dir)
    freed = 0
    for pattern in ("*.npz", "*.lock", ".*.tmp"):
        for path in folder.glob(pattern) if folder.is_dir() else []:
            freed += path.stat().st_size
            path.unlink()
    return freed


def metadata(archive: Path, splits) -> np.ndarray:
    return np.asarray(json.dumps({"archive": str(archive), "splits": list(splits),
                                  "created": time.strftime("%Y-%m-%d %H:%M:%S")}))
