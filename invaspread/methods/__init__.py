"""Every system the harness trains, one file each, found by name: ``registry()[name] -> Method`` class.

``METHODS`` holds the built-ins; ``registry()`` adds every entry point of the group ``invaspread.methods``
(``importlib.metadata``) -- a package's ``pyproject.toml`` line ``NAME = "its_module:ItsMethod"`` makes
``--set method.name=NAME`` train it and ``method.NAME.*`` its settings (README "Your own method").
``build_method(cfg, encoder, num_instances)`` builds ``registry()[cfg.method.name]``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Dict

from ..checks import require_method
from ..errors import InvaspreadError
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

ENTRY_POINT_GROUP = "invaspread.methods"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _checked(name: str, cls, origin: str) -> type:
    """A plugin's class, or a one-line error naming its entry point and what is wrong."""
    if not _NAME.match(name) or name == "name":
        raise InvaspreadError(f"{origin}: method name {name!r} must be lower-case letters, digits and _ (not 'name')")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise InvaspreadError(f"{origin}: {cls!r} is not a subclass of invaspread.methods.Method")
    if cls.Config is not None and not dataclasses.is_dataclass(cls.Config):
        raise InvaspreadError(f"{origin}: {cls.__name__}.Config must be a @dataclass of the method's settings")
    return cls


@functools.lru_cache(maxsize=None)
def _plugins() -> tuple:
    """(name, class) of every ``invaspread.methods`` entry point installed (read once per process)."""
    from importlib.metadata import entry_points

    found = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        origin = f"entry point {point.name} = {point.value} (group {ENTRY_POINT_GROUP})"
        if point.name in METHODS:
            raise InvaspreadError(f"{origin}: the name {point.name!r} is a built-in method; choose another")
        try:
            cls = point.load()
        except Exception as err:   # the user's module: any failure is theirs to see, in one line
            raise InvaspreadError(f"{origin} could not be loaded: {type(err).__name__}: {err}") from err
        found.append((point.name, _checked(point.name, cls, origin)))
    return tuple(found)


def registry() -> Dict[str, type]:
    """Every method by name: the built-ins, then the installed entry points."""
    return {**METHODS, **dict(_plugins())}


def build_method(cfg, encoder, num_instances: int) -> Method:
    """The method named by ``cfg.method.name`` around ``encoder``, for ``num_instances`` training images."""
    methods = registry()
    require_method(cfg.method.name, methods)
    return methods[cfg.method.name].from_config(cfg, encoder, num_instances)


def evaluation_features(cfg) -> str:
    """What evaluation, ``embed`` and ``index`` read for this config: ``eval.features``, or with ``auto`` the
    method's own choice ("embedding" or "pooled")."""
    if cfg.eval.features != "auto":
        return cfg.eval.features
    return registry()[cfg.method.name].eval_features


__all__ = ["ENTRY_POINT_GROUP", "METHODS", "Method", "MemoryBank", "build_method", "ema_update", "epoch_generator",
           "epoch_seed", "evaluation_features", "nearest_neighbour_positives", "registry"]
