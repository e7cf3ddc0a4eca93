"""The paper's figures for your runs: the data of each figure is computed by a plain function (tested
against its definition), then drawn (matplotlib, Agg: no display needed).

* Figure 3: kNN top-1 (or R@1) per epoch, and against the run's cumulative seconds (``metrics.jsonl``).
* Figure 5: cosine similarity of positive pairs (two augmented views of one test image) and of negative
  pairs (view 1 of two different test images), trained network beside the untrained one.
* Figure 4: a retrieval grid, each test query with its top-K test neighbours (itself excluded), framed
  green when the neighbour shares the query's label and red when it does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..engine.tensorboard import EPOCH_PARTS

SIMILARITY_BINS = np.linspace(-1.0, 1.0, 101)   # Figure 5: 100 bins of width 0.02 over [-1, 1]
GREEN, RED = (0, 170, 0), (220, 0, 0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run) -> List[dict]:
    """The lines of ``run/metrics.jsonl`` (a half-written last line of an interrupted run is left out)."""
    lines = []
    path = Path(run) / "metrics.jsonl"
    for text in path.read_text().splitlines() if path.is_file() else []:
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return lines


ACCURACY_METRICS = ("knn_top1", "recall@1")
CURVE_LABELS = {"knn_top1": "kNN top-1 (%)", "recall@1": "R@1 (%)", "loss": "training loss (no labelled test images)"}


def curve_metric(lines: Sequence[dict]) -> str:
    """The headline metric a run logged: kNN top-1 (seen categories) or R@1 (unseen); the training loss for a
    run that had nothing to evaluate on (an unlabelled folder without data.test_root)."""
    for key in ACCURACY_METRICS + ("loss",):
        if any(key in line for line in lines):
            return key
    return ""


def learning_curve(lines: Sequence[dict]) -> Dict[str, list]:
    """Figure 3's data of one run: the evaluated epochs, their metric, and the seconds the run had spent by
    the end of each (sum over epochs of preparation + steps + evaluation, as logged)."""
    metric = curve_metric(lines)
    epochs, seconds, values, spent = [], [], [], 0.0
    for line in lines:
        spent += sum(float(line.get(k, 0.0)) for k in EPOCH_PARTS)
        if metric in line:
            epochs.append(int(line["epoch"]))
            seconds.append(spent)
            values.append(float(line[metric]))
    return {"metric": metric, "epoch": epochs, "seconds": seconds, "value": values}


def plot_learning_curves(curves: Dict[str, Dict[str, list]]):
    """Figure 3: one line per run against epochs (left) and seconds (right)."""
    plt = _pyplot()
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in curves.items():
        by_epoch.plot(curve["epoch"], curve["value"], marker=".", label=name)
        by_time.plot(curve["seconds"], curve["value"], marker=".", label=name)
    metrics = sorted({c["metric"] for c in curves.values() if c["metric"]})
    label = " / ".join(CURVE_LABELS.get(m, m) for m in metrics)
    for ax, xlabel in ((by_epoch, "epoch"), (by_time, "seconds (training + evaluation)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole: no tick at 0.5 on short runs
    by_epoch.legend(fontsize=8)
    by_epoch.set_title("Figure 3: learning speed per epoch")
    by_time.set_title("... and per second")
    fig.tight_layout()
    return fig


@torch.no_grad()
def pair_similarities(model, source, transform, indices: Sequence[int], device, seed: int = 0,
                      batch_size: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """(positives (n,), negatives (n(n-1)/2,)) cosine similarities: per image of ``indices`` two views drawn
    with ``transform`` (the run's training augmentation); negatives are view 1 of every unordered pair of
    different images. The model runs in eval mode; the augmentation RNG is seeded."""
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    views = [[], []]
    for start in range(0, len(indices), batch_size):
        chunk = [source.image(int(i)) for i in indices[start:start + batch_size]]
        for v in range(2):
            x = torch.stack([transform(img) for img in chunk]).to(device)
            views[v].append(torch.nn.functional.normalize(model(x).float(), dim=1).cpu())
    model.train(was_training)
    z1, z2 = torch.cat(views[0]).double(), torch.cat(views[1]).double()
    positives = (z1 * z2).sum(1)
    upper = torch.triu_indices(len(z1), len(z1), offset=1)
    negatives = (z1 @ z1.t())[upper[0], upper[1]]
    return positives.numpy(), negatives.numpy()


def similarity_histograms(positives: np.ndarray, negatives: np.ndarray) -> Dict[str, np.ndarray]:
    """Counts of each kind of pair in ``SIMILARITY_BINS`` (values are clipped to [-1, 1] first: float error)."""
    return {kind: np.histogram(np.clip(values, -1.0, 1.0), SIMILARITY_BINS)[0]
            for kind, values in (("positive", positives), ("negative", negatives))}


def plot_similarity_histograms(panels: Dict[str, Dict[str, np.ndarray]]):
    """Figure 5: one panel per network ("trained", "untrained"), positives and negatives as densities."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (name, counts) in zip(axes[0], panels.items()):
        width = np.diff(SIMILARITY_BINS)
        for kind, colour in (("positive", "tab:green"), ("negative", "tab:red")):
            total = max(int(counts[kind].sum()), 1)
            ax.stairs(counts[kind] / total / width, SIMILARITY_BINS, fill=True, alpha=0.45, color=colour,
                      label=f"{kind} pairs ({total:,})")
        ax.set_title(f"Figure 5: {name}")
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def retrieval_neighbours(features: torch.Tensor, queries: Sequence[int], k: int) -> np.ndarray:
    """(Q, k) indices of the ``k`` most cosine-similar rows of ``features`` to each query row, itself excluded."""
    f = torch.nn.functional.normalize(features.float(), dim=1)
    q = torch.as_tensor(list(queries))
    sims = f[q] @ f.t()                                  # (Q, N): a few queries, so memory is Q x N
    sims[torch.arange(len(q)), q] = -float("inf")
    return sims.topk(min(k, len(f) - 1), dim=1).indices.numpy()


def retrieval_grid(source, queries: Sequence[int], neighbours: np.ndarray, cell: int = 64, border: int = 4,
                   gap: int = 6) -> Tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, correct (Q, k) bool): one row per query, the query first (grey frame), then its
    neighbours framed ``GREEN`` when their label equals the query's and ``RED`` otherwise."""
    from PIL import Image

    labels = np.asarray(source.labels)
    correct = labels[np.asarray(neighbours)] == labels[np.asarray(queries)][:, None]
    rows, cols = len(queries), neighbours.shape[1] + 1
    step = cell + 2 * border + gap
    grid = np.full((rows * step, cols * step + gap, 3), 255, dtype=np.uint8)
    for r, q in enumerate(queries):
        for c, index in enumerate([q, *neighbours[r]]):
            top, left = r * step, c * step + (gap if c else 0)
            colour = (128, 128, 128) if c == 0 else (GREEN if correct[r, c - 1] else RED)
            grid[top:top + cell + 2 * border, left:left + cell + 2 * border] = colour
            img = source.image(int(index)).convert("RGB").resize((cell, cell), Image.BILINEAR)
            grid[top + border:top + border + cell, left + border:left + border + cell] = np.asarray(img)
    return grid, correct


def frame_colour(grid: np.ndarray, row: int, column: int, cell: int = 64, border: int = 4, gap: int = 6):
    """The frame colour drawn at ``(row, column)`` of a ``retrieval_grid`` (column 0: the query)."""
    step = cell + 2 * border + gap
    return tuple(int(v) for v in grid[row * step, column * step + (gap if column else 0)])
