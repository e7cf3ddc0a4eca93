"""The learning-rate schedules (``optim.schedule``), one function each, found by name in ``SCHEDULES``."""

from __future__ import annotations

import math


def _step(optim_cfg, epochs: int, progress: float) -> float:
    """lr x decay_factors[i] once epoch >= decay_epochs[i] (paper: x0.1 at 120, x0.01 at 160)."""
    factor = 1.0
    for milestone, f in zip(optim_cfg.decay_epochs, optim_cfg.decay_factors):
        if int(progress) >= milestone:
            factor = f
    return optim_cfg.lr * factor


def _cosine(optim_cfg, epochs: int, progress: float) -> float:
    """A half cosine from lr to 0 over the epochs after warm-up."""
    warmup = optim_cfg.warmup_epochs
    span = max(epochs - warmup, 1e-8)
    return optim_cfg.lr * 0.5 * (1 + math.cos(math.pi * min((progress - warmup) / span, 1.0)))


def _constant(optim_cfg, epochs: int, progress: float) -> float:
    return optim_cfg.lr


# optim.schedule -> function(optim_config, epochs, epoch_progress) -> lr; the config's choices of optim.schedule
SCHEDULES = {"step": _step, "cosine": _cosine, "constant": _constant}


def learning_rate(optim_cfg, epochs: int, epoch_progress: float) -> float:
    """lr at ``epoch_progress`` epochs into training (0-based, fractional within an epoch): a linear warm-up from 0
    over ``optim.warmup_epochs``, then the schedule ``optim.schedule``."""
    lr, warmup = optim_cfg.lr, optim_cfg.warmup_epochs
    if warmup > 0 and epoch_progress < warmup:
        return lr * epoch_progress / warmup
    return SCHEDULES[optim_cfg.schedule](optim_cfg, epochs, epoch_progress)
