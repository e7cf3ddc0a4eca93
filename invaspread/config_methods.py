"""The ``method`` section of the config: ``method.name`` and one sub-section per registered method
(``method.NAME.key``), built from the method registry (``invaspread.methods.registry()``): a method's settings
are the ``Config`` dataclass beside its class, so adding a method (a file, or a package's entry point) adds its
keys without an edit here. Loaded, overridden and checked like every other section (``invaspread.config``)."""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from .checks import require_method
from .errors import ConfigError

_BUILT: Dict[Tuple, type] = {}


def method_config_class() -> type:
    """The ``MethodConfig`` dataclass of the methods registered now: ``name`` plus a field per settings section.
    One class per registry content, so two configs built under the same registry compare equal."""
    from .methods import registry

    methods = registry()
    key = tuple(methods.items())
    if key not in _BUILT:
        sections: Dict[str, type] = {}
        for name, cls in methods.items():
            if cls.Config is not None:
                sections.setdefault(cls.settings_section(name), cls.Config)
        fields = [("name", str, dataclasses.field(default="invaspread"))]
        fields += [(section, settings, dataclasses.field(default_factory=settings))
                   for section, settings in sections.items()]
        made = dataclasses.make_dataclass("MethodConfig", fields, namespace={
            "__doc__": "Which method trains the embedding (``name``), and each registered method's own settings."})
        made.__module__ = __name__
        # the meaning ``invaspread config`` prints beside method.name (the class has no source to read it from)
        made.comments = {"name": "which method trains: " + " | ".join(methods)}
        _BUILT[key] = made
    globals()["MethodConfig"] = _BUILT[key]   # what pickle finds under this name
    return _BUILT[key]


def new_method_config():
    return method_config_class()()


def validate_method(cfg) -> None:
    """``method.name`` is registered; every method section passes its own ``check``; an untrainable method
    (random) runs with 0 epochs."""
    from .methods import registry

    methods = registry()
    name = cfg.method.name
    require_method(name, methods)
    for f in dataclasses.fields(cfg.method):
        settings = getattr(cfg.method, f.name)
        if hasattr(settings, "check"):
            settings.check(f"method.{f.name}")
    if not methods[name].trainable and cfg.train.epochs != 0:
        raise ConfigError(f"method.name={name} is the untrained network: add --epochs 0 (train.epochs is "
                          f"{cfg.train.epochs})")
