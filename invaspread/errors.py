"""The package's two exception types (re-exported by ``invaspread.config``), and ``shown``: how a message
prints a value the user gave (bounded, whatever its size)."""

import reprlib

_BOUNDED = reprlib.Repr()
_BOUNDED.maxstring = _BOUNDED.maxother = 160
_BOUNDED.maxlong = 60
_BOUNDED.maxlist = _BOUNDED.maxtuple = _BOUNDED.maxdict = _BOUNDED.maxset = 8
_BOUNDED.maxlevel = 3


def shown(value) -> str:
    """``repr(value)`` cut to a few hundred characters: a 10 MB string or a YAML alias bomb (a 378-byte file
    whose repr is gigabytes) stays a one-line message."""
    return _BOUNDED.repr(value)


class InvaspreadError(Exception):
    """An error with a one-line message meant for the user (the CLI prints it without a traceback)."""


class ConfigError(InvaspreadError, ValueError):
    pass
