"""Exemplar CNN's instance classifier (Dosovitskiy et al. 2014; the paper's Eq. 1).

Every training instance is its own class with a learned weight row w_i (W: n x d). With the rows
L2-normalised (``normalize_weights=True``, the natural reading of Section 3.1 next to Eq. 2) and a
temperature tau:

    P(i | f) = exp(w_i . f / tau) / sum_{k=1..n} exp(w_k . f / tau)                       (Eq. 1)
    loss     = -1/B sum_b log P(index_b | f_b)

``normalize_weights=False`` uses the raw rows (a plain linear classifier, still divided by tau).
``literal=True`` is Eq. 1 exactly as printed: P(i | f) = exp(w_i . f) / sum_k exp(w_k . f), raw rows and no
temperature (``temperature`` and ``normalize_weights`` are then ignored).
Gradients reach both the features and W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import at_least_float32


class ExemplarLoss(nn.Module):
    """Shapes: features (B, d), index (B,) int64, weights (n, d) -> scalar (float32 at least)."""

    def __init__(self, temperature: float = 0.1, normalize_weights: bool = True, literal: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"ExemplarLoss temperature must be > 0, got {temperature!r}")
        self.temperature, self.normalize_weights = float(temperature), bool(normalize_weights)
        self.literal = bool(literal)

    def extra_repr(self) -> str:
        if self.literal:
            return "literal=True (Eq. 1: raw rows, no temperature)"
        return f"temperature={self.temperature}, normalize_weights={self.normalize_weights}"

    def forward(self, features: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = at_least_float32(features)
            w = weights.to(f.dtype)
            if self.literal:
                return F.cross_entropy(f @ w.t(), index.to(f.device))
            if self.normalize_weights:
                w = F.normalize(w, dim=1)
            return F.cross_entropy(f @ w.t() / self.temperature, index.to(f.device))
