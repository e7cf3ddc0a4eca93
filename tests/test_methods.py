"""The methods layer: one contract for every entry of ``METHODS`` (a training step, its state in the
state_dict, exact resume after an interruption at an epoch boundary), and the command line."""

import json

import pytest
import torch

from conftest import REPO, cifar10_archive, train_until_first_checkpoint
from invaspread.cli import main
import dataclasses

from invaspread.config import ConfigError, load_config
from invaspread.engine import trainer
from invaspread.engine.checkpoint import load_checkpoint, load_method_state, method_checkpoint_state
from invaspread.methods import METHODS, build_method, registry
from invaspread.models import build_model

TRAINABLE = [name for name, cls in METHODS.items() if cls.trainable]


def tiny_cfg(name, extra=()):
    return load_config(None, ["model.width=8", "model.embedding_dim=16", "method.nce.noise=64", "data.image_size=16",
                              "data.subset_per_class=20", "data.num_workers=0", "train.batch_size=32",
                              "train.progress=false", "eval.knn_k=10", "optim.schedule=cosine",
                              "method.deepcluster.clusters=5", "method.mom.graph_neighbours=5",
                              "method.mom.positive_k=5", "method.mom.negative_k=10", "method.mom.pool_size=5",
                              f"method.name={name}", "train.epochs=" + ("0" if name == "random" else "2"),
                              *extra])


def build(name, n=40, seed=0):
    """The method around a tiny network, its epoch 1 prepared (clusters, mined tuples) from random features."""
    torch.manual_seed(seed)
    cfg = tiny_cfg(name)
    method = build_method(cfg, build_model(cfg.model), n)
    features = torch.randn(n, 64, generator=torch.Generator().manual_seed(seed))
    method.on_epoch_start(1, lambda pooled: features)
    return method


def test_config_sections_and_names_are_the_registry():
    cfg = load_config()
    sections = {f.name for f in dataclasses.fields(cfg.method)} - {"name", "plugin"}
    assert sections == {cls.settings_section(n) for n, cls in registry().items() if cls.Config is not None}
    with pytest.raises(ConfigError, match="method.name='nope': expected one of " + ", ".join(registry()) + "$"):
        load_config(None, ["method.name=nope"])


def test_a_misspelt_method_name_is_one_message_with_the_closest_name_wherever_it_is_caught():
    expected = "method.name='npsoftmx': expected one of .* \\(did you mean 'npsoftmax'\\?\\)$"
    with pytest.raises(ConfigError, match=expected):
        load_config(None, ["method.name=npsoftmx"])
    cfg = load_config(None, ["model.width=8"])
    cfg.method.name = "npsoftmx"   # a config that skipped validation (built in code) reaches build_method
    with pytest.raises(ConfigError, match=expected):
        build_method(cfg, build_model(cfg.model), 10)


