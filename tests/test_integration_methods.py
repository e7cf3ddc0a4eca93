"""The compared methods learn on the real CIFAR-10 JPEG copy: after a short CPU training their weighted-kNN
top-1 beats the same network at initialisation by a margin well outside the noise (InvaSpread's own
trainings are in test_integration_cifar.py).

Setting (shared by all methods, one decode of the subset for the whole session): 100 training images per
class (n = 1,000 instances, no labels used), 300 test images per class as kNN queries (3,000), a ResNet18
of width 8, 64 instances per step, SGD lr 0.03 with cosine decay, on-device augmentation (the fast path,
on the CPU). kNN k = 50.

Noise: initialisation and trained model are scored on the same 3,000 queries, so the difference is a
paired one; with the 20-30 % of queries whose prediction changes, its standard error is at most
sqrt(0.3 / 3000) = 1.0 point. The margin of 3 points is three standard errors. Each method's epochs are
enough to clear it with room to spare in our CPU measurements (the memory-bank and classifier-weight
methods learn slowly, as the paper's Figure 3 says: they get more epochs).
"""

import json

import pytest

from conftest import cifar10_archive
from invaspread.config import load_config
from invaspread.engine.trainer import fit

pytestmark = pytest.mark.integration

MARGIN = 3.0
# method -> epochs. NCE and Triplet (hard) are absent: at this scale neither beats its initialisation
# (measured, see the README's Table 1 section), so no setting here would be an honest test of learning.
EPOCHS = {"exemplar": 40, "npsoftmax": 60, "triplet": 20}


@pytest.mark.parametrize("name", list(EPOCHS))
def test_method_learns_on_cifar10_subset(name, cifar_cache, tmp_path):
    epochs = EPOCHS[name]
    overrides = [f"data.root={cifar10_archive()}", f"data.cache_dir={cifar_cache}", "data.subset_per_class=100",
                 "data.test_subset_per_class=300", "data.num_workers=0", "augment.on_device=true",
                 "model.width=8", "train.batch_size=64", f"train.epochs={epochs}", "train.eval_every=0",
                 "train.progress=false", "optim.schedule=cosine", "optim.lr=0.03", "eval.knn_k=50",
                 f"method.name={name}"]
    cfg = load_config("configs/cifar10.yaml", overrides)
    last = fit(cfg, tmp_path / name, log=lambda s: None)
    initial = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["knn_top1"]
    print(f"{name}: kNN top-1 init {initial:.1f}% -> {last['knn_top1']:.1f}% after {epochs} epochs")
    assert last["knn_top1"] >= initial + MARGIN
