"""invaspread: unsupervised embedding learning via invariant and spreading instance features."""

__version__ = "0.1.0"


def __getattr__(name):
    """``invaspread.embed_folder`` and ``invaspread.SearchIndex`` without importing torch for ``--help``
    (PEP 562: looked up only when first used)."""
    if name in ("embed_folder", "SearchIndex"):
        from . import search

        return getattr(search, name)
    raise AttributeError(f"module 'invaspread' has no attribute {name!r}")
