"""Models: ``build_model(model_config)`` looks the backbone up in ``BACKBONES``, a plain dict."""

from __future__ import annotations

from .embedding import HEADS, EmbeddingNet, make_head
from .resnet_cifar import CifarResNet
from .timm_nets import TIMM_PREFIX, is_timm_arch, timm_backbone
from .torchvision_nets import PretrainedWeightsUnavailable, inception_v1_backbone, resnet_backbone


def _resnet18_cifar(cfg):
    if cfg.pretrained:
        raise ValueError("model.arch=resnet18_cifar has no pretrained weights; set model.pretrained=false")
    net = CifarResNet((2, 2, 2, 2), width=cfg.width, pool_window=cfg.pool_window)
    return net, net.out_features


# name -> function(model_config) -> (backbone, pooled feature dimension)
BACKBONES = {
    "resnet18_cifar": _resnet18_cifar,
    "resnet18": lambda cfg: resnet_backbone(18, cfg.pretrained),
    "resnet50": lambda cfg: resnet_backbone(50, cfg.pretrained),
    "inception_v1": lambda cfg: inception_v1_backbone(cfg.pretrained),
}


def build_model(cfg) -> EmbeddingNet:
    """Build the embedding network described by a ``ModelConfig`` (arch, width, embedding_dim, pretrained);
    ``arch="timm:NAME"``: timm's model NAME (``timm_nets``)."""
    if is_timm_arch(cfg.arch):
        backbone, feature_dim = timm_backbone(cfg)
    elif cfg.arch in BACKBONES:
        backbone, feature_dim = BACKBONES[cfg.arch](cfg)
    else:
        raise ValueError(f"model.arch={cfg.arch!r} is unknown; choose one of {sorted(BACKBONES)} or timm:NAME")
    return EmbeddingNet(backbone, feature_dim, cfg.embedding_dim, cfg.head, cfg.head_hidden, cfg.head_last_bias)


__all__ = ["BACKBONES", "HEADS", "TIMM_PREFIX", "is_timm_arch", "CifarResNet", "EmbeddingNet", "make_head", "PretrainedWeightsUnavailable", "build_model"]
