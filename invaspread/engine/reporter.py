"""What a run shows and keeps: the one object through which training reports, so the loop has no rank tests.

``Reporter`` (rank 0, or the only process) owns the locked run folder: it writes ``config.yaml``, the metrics
lines (and TensorBoard scalars), the checkpoints, and prints. ``Silent`` (the other torchrun ranks) does nothing.
Use as a context manager: leaving it releases the folder's lock; a full or read-only disk becomes one line
saying what was kept and how to continue.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import save_config
from ..errors import InvaspreadError
from .checkpoint import CHECKPOINT_VERSION, method_checkpoint_state, save_checkpoint
from .run_folder import RunFolder
from .tensorboard import ScalarLog


class Silent:
    """The reporter of a torchrun rank other than 0: it trains its share and writes nothing."""

    path: Optional[Path] = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def log(self, text: str) -> None:
        pass

    def metrics(self, line: dict) -> None:
        pass

    def list_unreadable(self, skipped) -> None:
        pass

    def checkpoint(self, run, epoch: int, lr: float, last: dict) -> None:
        pass

    def evaluate(self, run, nmi: bool = True) -> dict:
        return {}

    def close(self) -> None:
        pass


class Reporter(Silent):
    def __init__(self, folder: RunFolder, log: Callable[[str], None]):
        self.folder, self.path, self._log = folder, folder.path, log
        self.scalars: Optional[ScalarLog] = None

    def list_unreadable(self, skipped) -> None:
        """``unreadable.txt``: every file the data's folder scans left out as unreadable, and why (one per line)."""
        if not skipped:
            return
        from ..atomic import atomic_file

        with atomic_file(self.path / "unreadable.txt", "w", shared=True) as fh:
            fh.write("".join(f"{path}\t{reason}\n" for path, reason in skipped))
        self.log(f"the {len(skipped)} unreadable file{'s' * (len(skipped) > 1)} left out are listed in "
                 f"{self.path / 'unreadable.txt'}")

    @classmethod
    def open(cls, cfg, out_dir: Path, state: Optional[dict], use_existing_folder: bool, log) -> "Reporter":
        """The run folder appears only once data, model and batches are built (a bad setting leaves nothing); from
        here on this process owns it (an exclusive lock) until the run ends."""
        folder = RunFolder.reopen(out_dir, state) if state is not None else RunFolder.create(out_dir,
                                                                                              use_existing_folder)
        reporter = cls(folder, log)
        removed = folder.remove_dead_temporaries()
        if removed:
            log(f"removed {len(removed)} temporary file{'s' * (len(removed) > 1)} an interrupted write left in "
                f"{folder.path}: {', '.join(removed[:3])}{' ...' if len(removed) > 3 else ''}")
        try:
            reporter._open_files(cfg, state)
        except BaseException:
            folder.release()
            raise
        return reporter

    def _open_files(self, cfg, state: Optional[dict]) -> None:
        """config.yaml, the resumed run's metrics and overrides."""
        from ..ops.distributed import world

        start_epoch = 0 if state is None else int(state["epoch"])
        if state is not None and state["overrides"]:
            # last.pt first, with the config it replaces (``config_before_resume``, from ``resumed_config``): a kill
            # before config.yaml is rewritten leaves that older config there, which the next resume recognises
            # (``trainer._cut_resume``) instead of calling it an edit
            save_checkpoint({**{k: v for k, v in state.items() if k != "overrides"}, "config": cfg.to_dict()},
                            self.path / "last.pt")
        save_config(cfg, self.path / "config.yaml")
        if state is not None:
            # lines of an epoch interrupted after logging but before its checkpoint are set aside, not lost
            self.folder.keep_epochs_up_to(start_epoch)
            if state["overrides"]:
                self.folder.record_overrides(start_epoch, state["overrides"])
                self.log(f"resumed with {' '.join(state['overrides'])} (recorded in {self.path / 'overrides.jsonl'})")
            before, now = int(state.get("world_size", 1)), world()[1]
            if before != now:   # the global batch is split differently (BatchNorm statistics, per-rank shares)
                self.folder.record_overrides(start_epoch, [], processes={"before": before, "now": now})
                self.log(f"resumed with {now} process{'es' * (now != 1)} (the run had {before}; recorded in "
                         f"{self.path / 'overrides.jsonl'})")
        if cfg.train.tensorboard:
            self.scalars = ScalarLog(self.path, start_epoch)

    def __exit__(self, kind, err, tb):
        self.folder.release()
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT,
                                                      errno.EPERM, errno.EFBIG, errno.EIO):
            then = (f"{self.path}/last.pt holds the last epoch written, unchanged: free space or fix permissions, "
                    f"then continue with --resume {self.path}" if (self.path / "last.pt").exists() else
                    "no epoch was saved: free space or fix permissions, then train again")
            raise InvaspreadError(f"cannot write to the run folder {self.path}: {err.strerror} "
                                  f"({err.filename or 'a file'}); {then}") from err
        return False

    def log(self, text: str) -> None:
        self._log(text)

    def metrics(self, line: dict) -> None:
        self.folder.append_metrics(line)
        if self.scalars is not None:
            self.scalars.add(line)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in line.items()}
        self.log(" ".join(f"{k}={v}" for k, v in shown.items()))

    def evaluate(self, run, nmi: bool = True) -> dict:
        """The configured protocol on the run's encoder (``engine.evaluation``): rank 0 evaluates for the run."""
        from .evaluation import evaluate

        return evaluate(run.method.encoder, run.bundle, run.cfg, run.device, nmi=nmi, progress=run.show_progress)

    def checkpoint(self, run, epoch: int, lr: float, last: dict) -> None:
        """``last.pt`` (atomically): the encoder under "model", the method's own state under "method", optimizer,
        schedule (with the steps done, for ``after_step``), RNG, config; then the kept epochs."""
        from ..ops.distributed import world

        rng = {"torch": torch.get_rng_state()}
        if run.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(run.device)
        save_checkpoint({"version": CHECKPOINT_VERSION, "model": run.method.encoder.state_dict(),
                         "method": method_checkpoint_state(run.method), "optimizer": run.optimizer.state_dict(),
                         "schedule": {"lr": lr, "epochs_done": epoch, "steps_done": run.steps_done}, "epoch": epoch,
                         "config": run.cfg.to_dict(), "rng": rng, "metrics": last, "run_id": self.folder.run_id,
                         "world_size": world()[1]}, self.path / "last.pt")
        self.folder.keep_checkpoints(epoch, run.cfg.train.keep, run.cfg.train.save_epochs)

    def close(self) -> None:
        if self.scalars is not None:
            self.scalars.close()   # every line was flushed when written: an exception before here loses nothing
