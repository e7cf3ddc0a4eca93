"""SimCLR (Chen, Kornblith, Norouzi, Hinton, ICML 2020): two augmented views per instance, an MLP projector
(``model.head=mlp``) and NT-Xent over the batch's 2N views (``NTXentLoss``), every other view a negative.

The authors' CIFAR-10 settings (SimCLR Appendix B.9): ResNet-50 with a 3x3 stem, projector 2048 -> 128, tau 0.5,
batch 512-1024, LARS with lr 1.0-1.5 and 500-1000 epochs, linear evaluation on the pooled features. This
harness: the configured backbone (ResNet-18 in ``configs/simclr_cifar10.yaml``), SGD instead of LARS, the
released InvaSpread augmentations (no blur, as SimCLR's CIFAR-10 runs); kNN on the pooled features.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import require_temperature
from ..losses import NTXentLoss
from ..ops.distributed import world
from .base import Method


@dataclass
class SimCLRConfig:
    """SimCLR's NT-Xent loss."""

    temperature: float = 0.5  # tau of NT-Xent (SimCLR's CIFAR-10 runs: 0.5)
    separate_views: bool = False  # forward each view alone (BatchNorm statistics per view, the authors' code); false = both views in one pass

    def check(self, prefix: str) -> None:
        require_temperature(f"{prefix}.temperature", self.temperature)


class SimCLR(Method):
    views = 2
    Config = SimCLRConfig
    eval_features = "pooled"   # SimCLR evaluates the representation before the projector

    def __init__(self, encoder, temperature: float = 0.5, separate_views: bool = False):
        super().__init__(encoder)
        self.separate_views = bool(separate_views)
        # under torchrun every rank's anchors meet the views of all ranks (gathered with gradient)
        self.loss = NTXentLoss(temperature, gather_distributed=world()[1] > 1)

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        c = cls.settings(cfg)
        return cls(encoder, c.temperature, c.separate_views)

    def training_step(self, views, index):
        z = self.embed(views)                                  # (2, B, d)
        return self.loss(z[0], z[1])
