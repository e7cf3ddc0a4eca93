"""A run folder, owned by one process at a time, holding only files the run wrote.

Files: ``config.yaml``, ``metrics.jsonl``, ``last.pt`` (see ``trainer``), ``epoch-NNNN.pt`` (``train.keep``,
``train.save_epochs``), ``overrides.jsonl`` (settings changed on resume), and two of ours:

- ``.invaspread-run``: the run's identity (a random id, written when the run starts). Every checkpoint carries
  the same id, so a ``last.pt`` copied in from another run is refused on ``--resume`` instead of adopted.
- ``.invaspread.lock``: an exclusive ``flock`` held while a process trains in the folder, with the holder's
  pid and host inside for the error message of a second process. The kernel releases it when the holder
  dies, so a killed run never leaves a stale lock behind.

History is never deleted: on resume, the metrics lines of an epoch that was logged but not checkpointed (and a
half-written last line) move to ``metrics.interrupted.jsonl``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

from ..atomic import atomic_file
from ..errors import ConfigError, InvaspreadError
from ..locks import Lock, LockBusy
from ..outputs import check_out

MARKER = ".invaspread-run"
LOCK = ".invaspread.lock"
KEPT_NAME = re.compile(r"^epoch-\d{4,}\.pt$")
OUR_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "metrics.interrupted.jsonl", "overrides.jsonl", "unreadable.txt",
             MARKER, LOCK)
# a temporary file of ours (``atomic_file``: ".NAME." + mkstemp's 8 characters + ".tmp") of a file of the folder
DEAD_TEMPORARY = re.compile(r"^\.(config\.yaml|last\.pt|epoch-\d+\.pt|\.invaspread-run|unreadable\.txt|metrics\.jsonl|"
                            r"metrics\.interrupted\.jsonl|overrides\.jsonl)\.[a-z0-9_]{8}\.tmp$")


class RunFolder:
    def __init__(self, path: Path, run_id: Optional[str]):
        self.path, self.run_id = Path(path), run_id
        self._lock_file = None

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    # -- opening ---------------------------------------------------------------------------------------------
    @classmethod
    def check_new(cls, path, allow_existing: bool = False) -> None:
        """Refuse, before any work, an ``--out`` that a new run must not write into."""
        path = check_out(path, "--out")   # a folder name the file system can hold, in a place that can be created
        if (path / LOCK).exists():
            probe = cls(path, None)
            probe.lock()       # raises, naming the holder, while another process trains here
            probe.release()
        if (path / "last.pt").exists():
            raise ConfigError(f"{path} already holds a run (last.pt); continue it with --resume {path} "
                              f"or choose another --out")
        if not path.is_dir() or (path / MARKER).exists():
            return  # new, or a run of ours stopped before its first checkpoint: started again
        foreign = sorted(p.name for p in path.iterdir() if p.name != LOCK)
        if foreign and not allow_existing:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ConfigError(f"--out {path} is a folder that is not an invaspread run and is not empty ({shown}); "
                              f"choose a new or empty folder, or add --use-existing-folder to write the run beside "
                              f"these files")
        clash = [name for name in OUR_FILES if name != LOCK and (path / name).exists()]
        clash += sorted(p.name for p in path.glob("epoch-*.pt") if KEPT_NAME.match(p.name))   # names train.keep writes
        if clash:
            raise ConfigError(f"--out {path} holds {', '.join(clash)} that no invaspread run wrote; it is never "
                              f"overwritten: choose another --out")

    @classmethod
    def create(cls, path, allow_existing: bool = False) -> "RunFolder":
        """A new run in ``path`` (created if needed), locked, with a fresh identity."""
        cls.check_new(path, allow_existing)
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InvaspreadError(f"cannot create the run folder {path}: {err.strerror or err}") from err
        folder = cls(path, None)
        folder.lock()
        if (path / "last.pt").exists():  # another process finished an epoch here while we were building
            folder.release()
            raise ConfigError(f"{path} already holds a run (last.pt); continue it with --resume {path} "
                              f"or choose another --out")
        if folder.metrics_path.exists():  # an earlier start of ours that never reached a checkpoint
            folder._set_aside(folder.metrics_path.read_text().splitlines(), "a start without a checkpoint")
            folder.metrics_path.unlink()
        folder.run_id = uuid.uuid4().hex
        _write_atomic(path / MARKER, json.dumps({"run_id": folder.run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S")}))
        return folder

    @classmethod
    def reopen(cls, path, checkpoint: dict) -> "RunFolder":
        """The folder of a run being resumed from ``checkpoint`` (its ``last.pt``), locked; refuses a
        checkpoint whose identity is not the folder's."""
        path = Path(path)
        folder = cls(path, None)
        folder.lock()
        try:
            ours = cls.check_identity(path, checkpoint)
        except InvaspreadError:
            folder.release()
            raise
        folder.run_id = ours or checkpoint.get("run_id") or uuid.uuid4().hex  # older versions carry no identity
        marker = path / MARKER
        if ours is None:
            _write_atomic(marker, json.dumps({"run_id": folder.run_id, "created": "before run identities"}))
        return folder

    @staticmethod
    def check_identity(path, checkpoint: dict) -> Optional[str]:
        """The folder's run id; refuses a ``checkpoint`` of another run (a ``last.pt`` copied in)."""
        path = Path(path)
        marker = path / MARKER
        ours = json.loads(marker.read_text()).get("run_id") if marker.is_file() else None
        theirs = checkpoint.get("run_id")
        if ours is not None and theirs != ours:
            raise InvaspreadError(f"{path}/last.pt belongs to another run ({theirs or 'no run id'}) than this folder's "
                                  f"config and metrics ({ours}): it was copied in. Resume the run in the folder it "
                                  f"came from, or start a new run from its network with --set model.init_from=FILE")
        return ours

    def remove_dead_temporaries(self) -> list:
        """Remove the temporary files an interrupted write of this folder left (``.last.pt.XXXXXXXX.tmp`` and the
        like: ``atomic.atomic_file`` names them so); called with the folder's lock held, so none of them has a
        living writer. Returns their names."""
        removed = []
        for path in sorted(self.path.iterdir()):
            if DEAD_TEMPORARY.match(path.name) and path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path.name)
        return removed

    # -- the lock --------------------------------------------------------------------------------------------
    def lock(self) -> None:
        try:
            self._lock_file = Lock(self.path / LOCK, str(self.path)).acquire()
        except LockBusy as err:
            raise InvaspreadError(f"{err}: one run folder takes one training at a time (wait for it, or choose "
                                  f"another --out)") from None

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None

    # -- metrics ---------------------------------------------------------------------------------------------
    def keep_epochs_up_to(self, epoch: int) -> None:
        """Before resuming after ``epoch``: lines of later (uncheckpointed) epochs and unreadable lines are
        moved to ``metrics.interrupted.jsonl``; the kept lines stay in order."""
        if not self.metrics_path.exists():
            return
        kept, aside = [], []
        for line in self.metrics_path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                keep = isinstance(record, dict) and int(record["epoch"]) <= epoch
            except (ValueError, KeyError, TypeError):
                keep = False
            (kept if keep else aside).append(line)
        if aside:
            self._set_aside(aside, f"resumed after epoch {epoch}")
            _write_atomic(self.metrics_path, "".join(ln + "\n" for ln in kept))

    def _set_aside(self, lines, why: str) -> None:
        _append_atomic(self.path / "metrics.interrupted.jsonl",
                       [json.dumps({"set_aside": why, "at": time.strftime("%Y-%m-%d %H:%M:%S")})]
                       + [ln for ln in lines if ln.strip()])

    def keep_checkpoints(self, epoch: int, keep: int, save_epochs) -> None:
        """After ``last.pt`` of ``epoch`` is written: keep it as ``epoch-NNNN.pt`` when it is among the last
        ``keep`` epochs or in ``save_epochs`` (``train.keep``, ``train.save_epochs``), and drop the kept ones
        that are neither any more. A hard link where the file system has them (no extra space: the next
        ``last.pt`` is a new file), else a copy. Only files this run wrote (listed in its marker) are ever
        replaced or removed: a file of the same name that the run did not write stays as it is."""
        ours = set(self._marker().get("checkpoints", []))
        if keep > 0 or epoch in save_epochs:
            target = self.path / f"epoch-{epoch:04d}.pt"
            if target.name in ours:
                target.unlink(missing_ok=True)
            if not target.exists():
                try:
                    os.link(self.path / "last.pt", target)
                except OSError:
                    shutil.copy2(self.path / "last.pt", target)
                ours.add(target.name)
        for name in sorted(ours):
            number = int(name[len("epoch-"):-len(".pt")])
            if number not in save_epochs and number <= epoch - keep:
                (self.path / name).unlink(missing_ok=True)
                ours.discard(name)
        self._update_marker(checkpoints=sorted(ours))

    def _marker(self) -> dict:
        try:
            data = json.loads((self.path / MARKER).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _update_marker(self, **fields) -> None:
        marker = self._marker()
        if any(marker.get(k) != v for k, v in fields.items()):
            _write_atomic(self.path / MARKER, json.dumps({**marker, **fields}))

    def record_overrides(self, epoch: int, overrides, **changes) -> None:
        """Append the settings changed on a resume to ``overrides.jsonl`` (config.yaml shows the result), and
        ``changes`` that are not config keys (``processes``: another torchrun size)."""
        _append_atomic(self.path / "overrides.jsonl", [json.dumps({
            "resumed_after_epoch": epoch, "overrides": list(overrides), **changes,
            "at": time.strftime("%Y-%m-%d %H:%M:%S")})])

    def append_metrics(self, line: dict) -> None:
        _append_atomic(self.metrics_path, [json.dumps(line)])


def _write_atomic(path: Path, text: str) -> None:
    with atomic_file(path, "w", shared=True) as fh:
        fh.write(text)


def _append_atomic(path: Path, lines) -> None:
    """``lines`` added at the end of ``path`` by writing the whole file anew (``atomic_file``): a kill at any
    byte leaves the old file or the new one, never a half line (the files are a few lines per epoch)."""
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    _write_atomic(path, old + "".join(line + "\n" for line in lines))
