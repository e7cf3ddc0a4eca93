"""Configs by name: the YAML files bundled in ``invaspread/configs`` and those installed packages ship. A
light module (no torch): ``invaspread --help`` lists the bundled names without loading the config machinery."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, List, Tuple

from .errors import InvaspreadError


PACKAGED_CONFIGS = Path(__file__).parent / "configs"
CONFIG_GROUP = "invaspread.configs"


def bundled_configs() -> List[str]:
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def resolve_config_path(name: str, flag: str = "--config") -> str:
    """A YAML file's path, the bundled config of that name (``cifar10`` -> invaspread/configs/cifar10.yaml), or
    a config an installed package ships (``methods.plugins.shipped_configs``);
    ``flag`` names the argument in the error (``invaspread config NAME`` takes it without a flag)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return str(p)
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    if packaged.is_file():
        return str(packaged)
    shipped = shipped_configs()
    if name in shipped:
        return str(shipped[name][0])
    raise InvaspreadError(f"{flag + ' ' if flag else ''}{name}: no such file and no bundled config of that name "
                          f"(bundled: {', '.join(bundled_configs())}; shipped by installed packages through the "
                          f"entry-point group {CONFIG_GROUP}: {', '.join(shipped) or 'none'})")


@functools.lru_cache(maxsize=None)
def shipped_configs() -> Dict[str, Tuple[Path, str]]:
    """name -> (YAML file, origin) of every config an installed distribution ships: each entry point of the group
    ``invaspread.configs`` names a package (``my_methods = "my_methods.configs"``), and every ``*.yaml`` file in
    its folder is a config by its stem (``vicreg_cifar10.yaml`` -> ``--config vicreg_cifar10``). The packages are
    located, not imported."""
    import importlib.util
    from importlib.metadata import entry_points

    found: Dict[str, Tuple[Path, str]] = {}
    for point in sorted(entry_points(group=CONFIG_GROUP), key=lambda p: p.name):
        module = point.value.split(":")[0]
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        folders = list(spec.submodule_search_locations or []) if spec else []
        if spec is not None and not folders and spec.origin:
            folders = [str(Path(spec.origin).parent)]
        for folder in folders:
            for path in sorted(Path(folder).glob("*.yaml")):
                found.setdefault(path.stem, (path, f"entry point {point.name} = {point.value} (group {CONFIG_GROUP})"))
    return found


def overrides_from_flags(args) -> list:
    """A command's ``--set KEY=VALUE`` list, with its shortcut flags (``--data-dir``, ``--epochs``, ``--device``)
    written as the keys they stand for."""
    sets = list(args.set or [])
    if getattr(args, "data_dir", None):
        sets.append(f"data.root={args.data_dir}")
    if getattr(args, "epochs", None) is not None:
        sets.append(f"train.epochs={args.epochs}")
    if getattr(args, "device", None):
        sets.append(f"train.device={args.device}")
    return sets
