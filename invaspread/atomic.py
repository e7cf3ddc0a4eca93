"""One way to write a file so that a reader never sees half of it: checkpoints, cache entries, run-folder files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb", shared: bool = False, durable: bool = False) -> Iterator[IO]:
    """Yield a file on a unique temporary name beside ``path``, created exclusively (``mkstemp``: a link planted
    at any name is never followed); renamed onto ``path`` when the block ends, removed on any failure.
    ``shared``: permissions from the umask instead of mkstemp's 0600 (a cache other users read);
    ``durable``: fsync before the rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if shared and hasattr(os, "fchmod"):
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode) as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
