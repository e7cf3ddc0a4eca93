"""ImageNet-style backbones from torchvision: ResNet-18/50 and Inception-V1 (GoogLeNet).

Pretrained ImageNet weights are downloaded by torchvision when ``pretrained=True``; offline that
fails with a clear message instead of a network traceback.
"""

from __future__ import annotations

from torch import nn

from ..errors import InvaspreadError


class PretrainedWeightsUnavailable(InvaspreadError, RuntimeError):
    """Pretrained weights asked for and not on this machine: one line saying where they were looked for."""


def _weights(enum, pretrained: bool):
    return enum.DEFAULT if pretrained else None


def _build(constructor, weights, arch: str, **kwargs) -> nn.Module:
    try:
        return constructor(weights=weights, **kwargs)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        if weights is None:
            raise
        raise PretrainedWeightsUnavailable(
            f"model.arch={arch} with model.pretrained=true needs ImageNet weights ({weights}), which could "
            f"not be loaded: {err}. Connect to the internet once (torchvision caches them under "
            f"$TORCH_HOME) or set model.pretrained=false to train from scratch.") from err


def resnet_backbone(depth: int, pretrained: bool):
    from torchvision import models

    constructor, enum = {18: (models.resnet18, models.ResNet18_Weights),
                         50: (models.resnet50, models.ResNet50_Weights)}[depth]
    net = _build(constructor, _weights(enum, pretrained), f"resnet{depth}")
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def inception_v1_backbone(pretrained: bool):
    """GoogLeNet up to pool5 (1024-d); the paper adds a 128-d FC layer after pool5 (Section 4.2)."""
    from torchvision import models

    weights = _weights(models.GoogLeNet_Weights, pretrained)
    kwargs = {} if pretrained else {"aux_logits": False, "init_weights": True}
    net = _build(models.googlenet, weights, "inception_v1", **kwargs)
    # Auxiliary classifiers are only used for supervised ImageNet training.
    net.aux_logits, net.aux1, net.aux2 = False, None, None
    net.dropout = nn.Identity()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim
