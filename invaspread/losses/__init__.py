"""Losses over L2-normalised embeddings. One loss per file; each is a plain ``nn.Module`` whose device
and dtype come from its inputs, and whose every stop-gradient is a named option."""

from .byol import BYOLLoss
from .exemplar import ExemplarLoss
from .invaspread import InvaSpreadLoss, log_one_minus_softmax
from .moco import MoCoLoss
from .nce import NCELoss, estimate_nce_z
from .npsoftmax import NPSoftmaxLoss
from .ntxent import NTXentLoss
from .pseudo_label import PseudoLabelLoss
from .triplet import TripletLoss, sample_random_negatives
from .weighted_triplet import WeightedTripletLoss


__all__ = ["BYOLLoss", "ExemplarLoss", "InvaSpreadLoss", "MoCoLoss", "NCELoss", "NPSoftmaxLoss", "NTXentLoss", "PseudoLabelLoss", "TripletLoss",
           "WeightedTripletLoss", "estimate_nce_z", "log_one_minus_softmax", "sample_random_negatives"]
