"""Config loading and errors, model shapes and registry, and the command line's messages."""

import subprocess
import sys
import urllib.error

import pytest
import torch
import yaml

from invaspread.cli import main
from invaspread.config import bundled_configs
from invaspread.config import ConfigError, load_config
from invaspread.models import BACKBONES, PretrainedWeightsUnavailable, build_model


def test_bundled_cifar10_config_is_the_released_recipe():
    cfg = load_config("configs/cifar10.yaml")
    assert (cfg.model.arch, cfg.model.width, cfg.model.embedding_dim) == ("resnet18_cifar", 64, 128)
    assert (cfg.method.invaspread.temperature, cfg.method.invaspread.variant, cfg.method.invaspread.stop_gradient) == (0.1, "reference", True)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.03, 0.9, 5e-4)
    assert (cfg.optim.decay_epochs, cfg.optim.decay_factors) == ([120, 160], [0.1, 0.01])
    assert (cfg.train.epochs, cfg.train.batch_size) == (200, 128)
    a = cfg.augment
    assert (a.crop, a.crop_scale_min, a.color_jitter, a.grayscale_p, a.flip) == (True, 0.2, 0.4, 0.2, True)
    assert (cfg.eval.knn_k, cfg.eval.knn_temperature) == (200, 0.1)


def test_released_config_differs_from_the_paper_only_in_the_schedule():
    """demo_seen.py at HEAD: x0.1 at 120, x0.05 at 160, x0.01 at 200, 301 epochs (0-based epochs)."""
    from invaspread.engine.trainer import learning_rate

    paper, released = load_config("configs/cifar10.yaml").to_dict(), load_config("configs/cifar10_released.yaml")
    lrs = {e: learning_rate(released.optim, 301, e) for e in (0, 119.99, 120, 159.99, 160, 199.99, 200, 300.99)}
    assert lrs == pytest.approx({0: 0.03, 119.99: 0.03, 120: 0.003, 159.99: 0.003, 160: 0.0015, 199.99: 0.0015,
                                 200: 0.0003, 300.99: 0.0003})
    assert released.train.epochs == 301
    released = released.to_dict()
    for section, values in paper.items():
        for key, value in values.items():
            if (section, key) not in {("optim", "decay_epochs"), ("optim", "decay_factors"), ("train", "epochs")}:
                assert released[section][key] == value, (section, key)


def test_lemniscate_config_is_the_shared_recipe_without_flip():
    paper, lem = load_config("configs/cifar10.yaml").to_dict(), load_config("configs/cifar10_lemniscate.yaml").to_dict()
    assert lem["method"]["name"] == "nce" and lem["augment"]["flip"] is False
    for section in ("model", "optim", "eval"):
        assert lem[section] == paper[section], section
    assert {k: v for k, v in lem["train"].items() if k != "eval_every"} == \
        {k: v for k, v in paper["train"].items() if k != "eval_every"}


