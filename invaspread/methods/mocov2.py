"""MoCo v2 (Chen, Fan, Girshick, He 2020; MoCo: He et al., CVPR 2020): a query view through the encoder, a key
view through its momentum copy, InfoNCE against the key and a queue of earlier keys (``MoCoLoss``).

After each step (``after_step``) the key encoder moves toward the encoder, k <- m k + (1 - m) q, and the step's
keys (every rank's) replace the oldest queue rows. Queue, pointer and key encoder are state of the method:
checkpointed, so a resumed run continues with the same negatives.

The authors' settings (MoCo v2 on ImageNet): ResNet-50, MLP head 2048 -> 128 (``model.head=mlp``), tau 0.2,
K 65536, m 0.999, lr 0.03 x batch/256, cosine schedule, 200 epochs, blur in the augmentation. MoCo's own CIFAR-10
demo (colab in facebookresearch/moco): ResNet-18, K 4096, m 0.99, tau 0.1, lr 0.06, batch 512, 200 epochs.
Named differences: no shuffled BatchNorm for the keys (MoCo shuffles the key batch across GPUs, its CIFAR demo
splits it in 8 BatchNorm groups; here the key encoder's BatchNorm sees the whole key batch); the loss is MoCo's
asymmetric one (query view 1, key view 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import require, require_positive, require_temperature
from ..losses import MoCoLoss
from ..ops.distributed import gather_rows
from .base import Method, ema_update


@dataclass
class MoCoV2Config:
    """MoCo v2: momentum key encoder and a queue of negatives."""

    temperature: float = 0.2  # tau of InfoNCE (MoCo v2: 0.2; MoCo's CIFAR-10 demo: 0.1)
    queue: int = 4096  # K negative keys kept (MoCo v2 ImageNet: 65536; CIFAR-10 demo: 4096)
    momentum: float = 0.99  # key encoder k <- m k + (1 - m) q (MoCo v2 ImageNet: 0.999; CIFAR-10 demo: 0.99)

    def check(self, prefix: str) -> None:
        require_temperature(f"{prefix}.temperature", self.temperature)
        require_positive(prefix, self, "queue")
        require(0 <= self.momentum < 1, f"{prefix}.momentum", self.momentum, "0 <= momentum < 1")


class MoCoV2(Method):
    views = 2
    Config = MoCoV2Config
    eval_features = "pooled"

    def __init__(self, encoder, embedding_dim: int, temperature: float = 0.2, queue: int = 4096,
                 momentum: float = 0.99):
        super().__init__(encoder)
        self.key_encoder = self.momentum_copy(encoder)
        self.loss, self.momentum = MoCoLoss(temperature), float(momentum)
        self.register_buffer("queue", F.normalize(torch.randn(queue, embedding_dim), dim=1))   # (K, d)
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        c = cls.settings(cfg)
        return cls(encoder, cfg.model.embedding_dim, c.temperature, c.queue, c.momentum)

    def training_step(self, views, index):
        q = self.embed(views[:1])[0]                                          # (B, d) queries, view 1
        with torch.no_grad():                                                 # keys: MoCo's stop-gradient
            k = self.embed(views[1:], network=self.key_encoder)[0]            # (B, d) keys, view 2
        return {"loss": self.loss(q, k, self.queue), "keys": k}              # the keys enter the queue after the step

    @torch.no_grad()
    def after_step(self, step, total_steps, outputs):
        ema_update(self.key_encoder, self.encoder, self.momentum)
        keys = gather_rows(outputs["keys"], with_grad=False)[0].to(self.queue.dtype)   # every rank's, rank order
        rows = (self.queue_pointer + torch.arange(keys.shape[0], device=keys.device)) % self.queue.shape[0]
        self.queue[rows] = F.normalize(keys, dim=1)
        self.queue_pointer.copy_((self.queue_pointer + keys.shape[0]) % self.queue.shape[0])
