"""Memory-bank methods of Wu et al. 2018 (lemniscate): NPSoftmax (paper Eq. 2) and NCE.

Each training instance has a memorised feature v_i in a ``MemoryBank`` (a registered buffer of the
method: checkpointed, restored on resume). One augmented view per instance and step, as lemniscate's
``cifar.py``. After the step the instance's entries move toward the step's features,

    v_i <- normalise(m v_i + (1 - m) f_i)          (m = 0.5)

which lemniscate does inside its backward pass with the forward's features; here ``after_step``.
Named difference: the bank starts as random unit rows (lemniscate: uniform(-sqrt(3/d), sqrt(3/d))
entries, rows of norm about 1, not normalised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import require, require_positive, require_temperature
from ..losses import NCELoss, NPSoftmaxLoss, estimate_nce_z
from ..ops.distributed import gather_rows, mean_over_ranks
from .base import Method


@dataclass
class NPSoftmaxConfig:
    """Non-parametric softmax over a memory bank (Wu et al. 2018; paper Eq. 2)."""

    temperature: float = 0.1  # softmax temperature over the n bank entries
    momentum: float = 0.5  # bank update v_i <- normalise(m v_i + (1 - m) f_i)

    def check(self, prefix: str) -> None:
        require_temperature(f"{prefix}.temperature", self.temperature)
        require(0 <= self.momentum < 1, f"{prefix}.momentum", self.momentum, "0 <= momentum < 1")


@dataclass
class NCEConfig(NPSoftmaxConfig):
    """Noise-contrastive estimation over the same memory bank (Wu et al. 2018)."""

    temperature: float = 0.1  # tau of P(i | f) = exp(v_i . f / tau) / Z
    momentum: float = 0.5  # bank update v_i <- normalise(m v_i + (1 - m) f_i)
    noise: int = 4096  # K noise entries drawn uniformly per instance and step

    def check(self, prefix: str) -> None:
        super().check(prefix)
        require_positive(prefix, self, "noise")


class MemoryBank(nn.Module):
    """``features``: (n, d) L2-normalised memorised features, a buffer (no gradient)."""

    def __init__(self, num_instances: int, dim: int, momentum: float = 0.5):
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("features", F.normalize(torch.randn(num_instances, dim), dim=1))

    @torch.no_grad()
    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        """v_i <- normalise(m v_i + (1 - m) f_i) for the rows ``index`` (B,) with ``features`` (B, d)."""
        mixed = self.features[index] * self.momentum + features.detach().to(self.features.dtype) * (1 - self.momentum)
        self.features.index_copy_(0, index, F.normalize(mixed, dim=1))


class _BankMethod(Method):
    views = 1

    def __init__(self, encoder: nn.Module, num_instances: int, embedding_dim: int, momentum: float):
        super().__init__(encoder)
        self.bank = MemoryBank(num_instances, embedding_dim, momentum)
        self._pending: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def after_step(self, step, total_steps, outputs=None):
        # the loss of this step read the bank (its backward needs it unchanged): update only now, with every
        # rank's rows under torchrun, so that the banks stay identical on all ranks
        if self._pending is not None:
            index, features = self._pending
            self.bank.update(gather_rows(index, with_grad=False)[0], gather_rows(features, with_grad=False)[0])
            self._pending = None

    def _features(self, views, index):
        f = self.embed(views)[0]                               # (B, d), one view per instance
        self._pending = (index, f.detach())
        return f


class NPSoftmax(_BankMethod):
    """Non-parametric softmax over all n bank entries (``NPSoftmaxLoss``)."""

    Config = NPSoftmaxConfig

    def __init__(self, encoder, num_instances, embedding_dim, temperature=0.1, momentum=0.5):
        super().__init__(encoder, num_instances, embedding_dim, momentum)
        self.loss = NPSoftmaxLoss(temperature)

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        c = cls.settings(cfg)
        return cls(encoder, num_instances, cfg.model.embedding_dim, c.temperature, c.momentum)

    def training_step(self, views, index):
        return self.loss(self._features(views, index), index, self.bank.features)


class NCE(_BankMethod):
    """Noise-contrastive estimation with ``noise`` uniform noise entries per instance (``NCELoss``).

    ``z`` (a buffer, -1 until set) is the normalising constant, estimated from the first batch.
    """

    Config = NCEConfig

    def __init__(self, encoder, num_instances, embedding_dim, temperature=0.1, momentum=0.5, noise=4096):
        super().__init__(encoder, num_instances, embedding_dim, momentum)
        self.loss = NCELoss(temperature)
        self.noise = int(noise)
        self.register_buffer("z", torch.tensor(-1.0, dtype=torch.float64))
        self._z_known = False  # avoids reading the buffer back from the device on every step

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        c = cls.settings(cfg)
        return cls(encoder, num_instances, cfg.model.embedding_dim, c.temperature, c.momentum, c.noise)

    def training_step(self, views, index):
        f = self._features(views, index)
        bank = self.bank.features
        noise_index = torch.randint(0, bank.shape[0], (f.shape[0], self.noise), device=f.device)   # P_n = 1/n
        if not self._z_known:
            if self.z.item() < 0:  # from the first batch: under torchrun the mean of the ranks' estimates
                self.z.fill_(estimate_nce_z(f, index, bank, noise_index, self.loss.temperature))
                self.z.copy_(mean_over_ranks(self.z))
            self._z_known = True
        # reported: this batch's partition estimate over the run's fixed Z (1 while Z still normalises)
        loss, z_ratio = self.loss.loss_and_partition_ratio(f, index, bank, noise_index, self.z)
        return {"loss": loss, "nce_z_ratio": z_ratio}