@pytest.mark.parametrize("config", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_every_data_set_config_accepts_every_method(config):
    for name in METHODS:
        cfg = load_config(str(REPO / "configs" / f"{config}.yaml"), [f"method.name={name}"] + (["train.epochs=0"] if name == "random" else []))
        assert cfg.method.name == name


def test_misplaced_method_settings_are_errors():
    with pytest.raises(ConfigError, match="method.nce.margin"):
        load_config(None, ["method.nce.margin=0.5"])
    with pytest.raises(ConfigError, match="--epochs 0"):
        load_config(None, ["method.name=random"])


@pytest.mark.parametrize("name", TRAINABLE)
def test_training_step_is_finite_and_moves_every_trained_state(name):
    method = build(name)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    views = torch.randn(method.views, 8, 3, 16, 16)
    index = torch.tensor([3, 17, 0, 39, 22, 5, 11, 30])
    loss = trainer.train_step(method, optimizer, views, index, bf16=False)
    assert loss.ndim == 0 and torch.isfinite(loss)
    after = method.state_dict()
    assert not torch.equal(before["encoder.head.weight"], after["encoder.head.weight"])
    if name in ("npsoftmax", "nce"):
        changed = (before["bank.features"] != after["bank.features"]).any(1).nonzero().flatten()
        assert sorted(changed.tolist()) == sorted(index.tolist()), "exactly the batch's bank rows move"
    if name == "nce":
        assert after["z"].item() > 0
    if name == "exemplar":
        assert not torch.equal(before["weights"], after["weights"])
    if name == "deepcluster":
        assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


@pytest.mark.parametrize("name", list(METHODS))
def test_state_dict_round_trip_includes_the_methods_own_state(name):
    a, b = build(name, seed=0), build(name, seed=1)
    if a.trainable:
        optimizer = torch.optim.SGD(a.parameters(), lr=0.1)
        trainer.train_step(a, optimizer, torch.randn(a.views, 4, 3, 16, 16), torch.arange(4), bf16=False)
    own = method_checkpoint_state(a)
    expected = {"exemplar": {"weights"}, "npsoftmax": {"bank.features"}, "nce": {"bank.features", "z"},
                "deepcluster": {"classifier.weight", "classifier.bias", "labels"},
                "mom": {"anchor", "positives", "positive_weights", "negatives", "mined_at_epoch"},
                "mocov2": {"queue", "queue_pointer", "key_encoder"}, "byol": {"target", "predictor"}}
    networks = ("key_encoder.", "target.", "predictor.")   # whole modules of the method: named by their prefix
    assert {k.split(".")[0] if k.startswith(networks) else k for k in own} == expected.get(name, set())
    state = {"model": a.encoder.state_dict(), "method": own}
    load_method_state(b, state)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


# every trainable method, plus the state a resumed epoch must take from the checkpoint rather than recompute:
# DeepCluster's pseudo-labels and classifier between re-clusterings, MOM's pools when mining again each epoch
RESUMED = [(name, ()) for name in TRAINABLE] + [("deepcluster", ("method.deepcluster.reassign=2",)),
                                               ("mom", ("method.mom.remine_every=1",))]


@pytest.mark.parametrize("name, extra", RESUMED)
def test_interrupted_then_resumed_run_equals_uninterrupted_run(name, extra, tmp_path, monkeypatch):
    """Stop a run right after its first checkpoint (as a kill at an epoch boundary would), resume it,
    and compare every piece of state: encoder, the method's banks/weights/constants, optimizer."""
    cfg = tiny_cfg(name, extra)
    trainer.fit(cfg, tmp_path / "full", log=lambda s: None)

    train_until_first_checkpoint(cfg, tmp_path / "cut", monkeypatch)
    assert load_checkpoint(tmp_path / "cut")["epoch"] == 1
    trainer.fit(None, tmp_path / "cut", resume=True, log=lambda s: None)

    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert a["epoch"] == b["epoch"] == 2
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for pid, slot in a["optimizer"]["state"].items():
        for key, value in slot.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), (pid, key)
    lines = [json.loads(ln)["epoch"] for ln in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [0, 1, 2]


def test_random_method_evaluates_the_untrained_network_and_leaves_a_checkpoint(tmp_path):
    last = trainer.fit(tiny_cfg("random"), tmp_path / "random", log=lambda s: None)
    assert last["epoch"] == 0 and 0 <= last["knn_top1"] <= 100
    state = load_checkpoint(tmp_path / "random")
    torch.manual_seed(0)
    fresh = build_model(tiny_cfg("random").model)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state["model"][key]), "the evaluated network is the seed's initialisation"


