"""How a run's network computes on its device: bf16 autocast or float32, channels_last or contiguous.

CUDA: ``train.bf16`` and ``train.channels_last`` (both on by default). The CPU has its own keys, because what
is fast there depends on the processor:

* ``train.cpu_bf16``: bf16 autocast on the CPU. ``null`` (the default) resolves when a run starts to whether
  this CPU computes bf16 natively (AMX or AVX512-BF16: ``cpu_computes_bf16``); without them bf16 is emulated
  and slower than float32. The resolved value is what ``config.yaml`` and the checkpoint record, so a resumed
  run computes as it trained on any machine.
* ``train.cpu_fast_path``: channels_last and on-device (batched, per-sample) augmentation on the CPU, instead
  of contiguous tensors and PIL augmentation in DataLoader workers.

Runs saved before these keys existed trained with both off, and resume so (``config.LEGACY_VALUES``). Losses
compute in float32 under autocast on either device (``losses.precision``). Training, evaluation, ``embed`` and
``index`` all read ``forward_settings``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..errors import ConfigError

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_computes_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU's flags (Linux ``/proc/cpuinfo``) name AMX-BF16 or AVX512-BF16, the instructions
    oneDNN computes bf16 convolutions with; False elsewhere, or where the flags cannot be read."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(flag in flags for flag in BF16_FLAGS)
    return False


def resolve_cpu_precision(cfg) -> None:
    """Replace ``train.cpu_bf16: null`` by what this CPU computes fast (before the run's config is saved)."""
    if cfg.train.cpu_bf16 is None:
        cfg.train.cpu_bf16 = cpu_computes_bf16()


def forward_settings(cfg, device: torch.device) -> Tuple[Optional[torch.dtype], torch.memory_format]:
    """(autocast dtype or None for float32, memory format) of the network's forward passes on ``device``."""
    if device.type == "cuda":
        bf16, channels_last = cfg.train.bf16, cfg.train.channels_last
    elif device.type == "cpu":
        bf16 = cfg.train.cpu_bf16 if cfg.train.cpu_bf16 is not None else cpu_computes_bf16()
        channels_last = cfg.train.cpu_fast_path
    else:   # mps and others: as before, float32 and contiguous
        bf16 = channels_last = False
    return (torch.bfloat16 if bf16 else None), (torch.channels_last if channels_last else torch.contiguous_format)


def describe(cfg, device: torch.device) -> str:
    """'bf16 autocast + channels_last', 'float32, contiguous', ... for the run's first line."""
    dtype, memory_format = forward_settings(cfg, device)
    precision = "bf16 autocast" if dtype is not None else "float32"
    layout = "channels_last" if memory_format == torch.channels_last else "contiguous"
    why = ""
    if device.type == "cpu" and dtype is None and cfg.train.cpu_bf16 is not True and not cpu_computes_bf16():
        why = " (this CPU has no native bf16)"
    return f"{precision}{why}, {layout}"


def resolve_device(name: str) -> torch.device:
    """``train.device`` (auto, cpu, cuda, cuda:N) as a device, or a one-line error naming the value."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine (use auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device={name!r}: expected auto, cpu, cuda or cuda:N") from err
