"""The one base class of the compared systems.

A method owns the encoder (``EmbeddingNet``: image -> L2-normalised embedding) *and its own state*:
classifier weights, memory banks, normalising constants are parameters or buffers of the method, so
the trainer optimises ``method.parameters()`` and checkpoints ``method.state_dict()`` without knowing
which method it runs, and a resumed run continues with exactly the state it stopped with.

The trainer's contract, per epoch::

    method.on_epoch_start(epoch, train_features)       # may embed the un-augmented training set
    for views, index in batches.epoch(seed, epoch, method.views, method.second_view_index()):
        loss = method.training_step(views, index)      # views (V, B, 3, H, W), index (B,)
        loss.backward(); optimizer.step()
        method.after_step()                            # state updates that follow the step (memory banks)
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


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
        # channels_last on CUDA is set by the trainer; the views arrive as (V, B, C, H, W)
        self.input_memory_format = torch.contiguous_format

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """(V, B, 3, H, W) -> (V, B, d): all V x B images in one forward pass, so BatchNorm sees every
        view of the batch together (as the released code's ``net(cat(v1, v2))``)."""
        v, b = views.shape[:2]
        x = views.reshape(v * b, *views.shape[2:]).contiguous(memory_format=self.input_memory_format)
        return self.encoder(x).view(v, b, -1)

    def training_step(self, views: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The scalar loss of one batch: views (V, B, 3, H, W) of the instances ``index`` (B,) int64."""
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. to write the step's features into a memory bank)."""

    def on_epoch_start(self, epoch: int, train_features: Callable[[bool], torch.Tensor]) -> None:
        """Called before every epoch (1-based). ``train_features(pooled)`` embeds the un-augmented
        training set in eval mode: (N, d) embeddings, or (N, D) backbone features when pooled."""

    def second_view_index(self) -> Optional[torch.Tensor]:
        """(N,) int64: the instance whose image views 2..V of instance i are drawn from; None = i itself."""
        return None

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, num_instances: int) -> "Method":
        """Build from a resolved ``Config`` (each method reads its own settings)."""
        raise NotImplementedError
