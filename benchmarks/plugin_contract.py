"""The plugin author's contract, tried through the command line on a source tree: each point of the plugin issue
as a plugin author meets it, with what the command printed.

    python benchmarks/plugin_contract.py --tree /path/to/invaspread [--tree /path/to/another]

Every case installs its plugins (dist-infos beside their modules, or ``pip install --target`` for the packaging
case) into a fresh folder on PYTHONPATH, runs ``python -m invaspread ...`` with the tree first on the path, and
prints one table row: the case, the exit status, and the last line of stderr (or "ok"). Trainings are one epoch of
80 digits images at 16 x 16, width 8.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = ["model.width=8", "model.embedding_dim=16", "data.image_size=16", "train.batch_size=16",
        "data.subset_per_class=8", "data.num_workers=0", "train.progress=false", "eval.knn_k=5", "train.epochs=1"]
METHOD = '''
from dataclasses import dataclass
from typing import Tuple

from invaspread.methods import Method


@dataclass
class Settings:
    weight: float = 1.0
    {setting}


class Plugin(Method):
    Config = Settings
    {attribute}

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        return cls(encoder)

    def training_step(self, views, index):
        z1, z2 = self.embed(views)
        return {loss}
'''
LOSS = "-(z1 * z2).sum(1).mean()"


def dist(site: Path, name: str, entry: str, module: str, source: str, group: str = "invaspread.methods") -> None:
    (site / f"{module}.py").write_text(source)
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry} = {module}:Plugin\n")


def method(setting: str = "", attribute: str = "", loss: str = LOSS) -> str:
    return METHOD.format(setting=setting, attribute=attribute, loss=loss)


class Case:
    def __init__(self, tree: Path, work: Path):
        self.tree, self.work = tree, work
        self.site = work / "site"
        self.site.mkdir(parents=True)

    def run(self, *args, cwd=None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": f"{self.tree}{os.pathsep}{self.site}"}
        return subprocess.run([sys.executable, "-m", "invaspread", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=cwd or self.work)

    def train(self, out, *sets, cwd=None):
        return self.run("train", "--config", "digits", "--out", out,
                        *[a for s in TINY + list(sets) for a in ("--set", s)], cwd=cwd)


def readme_package_beside_runs(case: Case):
    """The README's "Your own method" module and pyproject.toml in a folder that holds runs/ (as after its own
    ``--out runs/mine``), installed with pip, then trained."""
    section = (case.tree / "README.md").read_text().split("## Your own method", 1)[1].split("\n## ", 1)[0]
    folder = case.work / "my-methods"
    (folder / "runs" / "mine").mkdir(parents=True)
    (folder / "runs" / "mine" / "config.py").write_text("")
    (folder / "my_methods.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    (folder / "pyproject.toml").write_text(re.search(r"```toml\n(.*?)```", section, re.S).group(1))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                           str(case.site), str(folder)], capture_output=True, text=True)
    return done if done.returncode else case.train(case.work / "run", "method.name=align_uniform")


def broken_plugin_disables_builtins(case: Case):
    dist(case.site, "broken", "broken", "broken_mod", "raise ImportError('a bug in the plugin')\n")
    return case.train(case.work / "run", "method.name=exemplar")


def unreadable_settings_type_breaks_builtin_eval(case: Case):
    dist(case.site, "edge", "edge", "edge_mod", method("dims: Tuple[int, int] = (4, 8)"))
    done = case.train(case.work / "run", "method.name=exemplar")
    return done if done.returncode else case.run("eval", case.work / "run")


def uninstalled_plugin_eval(case: Case):
    dist(case.site, "my-methods", "mine", "mine_mod", method())
    done = case.train(case.work / "run", "method.name=mine")
    if done.returncode:
        return done
    shutil.rmtree(case.site)
    case.site.mkdir()
    return case.run("eval", case.work / "run")


def two_distributions_one_name(case: Case):
    dist(case.site, "alpha", "mine", "alpha_mod", method())
    dist(case.site, "beta", "mine", "beta_mod", method())
    return case.train(case.work / "run", "method.name=mine")


def misspelt_eval_features(case: Case):
    dist(case.site, "edge", "edge", "edge_mod", method(attribute="eval_features = 'Pooled'"))
    return case.train(case.work / "run", "method.name=edge")


def loss_is_a_float(case: Case):
    dist(case.site, "edge", "edge", "edge_mod", method(loss="float(-(z1 * z2).sum(1).mean())"))
    return case.train(case.work / "run", "method.name=edge")


def loss_is_a_vector(case: Case):
    dist(case.site, "edge", "edge", "edge_mod", method(loss="-(z1 * z2).sum(1)"))
    return case.train(case.work / "run", "method.name=edge")


def misspelt_method_name(case: Case):
    return case.train(case.work / "run", "method.name=exemplr")


def plugin_config_by_name(case: Case):
    package = case.site / "my_configs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "exemplar_tiny.yaml").write_text("method:\n  name: exemplar\n")
    info = case.site / "my_configs-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-configs\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[invaspread.configs]\nmy_configs = my_configs\n")
    return case.run("config", "exemplar_tiny")


CASES = {
    "1. the README's package beside runs/, pip": readme_package_beside_runs,
    "2. a broken plugin, a built-in trains": broken_plugin_disables_builtins,
    "3. a Tuple setting, a built-in run evaluates": unreadable_settings_type_breaks_builtin_eval,
    "4. eval of a run whose plugin is gone": uninstalled_plugin_eval,
    "5. two distributions register one name": two_distributions_one_name,
    "6. eval_features = 'Pooled'": misspelt_eval_features,
    "7. the loss is a Python float": loss_is_a_float,
    "7. the loss is a vector": loss_is_a_vector,
    "8. --set method.name=exemplr": misspelt_method_name,
    "9. a config a package ships, by name": plugin_config_by_name,
}


def last_line(done: subprocess.CompletedProcess) -> str:
    if done.returncode == 0:
        return "ok"
    lines = [ln.strip() for ln in done.stderr.strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if "invaspread: error" in ln or "configuration error" in ln or "Error:" in ln]
    return ((said or lines or ["(nothing on stderr)"])[-1]).replace("|", "/")[:220]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="a source tree (its folder holding invaspread/)")
    args = parser.parse_args()
    print("| tree | case | exit | last line of stderr |")
    print("|---|---|---:|---|")
    for tree in map(lambda t: Path(t).resolve(), args.tree):
        for name, case in CASES.items():
            with tempfile.TemporaryDirectory() as work:
                done = case(Case(tree, Path(work)))
                print(f"| {tree.name} | {name} | {done.returncode} | {last_line(done)} |", flush=True)


if __name__ == "__main__":
    main()
