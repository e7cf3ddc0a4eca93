"""A step can report more than its loss (``engine.step``): named scalars averaged over the epoch into
``metrics.jsonl``, tensors handed to ``after_step``; BYOL's cosine and target spread against float64 references."""

import json

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
    (ReturnsAFloat, "method ReturnsAFloat: training_step returned float, expected the loss tensor or a dict"),
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