@pytest.mark.integration
@pytest.mark.parametrize("name", list(METHODS))
def test_cifar10_command_runs_every_method(name, cifar_cache, tmp_path, capsys):
    """``invaspread train --config cifar10 --set method.name=NAME``: the full-width ResNet18 of the
    bundled config with its method settings, one step of 32 instances of 16 x 16 pixels on a 40-image subset (a
    step of the config's own 128 instances of 32 x 32 at full width: benchmarks/step_floor.py)."""
    args = ["train", "--config", "cifar10", "--data-dir", str(cifar10_archive()), "--set", f"method.name={name}",
            "--epochs", "0" if name == "random" else "1", "--out", str(tmp_path / name),
            "--set", "data.subset_per_class=4", "--set", "data.test_subset_per_class=5",
            "--set", f"data.cache_dir={cifar_cache}", "--set", "train.progress=false", "--set", "data.num_workers=0",
            "--set", "train.batch_size=32", "--set", "data.image_size=16",
            # 40 images: fewer clusters than images, and MOM's neighbourhoods below the set's size
            "--set", "method.deepcluster.clusters=10", "--set", "method.mom.positive_k=10",
            "--set", "method.mom.negative_k=20", "--set", "method.mom.graph_neighbours=10"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"method {name}" in out
    lines = [json.loads(ln) for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == ([0] if name == "random" else [0, 1])
    assert all(0 <= ln["knn_top1"] <= 100 for ln in lines)
    if name != "random":
        assert lines[-1]["loss"] == lines[-1]["loss"]  # finite, not NaN


def test_bn_groups_normalise_each_chunk_and_keep_the_first_chunks_running_statistics():
    """model.bn_groups=G: what DataParallel on G GPUs does with net(cat(v1, v2)) in the released code."""
    import copy

    method = build("invaspread")
    method.train()
    views = torch.randn(2, 6, 3, 16, 16)
    reference = copy.deepcopy(method.encoder)
    method.configure_forward(bn_groups=4)                      # 12 images -> 4 chunks of 3
    out = method.embed(views)
    flat = views.reshape(12, 3, 16, 16)
    chunks = [reference(flat[:3])]                             # updates the reference's running statistics once
    frozen = copy.deepcopy(reference)
    chunks += [copy.deepcopy(frozen)(c) for c in flat[3:].chunk(3)]  # batch statistics, updates thrown away
    torch.testing.assert_close(out, torch.cat(chunks).view(2, 6, -1))
    for (name, a), b in zip(method.encoder.named_buffers(), reference.buffers()):
        if "running" in name:
            torch.testing.assert_close(a, b)
    method.configure_forward(bn_groups=5)
    with pytest.raises(ValueError, match="bn_groups=5"):
        method.embed(views)
    method.eval()                                              # evaluation is never split
    torch.testing.assert_close(method.embed(views), method.encoder(flat).view(2, 6, -1))


def test_frozen_bn_keeps_running_statistics_through_training_steps():
    method = build("invaspread")
    method.configure_forward(frozen_bn=True)
    method.train()
    norms = [m for m in method.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms) and method.encoder.head.training
    stats = {k: v.clone() for k, v in method.encoder.state_dict().items() if "running" in k or "num_batches" in k}
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    weight = norms[0].weight.detach().clone()
    trainer.train_step(method, optimizer, torch.randn(2, 6, 3, 16, 16), torch.arange(6), bf16=False)
    for key, value in stats.items():
        assert torch.equal(value, method.encoder.state_dict()[key]), key
    assert not torch.equal(weight, norms[0].weight), "the affine weights still train"
    method.configure_forward(frozen_bn=False)
    assert all(m.training for m in norms)



@pytest.mark.parametrize("on_device", [True, False])
def test_batches_yield_views_of_each_instance_and_of_its_second_index(on_device):
    """(V, B, 3, H, W) views and (B,) indices, for V = 1 and 3; views 2..V come from second_index[i]."""
    import numpy as np

    from invaspread.data.sources import ArrayImages
    from invaspread.engine.batches import make_batches

    # image i is a flat colour i: with every augmentation off, a view is the normalised image itself
    images = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(12)])
    cfg = load_config(None, ["data.image_size=8", "augment.crop=false", "augment.color_jitter=0",
                             "augment.grayscale_p=0", "augment.flip=false", f"augment.on_device={str(on_device).lower()}",
                             "data.num_workers=0"])
    batches = make_batches(ArrayImages(images), cfg.data, cfg.augment, (0, 0, 0), (1, 1, 1), 4, torch.device("cpu"))
    seen = []
    for views, index in batches.epoch(0, 1, views=3):
        assert views.shape == (3, 4, 3, 8, 8) and index.shape == (4,)
        level = views[:, :, 0, 0, 0] * 255 / 10                         # (V, B): the source image of each view
        for v in range(3):                                               # every view of instance i is image i
            torch.testing.assert_close(level[v], index.float(), atol=1e-3, rtol=0)
        seen += index.tolist()
    assert sorted(seen) == list(range(12))
    one, index = next(iter(batches.epoch(0, 2, views=1)))
    assert one.shape == (1, 4, 3, 8, 8)
    # a planned epoch (DeepCluster, MOM): rows in order, view v of row l from image plan[l, v], index = rows
    plan = torch.tensor([[(7 * l + v) % 12 for v in range(3)] for l in range(10)])
    rows_seen = []
    for views, rows in batches.epoch(0, 3, views=3, plan=plan):
        level = views[:, :, 0, 0, 0] * 255 / 10
        torch.testing.assert_close(level, plan[rows].t().float(), atol=1e-3, rtol=0)
        rows_seen += rows.tolist()
    assert rows_seen == list(range(8)) and batches.steps(plan) == 2, "in order, the last partial batch dropped"
    with pytest.raises(ValueError, match="outside"):
        next(iter(batches.epoch(0, 3, views=3, plan=plan + 12)))


