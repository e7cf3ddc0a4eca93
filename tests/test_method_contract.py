"""The method contract: the successors' losses against float64 loops of their papers' formulas, their state
updates (queue, EMA targets, momentum schedule), the step counter given to ``after_step``, evaluation features,
a run saved with the old ``loss:`` section resuming bit-exactly, and a method installed through an entry point from the README."""

import copy
import json
import math
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, install_readme_plugin, train_until_first_checkpoint
from conftest import tiny_method_config as tiny
from invaspread.config import ConfigError, from_dict, load_config
from invaspread.engine import trainer
from invaspread.engine.checkpoint import load_checkpoint
from invaspread.engine.features import evaluation_network
from invaspread.losses import BYOLLoss, MoCoLoss, NTXentLoss
from invaspread.methods import METHODS, build_method, ema_update, registry
from invaspread.methods.byol import target_momentum
from invaspread.models import build_model

FIXTURE = REPO / "tests" / "fixtures" / "run_with_loss_section"


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def grads(loss_fn, *inputs):
    xs = [x.clone().requires_grad_(True) for x in inputs]
    loss = loss_fn(*xs)
    loss.backward()
    return loss.detach(), [x.grad for x in xs]


def ntxent_loop(z1, z2, tau):
    """SimCLR Eq. 1 written out: every anchor a of the 2N rows against its other view over all k != a."""
    x = [v / v.norm() for v in torch.cat([z1, z2])]
    n, total = z1.shape[0], 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        denominator = sum(torch.exp(x[a] @ x[k] / tau) for k in range(2 * n) if k != a)
        total = total - torch.log(torch.exp(x[a] @ x[p] / tau) / denominator)
    return total / (2 * n)


def moco_loop(q, k, queue, tau):
    """MoCo Eq. 1 written out: each query against its key and the K queue rows."""
    total = 0.0
    for b in range(q.shape[0]):
        qb, kb = q[b] / q[b].norm(), k[b] / k[b].norm()
        positive = torch.exp(qb @ kb / tau)
        negatives = sum(torch.exp(qb @ (row / row.norm()) / tau) for row in queue)
        total = total - torch.log(positive / (positive + negatives))
    return total / q.shape[0]


def byol_loop(p, z):
    """BYOL Eq. 2 written out: || p/|p| - z/|z| ||^2 per row, averaged."""
    return sum(((p[b] / p[b].norm() - z[b] / z[b].norm()) ** 2).sum() for b in range(p.shape[0])) / p.shape[0]


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_ntxent_equals_simclr_equation_loop_with_gradients(tau):
    z1, z2 = unit(6, 5, 0), unit(6, 5, 1)
    ours, our_grads = grads(NTXentLoss(tau), z1, z2)
    ref, ref_grads = grads(lambda a, b: ntxent_loop(a, b, tau), z1, z2)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    for g, r in zip(our_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_moco_loss_equals_infonce_loop_with_gradients():
    q, k, queue = unit(5, 4, 0), unit(5, 4, 1), unit(7, 4, 2)
    ours, our_grads = grads(lambda a, b: MoCoLoss(0.2)(a, b, queue), q, k)
    ref, ref_grads = grads(lambda a, b: moco_loop(a, b, queue, 0.2), q, k)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    for g, r in zip(our_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_byol_loss_equals_normalised_regression_loop_with_gradients():
    p, z = unit(6, 5, 3), unit(6, 5, 4)
    ours, our_grads = grads(BYOLLoss(), p, z)
    ref, ref_grads = grads(byol_loop, p, z)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    assert ours.item() == pytest.approx((2 - 2 * F.cosine_similarity(p, z)).mean().item(), rel=1e-12)
    for g, r in zip(our_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_target_momentum_is_byols_cosine_schedule_and_ema_is_the_convex_combination():
    assert target_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert target_momentum(0.996, 50, 100) == pytest.approx(1 - 0.004 / 2)
    assert target_momentum(0.996, 100, 100) == pytest.approx(1.0)
    assert target_momentum(0.9, 25, 100) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())
        # the fused update is bit for bit the per-tensor one (resumed runs of older versions stay exact)
        assert torch.equal(t, b.clone().mul_(0.9).add_(o.detach(), alpha=1 - 0.9))


def test_moco_queue_takes_the_steps_keys_in_order_and_the_key_encoder_follows():
    cfg = tiny("mocov2", ["method.mocov2.momentum=0.9"])
    method = build_method(cfg, build_model(cfg.model), 40)
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.1)
    for step in range(1, 4):                                           # 3 x 16 keys into a queue of 40: wraps
        key_before = [p.clone() for p in method.key_encoder.parameters()]
        outputs = method.training_step(torch.randn(2, 16, 3, 16, 16), torch.arange(16))
        keys, pointer = outputs["keys"].clone(), int(method.queue_pointer)
        optimizer.zero_grad()
        outputs["loss"].backward()
        optimizer.step()
        method.after_step(step, 3, outputs)
        rows = [(pointer + i) % 40 for i in range(16)]
        torch.testing.assert_close(method.queue[rows], F.normalize(keys, dim=1))
        assert int(method.queue_pointer) == (pointer + 16) % 40
        for t, b, o in zip(method.key_encoder.parameters(), key_before, method.encoder.parameters()):
            torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())
    assert int(method.queue_pointer) == 48 % 40
    assert not any(p.requires_grad for p in method.key_encoder.parameters())


