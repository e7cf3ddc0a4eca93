"""The precision every loss computes in: the inputs' own, float32 at least (so bf16/fp16 autocast
outputs are accumulated in float32 and float64 inputs stay float64)."""

import torch


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))
