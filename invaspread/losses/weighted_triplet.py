"""MOM's weighted triplet loss (Iscen et al. CVPR 2018; reference gtolias/mom ``WeightedTriplet``).

Each tuple is an anchor a, a mined positive p (a manifold neighbour that is not a Euclidean one) and a
mined negative n (a Euclidean neighbour that is not a manifold one), with w the positive's manifold
similarity to the anchor. With *squared* Euclidean distances d2 between L2-normalised embeddings:

    loss = 1/B sum_b w_b max(0, margin + d2(a_b, p_b) - d2(a_b, n_b))            (margin 0.5)
"""

from __future__ import annotations

import torch
from torch import nn

from .precision import at_least_float32


class WeightedTripletLoss(nn.Module):
    """Shapes: anchor, positive, negative (B, d), weight (B,) -> scalar (float32 at least).
    The weights carry no gradient (they are mined constants)."""

    def __init__(self, margin: float = 0.5):
        super().__init__()
        if not margin > 0:
            raise ValueError(f"WeightedTripletLoss margin must be > 0, got {margin!r}")
        self.margin = float(margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                weight: torch.Tensor) -> torch.Tensor:
        if not (anchor.ndim == 2 and anchor.shape == positive.shape == negative.shape
                and weight.shape == anchor.shape[:1]):
            raise ValueError(f"WeightedTripletLoss expects anchor/positive/negative (B, d) and weight (B,), got "
                             f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}, "
                             f"{tuple(weight.shape)}")
        with torch.autocast(device_type=anchor.device.type, enabled=False):
            a, p, n = (at_least_float32(t) for t in (anchor, positive, negative))
            d_ap = ((a - p) ** 2).sum(1)
            d_an = ((a - n) ** 2).sum(1)
            hinge = (self.margin + d_ap - d_an).clamp_min(0)
            return (hinge * weight.detach().to(hinge.dtype)).mean()
