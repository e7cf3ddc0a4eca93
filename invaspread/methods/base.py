"""The one base class of the compared systems, and its contract with the trainer.

A method is one file: a ``Method`` subclass and, beside it, its settings dataclass ``Config`` (keys
``method.NAME.*``; ``Config.check(prefix)`` raises a one-line ``ConfigError`` for a bad value). It is found by name
in ``invaspread.methods.registry()``: the built-ins of ``METHODS`` plus every entry point of the group
``invaspread.methods`` (README "Your own method"). It owns the encoder (``EmbeddingNet``: image -> L2-normalised
embedding) *and its own state* -- classifier weights, memory banks, queues, target networks are parameters,
buffers or sub-modules of the method -- so the trainer checkpoints ``method.state_dict()`` without knowing which
method it runs, and a resumed run continues with exactly the state it stopped with.

The trainer's contract::

    method = Cls.from_config(cfg, encoder, num_instances)
    optimizer = SGD(method.parameter_groups())          # groups may carry their own momentum, weight decay, lr_scale
    per epoch (1-based):
        method.on_epoch_start(epoch, train_features)     # every rank; may embed the un-augmented training set
        every tensor of method.epoch_state() <- rank 0's (torchrun: one clustering / mining / plan for all)
        optimizer forgets the state of method.reinitialised_parameters()
        for views, index in batches.epoch(seed, epoch, method.views, method.epoch_plan()):
            loss = method(views, index)                  # training_step: views (V, B, 3, H, W), index (B,)
            loss.backward(); optimizer.step()
            method.after_step(step, total_steps)         # banks, queues, EMA targets (global step, planned total)

``training_step`` may instead return a dict, the loss under ``"loss"``: its other 0-d tensors are reported
(averaged over the epoch into ``metrics.jsonl`` and TensorBoard under their names), and the whole dict, detached,
comes back as ``after_step(step, total_steps, outputs)`` (MoCo's keys enter its queue so; ``engine.step``).

``index`` holds instance ids, or, when the method planned the epoch (``epoch_plan``), row ids of its plan.
Everything a method draws at random per epoch comes from ``epoch_generator(seed, epoch, salt)``, so a resumed run
repeats an uninterrupted one. Which features ``eval``, ``embed`` and ``index`` read is ``eval.features``; ``auto``
takes the method's ``eval_features`` ("embedding": the head's output; "pooled": the backbone's pooled features).
"""

from __future__ import annotations

import copy
from typing import Callable, List, Optional

