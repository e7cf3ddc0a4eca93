"""Do two source trees train to the same numbers? 2-epoch digits runs of InvaSpread (CPU batches and on-device
augmentation) and NPSoftmax in each tree, compared bit for bit (every metric but the timings).

    python benchmarks/same_numbers.py --trees /path/to/before /path/to/after

Each run is a fresh ``python -m invaspread train`` with PYTHONPATH on its tree, so nothing is shared between
them; prints one table row per run and epoch, and exits 1 when any number differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = {
    "invaspread, CPU batches": ["method.name=invaspread", "augment.on_device=false"],
    "invaspread, on-device augmentation": ["method.name=invaspread", "augment.on_device=true"],
    "npsoftmax": ["method.name=npsoftmax", "augment.on_device=false"],
}
COMMON = ["data.subset_per_class=40", "data.num_workers=0", "train.progress=false", "model.width=8"]
TIMINGS = ("train_seconds", "eval_seconds", "epoch_start_seconds", "images_per_second")


def train(tree: Path, sets, out: Path) -> list:
    command = [sys.executable, "-m", "invaspread", "train", "--config", "digits", "--epochs", "2", "--out", str(out)]
    for s in COMMON + sets:
        command += ["--set", s]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs=2, required=True, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees]
    differ = 0
    print("| run | epoch | " + " | ".join(t.name for t in trees) + " | same |")
    print("| --- | ---: | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in RUNS.items():
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
