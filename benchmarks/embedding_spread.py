"""How spread out a trained embedding is: the measurement behind a row that collapses (Triplet (hard) in the
full-data Table 1). For each run, the images of a folder (``<class>/`` sub-folders) are embedded with
``invaspread.embed_folder`` (the run's evaluation transform) and the table prints

- mean cosine similarity of two different images, and of two images of the same class / different classes
  (a collapsed embedding puts every pair near 1: nothing left to rank by),
- the effective dimension: (sum of the singular values' squares)^2 / (sum of their fourth powers) of the
  centred features, from 1 (all images on one line) to d (spread evenly over all d dimensions),
- the mean squared distance of two different images, d2 = 2 - 2 cos, which the triplet loss compares with its
  margin (0.5).

    python benchmarks/embedding_spread.py RUN [RUN ...] --images FOLDER

Nothing is trained or written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def spread(features: np.ndarray, labels: np.ndarray) -> dict:
    """The numbers above for unit rows ``features`` (N, d) with integer ``labels`` (N,)."""
    features = features.astype(np.float64)
    cosine = features @ features.T
    different = ~np.eye(len(features), dtype=bool)
    same_class = (labels[:, None] == labels[None, :]) & different
    centred = features - features.mean(axis=0)
    power = np.linalg.svd(centred, compute_uv=False) ** 2
    return {"cos_all": cosine[different].mean(), "cos_same": cosine[same_class].mean(),
            "cos_other": cosine[different & ~same_class].mean(), "d2_all": (2 - 2 * cosine[different]).mean(),
            "effective_dim": power.sum() ** 2 / (power ** 2).sum(), "dims": features.shape[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    parser.add_argument("--images", required=True, type=Path, help="a folder of <class>/ sub-folders of images")
    args = parser.parse_args()
    from invaspread import embed_folder

    print("| run | mean cos, all pairs | same class | different classes | mean d2 | effective dim. (of d) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for run in args.runs:
        paths, features = embed_folder(run, args.images)
        classes = [Path(p).parent.name for p in paths]
        labels = np.unique(classes, return_inverse=True)[1]
        s = spread(features, labels)
        print(f"| {run.name} | {s['cos_all']:.4f} | {s['cos_same']:.4f} | {s['cos_other']:.4f} | {s['d2_all']:.3g} | "
              f"{s['effective_dim']:.1f} (of {s['dims']}) |")


if __name__ == "__main__":
    main()