import torch
from torch import nn


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """The one seed formula of the project: the random draws of ``epoch`` (1-based) of a run seeded ``seed`` are
    the same in a resumed run as in an uninterrupted one. Salt 0 is the batches' (shuffle, augmentation); a
    method takes salts >= 1 for its own independent draws (clusterings, plans, initialisations)."""
    return (int(seed) * 1_000_003 + int(epoch) + int(salt) * 2_147_483_647) % (2 ** 63)


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, salt))


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum x target + (1 - momentum) x online, parameter by parameter (MoCo's key encoder, BYOL's
    target). Buffers (BatchNorm statistics) are not averaged: the target keeps its own, from its own forwards.
    One fused update over all parameters (``torch._foreach_*``: one kernel per op on CUDA, not one per tensor),
    the same arithmetic as the per-tensor ``t.mul_(m).add_(o, alpha=1 - m)``."""
    targets = list(target.parameters())
    onlines = [o.detach() for o in online.parameters()]
    if len(targets) != len(onlines):
        raise ValueError(f"ema_update: the target has {len(targets)} parameters, the online network {len(onlines)}")
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, onlines, alpha=1 - momentum)


# what a method's ``eval_features`` may name (``eval.features`` adds "auto": the method's choice)
EVAL_FEATURES = ("embedding", "pooled")


class Method(nn.Module):
    """Base of every method in ``invaspread.methods.METHODS``.

    Class attributes: ``views`` (augmented views per instance in a batch), ``trainable`` (False for
    a method that only evaluates the network as built), ``Config`` (its settings dataclass, or None),
    ``config_section`` (the section of ``method`` holding them when not the registry name: methods that share
    settings), ``eval_features`` (what ``eval.features=auto`` reads: "embedding" or "pooled"),
    ``separate_views`` (``embed`` forwards each view in its own pass, so BatchNorm normalises every view by its
    own batch statistics, as SimCLR's and BYOL's authors' code does; False: all V x B images in one pass).
    """

    views: int = 2
    trainable: bool = True
    Config: Optional[type] = None
    config_section: Optional[str] = None
    eval_features: str = "embedding"
    separate_views: bool = False

    @classmethod
    def settings_section(cls, name: str) -> str:
        return cls.config_section or name

    @classmethod
    def settings(cls, cfg, name: Optional[str] = None):
        """This method's ``Config`` instance in a resolved config (``cfg.method.<section>``)."""
        return getattr(cfg.method, cls.settings_section(name or cfg.method.name))

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
        return [m for net in self.networks() for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def momentum_copy(self, network: nn.Module) -> nn.Module:
        """A frozen copy of ``network`` to assign to an attribute (MoCo's key encoder, BYOL's target): no gradient,
        updated by ``ema_update`` in ``after_step``; saved in the checkpoint with the method's state, and given the
        encoder's memory format, ``torch.compile`` and BatchNorm handling by the trainer (``networks``)."""
        target = copy.deepcopy(network)
        target.requires_grad_(False)
        target.is_momentum_copy = True
        return target

    def networks(self) -> List[nn.Module]:
        """The encoder and every ``momentum_copy`` of the method: what the trainer converts to channels_last and
        compiles, and whose BatchNorm layers ``frozen_bn`` freezes."""
        return [self.encoder] + [m for m in self.children() if getattr(m, "is_momentum_copy", False)]

    def embed(self, views: torch.Tensor, normalized: bool = True, network: Optional[nn.Module] = None) -> torch.Tensor:
        """(V, B, 3, H, W) -> (V, B, d): all V x B images in one forward pass, so BatchNorm sees every
        view of the batch together (with ``bn_groups`` > 1: G chunks, see ``configure_forward``).
        ``normalized=False``: the embedding layer's output before its L2 normalisation; ``network``: another of
        ``networks()`` than the encoder (a momentum copy). With ``separate_views``: one pass per view."""
        if self.separate_views and views.shape[0] > 1:
            return torch.cat([self.embed(views[i:i + 1], normalized, network) for i in range(views.shape[0])])
        v, b = views.shape[:2]
        x = views.reshape(v * b, *views.shape[2:]).contiguous(memory_format=self.input_memory_format)
        network = self.encoder if network is None else network
        forward = network if normalized else network.unnormalized
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

    def training_step(self, views: torch.Tensor, index: torch.Tensor):
        """The scalar loss of one batch: views (V, B, 3, H, W) of the instances ``index`` (B,) int64; or a dict
        with the loss under ``"loss"`` and named scalars to report and tensors for ``after_step``."""
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def forward(self, views: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``training_step``: what ``DistributedDataParallel(method)(views, index)`` runs."""
        return self.training_step(views, index)

    def after_step(self, step: int, total_steps: int, outputs: Optional[dict] = None) -> None:
        """Called after every optimizer step (memory banks, queues, EMA targets). ``step``: optimizer steps done in
        the run, this one included (1-based, counted across resumes: saved in the checkpoint); ``total_steps``:
        the steps the run plans in all (``train.epochs`` x steps per epoch; extending a run raises it from the
        resumed epoch on, as it stretches a cosine lr schedule); ``outputs``: the step's dict, detached, for a
        method whose ``training_step`` returns one (only then is it passed)."""

    def on_epoch_start(self, epoch: int, train_features: Callable[[bool], torch.Tensor]) -> None:
        """Called before every epoch (1-based). ``train_features(pooled, network=None)`` embeds the un-augmented
        training set in eval mode: (N, d) embeddings, or (N, D) backbone features when pooled; with ``network``
        (a module over the same images, e.g. ``ops.rmac.RMAC`` of the backbone) whatever that module returns."""

    def epoch_plan(self) -> Optional[torch.Tensor]:
        """(L, V) int64, or None for "every instance once, in a random order, all V views of it".

        Row l is the l-th item of the epoch, in training order: view v of it is an augmentation of image
        ``plan[l, v]`` (DeepCluster: images sampled uniformly over clusters, V = 1; MOM: mined
        (anchor, positive, negative) tuples, V = 3; InvaSpread's neighbour positives: (instance, its positive)).
        The batches then carry row ids as ``index``. Drawn in ``on_epoch_start`` from ``epoch_generator``, so
        resume stays exact; its shape must not depend on the rank (rank 0's plan is broadcast)."""
        return None

    def epoch_state(self) -> List[torch.Tensor]:
        """The tensors every rank must hold identically after ``on_epoch_start``: rank 0's are broadcast to the
        others in place. By default the method's checkpointed state (banks, labels, pools, classifier) and the
        plan; a method that derives other tensors in ``on_epoch_start`` adds them (MOM's tuple weights)."""
        state = [t for name, t in self.state_dict(keep_vars=True).items() if not name.startswith("encoder.")]
        plan = self.epoch_plan()
        return [t.data if isinstance(t, nn.Parameter) else t for t in state] + ([] if plan is None else [plan])

    def parameter_groups(self) -> list:
        """``torch.optim`` parameter groups: ``[{"params": [...], **settings}]``; a group's settings (momentum,
        weight_decay, ...) replace the ``optim.*`` ones for its parameters; the lr schedule applies to all, times a
        group's ``lr_scale`` where it has one (BYOL's faster predictor)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]   # not a momentum copy's

    def groups_with_own_settings(self, module: nn.Module, **settings) -> list:
        """``parameter_groups`` for a sub-module trained with its own ``settings`` (DeepCluster's classifier,
        BYOL's predictor): [the method's other trainable parameters, ``module``'s with ``settings``]."""
        own = set(map(id, module.parameters()))
        return [{"params": [p for p in self.parameters() if p.requires_grad and id(p) not in own]},
                {"params": list(module.parameters()), **settings}]

    def reinitialised_parameters(self) -> list:
        """Parameters that ``on_epoch_start`` just re-initialised (DeepCluster's classifier): the trainer
        drops their optimizer state (momentum), as a fresh optimizer would have none."""
        return []

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, num_instances: int) -> "Method":
        """Build from a resolved ``Config`` (each method reads its own settings)."""
        raise NotImplementedError