def test_init_from_starts_from_another_runs_network_with_frozen_batchnorm(tmp_path):
    cfg = tiny_cfg("invaspread", ["train.epochs=1"])
    trainer.fit(cfg, tmp_path / "pre", log=lambda s: None)
    pre = load_checkpoint(tmp_path / "pre")["model"]
    tuned = tiny_cfg("invaspread", ["train.epochs=1", f"model.init_from={tmp_path / 'pre'}", "train.eval_at_start=true",
                                    "optim.lr=0.0"])
    log = []
    trainer.fit(tuned, tmp_path / "tuned", log=log.append)
    after = load_checkpoint(tmp_path / "tuned")["model"]
    for key, value in pre.items():   # lr 0 and frozen BatchNorm statistics: nothing moves
        assert torch.equal(value, after[key]), key
    lines = [json.loads(ln) for ln in (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()]
    pre_lines = [json.loads(ln) for ln in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["knn_top1"] == pre_lines[-1]["knn_top1"], "epoch 0 evaluates the initialising network"
    wrong = tiny_cfg("invaspread", ["model.width=16", f"model.init_from={tmp_path / 'pre'}"])
    with pytest.raises(ConfigError, match="does not fit"):
        trainer.fit(wrong, tmp_path / "wrong", log=lambda s: None)


def test_cpu_and_device_batches_share_one_permutation_and_ranks_split_each_global_batch():
    """K processes see, step by step, the instances one process sees (each rank its slice)."""
    import numpy as np

    from invaspread.data.sources import ArrayImages
    from invaspread.engine.batches import CPUBatches, DeviceBatches, _rank_slices

    images = ArrayImages(np.zeros((40, 8, 8, 3), np.uint8))
    cfg = load_config(None, ["data.image_size=8", "data.num_workers=0"])
    args = (images, cfg.data, cfg.augment, (0, 0, 0), (1, 1, 1), 8, torch.device("cpu"))
    cpu = [index.tolist() for _, index in CPUBatches(*args).epoch(3, 2)]
    device = [index.tolist() for _, index in DeviceBatches(*args).epoch(3, 2)]
    assert cpu == device and len(cpu) == 5 and sorted(sum(cpu, [])) == list(range(40))
    order = torch.randperm(40, generator=torch.Generator().manual_seed(11))
    for world_size in (2, 4):
        shares = [[ids.tolist() for ids in _rank_slices(order, 8, rank, world_size)] for rank in range(world_size)]
        for step in range(5):
            assert sum((s[step] for s in shares), []) == order[step * 8:(step + 1) * 8].tolist()
