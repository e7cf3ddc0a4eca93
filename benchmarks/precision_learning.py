"""bf16 changes no conclusion: the CI learning settings of InvaSpread and of a memory-bank method (NPSoftmax),
trained in float32 and under bf16 autocast on the CPU, three seeds each, the gains side by side.

    python benchmarks/precision_learning.py                     # ~40 min on 2 cores without native bf16
    python benchmarks/precision_learning.py --methods npsoftmax --seeds 0

Settings are the CI tests' own (``tests/test_integration_cifar.py`` for InvaSpread: 300 images per class,
width 16, 4 epochs; ``tests/test_integration_methods.py`` for NPSoftmax: 100 per class, width 8, 60 epochs);
only ``train.seed`` and ``train.cpu_bf16`` change. The gain is kNN top-1 after training minus at
initialisation (epoch 0), on the same queries. Where the CPU has no native bf16 the bf16 rows are emulated
(slower, same arithmetic).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import cifar10_archive  # noqa: E402
from test_integration_cifar import cifar_overrides  # noqa: E402
from test_integration_methods import SETTINGS, subset_overrides  # noqa: E402

from invaspread.config import load_config  # noqa: E402
from invaspread.engine.trainer import fit  # noqa: E402


def settings(name: str, cache: Path):
    if name == "invaspread":
        return "configs/cifar10.yaml", cifar_overrides(cache, 300, 100, 4)
    epochs, batch, extra = SETTINGS[name]
    return "configs/cifar10.yaml", subset_overrides(cifar10_archive(), cache, name, epochs, batch, extra)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["invaspread", "npsoftmax"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", default=None, help="decoded-array cache folder (default: a temporary one)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache or Path(tmp) / "cache")
        for name in args.methods:
            for seed in args.seeds:
                for bf16 in (False, True):
                    path, sets = settings(name, cache)
                    cfg = load_config(path, sets + [f"train.seed={seed}", f"train.cpu_bf16={str(bf16).lower()}"])
                    out = Path(tmp) / f"{name}-{seed}-{bf16}"
                    t0 = time.perf_counter()
                    last = fit(cfg, out, log=lambda s: None)
                    seconds = time.perf_counter() - t0
                    initial = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["knn_top1"]
                    rows.append((name, seed, "bf16" if bf16 else "fp32", initial, last["knn_top1"], seconds))
                    print(f"  {rows[-1]}", flush=True)
    print("\n| method | seed | precision | kNN init | kNN after | gain | seconds |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, seed, prec, initial, after, seconds in rows:
        print(f"| {name} | {seed} | {prec} | {initial:.1f} | {after:.1f} | {after - initial:+.1f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
