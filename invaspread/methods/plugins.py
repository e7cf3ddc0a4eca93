"""Methods installed by other distributions: the entry points of the group ``invaspread.methods``.

They are listed without being imported (``installed``); a plugin's module is imported only when a run names it
(``load``), and its class is checked then, once, with one-line errors that name the distribution and the entry
point: the settings types the config reader cannot read, class attributes outside their choices or misspelt, a
name that two distributions both register. (Configs a distribution ships: ``invaspread.config_files``.)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from dataclasses import dataclass, field
from typing import Dict, Tuple

from ..checks import readable_type
from ..errors import InvaspreadError
from .base import EVAL_FEATURES, Method

GROUP = "invaspread.methods"
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED = ("name", "plugin")   # keys of the ``method`` section itself
# the class attributes the trainer reads (``Method``'s docstring); a near miss of one is a misspelling
CLASS_ATTRIBUTES = ("views", "trainable", "Config", "config_section", "eval_features", "separate_views")


class PluginError(InvaspreadError):
    """An installed method that cannot be used, in one line naming its distribution and entry point."""


@dataclass(frozen=True)
class Plugin:
    name: str
    value: str           # "module:Class"
    distribution: str    # "my-methods 0.1"
    point: object = field(compare=False, repr=False)

    @property
    def origin(self) -> str:
        return f"entry point {self.name} = {self.value} of distribution {self.distribution}"


def _distribution(point) -> str:
    dist = getattr(point, "dist", None)
    if dist is None:
        return "(unknown)"
    return f"{dist.metadata['Name']} {dist.version}"


def _entry_points(group: str) -> Dict[str, Tuple[Plugin, ...]]:
    from importlib.metadata import entry_points

    found: Dict[str, list] = {}
    for point in entry_points(group=group):
        plugin = Plugin(point.name, point.value, _distribution(point), point)
        if plugin not in found.setdefault(point.name, []):   # one distribution seen twice on the path is one
            found[point.name].append(plugin)
    return {name: tuple(sorted(found[name], key=lambda p: p.distribution)) for name in sorted(found)}


@functools.lru_cache(maxsize=None)
def installed() -> Dict[str, Tuple[Plugin, ...]]:
    """Every method entry point by name (more than one: distributions that clash), read once, nothing imported."""
    return _entry_points(GROUP)


_LOADED: Dict[str, type] = {}


def loaded() -> Dict[str, type]:
    """The plugins imported so far in this process, by name (their settings are sections of the config)."""
    return dict(_LOADED)


def load(name: str) -> type:
    """The class of the installed method ``name``, imported and checked on first use."""
    if name in _LOADED:
        return _LOADED[name]
    plugins = installed().get(name, ())
    if not plugins:
        raise PluginError(f"method {name!r} is not installed (no entry point of the group {GROUP})")
    if len(plugins) > 1:
        raise PluginError(f"method {name!r} is registered by {len(plugins)} distributions ("
                          + "; ".join(p.origin for p in plugins) + "): which one runs would depend on the path "
                          "order, so none does; uninstall all but one")
    plugin = plugins[0]
    try:
        cls = plugin.point.load()
    except Exception as err:   # the user's module: any failure is theirs to see, in one line
        raise PluginError(f"{plugin.origin} could not be loaded: {type(err).__name__}: {err}") from err
    check_method_class(name, cls, plugin.origin)
    _LOADED[name] = cls
    return cls


def origin(name: str) -> str:
    """Where the installed method ``name`` comes from (what a new run records in ``method.plugin``)."""
    return "; ".join(p.origin for p in installed().get(name, ()))


def forget() -> None:
    """Read the entry points again (tests that install and remove plugins)."""
    installed.cache_clear()
    _LOADED.clear()


def check_method_class(name: str, cls, where: str) -> None:
    """A one-line ``PluginError`` naming ``where`` (the entry point) for a class the trainer could not use as the
    method ``name``."""
    def fail(what: str):
        raise PluginError(f"{where}: {what}")

    if not NAME.match(name) or name in RESERVED:
        fail(f"method name {name!r} must be lower-case letters, digits and _ (and not {' or '.join(RESERVED)})")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        fail(f"{cls!r} is not a subclass of invaspread.methods.Method")
    _check_attributes(cls, fail)
    if cls.Config is not None:
        _check_settings(cls.Config, fail)


def _check_attributes(cls, fail) -> None:
    views = cls.views
    if not (isinstance(views, int) and not isinstance(views, bool) and views >= 1):
        fail(f"{cls.__name__}.views = {views!r}: expected a whole number of views >= 1")
    for flag in ("trainable", "separate_views"):
        if not isinstance(getattr(cls, flag), bool):
            fail(f"{cls.__name__}.{flag} = {getattr(cls, flag)!r}: expected True or False")
    if cls.eval_features not in EVAL_FEATURES:
        fail(f"{cls.__name__}.eval_features = {cls.eval_features!r}: expected one of {', '.join(EVAL_FEATURES)}")
    if cls.config_section is not None and not (isinstance(cls.config_section, str) and NAME.match(cls.config_section)):
        fail(f"{cls.__name__}.config_section = {cls.config_section!r}: expected None or a lower-case name")
    if cls.trainable and cls.from_config.__func__ is Method.from_config.__func__:
        fail(f"{cls.__name__} does not define from_config(cls, cfg, encoder, num_instances)")
    for attribute, value in vars(cls).items():
        if attribute.startswith("_") or attribute in CLASS_ATTRIBUTES or callable(value) or isinstance(
                value, (classmethod, staticmethod, property)):
            continue
        close = difflib.get_close_matches(attribute, CLASS_ATTRIBUTES, n=1, cutoff=0.8)
        if close or attribute.lower() in (a.lower() for a in CLASS_ATTRIBUTES):
            fail(f"{cls.__name__}.{attribute} is not an attribute the trainer reads; did you mean "
                 f"{(close or [attribute.lower()])[0]!r}?")


def _check_settings(settings: type, fail) -> None:
    if not dataclasses.is_dataclass(settings):
        fail(f"{settings.__name__} (its Config) must be a @dataclass of the method's settings")
    try:
        hints = typing.get_type_hints(settings)
    except Exception as err:
        fail(f"the annotations of {settings.__name__} cannot be read ({type(err).__name__}: {err})")
    for f in dataclasses.fields(settings):
        if not readable_type(hints[f.name]):
            fail(f"setting {f.name}: {hints[f.name]} is not a type the config reads (bool, int, float, str, "
                 f"Optional[...] and List[...] of them)")
    try:
        settings()
    except Exception as err:
        fail(f"{settings.__name__}() failed ({type(err).__name__}: {err}): every setting needs a default")
