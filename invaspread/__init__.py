"""invaspread: unsupervised embedding learning via invariant and spreading instance features."""

__version__ = "0.1.0"
