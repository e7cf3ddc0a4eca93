"""The one-line checks a method's ``Config.check(prefix)`` composes (``prefix``: "method.NAME"), each raising a
``ConfigError`` that names the key, its value and what was expected. A leaf module: the methods import it without
importing the config machinery (``invaspread.config`` re-exports these for user code)."""

from __future__ import annotations

import difflib
import math
import types
import typing

from .errors import ConfigError, shown

MIN_TEMPERATURE = 1e-6


def require(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={shown(value)}: expected {expected}")


def require_positive(prefix: str, settings, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        require(value > 0 and math.isfinite(value), f"{prefix}.{name}", value, "a positive number")


def require_choice(prefix: str, settings, name: str, allowed) -> None:
    value = getattr(settings, name)
    require(value in allowed, f"{prefix}.{name}", value, f"one of {', '.join(allowed)}")


def require_temperature(key: str, value: float) -> None:
    require(value > 0 and math.isfinite(value), key, value, "a positive number")
    # 1/temperature overflows below this (and any value this small is an argmax anyway)
    require(value >= MIN_TEMPERATURE, key, value, f"a temperature >= {MIN_TEMPERATURE:g} (similarities are divided "
                                                  f"by it)")


def require_method(name: str, methods) -> None:
    """``method.name`` names one of ``methods`` (the registry's names), else one line with the closest name."""
    if name not in methods:
        hint = difflib.get_close_matches(str(name), list(methods), n=1)
        raise ConfigError(f"method.name={shown(name)}: expected one of {', '.join(methods)}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))


SCALARS = (bool, int, float, str)
UNIONS = (typing.Union, getattr(types, "UnionType", typing.Union))   # Optional[X], and X | None (Python 3.10+)


def readable_type(tp) -> bool:
    """Whether the config reader (``config.set_key``) reads values of type ``tp``: bool, int, float, str,
    ``Optional[X]`` / ``X | None`` and ``List[X]`` / ``list[X]`` of those."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in UNIONS:
        inner = [a for a in args if a is not type(None)]
        return len(inner) == 1 and len(args) == 2 and readable_type(inner[0])
    if origin is list:
        return len(args) == 1 and readable_type(args[0])
    return tp in SCALARS
