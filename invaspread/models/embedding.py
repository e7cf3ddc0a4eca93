"""Backbone + linear embedding head + L2 normalisation (paper Section 3: ||f_i||_2 = 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _linear(feature_dim: int, hidden: int, last: nn.Linear) -> nn.Module:
    return last


def _mlp(feature_dim: int, hidden: int, last: nn.Linear) -> nn.Module:
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), last)


def _mlp_bn(feature_dim: int, hidden: int, last: nn.Linear) -> nn.Module:
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), last)


# model.head -> function(feature_dim, hidden, last Linear) -> head; the config's choices of model.head
HEADS = {"linear": _linear, "mlp": _mlp, "mlp_bn": _mlp_bn}


def make_head(kind: str, feature_dim: int, embedding_dim: int, hidden: int = 2048, last_bias: bool = True) -> nn.Module:
    """``model.head``: "linear" (the paper's fc layer), "mlp" (Linear-ReLU-Linear: the projector of SimCLR and
    MoCo v2), "mlp_bn" (Linear-BatchNorm-ReLU-Linear: BYOL's projector). ``last_bias=False``: the last Linear has
    no bias (BYOL's and SimCLR's authors' MLPs)."""
    if kind not in HEADS:
        raise ValueError(f"model.head={kind!r}: expected one of {', '.join(HEADS)}")
    last = nn.Linear(feature_dim if kind == "linear" else hidden, embedding_dim, bias=last_bias)
    return HEADS[kind](feature_dim, hidden, last)


class EmbeddingNet(nn.Module):
    """f_theta: image -> L2-normalised d-dimensional embedding.

    ``forward(x)`` returns (B, embedding_dim) unit vectors; ``pooled(x)`` the backbone's pooled
    features (B, backbone.out_features) before the head, used e.g. for neighbour mining on pool5.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, embedding_dim: int = 128, head: str = "linear",
                 hidden: int = 2048, last_bias: bool = True):
        super().__init__()
        self.backbone = backbone
        self.head = make_head(head, feature_dim, embedding_dim, hidden, last_bias)
        self.embedding_dim = embedding_dim

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def unnormalized(self, x: torch.Tensor) -> torch.Tensor:
        """(B, embedding_dim): the embedding layer's output before L2 normalisation (DeepCluster's classifier
        reads it)."""
        return self.head(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(x)).float(), dim=1)
