"""Image search over an embedded collection (``invaspread index`` / ``invaspread search``)."""

from .index import SearchIndex, build_index, exact_search

__all__ = ["SearchIndex", "build_index", "exact_search"]
