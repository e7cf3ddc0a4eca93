"""Triplet loss over the two views of a batch (the paper's "Triplet" and "Triplet (hard)" rows).

With x = [z1; z2] (2N L2-normalised rows), every row a is an anchor, its positive p(a) is the other
view of the same instance and its negative n(a) one of the 2N - 2 rows of other instances: drawn
uniformly (``negatives="random"``) or the closest one (``"hard"``: online batch-hard mining,
Hermans et al. 2017). With Euclidean distances d,

    loss = 1/(2N) sum_a max(0, d(a, p(a)) - d(a, n(a)) + margin)          (margin 0.5, paper Sec. 4.1)

The negative's choice carries no gradient; the distances do.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops.distributed import gather_rows, gathered_view_columns
from .precision import at_least_float32

NEGATIVES = ("random", "hard")


def sample_random_negatives(n: int, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(2N,) row indices into x = [z1; z2]: for each anchor, a uniform draw among the 2N - 2 rows of the
    other instances (instance offset 1..N-1, then either view)."""
    rows = torch.arange(2 * n, device=device)
    offset = torch.randint(1, n, (2 * n,), device=device, generator=generator)
    view = torch.randint(0, 2, (2 * n,), device=device, generator=generator)
    return (rows % n + offset) % n + view * n


def pairwise_distances(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(R, C) Euclidean distances between the rows of x and of y (default x); the square is clamped at
    1e-12 so the gradient stays finite at 0."""
    y = x if y is None else y
    return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.t()).clamp_min(1e-12).sqrt()


class TripletLoss(nn.Module):
    """Shapes: z1, z2 (N, d) L2-normalised embeddings of two views (row i = instance i) -> scalar.

    ``generator`` (random negatives only) draws the negatives; by default the global RNG of the
    inputs' device.
    """

    def __init__(self, margin: float = 0.5, negatives: str = "random", gather_distributed: bool = False):
        super().__init__()
        self.gather_distributed = bool(gather_distributed)
        if negatives not in NEGATIVES:
            raise ValueError(f"TripletLoss negatives must be one of {NEGATIVES}, got {negatives!r}")
        if not margin > 0:
            raise ValueError(f"TripletLoss margin must be > 0, got {margin!r}")
        self.margin, self.negatives = float(margin), negatives

    def extra_repr(self) -> str:
        return f"margin={self.margin}, negatives={self.negatives!r}"

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.hinge(self.gaps(z1, z2, generator))

    def hinge(self, gaps: torch.Tensor) -> torch.Tensor:
        """The loss of the anchors' ``gaps``: mean of max(0, gap + margin)."""
        return (gaps + self.margin).clamp_min(0).mean()

    def gaps(self, z1: torch.Tensor, z2: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(2n,) d(a, p(a)) - d(a, n(a)) of every local anchor, float32 at least (what the hinge sees: a
        triplet is active while its gap exceeds -margin)."""
        if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
            raise ValueError(f"TripletLoss expects two (N, d) tensors of equal shape with N >= 2, got "
                             f"{tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1, z2 = at_least_float32(z1), at_least_float32(z2)
            x = torch.cat([z1, z2])                                                     # (2n, d) local anchors
            if self.gather_distributed:   # candidates from every rank (see InvaSpreadLoss.gather_distributed)
                (all1, offset), (all2, _) = gather_rows(z1), gather_rows(z2)
                keys = torch.cat([all1, all2])
            else:
                keys, offset = x, 0
            total = keys.shape[0] // 2                                                  # N over all ranks
            dist = pairwise_distances(x, keys)                                          # (2n, 2N)
            rows, instance, own, positive = gathered_view_columns(n, offset, total, x.device)
            if self.negatives == "hard":
                columns = torch.arange(2 * total, device=x.device)
                same_instance = (columns[None, :] % total) == instance[:, None]
                negative = dist.detach().masked_fill(same_instance, float("inf")).argmin(dim=1)
            else:   # one draw for all 2N global anchors (the same on every rank with the same generator)
                negative = sample_random_negatives(total, x.device, generator)[own]
            return dist[rows, positive] - dist[rows, negative]
