"""Issue 20: the compared rows trained by their authors' recipes, each setting against an independent reference:
MOM's SGD with dampening and StepLR, its RandomResizedCrop / Resize + CenterCrop transforms, and its rows'
configs as `table --dry-run` prints them."""

import numpy as np
import pytest
import torch
from PIL import Image

from invaspread.cli import main
from invaspread.config import ConfigError, load_config, resolve_config_path
from invaspread.data.eval_transform import eval_transform
from invaspread.data.transforms import train_transform
from invaspread.engine.trainer import build_optimizer, learning_rate


def test_sgd_with_dampening_follows_the_documented_update():
    """PyTorch's SGD as documented (what gtolias/mom's train.py ran): b_1 = g_1, then b_t = m b_{t-1} +
    (1 - dampening) g_t; the step is lr (b_t), with weight decay added to g first."""
    cfg = load_config(None, ["optim.lr=0.1", "optim.momentum=0.9", "optim.dampening=0.9", "optim.weight_decay=0.01"])
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = build_optimizer([w], cfg.optim)
    ref, buf = w.detach().clone(), None
    for grad in ([0.5, 0.25], [-1.0, 2.0], [0.3, 0.3]):
        g = torch.tensor(grad, dtype=torch.float64)
        w.grad = g.clone()
        optimizer.step()
        g = g + 0.01 * ref
        buf = g if buf is None else 0.9 * buf + (1 - 0.9) * g
        ref = ref - 0.1 * buf
        torch.testing.assert_close(w.detach(), ref)
    with pytest.raises(ConfigError, match="optim.dampening"):
        load_config(None, ["optim.dampening=1.0"])
    with pytest.raises(ConfigError, match="nesterov"):
        load_config(None, ["optim.nesterov=true", "optim.dampening=0.5"])


