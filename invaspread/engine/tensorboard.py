"""TensorBoard scalars of a run (``train.tensorboard=true``): the metrics lines again, in ``RUN/tensorboard/``."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ConfigError

# metrics key -> TensorBoard tag; any other numeric key (recall@K, nmi, linear_top1, ...) goes under eval/
TAGS = {"loss": "train/loss", "lr": "train/lr", "images_per_second": "speed/images_per_second",
        "train_seconds": "time/train_seconds", "epoch_start_seconds": "time/epoch_start_seconds",
        "eval_seconds": "time/eval_seconds"}
EPOCH_PARTS = ("train_seconds", "epoch_start_seconds", "eval_seconds")   # logged parts of an epoch's wall time


def summary_writer_class():
    """``SummaryWriter``, or a one-line error saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install 'invaspread[tensorboard]' "
                          "(or pip install tensorboard), or set train.tensorboard=false") from err
    return SummaryWriter


class ScalarLog:
    """Writes every metrics line as scalars at step = epoch; on resume the events of epochs after the
    checkpoint (an interrupted epoch) are purged, so a curve never shows an epoch twice."""

    def __init__(self, folder, start_epoch: int):
        self.writer = summary_writer_class()(log_dir=str(Path(folder) / "tensorboard"), purge_step=start_epoch + 1)

    def add(self, line: dict) -> None:
        epoch = int(line["epoch"])
        for key, value in line.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(TAGS.get(key, f"eval/{key}"), value, epoch)
        if any(part in line for part in EPOCH_PARTS):   # the epoch's wall time: preparation, steps, evaluation
            self.writer.add_scalar("time/epoch_seconds", sum(line.get(part, 0.0) for part in EPOCH_PARTS), epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
