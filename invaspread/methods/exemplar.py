"""Exemplar CNN (Dosovitskiy et al. 2014, paper Eq. 1): every training instance is its own class.

The method owns W (n x d, one learned row per instance, a ``Parameter`` so it is optimised and
checkpointed with the encoder). Both augmented views of an instance are classified toward its
index with ``ExemplarLoss`` (L2-normalised rows and tau = 0.1 by default; see ``method.exemplar``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import require_temperature
from ..losses import ExemplarLoss
from .base import Method


@dataclass
class ExemplarConfig:
    """Exemplar CNN (Dosovitskiy et al.; paper Eq. 1): a learned weight row per training instance."""

    temperature: float = 0.1  # softmax temperature over the n instance weights
    normalize_weights: bool = True  # L2-normalise the rows of W (cosine classifier); false: plain w_i . f logits
    literal: bool = False  # Eq. 1 as printed: exp(w_i . f) over raw rows, no temperature (ignores the two keys above)

    def check(self, prefix: str) -> None:
        require_temperature(f"{prefix}.temperature", self.temperature)


class Exemplar(Method):
    views = 2
    Config = ExemplarConfig

    def __init__(self, encoder: nn.Module, num_instances: int, embedding_dim: int, temperature: float = 0.1,
                 normalize_weights: bool = True, literal: bool = False):
        super().__init__(encoder)
        # unit rows: with normalize_weights their scale is irrelevant, without it they start like the features
        self.weights = nn.Parameter(F.normalize(torch.randn(num_instances, embedding_dim), dim=1))
        self.loss = ExemplarLoss(temperature, normalize_weights, literal)

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        c = cls.settings(cfg)
        return cls(encoder, num_instances, cfg.model.embedding_dim, c.temperature, c.normalize_weights, c.literal)

    def training_step(self, views, index):
        z = self.embed(views)                                  # (V, B, d)
        targets = index.repeat(z.shape[0])                     # view-major, like z.flatten(0, 1)
        return self.loss(z.flatten(0, 1), targets, self.weights)
