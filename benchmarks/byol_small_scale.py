"""Does BYOL learn on the CI test's small CPU subset? kNN before and after, per setting and seed.

    python benchmarks/byol_small_scale.py                       # 3 step sizes x 3 seeds, 2 at a time
    python benchmarks/byol_small_scale.py --settings 16:0.025 --scales 1 10     # the 2026-12-01 table
    python benchmarks/byol_small_scale.py --settings 32:0.008 64:0.016 --seeds 0 --jobs 1
    python benchmarks/byol_small_scale.py --settings 16:0.025 --epochs 60 --recipes released byol

Every run is the CI test's setting (tests/test_integration_methods.py: 100 CIFAR-10 training images per class,
n = 1,000; 3,000 test images as kNN queries; width-8 ResNet18; on-device augmentation; SGD with cosine decay;
kNN k = 50 on the pooled features), with BYOL's projector and predictor 256 wide, target momentum base 0.9
(cosine to 1), 30 epochs, and per setting (``--settings BATCH:LR``) the instances per step and the lr, and
(``--scales``) ``method.byol.predictor_lr_scale``: 1 (BYOL's single optimizer) or 10 (a faster predictor, as
SimSiam's fixed predictor lr and Tian et al. 2021 suggest), and (``--recipes``) the augmentation: ``released``
(InvaSpread's, the CI test's) or ``byol`` (BYOL's own, blur and solarisation per view).

The default step sizes test the hypothesis that the 2026-12-01 search (lr 0.025-0.2) stepped 13-100x too far:
this project's loss is the authors' sum of (2 - 2 cos) over both directions; lightly's CIFAR-10 benchmark
minimises 0.5 (negcos + negcos), a quarter of that gradient, at lr 0.06 x batch / 128, i.e. about 0.0019 at 16
per step in this loss's scale. Defaults: 16 per step at lr 0.002, 0.004, 0.008.
The table says, per run, the kNN top-1 at initialisation and after training, their difference, and the seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from invaspread.config import load_config
from invaspread.engine.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import CIFAR10_ARCHIVE as ARCHIVE  # noqa: E402
from test_integration_methods import subset_overrides  # noqa: E402  (the CI test's setting)

EPOCHS = 30
SETTING = ("model.head=mlp_bn", "model.head_hidden=256", "method.byol.predictor_hidden=256",
           "method.byol.momentum=0.9")


def step_setting(text: str):
    """'16:0.002' -> (16, 0.002)."""
    try:
        batch, lr = text.split(":")
        return int(batch), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BATCH:LR, e.g. 16:0.002") from None


def run(batch: int, lr: float, scale: float, recipe: str, seed: int, epochs: int, out: Path, cache: Path,
        threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = load_config(ROOT / "configs" / "cifar10.yaml", subset_overrides(
        ARCHIVE, cache, "byol", epochs, batch, (*SETTING, f"optim.lr={lr}", f"method.byol.predictor_lr_scale={scale}",
                                               f"augment.recipe={recipe}", f"train.seed={seed}")))
    t0 = time.perf_counter()
    last = fit(cfg, out, log=lambda s: None)
    initial = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["knn_top1"]
    return {"batch": batch, "lr": lr, "scale": scale, "recipe": recipe, "seed": seed, "init": initial,
            "final": last["knn_top1"],
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", type=step_setting,
                        default=[(16, 0.002), (16, 0.004), (16, 0.008)],
                        help="BATCH:LR pairs, instances per step and lr (default: 16:0.002 16:0.004 16:0.008)")
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0],
                        help="method.byol.predictor_lr_scale values (default: %(default)s)")
    parser.add_argument("--recipes", nargs="+", default=["released"], choices=["released", "byol"],
                        help="augment.recipe values (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each")
    args = parser.parse_args(argv)
    if not ARCHIVE.is_file():
        print(f"no CIFAR-10 copy at {ARCHIVE}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        # decode the subset once, before the parallel runs would each decode it
        from invaspread.data.datasets import build_data
        build_data(load_config(ROOT / "configs" / "cifar10.yaml",
                               subset_overrides(ARCHIVE, cache, "byol", 1, 16)).data)
        runs = [(batch, lr, scale, recipe, seed, args.epochs, tmp / f"b{batch}-lr{lr}-s{scale}-{recipe}-seed{seed}",
                 cache, 1)
                for batch, lr in args.settings for scale in args.scales for recipe in args.recipes
                for seed in args.seeds]
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run, *r) for r in runs]
            rows = []
            for future in futures:
                rows.append(future.result())
                r = rows[-1]
                print(f"  {r['batch']}:{r['lr']:g} x{r['scale']:g} {r['recipe']} seed {r['seed']}: {r['init']:.1f} -> "
                      f"{r['final']:.1f} ({r['seconds']:.0f} s)", flush=True)
    print(f"BYOL, {args.epochs} epochs, torch {torch.__version__}, 1 thread per run")
    print("| per step | lr | predictor_lr_scale | augmentation | seed | kNN init | kNN after | gain | seconds |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['lr']:g} | {r['scale']:g} | {r['recipe']} | {r['seed']} | {r['init']:.1f} "
              f"| {r['final']:.1f} | {r['final'] - r['init']:+.1f} | {r['seconds']:.0f} |")
    for batch, lr in args.settings:
        for scale in args.scales:
            for recipe in args.recipes:
                gains = [r["final"] - r["init"] for r in rows
                         if (r["batch"], r["lr"], r["scale"], r["recipe"]) == (batch, lr, scale, recipe)]
                print(f"{batch} per step, lr {lr:g}, predictor x{scale:g}, {recipe} augmentation: gain mean "
                      f"{sum(gains) / len(gains):+.1f}, min {min(gains):+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
