"""Where commands put what they make (``--out``): checked before any work, written under a unique temporary name,
and published whole, never over a file the command did not create.

- ``check_out``: a name the file system can hold (each part at most 255 bytes), of the right kind (a folder
  output that is a file, or a file output that is a folder, is refused), in a place that can be created.
- ``publish_file``: a finished temporary file appears under its name only if that name is still free
  (``os.link`` fails on an existing name: no check-then-write race); the temporary name is removed either way.
- ``publish_folder``: a finished temporary folder appears by one rename, which fails on an existing non-empty
  folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import InvaspreadError

NAME_MAX = 255   # bytes in one file name on Linux, macOS and Windows file systems


def check_out(path, flag: str = "--out", folder: bool = True) -> Path:
    """``path`` as an output of this kind, or a one-line error: a part longer than the file system allows, a file
    where a folder is expected (or the reverse), or a parent that cannot be created."""
    path = Path(path).expanduser()
    long = [part for part in path.parts if len(os.fsencode(part)) > NAME_MAX]
    if long:
        raise InvaspreadError(f"{flag} {str(path)[:80]}...: the name {long[0][:40]}... is {len(os.fsencode(long[0]))} "
                              f"bytes long; file systems allow {NAME_MAX}: choose a shorter name")
    if folder and path.exists() and not path.is_dir():
        raise InvaspreadError(f"{flag} {path} is a file; this command writes a folder there (choose another --out)")
    if not folder and path.is_dir():
        raise InvaspreadError(f"{flag} {path} is a folder; give a file name such as {path / 'embeddings.npz'}")
    make_parent(path, flag)
    return path


def make_parent(path: Path, flag: str = "--out") -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvaspreadError(f"{flag} {path}: cannot create the folder {path.parent} ({err.strerror or err})") from err
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise InvaspreadError(f"{flag} {path}: the folder {path.parent} is not writable")


def check_new_path(path: Path, flag: str = "--out") -> None:
    """Refuse an output name that exists already (it is never replaced)."""
    if os.path.lexists(path):
        raise InvaspreadError(f"{flag} {path} exists; it is never replaced: remove it yourself or choose another "
                              f"name")


def _unwritable(err: OSError, path: Path, flag: str) -> InvaspreadError:
    return InvaspreadError(f"{flag} {path}: cannot write there ({err.strerror or err})")


@contextlib.contextmanager
def new_file(path, flag: str = "--out", mode: str = "wb") -> Iterator[IO]:
    """Yield a temporary file beside ``path``; when the block ends it is published as ``path`` if that name is
    still free (else a one-line error), and removed on any failure."""
    path = Path(path)
    check_new_path(path, flag)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _unwritable(err, path, flag) from err
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        publish_file(Path(tmp), path, flag)
    finally:
        Path(tmp).unlink(missing_ok=True)


def publish_file(tmp: Path, path: Path, flag: str = "--out") -> None:
    try:
        os.link(tmp, path)   # fails if the name exists: never replaces what another writer put there
    except FileExistsError:
        raise InvaspreadError(f"{flag} {path} appeared while this command ran; it is not replaced (the output "
                              f"was discarded): run again with another name") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise _unwritable(err, path, flag) from err
        check_new_path(path, flag)   # a file system without hard links: the best check there is
        os.rename(tmp, path)


def new_folder(path: Path, flag: str = "--out") -> Path:
    """A unique, empty, hidden folder beside ``path`` to build it in."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{path.name[:200]}.", suffix=".building", dir=path.parent))
    except OSError as err:
        raise _unwritable(err, path, flag) from err


RENAME_EXCHANGE = 2   # renameat2's flag (Linux 3.15+): both names swap in one step
AT_FDCWD = -100


def exchange_folders(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``): whoever opens
    either name sees one folder or the other, never neither. False where the system cannot (then nothing moved)."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):   # not Linux, or a C library older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):   # a kernel or file system without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_folder(building: Path, path: Path) -> None:
    """Put the finished folder ``building`` in the place of the existing folder ``path`` (a grown index) and
    remove the old one. Atomic where ``exchange_folders`` is; elsewhere the old folder is renamed aside first,
    and a kill between the two renames leaves it whole in ``.NAME.XXXXXXXX.previous/index``."""
    if exchange_folders(building, path):
        shutil.rmtree(building)   # now the old folder
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name[:200]}.", suffix=".previous", dir=path.parent))
    os.rename(path, aside / "index")
    os.rename(building, path)
    shutil.rmtree(aside)


def publish_folder(building: Path, path: Path, flag: str = "--out") -> None:
    """Rename the finished folder ``building`` to ``path``; an existing ``path`` (anything but an empty folder)
    is never replaced."""
    try:
        os.rename(building, path)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise InvaspreadError(f"{flag} {path} appeared while this command ran; it is not replaced (the output "
                                  f"was discarded): run again with another name") from None
        raise _unwritable(err, path, flag) from err
