"""MoCo's InfoNCE with a queue of negatives (He et al., CVPR 2020, Eq. 1; MoCo v2: Chen et al. 2020).

A query q_b (the online encoder's view) has one positive key k_b (the momentum encoder's other view of the same
instance) and K negatives, the queue's rows (keys of earlier batches):

    l(b) = -log( exp(q_b . k_b / tau) / (exp(q_b . k_b / tau) + sum_{j=1..K} exp(q_b . queue_j / tau)) )
    loss = 1/B sum_b l(b)

q, k and the queue are L2-normalised here. Whatever gradient the keys carry flows: the method computes them
with its momentum encoder under ``no_grad`` (the stop-gradient is its own, not hidden here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import at_least_float32


class MoCoLoss(nn.Module):
    """InfoNCE of each query against its key and a queue of negatives.

    Shapes:
        queries: (B, d), keys: (B, d), queue: (K, d).
        returns: scalar, the mean over the B queries (float32 at least).
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"MoCoLoss temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        if queries.ndim != 2 or queries.shape != keys.shape or queue.ndim != 2 or queue.shape[1] != queries.shape[1]:
            raise ValueError(f"MoCoLoss expects queries and keys (B, d) and a queue (K, d), got "
                             f"{tuple(queries.shape)}, {tuple(keys.shape)}, {tuple(queue.shape)}")
        with torch.autocast(device_type=queries.device.type, enabled=False):
            q = F.normalize(at_least_float32(queries), dim=1)
            k = F.normalize(keys.to(q.dtype), dim=1)
            negatives = F.normalize(queue.to(q.dtype), dim=1)
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.t()], dim=1) / self.temperature
            return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
