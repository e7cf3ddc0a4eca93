"""A step can report more than its loss (``engine.step``): named scalars averaged over the epoch into
``metrics.jsonl``, tensors handed to ``after_step``; BYOL's cosine and target spread against float64 references."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_method_config as tiny
from invaspread.config import InvaspreadError
from invaspread.engine import trainer
from invaspread.methods import METHODS, build_method
from invaspread.models import build_model


class Reporting(METHODS["invaspread"]):
    """InvaSpread whose step also reports the mean of its embeddings' first coordinate, keeps the embeddings for
    ``after_step``, and records what it reported and what it was handed."""

    reported, handed = [], []

    def training_step(self, views, index):
        z = self.embed(views)
        first = z[..., 0].mean()
        Reporting.reported.append(float(first.detach()))
        return {"loss": self.loss(z[0], z[1]), "first_coordinate": first, "embeddings": z}

    def after_step(self, step, total_steps, outputs):
        Reporting.handed.append((step, outputs["embeddings"].requires_grad, outputs["loss"].requires_grad))


def test_reported_scalars_are_the_epochs_mean_and_after_step_gets_the_detached_outputs(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "reporting", Reporting)
    Reporting.reported, Reporting.handed = [], []
    trainer.fit(tiny("reporting"), tmp_path / "run", log=lambda s: None)      # 5 steps per epoch, 2 epochs
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "first_coordinate" not in lines[0]                                 # epoch 0: no step taken
    for epoch in (1, 2):
        expected = np.mean(Reporting.reported[5 * (epoch - 1):5 * epoch])
        assert lines[epoch]["first_coordinate"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert Reporting.handed == [(step, False, False) for step in range(1, 11)]


class NamesTheLr(METHODS["invaspread"]):
    def training_step(self, views, index):
        loss = super().training_step(views, index)
        return {"loss": loss, "lr": loss.detach()}

    def after_step(self, step, total_steps, outputs):
        pass


class ReturnsAFloat(METHODS["invaspread"]):
    def training_step(self, views, index):
        return float(super().training_step(views, index).detach())


@pytest.mark.parametrize("cls, message", [
    (NamesTheLr, "method NamesTheLr: training_step reports lr, a name the trainer writes itself"),
    (ReturnsAFloat, "method ReturnsAFloat: training_step returned float; expected the loss as a scalar tensor"),
])
def test_a_step_output_the_trainer_cannot_use_is_one_line_naming_the_method(cls, message, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "odd", cls)
    with pytest.raises(InvaspreadError, match=message):
        trainer.fit(tiny("odd"), tmp_path / "run", log=lambda s: None)


def test_byol_reports_the_mean_cosine_of_both_directions_and_the_targets_spread():
    cfg = tiny("byol")
    method = build_method(cfg, build_model(cfg.model), 16).train()
    views = torch.randn(2, 16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = method.training_step(views, torch.arange(16))
    with torch.no_grad():   # train-mode BatchNorm: the same batch gives the same outputs again
        p = method.predictor(method.embed(views, normalized=False).flatten(0, 1)).view(2, 16, -1).double()
        z = method.embed(views, normalized=False, network=method.target).double()
    cosines = [F.cosine_similarity(p[0], z[1]).mean(), F.cosine_similarity(p[1], z[0]).mean()]
    assert float(out["cosine"]) == pytest.approx(float(sum(cosines) / 2), abs=1e-5)
    unit = F.normalize(z.flatten(0, 1), dim=1).numpy()
    spread = unit.std(axis=0, ddof=1).mean() * np.sqrt(unit.shape[1])
    assert float(out["target_spread"]) == pytest.approx(spread, rel=1e-4)


@pytest.mark.parametrize("name", ["triplet", "triplet_hard"])
def test_triplet_reports_its_gaps_against_a_float64_loop(name):
    """d(a, p) - d(a, n) per anchor: the hardest other-instance row (hard), and the loss is the hinge of them."""
    cfg = tiny(name)
    method = build_method(cfg, build_model(cfg.model), 16).train()
    views = torch.randn(2, 16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    out = method.training_step(views, torch.arange(16))
    with torch.no_grad():
        x = method.embed(views).flatten(0, 1).double()                     # (32, d): view 1 rows, then view 2
    gaps = []
    for a in range(32):
        positive = (a + 16) % 32
        d = [float(torch.dist(x[a], x[j])) for j in range(32)]
        if name == "triplet_hard":
            negative = min(d[j] for j in range(32) if j % 16 != a % 16)
            gaps.append(d[positive] - negative)
    margin = method.loss.margin
    if name == "triplet_hard":
        assert float(out["triplet_gap"]) == pytest.approx(np.mean(gaps), abs=1e-4)
        assert float(out["triplet_active"]) == pytest.approx(np.mean([g > -margin for g in gaps]))
        assert float(out["loss"].detach()) == pytest.approx(np.mean([max(0.0, g + margin) for g in gaps]), abs=1e-4)
    else:   # random negatives: the loss is the hinge of the reported gaps' draw
        assert -2 <= float(out["triplet_gap"]) <= 2 and 0 <= float(out["triplet_active"]) <= 1
        torch.manual_seed(0)
        gaps = method.loss.gaps(*method.embed(views))
        assert float(out["loss"].detach()) == pytest.approx(float((gaps.detach() + margin).clamp_min(0).mean()), abs=1e-6)
        assert float(out["triplet_gap"]) == pytest.approx(float(gaps.detach().mean()), abs=1e-6)


def test_nce_reports_the_batch_partition_over_its_fixed_z():
    """1 on the batch Z was estimated from; later, n x the mean of exp(v . f / tau) over the batch's own and
    noise entries (a float64 loop) over that Z."""
    cfg = tiny("nce", ["method.nce.noise=8"])
    method = build_method(cfg, build_model(cfg.model), 64).train()
    views = torch.randn(1, 16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    index = torch.arange(16)
    torch.manual_seed(0)
    first = method.training_step(views, index)
    assert float(first["nce_z_ratio"]) == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        method.bank.features.copy_(F.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(3)), dim=1))
    torch.manual_seed(1)
    noise = torch.randint(0, 64, (16, 8))                   # what the step draws next from the global stream
    torch.manual_seed(1)
    second = method.training_step(views, index)
    with torch.no_grad():
        f = method._features(views, index).double()
    bank = method.bank.features.double()
    total = sum(math.exp(float(bank[j] @ f[b]) / method.loss.temperature)
                for b in range(16) for j in [b] + noise[b].tolist())
    z = 64 * total / (16 * 9)
    assert float(second["nce_z_ratio"]) == pytest.approx(z / float(method.z), rel=1e-4)


def test_deepcluster_reports_its_clusters_sizes():
    cfg = tiny("deepcluster", ["method.deepcluster.clusters=5", "method.deepcluster.pca_dims=8"])
    method = build_method(cfg, build_model(cfg.model), 80).train()
    pooled = torch.randn(80, method.encoder.head.in_features, generator=torch.Generator().manual_seed(4))
    method.on_epoch_start(1, lambda _: pooled)   # the pooled training features the clustering sees
    counts = np.bincount(method.labels.numpy(), minlength=5)
    rows = torch.arange(16)
    out = method.training_step(torch.randn(1, 16, 3, 16, 16), rows)
    assert float(out["clusters_used"]) == (counts > 0).sum()
    assert float(out["largest_cluster_share"]) == pytest.approx(counts.max() / 80)
