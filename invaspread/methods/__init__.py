"""Every system the harness trains, one file each, found by name: ``registry()[name] -> Method`` class.

``METHODS`` holds the built-ins; the entry points of the group ``invaspread.methods`` add plugins
(``methods.plugins``) -- a package's ``pyproject.toml`` line ``NAME = "its_module:ItsMethod"`` makes
``--set method.name=NAME`` train it and ``method.NAME.*`` its settings (README "Your own method"). A plugin is
imported only when a run names it (``load_method``); ``registry()`` imports them all, for listings.
``build_method(cfg, encoder, num_instances)`` builds ``load_method(cfg.method.name)``.
"""

from __future__ import annotations

from typing import Dict, List

from ..checks import require_method
from ..errors import InvaspreadError
from . import plugins
from .base import Method, ema_update, epoch_generator, epoch_seed
from .byol import BYOL
from .deepcluster import DeepCluster
from .exemplar import Exemplar
from .invaspread import InvaSpread, nearest_neighbour_positives
from .mocov2 import MoCoV2
from .mom import MOM
from .npid import NCE, MemoryBank, NPSoftmax
from .random import RandomNetwork
from .simclr import SimCLR
from .triplet import Triplet, TripletHard

METHODS: Dict[str, type] = {
    "invaspread": InvaSpread,       # Ours (Table 1: 83.6)
    "random": RandomNetwork,        # Random CNN (32.1)
    "exemplar": Exemplar,           # Exemplar CNN [8] (74.5)
    "npsoftmax": NPSoftmax,         # NPSoftmax [46] (80.8)
    "nce": NCE,                     # NCE [46] (80.4)
    "triplet": Triplet,             # Triplet (57.5)
    "triplet_hard": TripletHard,    # Triplet (hard) (78.4)
    "deepcluster": DeepCluster,     # DeepCluster [3] (10 clusters: 44.4, 1000: 67.6)
    "mom": MOM,                     # MOM [21] (Tables 3-6 only)
    "simclr": SimCLR,               # after the paper: SimCLR (Chen et al. 2020), table 1x
    "mocov2": MoCoV2,               # after the paper: MoCo v2 (Chen et al. 2020), table 1x
    "byol": BYOL,                   # after the paper: BYOL (Grill et al. 2020), table 1x
}

ENTRY_POINT_GROUP = plugins.GROUP


def method_names() -> List[str]:
    """Every method a run may name: the built-ins, then the installed entry points (none of them imported)."""
    return list(METHODS) + [name for name in plugins.installed() if name not in METHODS]


def load_method(name: str) -> type:
    """The class of the method ``name``: a built-in, or the installed plugin of that name, imported now (only
    this one); an unknown name is one line with the closest name."""
    if name in METHODS:
        return METHODS[name]
    require_method(name, method_names())
    return plugins.load(name)


def registry() -> Dict[str, type]:
    """Every method by name, each plugin imported: what listings use. A plugin that cannot be used is left out
    (``broken_plugins`` names it and says why), so one broken plugin never disables the others."""
    found = dict(METHODS)
    for name in plugins.installed():
        if name not in METHODS and name not in broken_plugins():
            found[name] = plugins.load(name)
    return found


def broken_plugins() -> Dict[str, str]:
    """name -> the one-line reason, for every installed method entry point that cannot be used."""
    broken = {}
    for name, points in plugins.installed().items():
        if name in METHODS:
            broken[name] = (f"{points[0].origin}: the name {name!r} is a built-in method, which is the one "
                            f"used; choose another name")
            continue
        try:
            plugins.load(name)
        except InvaspreadError as err:
            broken[name] = str(err)
    return broken


def build_method(cfg, encoder, num_instances: int) -> Method:
    """The method named by ``cfg.method.name`` around ``encoder``, for ``num_instances`` training images."""
    return load_method(cfg.method.name).from_config(cfg, encoder, num_instances)


def evaluation_features(cfg) -> str:
    """What evaluation, ``embed`` and ``index`` read for this config: ``eval.features``, or with ``auto`` the
    method's own choice ("embedding" or "pooled")."""
    if cfg.eval.features != "auto":
        return cfg.eval.features
    return load_method(cfg.method.name).eval_features


__all__ = ["ENTRY_POINT_GROUP", "METHODS", "Method", "MemoryBank", "broken_plugins", "build_method", "ema_update",
           "epoch_generator", "epoch_seed", "evaluation_features", "load_method", "method_names",
           "nearest_neighbour_positives", "registry"]
