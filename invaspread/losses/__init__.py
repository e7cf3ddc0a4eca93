"""Losses over L2-normalised embeddings. One loss per file; each is a plain ``nn.Module``."""

from .invaspread import InvaSpreadLoss, log_one_minus_softmax

__all__ = ["InvaSpreadLoss", "log_one_minus_softmax"]
