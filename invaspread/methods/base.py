"""The one base class of the compared systems.

A method owns the encoder (``EmbeddingNet``: image -> L2-normalised embedding) *and its own state*:
classifier weights, memory banks, normalising constants are parameters or buffers of the method, so
the trainer optimises ``method.parameters()`` and checkpoints ``method.state_dict()`` without knowing
which method it runs, and a resumed run continues with exactly the state it stopped with.

The trainer optimises ``method.parameter_groups()`` (by default one group: every parameter, with the
``optim.*`` settings; a method may give some parameters settings of their own, e.g. DeepCluster's classifier).

The trainer's contract, per epoch::

    method.on_epoch_start(epoch, train_features)       # may embed the un-augmented training set
    optimizer forgets the state of method.reinitialised_parameters()
    for views, index in batches.epoch(seed, epoch, method.views, method.second_view_index(),
                                      method.epoch_plan()):
        loss = method.training_step(views, index)      # views (V, B, 3, H, W), index (B,)
        loss.backward(); optimizer.step()
        method.after_step()                            # state updates that follow the step (memory banks)

``index`` holds instance ids, or, when the method planned the epoch (``epoch_plan``), row ids of its plan.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A seed for the random draws a method makes at the start of ``epoch`` (clusterings, plans): the same
    in a resumed run as in an uninterrupted one. ``salt`` separates independent uses within an epoch."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(salt)) % (2 ** 63)


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, salt))


class Method(nn.Module):
    """Base of every method in ``invaspread.methods.METHODS``.

    Class attributes: ``views`` (augmented views per instance in a batch), ``trainable`` (False for
    a method that only evaluates the network as built).
    """

    views: int = 2
    trainable: bool = True

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.configure_forward()

    def configure_forward(self, memory_format=torch.contiguous_format, bn_groups: int = 1,
                          frozen_bn: bool = False) -> None:
        """How ``embed`` feeds the encoder (set by the trainer): the input memory format (channels_last on
        CUDA); ``bn_groups`` (``model.bn_groups``): BatchNorm statistics over all V x B images (1), or
        over G equal chunks of them, the running statistics taken from the first chunk only -- what the
        released code's ``DataParallel`` on 4 GPUs does with ``net(cat(v1, v2))`` (G = 4);
        ``frozen_bn`` (``model.frozen_bn``): BatchNorm layers normalise with their (pretrained) running
        statistics and never update them, also in training; their affine weights still train. The trainer
        freezes them by default when fine-tuning (``model.pretrained`` or ``model.init_from``)."""
        self.input_memory_format, self.bn_groups, self.frozen_bn = memory_format, int(bn_groups), bool(frozen_bn)
        self.train(self.training)

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        if mode and getattr(self, "frozen_bn", False):
            for m in self._batchnorms():
                m.eval()
        return self

    def _batchnorms(self):
        return [m for m in self.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def embed(self, views: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """(V, B, 3, H, W) -> (V, B, d): all V x B images in one forward pass, so BatchNorm sees every
        view of the batch together (with ``bn_groups`` > 1: G chunks, see ``configure_forward``).
        ``normalized=False``: the embedding layer's output before its L2 normalisation."""
        v, b = views.shape[:2]
        x = views.reshape(v * b, *views.shape[2:]).contiguous(memory_format=self.input_memory_format)
        forward = self.encoder if normalized else self.encoder.unnormalized
        if self.bn_groups == 1 or not self.training or self.frozen_bn:
            return forward(x).view(v, b, -1)
        if x.shape[0] % self.bn_groups:
            raise ValueError(f"model.bn_groups={self.bn_groups} must divide the {x.shape[0]} images of a step")
        outputs = [forward(chunk) if i == 0 else self._without_running_stats(forward, chunk)
                   for i, chunk in enumerate(x.chunk(self.bn_groups))]
        return torch.cat(outputs).view(v, b, -1)

    def _without_running_stats(self, forward, x: torch.Tensor) -> torch.Tensor:
        """Forward in train mode (batch statistics) while every BatchNorm's running statistics stay put,
        like the replicas on GPUs 1..3 of ``DataParallel``, whose buffer updates are discarded."""
        norms = self._batchnorms()
        saved = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        try:
            return forward(x)
        finally:
            for m, momentum in zip(norms, saved):
                m.momentum = momentum

    def training_step(self, views: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The scalar loss of one batch: views (V, B, 3, H, W) of the instances ``index`` (B,) int64."""
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def forward(self, views: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``training_step``: what ``DistributedDataParallel(method)(views, index)`` runs."""
        return self.training_step(views, index)

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. to write the step's features into a memory bank)."""

    def on_epoch_start(self, epoch: int, train_features: Callable[[bool], torch.Tensor]) -> None:
        """Called before every epoch (1-based). ``train_features(pooled)`` embeds the un-augmented
        training set in eval mode: (N, d) embeddings, or (N, D) backbone features when pooled."""

    def second_view_index(self) -> Optional[torch.Tensor]:
        """(N,) int64: the instance whose image views 2..V of instance i are drawn from; None = i itself."""
        return None

    def epoch_plan(self) -> Optional[torch.Tensor]:
        """(L, V) int64, or None for "every instance once, in a random order, all V views of it".

        Row l is the l-th item of the epoch, in training order: view v of it is an augmentation of image
        ``plan[l, v]`` (DeepCluster: images sampled uniformly over clusters, V = 1; MOM: mined
        (anchor, positive, negative) tuples, V = 3). The batches then carry row ids as ``index``.
        Drawn in ``on_epoch_start`` from generators seeded by (seed, epoch), so resume stays exact."""
        return None

    def parameter_groups(self) -> list:
        """``torch.optim`` parameter groups: ``[{"params": [...], **settings}]``; a group's settings (momentum,
        weight_decay, ...) replace the ``optim.*`` ones for its parameters; the lr schedule applies to all."""
        return [{"params": list(self.parameters())}]

    def reinitialised_parameters(self) -> list:
        """Parameters that ``on_epoch_start`` just re-initialised (DeepCluster's classifier): the trainer
        drops their optimizer state (momentum), as a fresh optimizer would have none."""
        return []

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, num_instances: int) -> "Method":
        """Build from a resolved ``Config`` (each method reads its own settings)."""
        raise NotImplementedError
