"""``model.arch=timm:NAME`` (issue 29, 1): timm's models as backbones, their feature dimension read from the
model, pretrained weights from a local file or the (offline) cache, one-line errors otherwise. timm's own tiny
``test_*`` models keep this to seconds."""

import os
import subprocess
import sys

import pytest
import torch

from invaspread.cli import main
from invaspread.config import ConfigError, load_config
from invaspread.engine.checkpoint import load_checkpoint
from invaspread.models import build_model

timm = pytest.importorskip("timm")
TINY = ["model.width=64", "data.subset_per_class=8", "data.num_workers=0", "train.progress=false", "eval.knn_k=5",
        "train.batch_size=16", "train.cpu_bf16=false"]


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
def test_a_timm_backbone_gives_its_own_feature_dimension(name):
    cfg = load_config(None, [f"model.arch=timm:{name}", "model.width=64"])
    net = build_model(cfg.model).eval()
    reference = timm.create_model(name, num_classes=0)
    assert net.head.in_features == reference.num_features     # read from the model, not a table of ours
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    z = net(x)
    assert z.shape == (3, 128)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    net.backbone.load_state_dict(reference.state_dict())
    torch.testing.assert_close(net.pooled(x), reference.eval()(x))   # the backbone is timm's network itself


def test_a_timm_backbone_trains_resumes_and_evaluates_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    sets = [f"--set={s}" for s in ["model.arch=timm:test_resnet", *TINY]]
    assert main(["train", "--config", "digits", "--out", str(run), "--epochs", "1", *sets]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    state = load_checkpoint(run)
    assert state["epoch"] == 2 and state["config"]["model"]["arch"] == "timm:test_resnet"
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert "knn_top1" in capsys.readouterr().out


def test_pretrained_weights_from_a_local_file(tmp_path):
    source = timm.create_model("test_resnet", num_classes=0)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    cfg = load_config(None, ["model.arch=timm:test_resnet", "model.width=64", "model.pretrained=true",
                                 f"model.pretrained_file={tmp_path / 'weights.pth'}"])
    loaded = build_model(cfg.model).backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())


@pytest.mark.parametrize("sets, message", [
    (["model.arch=timm:test_resnt", "model.width=64"], "did you mean timm:test_resnet"),
    (["model.arch=timm:test_resnet", "model.width=8"], "applies to model.arch=resnet18_cifar only"),
    (["model.arch=resnet18_cifar", "model.pretrained_file=w.pth"], "applies to model.arch=timm:NAME"),
])
def test_timm_settings_that_cannot_work_are_one_line(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_absent_pretrained_weights_offline_are_one_line_and_leave_no_run(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}   # an empty cache, no network
    done = subprocess.run([sys.executable, "-m", "invaspread", "train", "--config", "digits", "--out",
                           str(tmp_path / "run"), "--epochs", "1", "--set", "model.arch=timm:test_resnet",
                           "--set", "model.pretrained=true", *[f"--set={s}" for s in TINY]],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("invaspread: error:") == 1 and "model.pretrained_file=PATH" in done.stderr
    assert not (tmp_path / "run").exists()
    missing = subprocess.run([sys.executable, "-m", "invaspread", "train", "--config", "digits", "--out",
                              str(tmp_path / "run"), "--set", "model.arch=timm:test_resnet", "--set",
                              "model.pretrained=true", "--set", f"model.pretrained_file={tmp_path / 'none.pth'}",
                              *[f"--set={s}" for s in TINY]], capture_output=True, text=True, timeout=300, env=env)
    assert missing.returncode == 2 and "none.pth: no such file" in missing.stderr
