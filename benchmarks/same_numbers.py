"""Do two source trees train, resume and evaluate to the same numbers? For every built-in method: a digits run of
one epoch, resumed to two (``train --resume --epochs 2``), then ``eval``, in each tree, compared bit for bit (every
metric but the timings, and the printed evaluation).

    python benchmarks/same_numbers.py --trees /path/to/before /path/to/after [--runs nce byol]

Each command is a fresh ``python -m invaspread`` with PYTHONPATH on its tree, so nothing is shared between them;
prints one table row per run and epoch, and exits 1 when any number differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

METHODS = ("invaspread", "exemplar", "npsoftmax", "nce", "triplet", "triplet_hard", "deepcluster", "mom", "simclr",
           "mocov2", "byol")
RUNS = {"invaspread, CPU batches": ["method.name=invaspread", "augment.on_device=false"],
        **{name: [f"method.name={name}"] for name in METHODS},
        "deepcluster, re-clustered": ["method.name=deepcluster", "method.deepcluster.reassign=2"]}
COMMON = ["model.width=8", "model.embedding_dim=16", "data.image_size=16", "data.subset_per_class=20",
          "data.num_workers=0", "train.batch_size=32", "train.progress=false", "eval.knn_k=10", "optim.schedule=cosine",
          "method.nce.noise=64", "method.deepcluster.clusters=5", "method.mom.graph_neighbours=5",
          "method.mom.positive_k=5", "method.mom.negative_k=10", "method.mom.pool_size=5", "model.head_hidden=32",
          "method.byol.predictor_hidden=32", "method.mocov2.queue=40"]
TIMINGS = ("train_seconds", "eval_seconds", "epoch_start_seconds", "images_per_second")


def invaspread(tree: Path, *args) -> str:
    done = subprocess.run([sys.executable, "-m", "invaspread", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: invaspread {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done.stdout


def train(tree: Path, sets, out: Path) -> list:
    """The metrics lines of a run trained one epoch then resumed to two, and its evaluation's printed numbers."""
    invaspread(tree, "train", "--config", "digits", "--epochs", "1", "--out", out,
               *[a for s in COMMON + sets for a in ("--set", s)])
    invaspread(tree, "train", "--resume", out, "--epochs", "2")
    shown = [line for line in invaspread(tree, "eval", out).splitlines()[1:] if "seconds" not in line]
    lines = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
             for line in (out / "metrics.jsonl").read_text().splitlines()]
    return lines + [{"epoch": "eval", "printed": " ".join(" ".join(shown).split())}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs=2, required=True, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), metavar="RUN",
                        help="which runs (default: all)")
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees]
    differ = 0
    print("| run | epoch | " + " | ".join(t.name for t in trees) + " | same |")
    print("| --- | ---: | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            sets = RUNS[name]
            lines = [train(tree, sets, Path(tmp) / f"{i}-{name.replace(' ', '_').replace(',', '')}")
                     for i, tree in enumerate(trees)]
            for a, b in zip(*lines):
                same = a == b
                differ += not same
                show = lambda m: " ".join(f"{k}={v!r}" for k, v in m.items() if k != "epoch")
                print(f"| {name} | {a['epoch']} | {show(a)} | {show(b)} | {'yes' if same else 'NO'} |")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
