"""Image search over an embedded collection (``invaspread index`` / ``invaspread search``), and embedding a
folder from Python (``embed_folder``)."""

from .embed import embed_folder
from .index import SearchIndex, build_index, exact_search

__all__ = ["SearchIndex", "build_index", "embed_folder", "exact_search"]
