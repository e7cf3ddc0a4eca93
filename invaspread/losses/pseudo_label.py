"""DeepCluster's loss (Caron et al. ECCV 2018): cross-entropy of a linear classifier over the embedding
toward the k-means pseudo-label of each image,

    loss = -1/B sum_b log softmax(W f_b + c)_{y_b}          (W: k x d, c: k; y_b in 0..k-1)

The classifier (``W``, ``c``) is re-initialised after every clustering by the method; gradients reach
both the features and the classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import at_least_float32


class PseudoLabelLoss(nn.Module):
    """Shapes: features (B, d), labels (B,) int64 in 0..k-1, weight (k, d), bias (k,) -> scalar."""

    def forward(self, features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = at_least_float32(features)
            return F.cross_entropy(F.linear(f, weight.to(f.dtype), bias.to(f.dtype)), labels.to(f.device))