@pytest.mark.parametrize("name", bundled_configs())
def test_every_bundled_config_loads(name):
    load_config(f"configs/{name}.yaml")


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "optim.decay_epochs=[10, 20]", "data.root=/x", "augment.on_device=null",
                             "optim.lr=1"])
    assert cfg.train.epochs == 3 and cfg.optim.decay_epochs == [10, 20] and cfg.data.root == "/x"
    assert cfg.augment.on_device is None and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "did you mean 'train.epochs'"),
    ("trian.epochs=3", "unknown config key"),
    ("train.epochs=three", "train.epochs='three': expected int"),
    ("train.bf16=1", "expected bool"),
    ("method.invaspread.variant=memory", "method.invaspread.variant='memory': expected one of reference, paper"),
    ("optim.decay_factors=[0.1]", "same length"),
    ("train.epochs", "expected section.key=value"),
    ("method.invaspread.temperature=.inf", "method.invaspread.temperature=inf: expected a positive number"),
    ("method.nce.temperature=.inf", "expected a positive number"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs=-1: expected a finite number >= 0"),
    ("optim.lr=-0.1", "optim.lr=-0.1: expected a finite number >= 0"),
    ("optim.weight_decay=-1", "expected a finite number >= 0"),
    ("data.num_workers=-2", "data.num_workers=-2: expected a finite number >= 0"),
    ("data.std=[0.2, 0, 0.2]", "data.std=[0.2, 0.0, 0.2]: every channel's std must be a positive number"),
    ("train.seed=9223372036854775808", "train.seed=9223372036854775808: expected an integer from 0 to 9223372036854775807"),
    ("train.seed=-1", "expected an integer from 0 to 9223372036854775807"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_exponent_floats_and_duplicate_yaml_keys(tmp_path):
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 0.001      # YAML 1.1 reads 1e-3 as a string
    p = tmp_path / "dup.yaml"
    p.write_text("train:\n  epochs: 3\n  epochs: 5\n")
    with pytest.raises(ConfigError, match="dup.yaml is not valid YAML: duplicate key 'epochs'") as info:
        load_config(str(p))
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"train.epocs.*c.yaml.*train.epochs"):
        load_config(str(p))


@pytest.mark.parametrize("width,size", [(8, 32), (16, 24)])
def test_cifar_resnet_shapes_and_unit_norm(width, size):
    cfg = load_config(None, [f"model.width={width}", "model.embedding_dim=32"]).model
    model = build_model(cfg).eval()
    x = torch.randn(3, 3, size, size)
    z = model(x)
    assert z.shape == (3, 32)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    assert model.pooled(x).shape == (3, 8 * width)


def test_paper_resnet18_matches_the_released_architecture():
    model = build_model(load_config(None).model)
    stem = model.backbone.stem[0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert (model.head.in_features, model.head.out_features) == (512, 128)
    # ResNet18-CIFAR (Wu et al. / Ye et al.): 11.17M backbone parameters + 65.7K head
    n = sum(p.numel() for p in model.parameters())
    assert n == 11_168_832 + 512 * 128 + 128


@pytest.mark.parametrize("arch,feat", [("resnet18", 512), ("inception_v1", 1024)])
def test_torchvision_backbones_from_scratch(arch, feat):
    model = build_model(load_config(None, [f"model.arch={arch}"]).model).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.pooled(x).shape == (2, feat) and model(x).shape == (2, 128)
    assert set(BACKBONES) >= {"resnet18_cifar", "resnet18", "resnet50", "inception_v1"}


def test_pretrained_offline_is_a_clear_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsUnavailable, match="model.pretrained=false"):
        build_model(load_config(None, ["model.arch=inception_v1", "model.pretrained=true"]).model)


def test_cli_help_teaches():
    out = subprocess.run([sys.executable, "-m", "invaspread.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for text in ("--config", "--set", "--resume", "examples:", "cifar10"):
        assert text in out.stdout


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["train", "--config", "configs/cifar10.yaml", "--data-dir", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invaspread: error: data.root=") and "Traceback" not in err
    assert main(["train", "--set", "train.epoch=1", "--out", str(tmp_path / "r2")]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--out", str(tmp_path / "afile")]) == 2
    assert "is a file; this command writes a folder there" in capsys.readouterr().err
    assert main(["train", "--device", "gpu", "--out", str(tmp_path / "r3")]) == 2
    assert "train.device='gpu': expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    # a run that fails before training leaves no empty run folder behind
    assert not (tmp_path / "r").exists() and not (tmp_path / "r3").exists()


def test_embed_command_writes_the_models_embeddings(tmp_path, capsys):
    import numpy as np

    from conftest import write_image_folder
    from invaspread.data.eval_transform import eval_transform
    from invaspread.data.transforms import normalisation
    from invaspread.engine.checkpoint import load_checkpoint
    from invaspread.engine.trainer import fit

    overrides = ["data.subset_per_class=20", "data.num_workers=0", "model.width=8", "train.epochs=1",
                 "train.batch_size=32", "train.progress=false", "train.eval_at_start=false",
                 "train.cpu_bf16=false"]   # compared with the float32 reference below, on any CPU
    cfg = load_config(None, overrides)
    fit(cfg, tmp_path / "run", log=lambda s: None)
    images = write_image_folder(tmp_path / "imgs", [2, 3], size=(40, 30))
    assert main(["embed", str(tmp_path / "run"), "--images", str(images), "--out", str(tmp_path / "e.npz")]) == 0
    z = np.load(tmp_path / "e.npz")
    assert z["embeddings"].shape == (5, 128) and list(z["labels"]) == [0, 0, 1, 1, 1]
    # independent reference: the checkpoint's model on the evaluation transform of each file
    model = build_model(cfg.model)
    model.load_state_dict(load_checkpoint(tmp_path / "run")["model"])
    model.eval()
    from PIL import Image

    t = eval_transform(cfg.augment, cfg.data.image_size, *normalisation(cfg.data))
    with torch.no_grad():
        ref = model(torch.stack([t(Image.open(p).convert("RGB")) for p in z["paths"]])).numpy()
    np.testing.assert_allclose(z["embeddings"], ref, atol=1e-5)

    capsys.readouterr()
    assert main(["embed", str(tmp_path / "run"), "--images", str(images), "--out", str(tmp_path / "e4")]) == 0
    assert (tmp_path / "e4.npz").is_file() and str(tmp_path / "e4.npz") in capsys.readouterr().out
    assert main(["embed", str(tmp_path / "run"), "--images", str(images), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "run"), "--images", str(images), "--batch-size", "0"]) == 2
    assert "--batch-size 0" in capsys.readouterr().err


def test_released_stl10_pooling_averages_the_top_left_corner():
    model = build_model(load_config(None, ["model.width=8", "model.pool_window=7"]).model).eval()
    x = torch.randn(2, 3, 96, 96)
    fmap = model.backbone.stages(model.backbone.stem(x))                        # (2, 64, 12, 12)
    torch.testing.assert_close(model.pooled(x), fmap[:, :, :7, :7].mean((2, 3)))
    with pytest.raises(ValueError, match="pool_window=7"):
        model.pooled(torch.randn(2, 3, 32, 32))  # 4x4 map: avg_pool2d(7) cannot produce 1x1
    glob = build_model(load_config(None, ["model.width=8"]).model).eval()
    glob.load_state_dict(model.state_dict())
    torch.testing.assert_close(glob.pooled(x), fmap.mean((2, 3)))


@pytest.mark.parametrize("name", ["cifar10", "cub200"])
def test_config_command_prints_every_key_with_a_meaning_as_valid_yaml(name, capsys):
    from invaspread.config import describe, from_dict

    assert main(["config", name, "--set", "method.nce.noise=8"]) == 0
    text = capsys.readouterr().out
    expected = load_config(f"configs/{name}.yaml", ["method.nce.noise=8"])
    # the printout is the config as a run saves it (its own method's section), loadable as YAML
    assert from_dict(yaml.safe_load(text)).to_dict() == expected.to_dict()
    assert "nce:" not in text and "  invaspread:\n" in text
    keys = [key for key, _, meaning in describe(expected)]
    assert all(meaning for _, _, meaning in describe(expected)), "every key has a one-line meaning"
    assert len([ln for ln in text.splitlines() if "  # " in ln]) == len(keys)


@pytest.mark.parametrize("sets, key", [(["model.arch=resnet18", "model.width=8"], "width"),
                                       (["model.arch=inception_v1", "model.pool_window=7"], "pool_window"),
                                       (["model.arch=resnet50", "model.width=16"], "width")])
def test_a_model_key_the_architecture_does_not_read_is_an_error_naming_what_it_applies_to(sets, key):
    with pytest.raises(ConfigError, match=rf"model.{key}=\S+: applies to model.arch=resnet18_cifar only"):
        load_config(None, sets)
    # the README's own-images recipe (cifar10 config, width at its default) stays valid
    assert load_config("configs/cifar10.yaml", ["model.arch=resnet18"]).model.arch == "resnet18"


def test_every_key_the_architecture_does_not_read_is_named_at_once_with_its_reset():
    """The digits config sets model.width=16: a user who picks inception_v1 and sets pool_window hears of both
    keys in one message, each with the value that drops it (what `--set` would take)."""
    with pytest.raises(ConfigError) as info:
        load_config("configs/digits.yaml", ["model.arch=inception_v1", "model.pool_window=7"])
    message = str(info.value)
    assert message.startswith("model.width=16, model.pool_window=7: apply to model.arch=resnet18_cifar only")
    assert "--set model.width=64 --set model.pool_window=null" in message
    resets = message.split("pass ")[-1].replace("--set ", "").split()
    assert load_config("configs/digits.yaml", ["model.arch=inception_v1", *resets]).model.pool_window is None
