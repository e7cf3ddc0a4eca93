"""Exclusive locks between processes, one way for every folder that one command at a time may write: a run folder,
a cache entry, an index being built, a table folder.

A lock is a regular file holding the holder's pid, host and start time, locked with ``flock``: the kernel releases
it when the holder dies, so a killed process never leaves a stale lock. The file is opened without following a
link and without blocking, and anything but a regular file (a FIFO, a device, a folder planted at its name) is
refused in one line instead of hanging the command.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import InvaspreadError, shown

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the other checks still hold
    fcntl = None


class LockBusy(InvaspreadError):
    """Another process holds the lock (its holder line is in the message)."""


# what a lock file of ours holds: nothing yet, or one holder line (``Lock.acquire`` writes it)
HOLDER_LINE = re.compile(r"^(pid \d+ on \S*( since [0-9: -]+)?)?\s*$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _open_regular(path: Path) -> int:
    """A descriptor of the lock file, created here when absent; an existing file is opened without a byte of it
    changed, and refused unless it is a lock file (empty, or one holder line): a user's file of that name is never
    truncated, rewritten or deleted."""
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)   # ours: we made it
        except FileExistsError:
            fd = os.open(path, os.O_RDWR | _NOFOLLOW)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.EISDIR):
            raise   # a read-only or full folder: the caller decides
        raise InvaspreadError(f"cannot use the lock file {path}: {err.strerror} (a link or a folder at that name is "
                              f"never followed: remove it)") from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvaspreadError(f"{path} is not a regular file (a FIFO, device or socket planted at the lock's name); "
                              f"remove it and run again")
    text = os.read(fd, 301)
    if len(text) > 300 or not HOLDER_LINE.match(text.decode("utf-8", "replace")):
        os.close(fd)
        raise InvaspreadError(f"{path} exists and is not a lock file of invaspread (it holds {shown(text[:40])}); it "
                              f"was left as it is: move it away, or choose another name")
    return fd


def is_held(path) -> bool:
    """Whether a process holds the lock file at ``path`` now. Read-only: nothing is created, written or removed
    (a file that cannot be probed counts as held, so that the caller leaves it alone)."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or fcntl is None:
            return fcntl is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def holder(fd: int) -> str:
    """The holder line written into a lock file (or "another process" while it is being written)."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 300).decode("utf-8", "replace").strip() or "another process"


class Lock:
    """``Lock(path).acquire(wait=False)``: exclusive or ``LockBusy``; ``wait=True`` blocks, and first says through
    ``log`` who it waits for. ``release()`` (or leaving the ``with`` block) frees it; ``remove=True`` also deletes
    the lock file (for locks beside a user's files, which should leave nothing behind)."""

    def __init__(self, path, what: str = "", remove: bool = False):
        self.path, self.what, self.remove = Path(path), what or str(path), remove
        self.fd: Optional[int] = None

    def acquire(self, wait: bool = False, log: Optional[Callable[[str], None]] = None) -> "Lock":
        fd = _open_regular(self.path)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                who = holder(fd)
                if not wait:
                    os.close(fd)
                    raise LockBusy(f"{self.what} is in use by {who}; wait for it to finish, or choose another "
                                   f"name") from None
                if log is not None:
                    log(f"waiting for {self.what}, in use by {who} ...")
                fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        if self.remove:
            with contextlib.suppress(OSError):
                if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):   # still our file
                    self.path.unlink()
        os.close(self.fd)   # closing the descriptor releases the flock
        self.fd = None

    def __enter__(self) -> "Lock":
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def held(path, what: str = "", wait: bool = False, remove: bool = False,
         log: Optional[Callable[[str], None]] = None) -> Iterator[Lock]:
    lock = Lock(path, what, remove).acquire(wait, log)
    try:
        yield lock
    finally:
        lock.release()
