"""Does BYOL learn on the CI test's small CPU subset? kNN before and after, per setting and seed.

    python benchmarks/byol_small_scale.py                       # 2 settings x 3 seeds, 2 at a time (~8 min)
    python benchmarks/byol_small_scale.py --seeds 0 --jobs 1    # one seed per setting

Every run is the CI test's setting (tests/test_integration_methods.py: 100 CIFAR-10 training images per class,
n = 1,000; 3,000 test images as kNN queries; width-8 ResNet18; on-device augmentation; SGD with cosine decay;
kNN k = 50 on the pooled features), with BYOL's projector and predictor 256 wide, target momentum base 0.9
(cosine to 1), 16 instances per step at lr 0.025 for 30 epochs (1,890 steps: more, smaller steps learned more
than 32 or 64 per step at the same epochs), and, per setting, ``method.byol.predictor_lr_scale``: 1 (BYOL's
single optimizer) or 10 (a faster predictor, as SimSiam's fixed predictor lr and Tian et al. 2021 suggest).
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

EPOCHS, BATCH = 30, 16
SETTING = ("model.head=mlp_bn", "model.head_hidden=256", "method.byol.predictor_hidden=256",
           "method.byol.momentum=0.9", "optim.lr=0.025")


def run(scale: float, seed: int, out: Path, cache: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = load_config(ROOT / "configs" / "cifar10.yaml", subset_overrides(
        ARCHIVE, cache, "byol", EPOCHS, BATCH, (*SETTING, f"method.byol.predictor_lr_scale={scale}",
                                               f"train.seed={seed}")))
    t0 = time.perf_counter()
    last = fit(cfg, out, log=lambda s: None)
    initial = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["knn_top1"]
    return {"scale": scale, "seed": seed, "init": initial, "final": last["knn_top1"],
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", type=float, default=[1.0, 10.0],
                        help="method.byol.predictor_lr_scale values (default: %(default)s)")
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
                               subset_overrides(ARCHIVE, cache, "byol", 1, BATCH)).data)
        runs = [(scale, seed) for scale in args.scales for seed in args.seeds]
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(run, *zip(*[(s, seed, tmp / f"s{s}-seed{seed}", cache, 1) for s, seed in runs])))
    print(f"BYOL, {EPOCHS} epochs, {BATCH} per step, torch {torch.__version__}, 1 thread per run")
    print("| predictor_lr_scale | seed | kNN init | kNN after | gain | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scale']:g} | {r['seed']} | {r['init']:.1f} | {r['final']:.1f} | {r['final'] - r['init']:+.1f} "
              f"| {r['seconds']:.0f} |")
    for scale in args.scales:
        gains = [r["final"] - r["init"] for r in rows if r["scale"] == scale]
        print(f"predictor_lr_scale {scale:g}: gain mean {sum(gains) / len(gains):+.1f}, min {min(gains):+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
