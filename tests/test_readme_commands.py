"""Every `invaspread` command the README shows is one the command line accepts as written: its flags parse, and
for `train` / `config` its --config resolves and every --set names a real key with a valid value (issue 18 §1:
the README's own-images section once advised a flag `train` does not have)."""

import re
import shlex
from pathlib import Path

import pytest

from conftest import install_readme_plugin
from invaspread.cli import build_parser
from invaspread.config import load_config, resolve_config_path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_commands():
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("invaspread ", "torchrun ")):
                commands.append(line)
    for inline in re.findall(r"`(invaspread (?:train|eval|config|table|report|index|search|embed|cache) [^`]*)`",
                             README):
        commands.append(inline)
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_every_kind():
    kinds = {shlex.split(c)[1] for c in COMMANDS if c.startswith("invaspread")}
    assert {"train", "eval", "embed", "index", "search", "table", "report", "config"} <= kinds


@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_parses_and_its_settings_exist(command, tmp_path, monkeypatch):
    from invaspread import methods

    if "align_uniform" in command:   # README "Your own method": with its plugin installed, as the README says
        install_readme_plugin(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
    methods.plugins.forget()
    try:
        _check(command)
    finally:
        methods.plugins.forget()


def _check(command):
    # syntax shown in prose: "--protocol knn|linear|retrieval" is each of them, "table N" any of 1-8
    text = re.sub(r"(\w+)(\|\w+)+", r"\1", command.replace("...", "x")).replace("table N", "table 1")
    words = shlex.split(text)
    if words[0] == "torchrun":
        words = words[words.index("invaspread"):]
    if words[1] in ("--version", "--help") or "--help" in words:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args(words[1:])
        assert done.value.code == 0
        return
    args = build_parser().parse_args(words[1:])
    if args.command in ("train", "config") and not getattr(args, "resume", None):
        name = getattr(args, "config", None) or getattr(args, "name", None)
        sets = list(args.set or [])
        if getattr(args, "epochs", None) is not None:
            sets.append(f"train.epochs={args.epochs}")
        load_config(resolve_config_path(name) if name else None, sets)
