"""Every system the paper compares, one file each, in one plain dict: ``METHODS[name] -> Method`` class.

``build_method(cfg, encoder, num_instances)`` builds ``METHODS[cfg.method.name]``. Adding a method is
a file here, its loss in ``invaspread.losses`` and its settings in ``config_methods.MethodConfig``.
"""

from __future__ import annotations

from .base import Method
from .deepcluster import DeepCluster
from .exemplar import Exemplar
from .invaspread import InvaSpread, nearest_neighbour_positives
from .mom import MOM
from .npid import NCE, MemoryBank, NPSoftmax
from .random import RandomNetwork
from .triplet import Triplet, TripletHard

METHODS = {
    "invaspread": InvaSpread,       # Ours (Table 1: 83.6)
    "random": RandomNetwork,        # Random CNN (32.1)
    "exemplar": Exemplar,           # Exemplar CNN [8] (74.5)
    "npsoftmax": NPSoftmax,         # NPSoftmax [46] (80.8)
    "nce": NCE,                     # NCE [46] (80.4)
    "triplet": Triplet,             # Triplet (57.5)
    "triplet_hard": TripletHard,    # Triplet (hard) (78.4)
    "deepcluster": DeepCluster,     # DeepCluster [3] (10 clusters: 44.4, 1000: 67.6)
    "mom": MOM,                     # MOM [21] (Tables 3-6 only)
}


def build_method(cfg, encoder, num_instances: int) -> Method:
    """The method named by ``cfg.method.name`` around ``encoder``, for ``num_instances`` training images."""
    if cfg.method.name not in METHODS:
        raise ValueError(f"method.name={cfg.method.name!r} is unknown; choose one of {sorted(METHODS)}")
    return METHODS[cfg.method.name].from_config(cfg, encoder, num_instances)


__all__ = ["METHODS", "Method", "MemoryBank", "build_method", "nearest_neighbour_positives"]
