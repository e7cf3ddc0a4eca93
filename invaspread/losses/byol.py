"""BYOL's regression loss (Grill et al., NeurIPS 2020, Eq. 2): the online network's prediction p of one view
regresses the target network's projection z of the other view, both L2-normalised,

    l(b) = || p_b / ||p_b|| - z_b / ||z_b|| ||^2 = 2 - 2 cos(p_b, z_b)
    loss = 1/B sum_b l(b)

The method symmetrises it (both views as prediction and as target, Eq. 3) and computes z with the target
network under ``no_grad``: the stop-gradient is the method's, not hidden here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import at_least_float32


class BYOLLoss(nn.Module):
    """Mean squared distance of normalised predictions and targets.

    Shapes:
        predictions: (B, d), targets: (B, d).
        returns: scalar in [0, 4] (float32 at least).
    """

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if predictions.ndim != 2 or predictions.shape != targets.shape:
            raise ValueError(f"BYOLLoss expects predictions and targets of one (B, d) shape, got "
                             f"{tuple(predictions.shape)} and {tuple(targets.shape)}")
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            p = F.normalize(at_least_float32(predictions), dim=1)
            z = F.normalize(targets.to(p.dtype), dim=1)
            return (2 - 2 * (p * z).sum(1)).mean()
