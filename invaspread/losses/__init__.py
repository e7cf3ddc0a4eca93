"""Losses over L2-normalised embeddings. One loss per file; each is a plain ``nn.Module``."""

from .invaspread import InvaSpreadLoss, log_one_minus_softmax


def build_loss(cfg) -> InvaSpreadLoss:
    """The loss described by a ``LossConfig``."""
    return InvaSpreadLoss(cfg.temperature, cfg.variant, cfg.stop_gradient, cfg.negatives, cfg.negative_fraction)


__all__ = ["InvaSpreadLoss", "build_loss", "log_one_minus_softmax"]