def test_byol_target_is_the_ema_of_the_encoder_with_the_scheduled_momentum():
    cfg = tiny("byol", ["method.byol.momentum=0.9"])
    method = build_method(cfg, build_model(cfg.model), 40)
    target_before = [p.clone() for p in method.target.parameters()]
    optimizer = torch.optim.SGD(method.parameter_groups(), lr=0.1)
    trainer.train_step(method, optimizer, torch.randn(2, 8, 3, 16, 16), torch.arange(8), bf16=False, step=3,
                       total_steps=10)
    tau = target_momentum(0.9, 3, 10)
    for t, b, o in zip(method.target.parameters(), target_before, method.encoder.parameters()):
        torch.testing.assert_close(t, tau * b + (1 - tau) * o.detach())
    assert all(id(p) not in {id(q) for g in method.parameter_groups() for q in g["params"]}
               for p in method.target.parameters()), "the target is not optimised"


def test_byol_predictor_lr_scale_is_a_parameter_group_whose_lr_is_the_schedules_times_the_scale(tmp_path):
    cfg = tiny("byol", ["method.byol.predictor_lr_scale=10"])
    trainer.fit(cfg, tmp_path / "run", log=lambda s: None)
    groups = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]
    method = build_method(cfg, build_model(cfg.model), 80)
    predictor = [name for name, p in method.named_parameters() if p.requires_grad and name.startswith("predictor.")]
    assert [len(g["params"]) for g in groups] == [len(method.parameter_groups()[0]["params"]), len(predictor)]
    last_step_lr = trainer.learning_rate(cfg.optim, 2, 1 + 4 / 5)        # epoch 2's last of 5 steps
    assert groups[0]["lr"] == pytest.approx(last_step_lr) and groups[0].get("lr_scale", 1.0) == 1.0
    assert groups[1]["lr"] == pytest.approx(10 * last_step_lr) and groups[1]["lr_scale"] == 10
    assert len(build_method(tiny("byol"), build_model(cfg.model), 80).parameter_groups()) == 1   # BYOL's default


class Recorder(METHODS["invaspread"]):
    """InvaSpread that writes every (step, total_steps) it is given to a file."""

    log_file = None

    def after_step(self, step, total_steps):
        with open(Recorder.log_file, "a") as fh:
            fh.write(f"{step} {total_steps}\n")


