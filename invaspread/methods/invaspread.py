"""The paper's method: a softmax over the batch's real-time instance features (Section 3.2, Eq. 3-7).

Both views of every instance go through the encoder in one pass; ``InvaSpreadLoss`` pulls the two
views of an instance together and spreads all other instances apart. With
``loss.positive=augmentation_or_neighbour`` (the paper's CUB-200 option, Section 4.2) the second
view of an instance is, at random, an augmentation of itself or of its nearest neighbour in the
current backbone (pool5) feature space, re-mined at the start of every epoch.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..losses import InvaSpreadLoss, build_loss
from ..ops import cosine_topk
from .base import Method


def nearest_neighbour_positives(features: torch.Tensor, generator: torch.Generator,
                                chunk_size: int = 4096) -> torch.Tensor:
    """The positive of instance i is, with probability 1/2, its own second view, else (an augmented
    view of) its nearest other instance by cosine similarity.

    features: (N, D), e.g. pool5 features of the non-augmented training images. Returns (N,) int64 on
    the CPU; ``generator`` (CPU) draws the coin flips.
    """
    _, nearest = cosine_topk(features, None, 1, chunk_size=chunk_size)
    own = torch.arange(features.shape[0])
    use_neighbour = torch.rand(features.shape[0], generator=generator) < 0.5
    return torch.where(use_neighbour, nearest[:, 0].cpu(), own)


class InvaSpread(Method):
    views = 2

    def __init__(self, encoder: nn.Module, loss: InvaSpreadLoss, neighbour_positives: bool = False, seed: int = 0):
        super().__init__(encoder)
        self.loss = loss
        self.neighbour_positives, self.seed = neighbour_positives, seed
        self._positive_index: Optional[torch.Tensor] = None

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        return cls(encoder, build_loss(cfg.loss), cfg.loss.positive == "augmentation_or_neighbour", cfg.train.seed)

    def training_step(self, views, index):
        z = self.embed(views)                                  # (2, B, d)
        return self.loss(z[0], z[1])

    def on_epoch_start(self, epoch, train_features):
        if self.neighbour_positives:
            generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._positive_index = nearest_neighbour_positives(train_features(True), generator)

    def second_view_index(self):
        return self._positive_index
