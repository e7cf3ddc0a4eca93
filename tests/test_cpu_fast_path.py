"""The CPU fast path (``engine.precision``): bf16 autocast where the CPU computes bf16 natively, channels_last and
on-device augmentation on the CPU; what a run records; float32 losses; the same path for evaluation and embed."""

import copy
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import REPO, train_until_first_checkpoint
from invaspread.config import load_config
from invaspread.data.bundle import usable_workers
from invaspread.data.datasets import build_data
from invaspread.engine import precision, trainer
from invaspread.engine.batches import CPUBatches, DeviceBatches, make_batches
from invaspread.engine.checkpoint import load_checkpoint
from invaspread.engine.features import evaluation_network
from invaspread.methods import build_method
from invaspread.models import build_model

CPU = torch.device("cpu")


def tiny(extra=()):
    return load_config(None, ["model.width=8", "model.embedding_dim=16", "data.image_size=16", "train.batch_size=16",
                              "data.subset_per_class=8", "data.test_subset_per_class=4", "data.num_workers=0",
                              "train.progress=false", "eval.knn_k=5", "optim.schedule=cosine", "train.epochs=2",
                              *extra])


@pytest.mark.parametrize("flags, native", [
    ("fpu avx512f avx512_vnni avx512_bf16 amx_tile", True),   # Sapphire Rapids and later
    ("fpu avx512f amx_bf16 amx_tile amx_int8", True),
    ("fpu sse sse2 avx2 avx512f avx512_vnni", False),          # this project's development VM: no bf16 unit exposed
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert precision.cpu_computes_bf16.__wrapped__(str(info)) is native
    assert precision.cpu_computes_bf16.__wrapped__(str(tmp_path / "absent")) is False


def test_forward_settings_per_device_and_key():
    cfg = tiny(["train.cpu_bf16=true"])
    assert precision.forward_settings(cfg, CPU) == (torch.bfloat16, torch.channels_last)
    cfg = tiny(["train.cpu_bf16=false", "train.cpu_fast_path=false"])
    assert precision.forward_settings(cfg, CPU) == (None, torch.contiguous_format)
    cfg = tiny(["train.cpu_bf16=false", "train.bf16=true", "train.channels_last=false"])
    assert precision.forward_settings(cfg, torch.device("cuda")) == (torch.bfloat16, torch.contiguous_format)
    assert precision.forward_settings(cfg, CPU) == (None, torch.channels_last)


@pytest.mark.parametrize("native", [True, False])
def test_a_new_run_records_what_null_meant_on_its_cpu(tmp_path, monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: native)
    cfg = tiny(["train.epochs=1"])
    assert cfg.train.cpu_bf16 is None
    lines = []
    trainer.fit(cfg, tmp_path / "run", log=lines.append)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["cpu_bf16"] is native and saved["train"]["cpu_fast_path"] is True
    assert load_checkpoint(tmp_path / "run")["config"]["train"]["cpu_bf16"] is native
    first = next(line for line in lines if "training images" in line)
    assert ("bf16 autocast, channels_last" if native else "float32 (this CPU has no native bf16), channels_last") in first
    assert "DeviceBatches" in first


def test_cpu_batches_follow_the_fast_path_and_augment_on_device_overrides_it():
    cfg = tiny()
    bundle = build_data(cfg.data)
    args = (bundle.train, cfg.data, cfg.augment, bundle.mean, bundle.std, 8, CPU)
    assert isinstance(make_batches(*args, True), DeviceBatches)
    assert isinstance(make_batches(*args, False), CPUBatches)
    cfg.augment.on_device = False
    assert isinstance(make_batches(*args, True), CPUBatches)
    cfg.augment.on_device = True
    assert isinstance(make_batches(*args, False), DeviceBatches)


def test_bf16_steps_compute_convolutions_in_bf16_and_the_loss_in_float32():
    cfg = tiny(["train.cpu_bf16=true"])
    torch.manual_seed(0)
    method = build_method(cfg, build_model(cfg.model), 16)
    seen = []
    conv = next(m for m in method.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method(torch.randn(2, 16, 3, 16, 16), torch.arange(16))
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32 and loss.ndim == 0


def test_evaluation_network_takes_the_runs_path_and_matches_a_plain_float32_forward():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 16, 16)
    for extra, tolerance in ((["train.cpu_bf16=false"], 1e-5), (["train.cpu_bf16=true"], 5e-2)):
        cfg = tiny(extra)
        model = build_model(cfg.model).eval()
        with torch.no_grad():
            reference = copy.deepcopy(model)(x)    # contiguous float32, the model as built
            out = evaluation_network(model, cfg)(x)
        assert out.dtype == torch.float32 and model.training is False
        assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last) or next(
            model.parameters()).dim() != 4
        torch.testing.assert_close(out, reference, atol=tolerance, rtol=tolerance)


def test_a_bf16_cpu_run_resumes_bit_exactly(tmp_path, monkeypatch):
    cfg = tiny(["train.cpu_bf16=true"])
    straight = trainer.fit(copy.deepcopy(cfg), tmp_path / "straight", log=lambda s: None)
    train_until_first_checkpoint(copy.deepcopy(cfg), tmp_path / "stopped", monkeypatch)
    resumed = trainer.fit(None, tmp_path / "stopped", resume=True, log=lambda s: None)
    assert (resumed["loss"], resumed["knn_top1"]) == (straight["loss"], straight["knn_top1"])


def test_loader_workers_never_exceed_the_cores():
    import os

    cores = len(os.sched_getaffinity(0))
    assert usable_workers(64) == cores and usable_workers(0) == 0 and usable_workers(1) == min(1, cores)


def test_the_cost_is_announced_before_the_untrained_evaluation_and_training_is_unchanged(tmp_path):
    lines = []
    assert trainer.ESTIMATE_FROM_STEPS <= 20   # 5 steps per epoch: 4 epochs are announced
    with_line = trainer.fit(tiny(["train.epochs=4"]), tmp_path / "a", log=lines.append)
    cost = next(i for i, line in enumerate(lines) if "per step (the network's step, timed on a copy" in line)
    assert cost < next(i for i, line in enumerate(lines) if line.startswith("epoch=0"))
    # the copy's step leaves the run's own state and random streams alone: the same run without it is identical
    monkeypatched = trainer.cost_line
    trainer.cost_line = lambda run: "no estimate"
    try:
        without = trainer.fit(tiny(["train.epochs=4"]), tmp_path / "b", log=lambda s: None)
    finally:
        trainer.cost_line = monkeypatched
    assert (with_line["loss"], with_line["knn_top1"]) == (without["loss"], without["knn_top1"])
    short = []   # 10 steps: not worth a step of estimate
    trainer.fit(tiny(), tmp_path / "c", log=short.append)
    assert not any("timed on a copy" in line for line in short) and any(ln.startswith("epoch=2") for ln in short)


def test_sigterm_ends_train_with_the_interrupted_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "invaspread", "train", "--out", str(tmp_path / "run"), "--set",
                             "train.progress=false", "--set", "model.width=8"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("invaspread: terminated; every finished epoch is saved"), err
