"""The few ``torch.distributed`` operations the methods need (torchrun + DDP; gloo on CPU, NCCL on GPUs).

``gather_rows(x, with_grad)`` concatenates every rank's rows in rank order. With ``with_grad`` its backward
sums, over all ranks, the gradient each rank's loss put on the gathered tensor and hands every rank the rows
it contributed (an all-reduce, then its slice): a rank's own rows then receive the gradient of the *sum* of
all ranks' losses, which DDP's averaging of parameter gradients turns into the gradient of their mean --
single-process training on the concatenated batch, exactly. Outside a process group both are the identity.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.distributed as dist


def world() -> Tuple[int, int]:
    """(rank, world size); (0, 1) outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        rank, size = world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()             # all_reduce needs a contiguous buffer; never reduce a view
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor, with_grad: bool = True) -> Tuple[torch.Tensor, int]:
    """(world x N, ...) rows of every rank (equal N on every rank) and the offset of this rank's rows."""
    rank, size = world()
    if size == 1:
        return x, 0
    if with_grad and x.requires_grad:
        return _GatherWithGradient.apply(x), rank * x.shape[0]
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts), rank * x.shape[0]
