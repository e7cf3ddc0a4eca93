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
import errno
import hashlib
import json
import os
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from ..atomic import atomic_file
from ..locks import HOLDER_LINE, Lock, is_held



def _note(text: str) -> None:
    print(f"invaspread: {text}", file=sys.stderr)


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
def entry_lock(path: Path, log: Callable[[str], None] = _note) -> Iterator[None]:
    """Exclusive lock of one entry across processes: waits (saying for whom) while another process decodes the
    same archive; a lock file that is not a regular file is refused (``invaspread.locks``); a no-op where the
    folder is not writable."""
    lock = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = Lock(path.with_suffix(".lock"), f"cache entry {path.name}").acquire(wait=True, log=log)
    except PermissionError:
        lock = None
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES):
            raise
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


ENTRY_NAME = re.compile(r"^(?P<stem>[^/]+-[0-9a-f]{16})\.npz$")
LOCK_NAME = re.compile(r"^(?P<stem>[^/]+-[0-9a-f]{16})\.lock$")
TEMP_NAME = re.compile(r"^\.(?P<stem>[^/]+-[0-9a-f]{16})\.npz\.[A-Za-z0-9_]+\.tmp$")


def is_entry(path: Path) -> bool:
    """An entry this cache wrote: its name (``NAME-<16 hex>.npz``), a regular file, and a zip holding the
    cache's own arrays (``__digest__`` and ``__meta__``). Anything else in the folder is not the cache's."""
    if not ENTRY_NAME.match(path.name) or path.is_symlink() or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return {"__digest__.npy", "__meta__.npy"} <= names


def _is_lock(path: Path) -> bool:
    """A lock file of an entry (named after one, regular, empty or holding one holder line) that no process
    holds now."""
    if not LOCK_NAME.match(path.name) or path.is_symlink() or not path.is_file() or path.stat().st_size > 300:
        return False
    try:
        if not HOLDER_LINE.match(path.read_text()):
            return False
    except (OSError, UnicodeDecodeError):
        return False
    return not is_held(path)   # held by a running decode: left alone


def _is_leftover(path: Path) -> bool:
    """A temporary file of an entry write that died (no process holds the entry's lock)."""
    m = TEMP_NAME.match(path.name)
    return bool(m) and path.is_file() and not path.is_symlink() and not is_held(path.parent / f"{m['stem']}.lock")


def list_entries(cache_dir: Optional[str] = None):
    """[(path, size in bytes, metadata dict)] of the entries in the cache folder (its files only)."""
    folder = cache_folder(cache_dir)
    out = []
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        if not ENTRY_NAME.match(path.name) or not path.is_file():
            continue
        meta = {}
        try:
            with np.load(path, allow_pickle=False) as z:
                if "__digest__" not in z.files:
                    continue
                meta = json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}
        except Exception:
            meta = {"state": "unreadable (rebuilt on next use)"}
        out.append((path, path.stat().st_size, meta))
    return out


def clear_entries(cache_dir: Optional[str] = None) -> Tuple[int, int]:
    """Remove the cache's own files: entries (``is_entry``), their unheld locks and leftover temporary files.
    Returns (files removed, bytes freed). Any other file in the folder is the user's and stays, whatever its
    name."""
    folder = cache_folder(cache_dir)
    removed = freed = 0
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if is_entry(path) or _is_lock(path) or _is_leftover(path):
            freed += path.stat().st_size
            path.unlink()
            removed += 1
    return removed, freed


def metadata(archive: Path, splits) -> np.ndarray:
    return np.asarray(json.dumps({"archive": str(archive), "splits": list(splits),
                                  "created": time.strftime("%Y-%m-%d %H:%M:%S")}))
