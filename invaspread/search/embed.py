"""Embed a bare folder of images with a trained run: what ``invaspread embed`` writes, as a Python call."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np


def embed_images(run, folder, batch_size: int = 256, device: Optional[str] = None, overrides: Sequence[str] = (),
                 progress: bool = False):
    """(source, features (N, d) float32 L2-normalised, checkpoint state) for every readable image under
    ``folder``, through the run's evaluation network and evaluation transform (what ``eval`` scores and
    ``index`` stores). ``overrides``: "key=value" changes to the run's config (e.g. "eval.features=pooled");
    unreadable files are skipped and named in one line on stderr (``data.unreadable=error``: refused)."""
    from ..data.eval_transform import run_eval_transform
    from ..data.sources import scan_image_folder
    from ..engine.checkpoint import load_run
    from ..engine.features import evaluation_network, extract_features
    from ..errors import InvaspreadError
    from .index import refuse_non_finite

    if batch_size < 1:
        raise InvaspreadError(f"embed --batch-size {batch_size}: expected a positive number")
    cfg, state, model, dev = load_run(run, [*overrides, *([f"train.device={device}"] if device else [])])
    source = scan_image_folder(folder, unreadable=cfg.data.unreadable)
    features = extract_features(evaluation_network(model, cfg), source, run_eval_transform(cfg), batch_size, dev,
                                cfg.data.num_workers, progress=progress).cpu().numpy()
    refuse_non_finite(features, source.paths, f"the network of {run} (epoch {state['epoch']})")
    return source, features.astype(np.float32, copy=False), state


def embed_folder(run, folder, batch_size: int = 256, device: Optional[str] = None,
                 overrides: Sequence[str] = ()) -> Tuple[List[str], np.ndarray]:
    """``(paths, features)``: every readable image under ``folder`` (recursively, the order ``train`` and
    ``index`` use) embedded by the run (a run folder or a ``.pt``), features (N, d) float32 with unit rows, so
    ``features @ features.T`` is cosine similarity. The same numbers as ``invaspread embed RUN --images
    FOLDER``'s ``embeddings``; unreadable files are skipped with one printed line."""
    source, features, _ = embed_images(run, folder, batch_size, device, overrides)
    return list(source.paths), features
