"""The paper's method: a softmax over the batch's real-time instance features (Section 3.2, Eq. 3-7).

Both views of every instance go through the encoder in one pass; ``InvaSpreadLoss`` pulls the two
views of an instance together and spreads all other instances apart. With
``method.invaspread.positive=augmentation_or_neighbour`` (the paper's CUB-200 option, Section 4.2) the
second view of an instance is, at random, an augmentation of itself or of its nearest neighbour in the
current backbone (pool5) feature space, re-mined at the start of every epoch (the epoch's plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import nn

from ..checks import require, require_choice, require_temperature
from ..losses import InvaSpreadLoss
from ..ops import cosine_topk
from ..ops.distributed import world
from .base import Method, epoch_generator


@dataclass
class InvaSpreadConfig:
    """The InvaSpread loss (Eq. 3-7) and its options (``method.invaspread.*``)."""

    # runs saved when these settings were a top-level ``loss`` section: read under the new name (config.set_key)
    moved_from: ClassVar[str] = "loss"

    temperature: float = 0.1  # tau of Eq. 3-4 (paper: 0.1)
    variant: str = "reference"  # "reference" (released code) | "paper" (Eq. 3-7 literally)
    stop_gradient: bool = True  # detach the key side of every similarity, as the released code does
    positive: str = "augmentation"  # "augmentation" | "augmentation_or_neighbour" (the paper's CUB-200 option, Sec. 4.2)
    negatives: str = "all"  # "all" | "hard" | "easy" | "released": Table 8's sampling (README "Seen testing categories (Section 4.1)")
    negative_fraction: float = 0.5  # share of negatives kept by "hard" / "easy" / "released"

    def check(self, prefix: str) -> None:
        require_temperature(f"{prefix}.temperature", self.temperature)
        require_choice(prefix, self, "variant", ("reference", "paper"))
        require_choice(prefix, self, "positive", ("augmentation", "augmentation_or_neighbour"))
        require_choice(prefix, self, "negatives", ("all", "hard", "easy", "released"))
        require(0 < self.negative_fraction <= 1, f"{prefix}.negative_fraction", self.negative_fraction,
                "0 < value <= 1")
        require(self.negatives == "all" or self.variant == "reference", f"{prefix}.negatives", self.negatives,
                f"all with {prefix}.variant={self.variant} (the sampled negatives need variant=reference)")

    def build_loss(self) -> InvaSpreadLoss:
        # under torchrun every rank's anchors meet the keys of all ranks: the negatives of the whole global batch
        return InvaSpreadLoss(self.temperature, self.variant, self.stop_gradient, self.negatives,
                              self.negative_fraction, gather_distributed=world()[1] > 1)


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
    Config = InvaSpreadConfig

    def __init__(self, encoder: nn.Module, loss: InvaSpreadLoss, neighbour_positives: bool = False, seed: int = 0):
        super().__init__(encoder)
        self.loss = loss
        self.neighbour_positives, self.seed = neighbour_positives, seed
        self._plan: Optional[torch.Tensor] = None

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        c = cls.settings(cfg)
        return cls(encoder, c.build_loss(), c.positive == "augmentation_or_neighbour", cfg.train.seed)

    def training_step(self, views, index):
        z = self.embed(views)                                  # (2, B, d)
        return self.loss(z[0], z[1])

    def on_epoch_start(self, epoch, train_features):
        if self.neighbour_positives:   # plan (N, 2): every instance once, in a random order, with its positive
            positive = nearest_neighbour_positives(train_features(True), epoch_generator(self.seed, epoch, salt=1))
            order = torch.randperm(positive.shape[0], generator=epoch_generator(self.seed, epoch, salt=2))
            self._plan = torch.stack([order, positive[order]], dim=1)

    def epoch_plan(self):
        return self._plan
