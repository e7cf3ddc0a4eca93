"""Exemplar CNN (Dosovitskiy et al. 2014, paper Eq. 1): every training instance is its own class.

The method owns W (n x d, one learned row per instance, a ``Parameter`` so it is optimised and
checkpointed with the encoder). Both augmented views of an instance are classified toward its
index with ``ExemplarLoss`` (L2-normalised rows and tau = 0.1 by default; see ``method.exemplar``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import ExemplarLoss
from .base import Method


class Exemplar(Method):
    views = 2

    def __init__(self, encoder: nn.Module, num_instances: int, embedding_dim: int, temperature: float = 0.1,
                 normalize_weights: bool = True, literal: bool = False):
        super().__init__(encoder)
        # unit rows: with normalize_weights their scale is irrelevant, without it they start like the features
        self.weights = nn.Parameter(F.normalize(torch.randn(num_instances, embedding_dim), dim=1))
        self.loss = ExemplarLoss(temperature, normalize_weights, literal)

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        c = cfg.method.exemplar
        return cls(encoder, num_instances, cfg.model.embedding_dim, c.temperature, c.normalize_weights, c.literal)

    def training_step(self, views, index):
        z = self.embed(views)                                  # (V, B, d)
        targets = index.repeat(z.shape[0])                     # view-major, like z.flatten(0, 1)
        return self.loss(z.flatten(0, 1), targets, self.weights)
