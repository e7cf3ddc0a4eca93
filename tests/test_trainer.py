"""Training engine: schedule, checkpoints, exact resume after a kill, configuration errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import cifar10_archive
from invaspread.config import ConfigError, InvaspreadError, load_config
from invaspread.engine.checkpoint import load_checkpoint
from invaspread.engine.trainer import fit, learning_rate


def tiny_overrides(epochs=3):
    return ["data.subset_per_class=20", "data.num_workers=0", "model.width=8", "model.embedding_dim=16",
            f"train.epochs={epochs}", "train.batch_size=32", "train.progress=false", "eval.knn_k=10",
            "optim.schedule=cosine"]


def test_learning_rate_schedules():
    cfg = load_config(None).optim  # paper: 0.03, x0.1 at 120, x0.01 at 160
    assert learning_rate(cfg, 200, 0) == pytest.approx(0.03)
    assert learning_rate(cfg, 200, 119.9) == pytest.approx(0.03)
    assert learning_rate(cfg, 200, 120) == pytest.approx(0.003)
    assert learning_rate(cfg, 200, 165.5) == pytest.approx(0.0003)
    cos = load_config(None, ["optim.schedule=cosine", "optim.warmup_epochs=2", "optim.lr=1.0"]).optim
    assert learning_rate(cos, 10, 1.0) == pytest.approx(0.5)
    assert learning_rate(cos, 10, 2.0) == pytest.approx(1.0)
    assert learning_rate(cos, 10, 6.0) == pytest.approx(0.5)
    assert learning_rate(cos, 10, 10.0) == pytest.approx(0.0, abs=1e-12)


def test_fit_writes_config_metrics_and_safe_checkpoint(tmp_path):
    cfg = load_config(None, tiny_overrides(epochs=2))
    last = fit(cfg, tmp_path / "run", log=lambda s: None)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [0, 1, 2]
    for key in ("loss", "lr", "knn_top1", "knn_top5", "train_seconds", "eval_seconds", "images_per_second"):
        assert key in lines[-1]
    assert last == lines[-1]
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["model"]["width"] == 8
    state = load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 2 and state["config"]["data"]["subset_per_class"] == 20
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(cfg, tmp_path / "run", log=lambda s: None)


class Evil:
    pass


def test_checkpoint_loading_refuses_pickled_objects(tmp_path):
    torch.save({"model": {}, "config": {}, "epoch": 1, "payload": Evil()}, tmp_path / "bad.pt")
    with pytest.raises(InvaspreadError, match=r"cannot load checkpoint .*objects other than tensors.*Evil") as info:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(info.value) and "safe_globals" not in str(info.value)   # one line, no advice to trust it
    with pytest.raises(InvaspreadError, match="no checkpoint"):
        load_checkpoint(tmp_path / "empty_dir_that_does_not_exist")


def test_killed_then_resumed_run_matches_uninterrupted_run(tmp_path):
    """On the real CIFAR-10 copy: SIGKILL a training process after its first checkpoint, resume it,
    and compare every weight with a run that was never interrupted."""
    epochs = 4
    overrides = tiny_overrides(epochs) + ["data.name=cifar10", f"data.root={cifar10_archive()}",
                                          f"data.cache_dir={tmp_path / 'cache'}", "data.test_subset_per_class=10"]
    full = tmp_path / "full"
    fit(load_config(None, overrides), full, log=lambda s: None)

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "invaspread.cli", "train", "--out", str(killed)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while time.time() < deadline:
        if (killed / "last.pt").exists():
            break
        if proc.poll() is not None:
            pytest.fail(f"training subprocess ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_at_kill = load_checkpoint(killed)["epoch"]
    assert epoch_at_kill < epochs, "the run finished before it could be killed; the test proves nothing"

    fit(None, killed, resume=True, log=lambda s: None)
    a, b = load_checkpoint(full), load_checkpoint(killed)
    assert b["epoch"] == epochs
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    lines = [json.loads(ln)["epoch"] for ln in (killed / "metrics.jsonl").read_text().splitlines()]
    assert lines == list(range(epochs + 1))


def test_bad_configuration_values_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="batch_size=300 is larger than"):
        fit(load_config(None, tiny_overrides() + ["train.batch_size=300"]), tmp_path / "r", log=lambda s: None)
    if torch.cuda.is_available():
        return  # the CUDA-missing message cannot be provoked here
    with pytest.raises(ConfigError, match="train.device=cuda"):
        fit(load_config(None, tiny_overrides() + ["train.device=cuda"]), tmp_path / "r2", log=lambda s: None)


def test_nearest_neighbour_positives_against_brute_force():
    import numpy as np

    from invaspread.methods import nearest_neighbour_positives

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(500, 16, generator=g)
    pos = nearest_neighbour_positives(feats, torch.Generator().manual_seed(1), chunk_size=77).numpy()
    f = feats.numpy() / np.linalg.norm(feats.numpy(), axis=1, keepdims=True)
    sims = f @ f.T
    np.fill_diagonal(sims, -np.inf)
    nn = sims.argmax(1)
    is_self = pos == np.arange(500)
    assert np.all(is_self | (pos == nn))
    assert abs(is_self.mean() - 0.5) < 4 * np.sqrt(0.25 / 500)


def test_neighbour_positive_option_trains(tmp_path):
    cfg = load_config(None, tiny_overrides(epochs=1) + ["method.invaspread.positive=augmentation_or_neighbour"])
    last = fit(cfg, tmp_path / "nn", log=lambda s: None)
    assert last["epoch"] == 1 and last["loss"] == last["loss"]  # finite, not NaN


def test_linear_protocol_never_updates_the_backbone(tmp_path):
    from invaspread.data.datasets import build_data
    from invaspread.engine.evaluation import evaluate
    from invaspread.models import build_model

    cfg = load_config(None, tiny_overrides())
    model = build_model(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evaluate(model, build_data(cfg.data, progress=False), cfg, torch.device("cpu"), "linear")
    assert 0 <= result["linear_top1"] <= 100
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unlabelled_run_says_there_is_nothing_to_evaluate(tmp_path):
    """A flat folder of images (no classes, no test_root): no bare 'epoch=0' line, a sentence instead."""
    from conftest import coloured_image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(40):
        coloured_image(i % 4, i, (32, 32)).save(folder / f"{i:03d}.png")
    cfg = load_config(None, ["data.name=image_folder", f"data.root={folder}", "model.width=8", "train.epochs=1",
                             "train.batch_size=16", "data.num_workers=0", "train.progress=false"])
    log = []
    fit(cfg, tmp_path / "run", log=log.append)
    assert "epoch=0" not in log and any("nothing to evaluate" in line for line in log)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [1] and "loss" in lines[0]


def test_flipped_bytes_in_a_checkpoint_are_detected(tmp_path):
    from invaspread.engine.checkpoint import save_checkpoint

    weights = {"w": torch.randn(512, 512)}          # 1 MiB of tensor data: the middle of the file is weights
    save_checkpoint({"model": weights, "config": {}, "epoch": 3}, tmp_path / "last.pt")
    assert torch.equal(load_checkpoint(tmp_path)["model"]["w"], weights["w"])
    raw = bytearray((tmp_path / "last.pt").read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    (tmp_path / "last.pt").write_bytes(bytes(raw))
    with pytest.raises(InvaspreadError, match="is corrupt"):
        load_checkpoint(tmp_path)


def test_a_diverged_run_is_an_error_that_tells_the_truth(tmp_path):
    """lr = 1e6 makes the weights non-finite: the run stops with a true message, saves nothing non-finite."""
    cfg = load_config(None, tiny_overrides(epochs=2) + ["optim.lr=1000000.0", "optim.schedule=constant"])
    with pytest.raises(InvaspreadError, match="became NaN or infinite") as info:
        fit(cfg, tmp_path / "run", log=lambda s: None)
    message = str(info.value)
    if (tmp_path / "run" / "last.pt").exists():
        state = load_checkpoint(tmp_path / "run")
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
        assert f"still holds epoch {state['epoch']}" in message
    else:
        assert "no checkpoint was written" in message


def test_non_finite_embeddings_are_never_scored():
    from invaspread.data.datasets import build_data
    from invaspread.engine.evaluation import evaluate
    from invaspread.models import build_model

    cfg = load_config(None, tiny_overrides())
    model = build_model(cfg.model)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(InvaspreadError, match="NaN or infinite"):
        evaluate(model, build_data(cfg.data, progress=False), cfg, torch.device("cpu"))
