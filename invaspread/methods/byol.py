"""BYOL (Grill et al., NeurIPS 2020): the online network (encoder with an MLP projector, ``model.head=mlp_bn``,
then a predictor) regresses the projection of the other view by a target network, the encoder's exponential
moving average; no negatives (``BYOLLoss``, symmetrised over the two views: Eq. 2-3).

The target's momentum follows BYOL's cosine schedule over the run's planned steps (``after_step``):
tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, from tau_base at the first step to 1 at the last.

The authors' settings (ImageNet): ResNet-50, projector and predictor 4096 -> 256 with BatchNorm, tau_base 0.996,
LARS lr 0.2 x batch/256, weight decay 1.5e-6, 300-1000 epochs. Named differences: SGD instead of LARS; the
configured backbone (ResNet-18 with a 3x3 stem in ``configs/byol_cifar10.yaml``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import require, require_positive
from ..losses import BYOLLoss
from ..models import make_head
from .base import Method, ema_update


@dataclass
class BYOLConfig:
    """BYOL: predictor and the target's momentum."""

    momentum: float = 0.996  # tau_base of the target's cosine momentum schedule (BYOL: 0.996)
    predictor_hidden: int = 4096  # hidden width of the predictor MLP (BYOL: 4096)
    # SimSiam keeps the predictor's lr fixed and Tian et al. 2021 find a faster predictor helps; measured in
    # benchmarks/byol_small_scale.py
    predictor_lr_scale: float = 1.0  # the predictor's lr = this x the scheduled lr (BYOL: 1, one optimizer for all)
    predictor_last_bias: bool = True  # the predictor's last Linear has a bias (the authors' has none: false)
    separate_views: bool = False  # forward each view alone (BatchNorm statistics per view, the authors' code); false = both views in one pass

    def check(self, prefix: str) -> None:
        require(0 <= self.momentum <= 1, f"{prefix}.momentum", self.momentum, "0 <= momentum <= 1")
        require_positive(prefix, self, "predictor_hidden")
        require_positive(prefix, self, "predictor_lr_scale")


def target_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule: ``base`` before the first step, 1 at the last (``step`` 0..``total_steps``)."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step / max(total_steps, 1), 1.0)) + 1) / 2


class BYOL(Method):
    views = 2
    Config = BYOLConfig
    eval_features = "pooled"

    def __init__(self, encoder, embedding_dim: int, momentum: float = 0.996, predictor_hidden: int = 4096,
                 predictor_lr_scale: float = 1.0, predictor_last_bias: bool = True, separate_views: bool = False):
        super().__init__(encoder)
        self.separate_views = bool(separate_views)
        self.target = self.momentum_copy(encoder)
        self.predictor = make_head("mlp_bn", embedding_dim, embedding_dim, predictor_hidden, predictor_last_bias)
        self.loss, self.base_momentum = BYOLLoss(), float(momentum)
        self.predictor_lr_scale = float(predictor_lr_scale)

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        c = cls.settings(cfg)
        return cls(encoder, cfg.model.embedding_dim, c.momentum, c.predictor_hidden, c.predictor_lr_scale,
                   c.predictor_last_bias, c.separate_views)

    def parameter_groups(self):
        if self.predictor_lr_scale == 1:   # one group, as BYOL runs saved before the option have in their checkpoint
            return super().parameter_groups()
        return self.groups_with_own_settings(self.predictor, lr_scale=self.predictor_lr_scale)

    def training_step(self, views, index):
        v, b = views.shape[:2]
        projections = self.embed(views, normalized=False)                      # (2, B, d) online
        if self.separate_views:   # the predictor's BatchNorm, too, sees one view at a time
            predictions = torch.stack([self.predictor(projections[i]) for i in range(v)])
        else:
            predictions = self.predictor(projections.flatten(0, 1)).view(v, b, -1)
        with torch.no_grad():                                                  # targets: BYOL's stop-gradient
            targets = self.embed(views, normalized=False, network=self.target)  # (2, B, d)
        loss = self.loss(predictions[0], targets[1]) + self.loss(predictions[1], targets[0])
        with torch.no_grad():   # reported (metrics.jsonl): how close the predictions are, whether targets collapse
            z = F.normalize(targets.flatten(0, 1).float(), dim=1)
            return {"loss": loss,
                    "cosine": 1 - loss.detach() / 4,   # the mean cos(p, z) of both directions: loss = 4 - 2 (c12 + c21)
                    # per-dimension std of the normalised targets x sqrt(d): about 1 spread over the sphere, 0 collapsed
                    "target_spread": z.std(0).mean() * z.shape[1] ** 0.5}

    def after_step(self, step, total_steps, outputs=None):
        ema_update(self.target, self.encoder, target_momentum(self.base_momentum, step, total_steps))
