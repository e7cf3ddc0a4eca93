"""The package's two exception types (re-exported by ``invaspread.config``)."""


class InvaspreadError(Exception):
    """An error with a one-line message meant for the user (the CLI prints it without a traceback)."""


class ConfigError(InvaspreadError, ValueError):
    pass
