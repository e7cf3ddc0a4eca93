"""Non-parametric softmax over a memory bank (Wu et al. 2018, "NPSoftmax"; the paper's Eq. 2).

Every training instance i has a memorised feature v_i (a row of the bank, L2-normalised, not trained
by SGD). A feature f of instance i is classified among all n instances:

    P(i | f) = exp(v_i . f / tau) / sum_{j=1..n} exp(v_j . f / tau)                      (Eq. 2)
    loss     = -1/B sum_b log P(index_b | f_b)

The bank enters as given: updating it (v_i <- normalise(m v_i + (1 - m) f_i)) is the method's job
(``invaspread.methods.npid``), after the step, as the released lemniscate code does in its backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import at_least_float32


class NPSoftmaxLoss(nn.Module):
    """Cross-entropy of each feature against its own bank entry among all n entries.

    Shapes:
        features: (B, d) L2-normalised embeddings (one augmented view per instance).
        index: (B,) int64 instance indices into the bank.
        bank: (n, d) memorised features; no gradient flows into it.
        returns: scalar, computed in the features' precision (float32 at least).
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"NPSoftmaxLoss temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, features: torch.Tensor, index: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or bank.ndim != 2 or features.shape[1] != bank.shape[1]:
            raise ValueError(f"NPSoftmaxLoss expects features (B, d) and bank (n, d), got {tuple(features.shape)} "
                             f"and {tuple(bank.shape)}")
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = at_least_float32(features)
            logits = f @ bank.to(f.dtype).t() / self.temperature                  # (B, n)
            return F.cross_entropy(logits, index.to(logits.device))