@pytest.mark.parametrize("name", ["mom_cub200", "mom_cars196", "mom_sop"])
def test_the_mom_configs_are_moms_recipe(name):
    cfg = load_config(resolve_config_path(name))
    assert cfg.method.name == "mom" and cfg.model.embedding_dim == 64 and cfg.train.batch_size == 42
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.dampening, cfg.optim.weight_decay) == (0.01, 0.9, 0.9, 5e-4)
    assert cfg.train.epochs == 100 and cfg.augment.recipe == "resized_crop" and cfg.augment.crop_scale_min == 0.08
    # the reference's StepLR(step_size=50, gamma=0.1), stepped before each epoch e = 0..99 (old PyTorch): lr of
    # epoch e is 0.01 * 0.1 ** ((e + 1) // 50)
    for e in range(100):
        for within in (0.0, 0.5):
            assert learning_rate(cfg.optim, 100, e + within) == pytest.approx(0.01 * 0.1 ** ((e + 1) // 50))


def test_the_resized_crop_recipe_is_moms_transforms():
    aug = load_config(resolve_config_path("mom_cub200")).augment
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    got = eval_transform(aug, 227, mean, std, 256)(image)
    # reference: the shorter side (200) to 256 keeping the aspect (300 -> 384), then the central 227 x 227
    resized = np.asarray(image.resize((384, 256), Image.BILINEAR)).astype(np.float32) / 255
    top, left = int(round((256 - 227) / 2.0)), int(round((384 - 227) / 2.0))
    want = torch.from_numpy(resized[top:top + 227, left:left + 227]).permute(2, 0, 1)
    torch.testing.assert_close(got, want, atol=1 / 255 + 1e-6, rtol=0)
    torch.manual_seed(0)
    views = [train_transform(aug, 227, mean, std, 256)(image) for _ in range(4)]
    assert all(v.shape == (3, 227, 227) for v in views) and not torch.equal(views[0], views[1])


@pytest.mark.parametrize("table, config", [(3, "mom_cub200"), (4, "mom_sop"), (5, "mom_cars196"), (6, "mom_sop")])
def test_table_dry_runs_show_the_mom_rows_recipe(table, config, capsys):
    assert main(["table", str(table), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip().startswith("MOM"))
    assert f"--config {config}" in lines[row] and "method.name" not in lines[row]
    assert "lr 0.01 x0.1 from epoch 50 of 100" in lines[row + 1] and "R-MAC" in lines[row + 1]


def test_deepclusters_classifier_has_its_own_sgd_settings_as_in_the_reference():
    """deepcluster main.py: optimizer_tl = SGD(top_layer.parameters(), lr=args.lr, weight_decay=10**-5): no
    momentum, while the network keeps its momentum and weight decay."""
    from invaspread.methods import build_method
    from invaspread.models import build_model

    cfg = load_config(None, ["model.width=8", "method.name=deepcluster", "method.deepcluster.clusters=4",
                             "optim.lr=0.1"])
    method = build_method(cfg, build_model(cfg.model), 20)
    optimizer = build_optimizer(method.parameter_groups(), cfg.optim)
    network, head = optimizer.param_groups
    assert (network["momentum"], network["weight_decay"]) == (0.9, 5e-4)
    assert (head["momentum"], head["weight_decay"]) == (0.0, 1e-5)
    assert {id(p) for p in head["params"]} == {id(p) for p in method.classifier.parameters()}
    assert len(network["params"]) + 2 == len(list(method.parameters()))
    w = method.classifier.weight
    ref = w.detach().clone()
    for step in range(2):   # plain SGD, no momentum: the second step does not carry the first's gradient
        g = torch.full_like(w, 0.5 * (step + 1))
        optimizer.zero_grad()
        w.grad = g.clone()
        optimizer.step()
        ref = ref - 0.1 * (g + 1e-5 * ref)
        torch.testing.assert_close(w.detach(), ref)
    shared = load_config(None, ["model.width=8", "method.name=deepcluster", "method.deepcluster.clusters=4",
                                "method.deepcluster.classifier_optimizer=shared"])
    assert len(build_method(shared, build_model(shared.model), 20).parameter_groups()) == 1


def test_a_deepcluster_run_saved_before_the_switch_resumes_as_it_trained(tmp_path):
    """A checkpoint without method.deepcluster.classifier_optimizer trained with the shared SGD (one parameter
    group): it reads as `shared` and resumes with its one-group optimizer state."""
    import yaml

    from invaspread.engine.checkpoint import load_checkpoint, save_checkpoint
    from invaspread.engine.trainer import fit

    sets = ["data.subset_per_class=6", "data.num_workers=0", "model.width=8", "train.batch_size=16",
            "train.progress=false", "train.eval_every=0", "method.name=deepcluster", "method.deepcluster.clusters=3",
            "method.deepcluster.classifier_optimizer=shared"]
    run = tmp_path / "run"
    fit(load_config(None, sets + ["train.epochs=1"]), run, log=lambda _: None)
    state = load_checkpoint(run)
    del state["config"]["method"]["deepcluster"]["classifier_optimizer"]     # as an older version wrote it
    save_checkpoint(state, run / "last.pt")
    on_disk = yaml.safe_load((run / "config.yaml").read_text())
    del on_disk["method"]["deepcluster"]["classifier_optimizer"]
    (run / "config.yaml").write_text(yaml.safe_dump(on_disk, sort_keys=False))
    assert load_checkpoint(run)["config"]["method"]["deepcluster"]["classifier_optimizer"] == "shared"
    fit(None, run, resume=True, overrides=["train.epochs=2"], log=lambda _: None)
    assert load_checkpoint(run)["epoch"] == 2
    assert len(load_checkpoint(run)["optimizer"]["param_groups"]) == 1


def test_rmac_regions_follow_tolias_et_al():
    from invaspread.ops.rmac import rmac_regions

    # 7 x 7, L = 3 (worked by hand from rmac_regions.m): the whole map; 2 x 2 of side 4 at 0 / 3; 3 x 3 of side 3
    # at 0 / 2 / 4
    assert rmac_regions(7, 7) == [(0, 0, 7)] + [(t, l, 4) for t in (0, 3) for l in (0, 3)] + \
        [(t, l, 3) for t in (0, 2, 4) for l in (0, 2, 4)]
    # 7 x 10: the overlap rule adds one region along the longer side at every level
    assert rmac_regions(7, 10)[:2] == [(0, 0, 7), (0, 3, 7)]
    assert [r for r in rmac_regions(7, 10) if r[2] == 4] == [(t, l, 4) for t in (0, 3) for l in (0, 3, 6)]


def test_rmac_descriptors_equal_a_float64_loop_of_the_recipe():
    """Regions max-pooled and L2-normalised at every scale, PCA-whitened over all region vectors of the set,
    normalised, summed, normalised: against numpy in float64 (compared through the descriptors' Gram matrix,
    which the eigenvectors' arbitrary signs leave unchanged)."""
    import numpy as np
    import torch.nn.functional as F

    from invaspread.models import CifarResNet
    from invaspread.ops.rmac import rmac_descriptors, rmac_regions

    torch.manual_seed(0)
    backbone = CifarResNet(width=4).eval()
    images = torch.randn(12, 3, 32, 32)
    scales, dims = (1.0, 0.7071, 0.5), 8

    def train_features(pooled, network=None):
        with torch.no_grad():
            return network(images)

    ours = rmac_descriptors(train_features, backbone, dims, scales, levels=3).double().numpy()
    per_image = []
    with torch.no_grad():
        for s in scales:
            x = images if s == 1 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
            fmap = backbone.stages(backbone.stem(x)).double().numpy()            # (B, C, H, W), no hook
            vectors = []
            for t, left, side in rmac_regions(fmap.shape[2], fmap.shape[3]):
                v = fmap[:, :, t:t + side, left:left + side].max(axis=(2, 3))
                vectors.append(v / np.linalg.norm(v, axis=1, keepdims=True))
            per_image.append(np.stack(vectors, axis=1))                          # (B, R_s, C)
    regions = np.concatenate(per_image, axis=1)                                   # (B, R, C)
    flat = regions.reshape(-1, regions.shape[2])
    mean = flat.mean(0)
    values, vecs = np.linalg.eigh(np.cov(flat, rowvar=False, bias=True))
    order = np.argsort(values)[::-1][:dims]
    projection = vecs[:, order] / np.sqrt(values[order] + 1e-8 * values[order[0]])
    whitened = (regions - mean) @ projection
    whitened /= np.linalg.norm(whitened, axis=2, keepdims=True)
    reference = whitened.sum(1)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    assert ours.shape == (12, dims)
    np.testing.assert_allclose(ours @ ours.T, reference @ reference.T, atol=1e-4)


def test_mom_rows_mine_on_rmac_and_the_method_runs_it():
    from invaspread.methods import build_method
    from invaspread.models import build_model

    for name in ("mom_cub200", "mom_cars196", "mom_sop"):
        c = load_config(resolve_config_path(name)).method.mom
        assert (c.features, c.rmac_dims, c.rmac_levels) == ("rmac", 512, 3)
    cfg = load_config(None, ["method.name=mom", "model.width=4", "method.mom.features=rmac", "method.mom.rmac_dims=8",
                             "method.mom.graph_neighbours=4", "method.mom.positive_k=4", "method.mom.negative_k=8",
                             "method.mom.pool_size=4"])
    method = build_method(cfg, build_model(cfg.model), 40)
    images = torch.randn(40, 3, 32, 32)
    calls = []

    def train_features(pooled, network=None):
        calls.append(type(network).__name__)
        with torch.no_grad():
            return (network or method.encoder)(images)

    method.on_epoch_start(1, train_features)
    assert calls == ["RMAC", "RMAC", "NoneType"] and bool(method.anchor.any())
