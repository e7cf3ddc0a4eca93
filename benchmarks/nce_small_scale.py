"""Why NCE needs a higher temperature to learn on a small CPU subset: kNN and the bank's state per setting.

    python benchmarks/nce_small_scale.py                                   # the sweep of the README (~6 min)
    python benchmarks/nce_small_scale.py --settings 0.5,256 --seeds 0 1 2  # the CI test's setting, 3 seeds

Every run is the CI test's (tests/test_integration_methods.py): 100 CIFAR-10 training images per class
(n = 1,000), 3,000 test images as kNN queries, width-8 ResNet18, 64 instances per step, SGD lr 0.03 with
cosine decay, on-device augmentation; only ``method.nce.temperature`` (tau), ``method.nce.noise`` (K) and the
seed change. Columns, read from the checkpoints kept every ``--every`` epochs:

- "bank cos": mean cosine between two different bank rows (0 for the random rows it starts with).
- "Zhat / Z": the partition function the fixed Z stands for, sum_j exp(v_j . v_i / tau) with the bank's own
  rows as queries (v_i standing in for the features they were made of), averaged over i, divided by Z. Z was
  estimated on the first batch against random rows; this ratio multiplies the push of NCE's noise terms
  (their gradient is about sum_j exp(s_j / tau) v_j / Z, the softmax's is the same sum over the partition).
  The column shows its largest value over the kept epochs, and at which epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from invaspread.config import load_config
from invaspread.engine.checkpoint import load_checkpoint
from invaspread.engine.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import CIFAR10_ARCHIVE as ARCHIVE  # noqa: E402
from test_integration_methods import SETTINGS, subset_overrides  # noqa: E402  (the CI test's setting)


def bank_state(checkpoint: dict, temperature: float):
    """(mean off-diagonal cosine of the bank, mean_i sum_j exp(v_i . v_j / tau) / Z)."""
    bank = checkpoint["method"]["bank.features"].double()
    z = float(checkpoint["method"]["z"])
    n = bank.shape[0]
    cos = bank @ bank.T
    off_diagonal = (cos.sum() - cos.diagonal().sum()) / (n * (n - 1))
    partition = (cos / temperature).exp().sum(1).mean()
    return float(off_diagonal), float(partition / z)


def run(temperature: float, noise: int, seed: int, epochs: int, every: int, out: Path, cache: Path,
        per_class: int = 100) -> dict:
    kept = ",".join(str(e) for e in range(every, epochs + 1, every))
    cfg = load_config(ROOT / "configs" / "cifar10.yaml", subset_overrides(
        ARCHIVE, cache, "nce", epochs, SETTINGS["nce"][1], (f"method.nce.temperature={temperature}", f"method.nce.noise={noise}",
                                            f"train.seed={seed}", f"train.save_epochs=[{kept}]",
                                            f"data.subset_per_class={per_class}")))
    t0 = time.perf_counter()
    last = fit(cfg, out, log=lambda s: None)
    seconds = time.perf_counter() - t0
    initial = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["knn_top1"]
    states = {int(p.stem.split("-")[1]): bank_state(load_checkpoint(p), temperature)
              for p in sorted(out.glob("epoch-*.pt"))}
    worst = max(states, key=lambda e: states[e][1])
    return {"tau": temperature, "K": noise, "seed": seed, "init": initial, "final": last["knn_top1"],
            "bank_cos_end": states[epochs][0], "bank_cos_max": max(s[0] for s in states.values()),
            "ratio_max": states[worst][1], "ratio_epoch": worst, "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["0.1,256", "0.2,256", "0.5,256", "0.5,80"],
                        help="tau,K pairs (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--every", type=int, default=5, help="keep a checkpoint every E epochs for the bank columns")
    parser.add_argument("--per-class", type=int, default=100,
                        help="training images per class (default 100: the CI test's 1,000; 500: the 5,000 of the "
                             "STL-10 5K row, 800: about CUB's 5,864 and Cars196's 8,054)")
    args = parser.parse_args(argv)
    if not ARCHIVE.is_file():
        print(f"nce_small_scale: the CIFAR-10 copy {ARCHIVE} is missing", file=sys.stderr)
        return 2
    if args.epochs % args.every:
        print(f"nce_small_scale: --every {args.every} must divide --epochs {args.epochs}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            temperature, noise = float(setting.split(",")[0]), int(setting.split(",")[1])
            for seed in args.seeds:
                rows.append(run(temperature, noise, seed, args.epochs, args.every,
                                Path(tmp) / f"t{temperature}-k{noise}-s{seed}", Path(tmp) / "cache", args.per_class))
                r = rows[-1]
                print(f"tau {r['tau']} K {r['K']} seed {r['seed']}: {r['init']:.1f} -> {r['final']:.1f} "
                      f"({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
    print(f"NCE on {10 * args.per_class:,} CIFAR-10 images, width-8 ResNet18, {args.epochs} epochs, {SETTINGS['nce'][1]} per step, torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    print("| tau | K | seed | kNN init % | kNN final % | change | bank cos max / end | max Zhat / Z (epoch) | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tau']} | {r['K']} | {r['seed']} | {r['init']:.1f} | {r['final']:.1f} | "
              f"{r['final'] - r['init']:+.1f} | {r['bank_cos_max']:.2f} / {r['bank_cos_end']:.2f} | "
              f"{r['ratio_max']:.3g} ({r['ratio_epoch']}) | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