def test_after_step_gets_the_runs_global_step_and_planned_total_across_resume_and_extension(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "recorder", Recorder)
    cfg = tiny("recorder")                                             # 80 images / 16: 5 steps per epoch
    Recorder.log_file = tmp_path / "full.txt"
    trainer.fit(cfg, tmp_path / "full", log=lambda s: None)
    full = (tmp_path / "full.txt").read_text().split("\n")[:-1]
    assert full == [f"{s} 10" for s in range(1, 11)]

    Recorder.log_file = tmp_path / "cut.txt"
    train_until_first_checkpoint(cfg, tmp_path / "cut", monkeypatch)
    trainer.fit(None, tmp_path / "cut", resume=True, log=lambda s: None)
    assert (tmp_path / "cut.txt").read_text().split("\n")[:-1] == full
    Recorder.log_file = tmp_path / "more.txt"
    trainer.fit(None, tmp_path / "cut", resume=True, log=lambda s: None, overrides=["train.epochs=3"])
    assert (tmp_path / "more.txt").read_text().split("\n")[:-1] == [f"{s} 15" for s in range(11, 16)]


def test_eval_features_pooled_reads_the_backbone_and_the_key_overrides_the_methods_choice():
    x = torch.randn(4, 3, 16, 16)
    for name, extra, pooled in (("simclr", (), True), ("invaspread", (), False),
                                ("simclr", ("eval.features=embedding",), False),
                                ("invaspread", ("eval.features=pooled",), True)):
        cfg = tiny(name, ("train.cpu_bf16=false", *extra))   # compared in float32, on any CPU
        model = build_model(cfg.model).eval()
        with torch.no_grad():
            out = evaluation_network(model, cfg)(x)
            expected = F.normalize(model.pooled(x), dim=1) if pooled else model(x)
        torch.testing.assert_close(out, expected)
    with pytest.raises(ConfigError, match="eval.features='head'"):
        load_config(None, ["eval.features=head"])


def test_neighbour_positives_are_an_epoch_plan_of_every_instance_once():
    cfg = tiny("invaspread", ["method.invaspread.positive=augmentation_or_neighbour"])
    method = build_method(cfg, build_model(cfg.model), 30)
    features = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    method.on_epoch_start(1, lambda pooled: features)
    plan = method.epoch_plan()
    nearest = (F.normalize(features) @ F.normalize(features).t()).fill_diagonal_(-2).argmax(1)
    assert plan.shape == (30, 2) and sorted(plan[:, 0].tolist()) == list(range(30))
    assert all(p in (i, int(nearest[i])) for i, p in plan.tolist())
    assert any(any(t is plan for t in [s]) for s in method.epoch_state()), "the plan is shared by every rank"


