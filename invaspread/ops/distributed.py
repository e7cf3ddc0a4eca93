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


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated in rank order (no autograd)."""
    parts = [torch.empty_like(x) for _ in range(world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.rank, ctx.rows = world()[0], x.shape[0]
        return _all_gather(x)

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
    return _all_gather(x.detach()), rank * x.shape[0]


def gathered_view_columns(n: int, offset: int, total: int, device=None):
    """Index bookkeeping of a two-view loss over gathered keys: the local anchors are [z1; z2] (2n rows) of the
    instances ``offset`` .. ``offset + n - 1``, the keys [view 1 of all ranks; view 2 of all ranks] (2 x
    ``total`` columns). Returns (rows (2n,), instance (2n,): each anchor's global instance, own (2n,): the
    anchor's own column, positive (2n,): the column of its other view)."""
    rows = torch.arange(2 * n, device=device)
    instance = offset + rows % n
    return rows, instance, instance + total * (rows >= n), instance + total * (rows < n)


def start_from_environment(device: torch.device) -> Tuple[torch.device, bool]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1): NCCL on
    CUDA, gloo on the CPU; each process takes the GPU of its ``LOCAL_RANK``. Returns (this process's device,
    whether this call started the group). Without torchrun: (device, False), nothing started."""
    import os

    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, True


def broadcast_from_main(tensor: torch.Tensor) -> None:
    """Overwrite ``tensor`` on every rank with rank 0's (in place); nothing outside a process group. A CPU
    tensor travels through the GPU when the group is NCCL's."""
    if world()[1] == 1:
        return
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        carrier = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.broadcast(carrier, 0)
        tensor.copy_(carrier.cpu())
    else:
        dist.broadcast(tensor, 0)


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (a new tensor; the tensor itself outside a process group)."""
    if world()[1] == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world()[1]


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
