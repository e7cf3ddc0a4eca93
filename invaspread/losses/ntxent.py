"""NT-Xent, SimCLR's loss (Chen, Kornblith, Norouzi, Hinton, ICML 2020, Eq. 1 and Algorithm 1).

For N instances with two views, the 2N rows x = [z1; z2] are L2-normalised; anchor a's positive p(a) is the
other view of its instance, and every one of the 2N - 1 other rows is in its denominator:

    l(a) = -log( exp(x_a . x_p(a) / tau) / sum_{k != a} exp(x_a . x_k / tau) )
    loss = 1/2N sum_a l(a)

Unlike InvaSpread's loss (Eq. 5-7) there is no "not the other instance" term, and no stop-gradient: both
sides of every similarity receive gradient, as in SimCLR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.distributed import gather_rows, gathered_view_columns
from .precision import at_least_float32


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy over the batch's 2N views.

    Shapes:
        z1, z2: (N, d) the two views' embeddings (normalised here; they need not be already).
        returns: scalar, the mean over the 2N anchors (float32 at least).

    ``gather_distributed``: in a process group, every rank's anchors meet the views of *all* ranks as
    candidates, gathered with gradient (``ops.distributed.gather_rows``), exactly as ``InvaSpreadLoss``
    does: the mean over ranks of the returned losses is the loss of the concatenated batch.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"NTXentLoss temperature must be > 0, got {temperature!r}")
        self.temperature, self.gather_distributed = float(temperature), bool(gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
            raise ValueError(f"NTXentLoss expects two (N, d) tensors of equal shape with N >= 2, got "
                             f"{tuple(z1.shape)} and {tuple(z2.shape)}")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1, z2 = F.normalize(at_least_float32(z1), dim=1), F.normalize(at_least_float32(z2), dim=1)
            n = z1.shape[0]
            keys1, offset = gather_rows(z1) if self.gather_distributed else (z1, 0)
            keys2, _ = gather_rows(z2) if self.gather_distributed else (z2, 0)
            total = keys1.shape[0]
            logits = torch.cat([z1, z2]) @ torch.cat([keys1, keys2]).t() / self.temperature   # (2n, 2N)
            _, _, own, positive = gathered_view_columns(n, offset, total, z1.device)
            logits = logits.scatter(1, own[:, None], float("-inf"))                          # k != a
            return F.cross_entropy(logits, positive)
