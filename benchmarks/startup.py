"""How long the interactive commands take to start, against ``python -c "import torch"`` in the same run.

    python benchmarks/startup.py [--repeats 5] [--tree /path/to/another/checkout]

Builds a throw-away run (the untrained width-8 network on the bundled digits) and an index of 20 images in a
temporary folder, then times each command as a fresh process (the median of ``--repeats``, after one warm-up run
that fills the OS file cache) and prints a table. ``search`` embeds one query: its time is almost all start-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command, repeats: int, env) -> float:
    subprocess.run(command, check=True, capture_output=True, env=env)   # warm-up: the file cache
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tree", help="time this checkout's invaspread (PYTHONPATH) instead of the installed one")
    args = parser.parse_args()
    env = {**os.environ, **({"PYTHONPATH": str(Path(args.tree).resolve())} if args.tree else {})}
    cli = [sys.executable, "-m", "invaspread"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        images.mkdir()
        from PIL import Image
        import numpy as np

        rng = np.random.default_rng(0)
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
        subprocess.run(cli + ["train", "--out", str(tmp / "run"), "--epochs", "0", "--set", "method.name=random",
                              "--set", "model.width=8", "--set", "train.progress=false"], check=True, capture_output=True,
                       env=env)
        subprocess.run(cli + ["index", str(tmp / "run"), "--images", str(images), "--out", str(tmp / "photos.index")],
                       check=True, capture_output=True, env=env)
        commands = {
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "invaspread --help": cli + ["--help"],
            "invaspread config cifar10": cli + ["config", "cifar10"],
            "invaspread search INDEX query.png": cli + ["search", str(tmp / "photos.index"), str(images / "00.png")],
        }
        print(f"| command | seconds (median of {args.repeats}) |")
        print("|---|---|")
        for name, command in commands.items():
            print(f"| `{name}` | {timed(command, args.repeats, env):.2f} |")


if __name__ == "__main__":
    main()
