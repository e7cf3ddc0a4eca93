"""Noise-contrastive estimation over a memory bank (Wu et al. 2018, "NCE"; lemniscate's NCECriterion).

The n-way softmax of Eq. 2 is approximated by binary classification of data against noise. With
K noise entries drawn uniformly (P_n = 1/n) and a normalising constant Z held fixed,

    P(i | f)  = exp(v_i . f / tau) / Z
    h(i, f)   = P(i | f) / (P(i | f) + K P_n + eps)
    loss      = -1/B sum_b [ log h(index_b, f_b) + sum_{j in noise_b} log(K P_n / (P(j | f_b) + K P_n + eps)) ]

exactly as lemniscate's ``NCECriterion`` (eps = 1e-7), evaluated in log-sigmoid form:
log h = logsigmoid(log P - log(K P_n + eps)), and likewise for the noise terms. Z is estimated once, from the first batch, by
``estimate_nce_z`` (lemniscate's ``NCEFunction``: n x the mean of exp(v . f / tau) over the batch's
positive and noise entries) and is then a constant of the run.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .precision import at_least_float32


def _scores(features, index, bank, noise_index, temperature):
    """(B, 1 + K) similarities / tau: column 0 the instance's own entry, then its noise entries."""
    f = at_least_float32(features)
    entries = torch.cat([index[:, None], noise_index], dim=1)                     # (B, 1 + K)
    weights = bank.to(f.dtype)[entries]                                           # (B, 1 + K, d)
    return torch.einsum("bkd,bd->bk", weights, f) / temperature


@torch.no_grad()
def estimate_nce_z(features: torch.Tensor, index: torch.Tensor, bank: torch.Tensor, noise_index: torch.Tensor,
                   temperature: float) -> float:
    """Z = n * mean over the batch of exp(v_j . f / tau), j in {index_b} and noise_b (lemniscate)."""
    with torch.autocast(device_type=features.device.type, enabled=False):
        scores = _scores(features, index, bank, noise_index, temperature)
        return float(scores.double().exp().mean().item() * bank.shape[0])


class NCELoss(nn.Module):
    """Noise-contrastive estimation loss (see module doc).

    Shapes:
        features: (B, d) L2-normalised embeddings; index: (B,) their bank rows.
        bank: (n, d) memorised features (no gradient); noise_index: (B, K) noise rows per instance.
        z: the fixed normalising constant (``estimate_nce_z``), a float or a 0-d tensor.
        returns: scalar, in the features' precision (float32 at least).
    """

    def __init__(self, temperature: float = 0.1, eps: float = 1e-7):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"NCELoss temperature must be > 0, got {temperature!r}")
        self.temperature, self.eps = float(temperature), float(eps)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, eps={self.eps}"

    def forward(self, features: torch.Tensor, index: torch.Tensor, bank: torch.Tensor, noise_index: torch.Tensor,
                z) -> torch.Tensor:
        return self.loss_and_partition_ratio(features, index, bank, noise_index, z)[0]

    def loss_and_partition_ratio(self, features, index, bank, noise_index, z) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the loss, this batch's partition estimate over z: n x mean of P(j | f) over the batch's own and noise
        entries, 0-d float64 without gradient; 1 while the fixed z still normalises the softmax)."""
        if noise_index.ndim != 2 or noise_index.shape[0] != features.shape[0]:
            raise ValueError(f"NCELoss expects noise_index (B, K) for B={features.shape[0]}, got "
                             f"{tuple(noise_index.shape)}")
        if not isinstance(z, torch.Tensor) and not z > 0:
            raise ValueError(f"NCELoss needs a positive normalising constant z, got {z!r}")
        n, k = bank.shape[0], noise_index.shape[1]
        with torch.autocast(device_type=features.device.type, enabled=False):
            scores = _scores(features, index, bank, noise_index, self.temperature)
            # z may be a tensor on the device (a method's buffer): no host round trip per step
            log_z = torch.as_tensor(z, dtype=torch.float64, device=scores.device).log().to(scores.dtype)
            log_p = scores - log_z                                                              # log P(j | f)
            noise_mass = k / n                                                                   # K P_n
            logit = log_p - math.log(noise_mass + self.eps)                                      # log h / (1 - h)
            data_term = F.logsigmoid(logit[:, 0])
            # lemniscate's 1 - h has K P_n (without eps) on top: a constant k log(K P_n / (K P_n + eps))
            noise_term = F.logsigmoid(-logit[:, 1:]).sum(dim=1) + k * math.log(noise_mass / (noise_mass + self.eps))
            return -(data_term + noise_term).mean(), log_p.detach().double().exp().mean() * n