def test_a_run_saved_with_a_loss_section_resumes_as_it_trained_and_evaluates(tmp_path, monkeypatch):
    """``tests/fixtures/run_with_loss_section``: written when the InvaSpread settings were a top-level section (``loss:`` section, no model.head, no
    eval.features, no train.cpu_* keys), 1 epoch. Exact floats differ between machines, so nothing here is a
    constant from the machine that wrote it: on the machine running the test, an uninterrupted 2-epoch run of its
    (migrated) config equals one resumed after epoch 1 bit for bit, the old run itself resumes to the same
    numbers every time, and ``eval`` of it prints the resumed run's kNN."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    raw = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert "loss" in raw and "head" not in raw["model"] and "features" not in raw["eval"], "written with the old layout"
    assert "cpu_fast_path" not in raw["train"], "written before the CPU fast path"
    state = load_checkpoint(run)
    assert state["config"]["method"]["invaspread"]["temperature"] == 0.1 and "loss" not in state["config"]
    assert (state["config"]["train"]["cpu_bf16"], state["config"]["train"]["cpu_fast_path"]) == (False, False)

    migrated = from_dict(state["config"])
    migrated.train.epochs = 2
    uninterrupted = trainer.fit(copy.deepcopy(migrated), tmp_path / "straight", log=lambda s: None)
    train_until_first_checkpoint(copy.deepcopy(migrated), tmp_path / "again", monkeypatch)
    resumed_fresh = trainer.fit(None, tmp_path / "again", resume=True, log=lambda s: None)
    assert resumed_fresh["loss"] == uninterrupted["loss"] and resumed_fresh["knn_top1"] == uninterrupted["knn_top1"]

    last = trainer.fit(None, run, resume=True, log=lambda s: None, overrides=["train.epochs=2"])
    assert last["epoch"] == 2 and math.isfinite(last["loss"])
    again = tmp_path / "run2"
    shutil.copytree(FIXTURE, again)
    rerun = trainer.fit(None, again, resume=True, log=lambda s: None, overrides=["train.epochs=2"])
    assert (rerun["loss"], rerun["knn_top1"], rerun["knn_top5"]) == (last["loss"], last["knn_top1"], last["knn_top5"])
    out = subprocess.run([sys.executable, "-m", "invaspread", "eval", str(run)], capture_output=True, text=True)
    assert out.returncode == 0 and f"{last['knn_top1']:.2f}" in out.stdout, out.stderr


def test_a_method_from_the_readme_installed_as_an_entry_point_trains(tmp_path, monkeypatch):
    from invaspread import methods

    site = tmp_path / "site"
    site.mkdir()
    install_readme_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    methods.plugins.forget()
    try:
        assert "align_uniform" in registry()
        with pytest.raises(ConfigError, match="method.align_uniform.weight=-1.0: expected a positive number"):
            load_config(None, ["method.align_uniform.weight=-1"])
        cfg = tiny("align_uniform", ["method.align_uniform.weight=0.5", "train.epochs=1"])
        last = trainer.fit(cfg, tmp_path / "run", log=lambda s: None)
        assert last["epoch"] == 1 and math.isfinite(last["loss"]) and "knn_top1" in last
        saved = load_checkpoint(tmp_path / "run")["config"]["method"]
        assert saved["name"] == "align_uniform" and saved["align_uniform"]["weight"] == 0.5
    finally:
        methods.plugins.forget()
    # the command line, in a fresh process that finds it only through importlib.metadata
    env = {**__import__("os").environ, "PYTHONPATH": f"{site}:{REPO}"}
    shown = subprocess.run([sys.executable, "-m", "invaspread", "config", "digits", "--set",
                            "method.name=align_uniform"], capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"\n  align_uniform:\n    alpha: 2\.0  # exponent of the alignment term\n(    .*\n)*"
                     r"    weight: 1\.0  # weight of the uniformity term\n", shown.stdout), shown.stdout
    trained = subprocess.run([sys.executable, "-m", "invaspread", "train", "--config", "digits", "--set",
                              "method.name=align_uniform", "--set", "method.align_uniform.weight=0.5", "--epochs", "1",
                              "--set", "data.subset_per_class=8", "--set", "model.width=8", "--set",
                              "train.batch_size=16", "--set", "data.num_workers=0", "--set", "eval.knn_k=5",
                              "--set", "train.progress=false", "--out", str(tmp_path / "cli")],
                             capture_output=True, text=True, env=env)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1


def test_a_broken_entry_point_is_one_line_naming_it(tmp_path, monkeypatch):
    from invaspread import methods
    from invaspread.config import InvaspreadError

    info = tmp_path / "broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[invaspread.methods]\nbroken = no_such_module:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    methods.plugins.forget()
    try:
        assert "broken" not in registry() and "invaspread" in registry()   # listing: the others stay usable
        assert re.search(r"entry point broken = no_such_module:Thing .* could not be loaded: ModuleNotFoundError",
                         methods.broken_plugins()["broken"])
        with pytest.raises(InvaspreadError, match=r"entry point broken = no_such_module:Thing .* could not be loaded: "
                                                  r"ModuleNotFoundError"):
            load_config(None, ["method.name=broken"])
    finally:
        methods.plugins.forget()


def test_table_1x_is_table_1_and_the_successors_each_with_its_config(capsys):
    from invaspread.cli import main
    from invaspread.report.paper_tables import TABLES
    from invaspread.report.table_runner import get_table, row_config

    table = get_table("1x")
    assert table.rows[:9] == TABLES[1].rows and [r.name for r in table.rows[9:]] == ["SimCLR", "MoCo v2", "BYOL"]
    for row, name in zip(table.rows[9:], ("simclr", "mocov2", "byol")):
        cfg = row_config(row, None, None, ())
        assert cfg.method.name == name and row.paper == (None,) and "lightly" in row.note
        assert registry()[name].eval_features == "pooled" and cfg.model.head in ("mlp", "mlp_bn")
    assert main(["table", "1x", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "--config byol_cifar10 --set method.name=byol" in printed and "kNN 85 at batch 128" in printed
