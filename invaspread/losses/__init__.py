"""Losses over L2-normalised embeddings. One loss per file; each is a plain ``nn.Module`` whose device
and dtype come from its inputs, and whose every stop-gradient is a named option."""

from .exemplar import ExemplarLoss
from .invaspread import InvaSpreadLoss, log_one_minus_softmax
from .nce import NCELoss, estimate_nce_z
from .npsoftmax import NPSoftmaxLoss
from .pseudo_label import PseudoLabelLoss
from .triplet import TripletLoss, sample_random_negatives
from .weighted_triplet import WeightedTripletLoss


def build_loss(cfg) -> InvaSpreadLoss:
    """The InvaSpread loss described by a ``LossConfig``."""
    from ..ops.distributed import world

    # under torchrun every rank's anchors meet the keys of all ranks: the negatives of the whole global batch
    return InvaSpreadLoss(cfg.temperature, cfg.variant, cfg.stop_gradient, cfg.negatives, cfg.negative_fraction,
                          gather_distributed=world()[1] > 1)


__all__ = ["ExemplarLoss", "InvaSpreadLoss", "NCELoss", "NPSoftmaxLoss", "PseudoLabelLoss", "TripletLoss",
           "WeightedTripletLoss", "build_loss", "estimate_nce_z", "log_one_minus_softmax", "sample_random_negatives"]
