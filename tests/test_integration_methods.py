"""The compared methods learn on the real CIFAR-10 JPEG copy: after a short CPU training their weighted-kNN
top-1 beats the same network at initialisation by a margin well outside the noise (InvaSpread's own
trainings are in test_integration_cifar.py).

Setting (shared by all methods, one decode of the subset for the whole session): 100 training images per
class (n = 1,000 instances, no labels used), 300 test images per class as kNN queries (3,000), a ResNet18
of width 8, 64 instances per step (16 for BYOL), SGD lr 0.03 with cosine decay, on-device augmentation (the fast path,
on the CPU). kNN k = 50.

Noise: initialisation and trained model are scored on the same 3,000 queries, so the difference is a
paired one; with the 20-30 % of queries whose prediction changes, its standard error is at most
sqrt(0.3 / 3000) = 1.0 point. The margin of 3 points is three standard errors. Each method's epochs are
enough to clear it with room to spare in our CPU measurements (the memory-bank and classifier-weight
methods learn slowly, as the paper's Figure 3 says: they get more epochs).
"""

import json

import pytest
import torch

from conftest import cifar10_archive
from invaspread.config import load_config
from invaspread.engine.trainer import fit

pytestmark = pytest.mark.integration

MARGIN = 3.0
# method -> (epochs, instances per step, extra settings). Absent: Triplet (hard). At 64 and 128 instances per step
# the hardest of 126 / 254 negatives of this tiny network collapses it (loss -> margin, kNN below init; README
# "Table 1"); at 16 it gains +2.2 to +6.0 points, but no setting of a search over epochs, lr and batch cleared 3 on
# each of three seeds, and the same float32 run gained +4.7 on one machine and +0.8 on another of the same kind
# (benchmarks/results/2026-12-06-CPU-triplet-hard-small-scale.md). DeepCluster (10 clusters) re-clusters every 5 epochs:
# an epoch of this subset is 15 steps, and a classifier re-initialised every 15 steps learns nothing (the
# reference re-clusters after an ImageNet epoch, ~5,000 steps; measured: kNN flat at reassign=1).
# NCE trains at tau = 0.5 with K = 256 noise entries (K / n = 0.26; lemniscate's 4096 / 50,000 = 0.08): its Z
# is fixed from the first batch, against a bank of random rows (Z ~ n e^(1 / (2 d tau^2))), and a bank that
# fills with this small network's similar features has a partition function e^(c / tau) times larger (c the
# bank's mean cosine), which multiplies the push of the noise terms. Measured at tau = 0.1 / 0.2: c up to 0.95 /
# 0.82, partition / Z up to 10,100 / 79, kNN 21.7 -> 14.8 / 16.1 %; at tau = 0.5 the ratio stays under 2.4 and
# it learns: +6.3 / +7.6 / +10.0 points over seeds 0 / 1 / 2 (benchmarks/nce_small_scale.py, README "Table 1").
# Absent: MOM, trained from a random network, loses kNN, as the paper's Table 6 says it must ("MOM fails";
# README) -- no setting here would be an honest test of learning.
SETTINGS = {"exemplar": (30, 64, ()), "npsoftmax": (60, 64, ()), "triplet": (20, 64, ()),
            "nce": (60, 64, ("method.nce.noise=256", "method.nce.temperature=0.5")),
            "deepcluster": (40, 64, ("method.deepcluster.clusters=10", "method.deepcluster.reassign=5",
                                 # the measured setting: with the reference's momentum-free classifier SGD (the
                                 # default since 2026-11-30) this subset went 21.7 -> 24.1 only
                                 "method.deepcluster.classifier_optimizer=shared")),
            # the methods after the paper, with their configs' heads at this width (pooled features: 64-d) and
            # evaluated, as they are everywhere, on the pooled features (their epoch 0: 23.1 %)
            "simclr": (15, 64, ("model.head=mlp", "model.head_hidden=64")),
            "mocov2": (30, 64, ("model.head=mlp", "model.head_hidden=64", "method.mocov2.queue=1024")),
            # BYOL learns slowly here: 60 epochs of 16 per step (3,780 steps) at lr 0.025 gained +7.0 / +5.8 / +8.2
            # over seeds 0-2 on one thread, 30 epochs about half that; its trajectory depends on the thread count
            # (seed 0 on two threads: +3.5), so it trains on one, as measured
            # (benchmarks/results/2026-12-06-CPU-byol-step-size.md)
            "byol": (60, 16, ("model.head=mlp_bn", "model.head_hidden=256", "method.byol.predictor_hidden=256",
                              "method.byol.momentum=0.9", "optim.lr=0.025"))}


def subset_overrides(archive, cache, name: str, epochs: int, batch_size: int, extra=()) -> list:
    """The ``--set``s of this module's setting (also run by benchmarks/nce_small_scale.py)."""
    return [f"data.root={archive}", f"data.cache_dir={cache}", "data.subset_per_class=100",
            "data.test_subset_per_class=300", "data.num_workers=0", "augment.on_device=true", "model.width=8",
            f"train.batch_size={batch_size}", f"train.epochs={epochs}", "train.eval_every=0", "train.progress=false",
            "optim.schedule=cosine", "optim.lr=0.03", "eval.knn_k=50", f"method.name={name}", *extra]


# intra-op threads of every training here: one, as measured (a trajectory depends on the thread count, BYOL's
# visibly), so a run under pytest-xdist (the README's -n 2: two workers, one thread each) and a plain run agree
THREADS = 1


@pytest.mark.parametrize("name", list(SETTINGS))
def test_method_learns_on_cifar10_subset(name, cifar_cache, tmp_path):
    epochs, batch_size, extra = SETTINGS[name]
    cfg = load_config("configs/cifar10.yaml", subset_overrides(cifar10_archive(), cifar_cache, name, epochs,
                                                               batch_size, extra))
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        last = fit(cfg, tmp_path / name, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    initial = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["knn_top1"]
    print(f"{name}: kNN top-1 init {initial:.1f}% -> {last['knn_top1']:.1f}% after {epochs} epochs")
    assert last["knn_top1"] >= initial + MARGIN
