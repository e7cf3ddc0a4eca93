"""Short CPU trainings on the real CIFAR-10 JPEG copy: the learned embedding must beat the same
network at initialisation by a clear margin, in the seen (kNN) and unseen (Recall@K, NMI) settings."""

import json

import pytest

from conftest import cifar10_archive
from invaspread.config import load_config
from invaspread.engine.trainer import fit

pytestmark = pytest.mark.integration


def cifar_overrides(tmp_cache, train_per_class, test_per_class, epochs):
    return [f"data.root={cifar10_archive()}", f"data.cache_dir={tmp_cache}",
            f"data.subset_per_class={train_per_class}", f"data.test_subset_per_class={test_per_class}",
            "data.num_workers=2", "model.width=16", f"train.epochs={epochs}", "train.eval_every=0",
            "train.progress=false", "optim.schedule=cosine", "optim.lr=0.03", "eval.knn_k=50"]


def test_cifar10_subset_knn_improves_over_initialisation(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "cifar-cache"
    cfg = load_config("configs/cifar10.yaml", cifar_overrides(cache, 300, 100, 4))  # measured: 25.6 -> 34.1
    log = []
    run = tmp_path_factory.mktemp("seen")
    last = fit(cfg, run, log=log.append)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    initial, final = lines[0]["knn_top1"], last["knn_top1"]
    print(f"CIFAR-10 subset kNN top-1: init {initial:.1f}% -> trained {final:.1f}%")
    assert final >= initial + 5.0, log


def test_cifar10_unseen_classes_retrieval_improves_over_initialisation(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "cifar-cache"
    # 8 epochs: at 4 this machine measured R@1 36.6 -> 39.6 (below the +4 margin; the same at commit 64bec5e),
    # at 8: 36.6 -> 46.4, NMI 7.4 -> 16.1 (2026-11-30, torch 2.14.1, 2 CPU cores)
    cfg = load_config("configs/cifar10_unseen.yaml", cifar_overrides(cache, 500, 100, 8))
    run = tmp_path_factory.mktemp("unseen")
    last = fit(cfg, run, log=lambda s: None)
    initial = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    print(f"CIFAR-10 5/5 unseen: init R@1/2/4/8 " + "/".join(f"{initial[f'recall@{k}']:.1f}" for k in (1, 2, 4, 8))
          + f" NMI {initial['nmi']:.1f} -> trained " + "/".join(f"{last[f'recall@{k}']:.1f}" for k in (1, 2, 4, 8))
          + f" NMI {last['nmi']:.1f}")
    assert last["recall@1"] >= initial["recall@1"] + 4.0
    assert last["recall@2"] > initial["recall@2"]
    # (R@8 saturates near 90% with only 5 test classes; NMI does not)
    assert last["nmi"] >= initial["nmi"] + 3.0
