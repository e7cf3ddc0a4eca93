"""Plugins a user can trust: a method installed through the entry-point group ``invaspread.methods`` is imported
only when a run names it, checked once with one-line errors naming its distribution and entry point, and a run
whose plugin is gone says so; the loss of a step and the state of a resume are checked with messages naming the
method. The README's packaging is installed for real with pip (a ``runs/`` folder beside it)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import (REPO, install_dist, install_readme_plugin, noise_image, readme_blocks,
                      train_until_first_checkpoint)
from invaspread import methods
from invaspread.cli import main
from invaspread.config import ConfigError, InvaspreadError, load_config, resolve_config_path
from invaspread.engine import trainer
from invaspread.engine.checkpoint import load_checkpoint, load_run
from invaspread.methods import METHODS, Method, broken_plugins, registry
from invaspread.methods.plugins import PluginError

TINY = ["model.width=8", "model.embedding_dim=16", "data.image_size=16", "train.batch_size=16",
        "data.subset_per_class=8", "data.num_workers=0", "train.progress=false", "eval.knn_k=5", "train.epochs=1"]

EDGE = '''
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple

from invaspread.methods import Method


@dataclass
class EdgeConfig:
    {setting}
    weight: float = 1.0


class Edge(Method):
    Config = EdgeConfig
    {attribute}

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        return cls(encoder)

    def training_step(self, views, index):
        z1, z2 = self.embed(views)
        return -(z1 * z2).sum(1).mean()
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path (and PYTHONPATH, for the CLI in a subprocess) where the tests install distributions."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", f"{folder}{os.pathsep}{REPO}")
    methods.plugins.forget()
    yield folder
    methods.plugins.forget()
    for name, module in list(sys.modules.items()):   # the plugins' modules: each test installs its own
        if str(getattr(module, "__file__", "") or "").startswith(str(folder)):
            del sys.modules[name]


def edge_plugin(site, setting="", attribute="", name="edge", dist="edge-plugin", module="edge_mod"):
    install_dist(site, dist, "0.1", {"invaspread.methods": {name: f"{module}:Edge"}},
                 {f"{module}.py": EDGE.format(setting=setting, attribute=attribute)})
    return f"entry point {name} = {module}:Edge of distribution {dist} 0.1"


@pytest.mark.parametrize("setting, attribute, said", [
    ("dims: Tuple[int, int] = (4, 8)", "", r"setting dims: typing.Tuple\[int, int\] is not a type the config reads"),
    ("mode: Literal['a', 'b'] = 'a'", "", r"setting mode: typing.Literal\['a', 'b'\] is not a type the config reads"),
    ("table: Dict[str, int] = field(default_factory=dict)", "", r"setting table: typing.Dict\[str, int\] is not"),
    ("ks: List[int] = field(default_factory=lambda: [1, 2])", "", None),   # readable: the plugin loads
    ("steps: int", "", r"EdgeConfig\(\) failed .* every setting needs a default"),
    ("", "eval_features = 'Pooled'", r"Edge.eval_features = 'Pooled': expected one of embedding, pooled"),
    ("", "eval_feature = 'pooled'", r"Edge.eval_feature is not an attribute the trainer reads; did you mean "
                                    r"'eval_features'\?"),
    ("", "views = 0", r"Edge.views = 0: expected a whole number of views >= 1"),
    ("", "trainable = 'yes'", r"Edge.trainable = 'yes': expected True or False"),
])
def test_a_plugin_the_trainer_could_not_use_is_one_line_naming_it_and_breaks_nothing_else(site, setting, attribute,
                                                                                            said):
    where = edge_plugin(site, setting, attribute)
    if said is None:   # a usable plugin: named, it loads and its section appears
        assert load_config(None, ["method.name=edge", "method.edge.ks=[3]"]).method.edge.ks == [3]
        return
    with pytest.raises(PluginError, match=re.escape(where) + ": " + said) as caught:
        load_config(None, ["method.name=edge"])
    assert "\n" not in str(caught.value)
    # every other method, and the listings, go on without it; the listing names it and says why
    assert load_config(None, ["method.name=nce"]).method.name == "nce"
    assert "edge" not in registry() and re.search(said, broken_plugins()["edge"])
    out = subprocess.run([sys.executable, "-m", "invaspread", "config", "digits", "--set", "method.name=exemplar"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "exemplar:" in out.stdout, out.stderr


def test_only_the_method_a_run_names_is_imported(site):
    for name in ("first", "second"):
        edge_plugin(site, name=name, dist=f"{name}-plugin", module=f"{name}_mod")
    load_config(None, ["method.name=exemplar"])
    assert "first_mod" not in sys.modules and "second_mod" not in sys.modules
    cfg = load_config(None, ["method.name=first", "method.first.weight=2"])
    assert cfg.method.first.weight == 2.0 and "first_mod" in sys.modules and "second_mod" not in sys.modules
    assert set(cfg.to_dict()["method"]) == {"name", "plugin", "first"}   # a run saves its own method's section


def test_a_name_two_distributions_register_names_both_and_runs_neither(site):
    a = edge_plugin(site, dist="alpha-methods", module="alpha_mod")
    b = edge_plugin(site, dist="beta-methods", module="beta_mod")
    with pytest.raises(PluginError, match=r"method 'edge' is registered by 2 distributions \(" + re.escape(a) + "; "
                                          + re.escape(b) + r"\).* so none does"):
        load_config(None, ["method.name=edge"])


def test_a_builtin_run_made_beside_an_unusable_plugin_evaluates_and_resumes(site, tmp_path):
    edge_plugin(site, setting="dims: Tuple[int, int] = (4, 8)")
    cfg = load_config(None, TINY + ["method.name=exemplar"])
    trainer.fit(cfg, tmp_path / "run", log=lambda s: None)
    saved = load_checkpoint(tmp_path / "run")["config"]["method"]
    assert set(saved) == {"name", "plugin", "exemplar"} and saved["plugin"] is None
    load_run(tmp_path / "run")
    last = trainer.fit(None, tmp_path / "run", resume=True, log=lambda s: None, overrides=["train.epochs=2"])
    assert last["epoch"] == 2


def test_a_run_whose_plugin_is_gone_says_it_is_not_installed_and_where_it_came_from(site, tmp_path, capsys):
    install_readme_plugin(site)
    cfg = load_config(None, TINY + ["method.name=align_uniform", "method.align_uniform.weight=0.5"])
    trainer.fit(cfg, tmp_path / "run", log=lambda s: None)
    came_from = "entry point align_uniform = my_methods:AlignUniform of distribution my-methods 0.1"
    assert load_checkpoint(tmp_path / "run")["config"]["method"]["plugin"] == came_from
    shutil.rmtree(site)
    os.makedirs(site)
    methods.plugins.forget()
    sys.modules.pop("my_methods", None)
    (tmp_path / "imgs").mkdir()
    noise_image(0).save(tmp_path / "imgs" / "a.png")
    for command in (["eval", str(tmp_path / "run")], ["train", "--resume", str(tmp_path / "run"), "--epochs", "2"],
                    ["embed", str(tmp_path / "run"), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "e")],
                    ["index", str(tmp_path / "run"), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "i")]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "method align_uniform is not installed" in err and came_from in err, (command, err)
        assert len(err.strip().splitlines()) == 1


class StepReturns(Method):
    """A method whose training_step returns ``StepReturns.value(z1, z2)``, for the loss checks."""

    value = None

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        return cls(encoder)

    def training_step(self, views, index):
        z1, z2 = self.embed(views)
        return type(self).value(z1, z2)


@pytest.mark.parametrize("value, said", [
    (lambda z1, z2: 0.5, r"training_step returned float; expected the loss as a scalar tensor"),
    (lambda z1, z2: torch.tensor(3), r"training_step returned a torch.int64 tensor; expected a floating-point loss"),
    (lambda z1, z2: (z1 - z2).pow(2).sum(1), r"training_step returned a tensor of shape \(16,\); expected a scalar"),
    (lambda z1, z2: (z1 - z2).pow(2).sum().detach(), r"training_step returned a tensor without a gradient"),
    (lambda z1, z2: {"loss": (z1 * z2).sum() * float("nan")}, r"the loss of step 1, the first this training ran, "
                                                               r"is nan"),
    (lambda z1, z2: {"similarity": (z1 * z2).sum()}, r"training_step's dict holds under 'loss' NoneType"),
])
def test_a_step_loss_that_is_not_a_finite_scalar_with_a_gradient_is_one_line_naming_the_method(value, said, tmp_path,
                                                                                              monkeypatch):
    monkeypatch.setitem(METHODS, "step_returns", type("StepReturns", (StepReturns,), {"value": staticmethod(value)}))
    cfg = load_config(None, TINY + ["method.name=step_returns"])
    with pytest.raises(InvaspreadError, match="method StepReturns: " + said):
        trainer.fit(cfg, tmp_path / "run", log=lambda s: None)


class Counting(StepReturns):
    value = staticmethod(lambda z1, z2: -(z1 * z2).sum(1).mean())

    def __init__(self, encoder):
        super().__init__(encoder)
        self.register_buffer("seen", torch.zeros(()))


def test_a_method_whose_state_changed_between_save_and_resume_is_named_with_the_keys(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "counting", Counting)
    cfg = load_config(None, TINY + ["method.name=counting", "train.epochs=2"])
    train_until_first_checkpoint(cfg, tmp_path / "run", monkeypatch)

    class Grown(Counting):
        def __init__(self, encoder):
            super().__init__(encoder)
            self.register_buffer("queue", torch.zeros(4))

    monkeypatch.setitem(METHODS, "counting", Grown)
    with pytest.raises(ConfigError, match=r"method Grown: the run's saved state does not fit the method as installed "
                                          r"now \(the method now has queue, not in the other\)"):
        trainer.fit(None, tmp_path / "run", resume=True, log=lambda s: None)


def test_a_config_a_package_ships_is_found_by_name(site):
    install_dist(site, "edge-configs", "0.1", {"invaspread.configs": {"edge_configs": "edge_configs"}},
                 {"edge_configs/__init__.py": "", "edge_configs/exemplar_digits_fast.yaml":
                  "method:\n  name: exemplar\ntrain:\n  epochs: 3\n"})
    from invaspread import config_files

    config_files.shipped_configs.cache_clear()
    try:
        path = resolve_config_path("exemplar_digits_fast")
        cfg = load_config(path)
        assert (cfg.method.name, cfg.train.epochs) == ("exemplar", 3)
        with pytest.raises(InvaspreadError, match=r"shipped by installed packages .*: exemplar_digits_fast\)"):
            resolve_config_path("exemplar_digits_slow")
    finally:
        config_files.shipped_configs.cache_clear()


def _pip_install(folder, target):
    """``pip install --target`` of a plugin folder: its own build (isolated where setuptools here is too old to
    build a wheel by itself)."""
    import setuptools

    isolated = tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (70, 1)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
               "--target", str(target), *([] if isolated else ["--no-build-isolation"]), str(folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_readmes_plugin_package_installs_with_pip_beside_a_runs_folder_and_trains_resumes_evaluates(tmp_path,
                                                                                                   monkeypatch):
    python, _ = readme_blocks()
    section = (REPO / "README.md").read_text().split("## Your own method", 1)[1].split("\n## ", 1)[0]
    folder = tmp_path / "my-methods"
    (folder / "runs" / "mine").mkdir(parents=True)   # what the README's own --out runs/mine leaves beside it
    (folder / "runs" / "mine" / "notes.py").write_text("")
    (folder / "my_methods.py").write_text(python)
    (folder / "pyproject.toml").write_text(re.search(r"```toml\n(.*?)```", section, re.S).group(1))
    site = tmp_path / "site"
    _pip_install(folder, site)
    assert (site / "my_methods.py").is_file() and not (site / "runs").exists()
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "invaspread", *args], capture_output=True, text=True, env=env,
                              cwd=folder)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    sets = [a for s in TINY + ["method.name=align_uniform", "method.align_uniform.weight=0.5"] for a in ("--set", s)]
    cli("train", "--config", "digits", *sets, "--out", "runs/first")
    cli("train", "--resume", "runs/first", "--epochs", "2")
    shown = cli("eval", "runs/first")
    last = json.loads((folder / "runs" / "first" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["epoch"] == 2 and f"{last['knn_top1']:.2f}" in shown
    assert "align_uniform:" in cli("config", "digits", "--set", "method.name=align_uniform")
    # a built-in method trains beside the plugin, and its run records no plugin
    cli("train", "--config", "digits", *[a for s in TINY for a in ("--set", s)], "--out", "runs/builtin")
    assert load_checkpoint(folder / "runs" / "builtin")["config"]["method"] == {
        "name": "invaspread", "plugin": None, "invaspread": load_config().to_dict()["method"]["invaspread"]}
