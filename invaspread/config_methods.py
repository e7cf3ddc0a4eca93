"""The ``method`` section of the config: ``method.name``, ``method.plugin`` and one sub-section per method
(``method.NAME.key``): a method's settings are the ``Config`` dataclass beside its class, so adding a method (a
file, or a package's entry point) adds its keys without an edit here. The built-ins' sections are always there; a
plugin's section appears when a config names the plugin (``include_method``), which imports that plugin alone.
A saved config holds the run's own method's section only (``own_method_dict``). Loaded, overridden and checked like
every other section (``invaspread.config``)."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from .checks import require_method
from .errors import ConfigError, InvaspreadError

_BUILT: Dict[Tuple, type] = {}
_OWN_FIELDS = ("name", "plugin")


def method_config_class() -> type:
    """The ``MethodConfig`` dataclass of the methods known now (the built-ins and the plugins imported so far):
    ``name``, ``plugin`` and a field per settings section. One class per content, so two configs built under the
    same methods compare equal."""
    from .methods import METHODS, plugins

    methods = {**METHODS, **plugins.loaded()}
    key = tuple(methods.items())
    if key not in _BUILT:
        sections: Dict[str, type] = {}
        for name, cls in methods.items():
            if cls.Config is not None:
                sections.setdefault(cls.settings_section(name), cls.Config)
        fields = [("name", str, dataclasses.field(default="invaspread")),
                  ("plugin", Optional[str], dataclasses.field(default=None))]
        fields += [(section, settings, dataclasses.field(default_factory=settings))
                   for section, settings in sections.items()]
        made = dataclasses.make_dataclass("MethodConfig", fields, namespace={
            "__doc__": "Which method trains the embedding (``name``), and each method's own settings."})
        made.__module__ = __name__
        # the meanings ``invaspread config`` prints (the class has no source to read them from)
        made.comments = {"name": "which method trains: " + " | ".join(_names()),
                         "plugin": "where a plugin method came from (distribution, entry point), recorded when its "
                                   "run starts; null for a built-in"}
        _BUILT[key] = made
    globals()["MethodConfig"] = _BUILT[key]   # what pickle finds under this name
    return _BUILT[key]


def _names():
    from .methods import method_names

    return method_names()


def new_method_config():
    return method_config_class()()


def include_method(cfg, name) -> None:
    """Make ``cfg.method`` hold the settings section of the installed plugin ``name`` (importing that plugin
    alone, with its one-line error if it cannot be used); nothing for a built-in or an unknown name."""
    from .methods import METHODS, plugins

    if not isinstance(name, str) or name in METHODS or name not in plugins.installed():
        return
    plugins.load(name)
    cls = method_config_class()
    if type(cfg.method) is not cls:
        cfg.method = cls(**{f.name: getattr(cfg.method, f.name) for f in dataclasses.fields(cfg.method)})


def own_section(name: str) -> str:
    """The section holding the settings of the method ``name`` (its own name, unless it shares another's)."""
    from .methods import METHODS, plugins

    cls = METHODS.get(name) or plugins.loaded().get(name)
    return cls.settings_section(name) if cls is not None else name


def own_method_dict(method: dict) -> dict:
    """A ``method`` section as a dict with only the run's own method's settings (what a run saves)."""
    own = own_section(method.get("name"))
    return {key: value for key, value in method.items() if key in _OWN_FIELDS or key == own}


def check_installed(data: dict, source: str = "") -> None:
    """A config (a dict: a saved run's, a YAML file's) whose method is neither built in nor installed, but that
    holds that method's settings: one line saying it is not installed and where the run says it came from."""
    from .methods import method_names

    method = data.get("method") if isinstance(data, dict) else None
    if not isinstance(method, dict):
        return
    name, came_from = method.get("name"), method.get("plugin")
    if not isinstance(name, str) or name in method_names() or not (came_from or isinstance(method.get(name), dict)):
        return
    where = f" ({source})" if source else ""
    raise InvaspreadError(f"method {name} is not installed{where}"
                          + (f"; the run's config says it came from {came_from}" if came_from else "")
                          + ": install it again (pip install ...) to use this config; installed: "
                          + ", ".join(method_names()))


def record_origin(cfg) -> None:
    """``method.plugin`` of a new run: where its plugin method comes from (None for a built-in)."""
    from .methods import METHODS, plugins

    cfg.method.plugin = None if cfg.method.name in METHODS else (plugins.origin(cfg.method.name) or None)


def validate_method(cfg) -> None:
    """``method.name`` is a method (built in, or installed and usable); every method section passes its own
    ``check``; an untrainable method (random) runs with 0 epochs."""
    from .methods import load_method, method_names

    name = cfg.method.name
    require_method(name, method_names())
    cls = load_method(name)
    include_method(cfg, name)
    for f in dataclasses.fields(cfg.method):
        settings = getattr(cfg.method, f.name)
        if hasattr(settings, "check"):
            settings.check(f"method.{f.name}")
    if not cls.trainable and cfg.train.epochs != 0:
        raise ConfigError(f"method.name={name} is the untrained network: add --epochs 0 (train.epochs is "
                          f"{cfg.train.epochs})")
