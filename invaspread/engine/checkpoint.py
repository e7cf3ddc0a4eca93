"""Flat checkpoint dicts, written atomically and read without unpickling arbitrary objects."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import InvaspreadError

CHECKPOINT_VERSION = 1


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` to ``path`` via a temporary file + rename, so a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint (a file, or a run folder holding ``last.pt``) with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise InvaspreadError(f"no checkpoint at {path} (expected a run folder with last.pt, or a .pt file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt file, or one holding arbitrary pickled objects
        raise InvaspreadError(f"cannot load checkpoint {path}: {err}") from err
    missing = {"model", "config", "epoch"} - set(state)
    if missing:
        raise InvaspreadError(f"{path} is not an invaspread checkpoint (missing {sorted(missing)})")
    return state
