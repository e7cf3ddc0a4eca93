"""Triplet loss on the batch's two views (the paper's "Triplet" 57.5 and "Triplet (hard)" 78.4 rows):
positives are the other view of the same instance, negatives a random or the closest other instance."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..checks import require_positive
from ..losses import TripletLoss
from ..ops.distributed import world
from .base import Method


@dataclass
class TripletConfig:
    """Triplet loss over the batch's two views (methods triplet and triplet_hard share these settings)."""

    margin: float = 0.5  # m of max(0, d(a, p) - d(a, n) + m) (paper Section 4.1: 0.5)

    def check(self, prefix: str) -> None:
        require_positive(prefix, self, "margin")


class Triplet(Method):
    views = 2
    negatives = "random"
    Config = TripletConfig
    config_section = "triplet"   # triplet_hard reads method.triplet too

    def __init__(self, encoder: nn.Module, margin: float = 0.5):
        super().__init__(encoder)
        # under torchrun the candidates of every anchor are the whole global batch
        self.loss = TripletLoss(margin, self.negatives, gather_distributed=world()[1] > 1)

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        return cls(encoder, cls.settings(cfg).margin)

    def training_step(self, views, index):
        """The loss, and (reported) the mean gap d(a, p) - d(a, n) over the anchors and the share of anchors
        whose hinge is active (gap > -margin): a collapsed embedding sits at gap 0, every triplet active."""
        z = self.embed(views)                                  # (2, B, d)
        gaps = self.loss.gaps(z[0], z[1])                      # (2B,)
        return {"loss": self.loss.hinge(gaps), "triplet_gap": gaps.detach().mean(),
                "triplet_active": (gaps.detach() > -self.loss.margin).float().mean()}


class TripletHard(Triplet):
    """Online batch-hard negative mining (Hermans et al. 2017)."""

    negatives = "hard"
