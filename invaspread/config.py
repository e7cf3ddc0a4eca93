"""Typed configuration: dataclasses, loaded from YAML, overridden with ``section.key=value``.

An unknown section or key, a value of the wrong type or an unknown choice is a ``ConfigError``
naming the key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml

# the checks a method's Config.check composes (invaspread.checks) are public here too: plugins written when they
# lived here import them from invaspread.config
from .config_files import PACKAGED_CONFIGS, bundled_configs, resolve_config_path  # noqa: F401
from .checks import UNIONS
from .checks import MIN_TEMPERATURE, require, require_choice, require_positive, require_temperature  # noqa: F401
from .config_methods import check_installed, include_method, new_method_config, own_method_dict, own_section
from .config_validate import validate   # the whole config's checks
from .errors import ConfigError, InvaspreadError, shown  # noqa: F401  (re-exported: user code imports them from here)


@dataclass
class DataConfig:
    name: str = "digits"  # digits | cifar10 | cifar10_unseen | image_folder | stl10 | cub200 | cars196 | sop
    root: Optional[str] = None  # data set folder or archive; see README "Both evaluation settings of the paper"
    test_root: Optional[str] = None  # image_folder only: a labelled folder to evaluate on
    download: bool = False  # let torchvision download CIFAR-10 / STL-10 into root when missing
    image_size: int = 32  # side of the training views (and of evaluation images)
    resize: Optional[int] = None  # fine-grained recipe: resize to resize x resize before cropping
    stl10_split: str = "train"  # STL-10 training split: "train" (5K) or "train+unlabeled" (105K)
    subset_per_class: Optional[int] = None  # keep the first N images per class of the training split
    test_subset_per_class: Optional[int] = None  # same for the evaluation split
    in_memory: Optional[bool] = None  # decode every image once into RAM; null = when small enough
    num_workers: int = 2  # DataLoader workers for CPU augmentation
    mean: Optional[List[float]] = None  # normalisation mean per channel; null = the data set's usual values
    std: Optional[List[float]] = None  # normalisation std per channel; null = the data set's usual values
    cache_dir: Optional[str] = None  # decoded-array cache (archives); null = ~/.cache/invaspread
    unreadable: str = "skip"  # a file of an image folder that is not a readable image: skip (named in one line, listed in RUN/unreadable.txt) | error


@dataclass
class AugmentConfig:
    recipe: str = "released"  # "released": crop+jitter+gray+flip (CIFAR/STL); "finegrained": resize, crop, flip; "resized_crop": RandomResizedCrop+flip, test Resize(resize)+centre crop (MOM's train.py); "simclr" | "mocov2" | "byol": their authors' crop, flip, jitter (p 0.8), grey, blur, solarisation (data/transforms.py)
    crop: bool = True  # RandomResizedCrop (Table 7 "w/o R": false)
    crop_scale_min: float = 0.2  # RandomResizedCrop scale=(crop_scale_min, 1) (released, resized_crop; the successors' recipes have their own)
    color_jitter: float = 0.4  # ColorJitter(b, c, s, h) strength (released); 0 disables it in every recipe ("w/o C")
    grayscale_p: float = 0.2  # RandomGrayscale probability (released); 0 disables it in every recipe ("w/o G")
    flip: bool = True  # RandomHorizontalFlip ("w/o F": false)
    on_device: Optional[bool] = None  # augment on the GPU from a device-resident copy; null = on CUDA when possible


@dataclass
class ModelConfig:
    arch: str = "resnet18_cifar"  # resnet18_cifar | resnet18 | resnet50 | inception_v1 | timm:NAME (any timm model, pip install 'invaspread[timm]')
    width: int = 64  # resnet18_cifar only: channels of the first stage (64 = the paper's ResNet18)
    pool_window: Optional[int] = None  # resnet18_cifar only: null = global average pool; 7 = released STL-10 code
    embedding_dim: int = 128  # size of the L2-normalised embedding (paper: 128)
    head: str = "linear"  # embedding head on the pooled features: linear (the paper's fc) | mlp (Linear-ReLU-Linear: SimCLR, MoCo v2) | mlp_bn (Linear-BN-ReLU-Linear: BYOL)
    head_hidden: int = 2048  # hidden width of an mlp / mlp_bn head
    head_last_bias: bool = True  # the head's last Linear has a bias; false = none (BYOL's and SimCLR's authors' projectors)
    bn_groups: int = 1  # BatchNorm statistics over all images of a step (1) or G chunks (released code: 4 GPUs)
    frozen_bn: Optional[bool] = None  # BatchNorm keeps its running statistics in training; null = when pretrained
    sync_bn: bool = False  # torchrun: BatchNorm statistics over all ranks' images (false: each rank's share, like the released DataParallel)
    init_from: Optional[str] = None  # a run folder or .pt whose network initialises this one (fine-tuning)
    pretrained: bool = False  # ImageNet weights (torchvision archs: needs them downloaded once; timm archs: from the Hugging Face cache, or pretrained_file)
    pretrained_file: Optional[str] = None  # timm archs: a local .safetensors / .pth of the model's weights (with pretrained=true)


@dataclass
class OptimConfig:
    lr: float = 0.03  # initial SGD learning rate (paper: 0.03)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 weight decay of the trained parameters
    decay_norm_and_bias: bool = True  # weight decay on BatchNorm weights and biases too; false = on kernels and matrices only (the successors' authors' LARS recipes)
    nesterov: bool = False  # Nesterov momentum
    dampening: float = 0.0  # SGD dampening of the momentum buffer (gtolias/mom's train.py: 0.9)
    schedule: str = "step"  # "step" (multiply by decay_factors at decay_epochs) | "cosine" | "constant"
    decay_epochs: List[int] = field(default_factory=lambda: [120, 160])  # step schedule: epochs of each decay
    decay_factors: List[float] = field(default_factory=lambda: [0.1, 0.01])  # lr multiplier from each of them
    warmup_epochs: int = 0  # linear warm-up from 0, per step


@dataclass
class TrainConfig:
    epochs: int = 200  # 0: evaluate the network as built (method random)
    batch_size: int = 128  # instances per step; a step sees views x batch_size images (2 views: InvaSpread)
    seed: int = 0  # seeds the network, the shuffling and the augmentation (runs are repeatable)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA (the CPU's is cpu_bf16)
    channels_last: bool = True  # channels_last memory format on CUDA (the CPU's comes with cpu_fast_path)
    cpu_bf16: Optional[bool] = None  # bf16 autocast on the CPU; null = where the CPU computes bf16 natively (AMX / AVX512-BF16), resolved when the run starts and recorded
    cpu_fast_path: bool = True  # CPU: channels_last and on-device augmentation; false = contiguous tensors and PIL augmentation in DataLoader workers (the released pipeline)
    compile: bool = False  # torch.compile the model (CUDA only)
    eval_every: int = 1  # kNN every N epochs (and always after the last); 0 = only at the end
    eval_at_start: bool = True  # also evaluate the untrained network (epoch 0)
    progress: bool = True  # a progress bar per epoch
    keep: int = 0  # also keep the checkpoints of the last K epochs as epoch-NNNN.pt beside last.pt (0: last.pt only)
    save_epochs: List[int] = field(default_factory=list)  # epochs whose checkpoint is kept for good (e.g. [1, 10, 100])
    tensorboard: bool = False  # also write the metrics as TensorBoard scalars in RUN/tensorboard/ (pip install tensorboard)
    trust_unchecked_checkpoint: bool = False  # accept a checkpoint that carries no content checksum (written by hand, or before 2026-11-27) in --resume, eval, embed, index and model.init_from


@dataclass
class EvalConfig:
    knn_k: int = 200  # neighbours that vote in weighted kNN (paper: 200)
    knn_temperature: float = 0.1  # vote weight exp(similarity / knn_temperature) (paper: 0.1)
    batch_size: int = 512  # images per forward pass when building feature banks
    recall_ks: List[int] = field(default_factory=lambda: [1, 2, 4, 8])  # K of Recall@K (unseen categories)
    nmi_average: str = "arithmetic"  # NMI normalisation: arithmetic (scikit-learn >= 0.22) | geometric (the released code's scikit-learn: the paper's NMI columns)
    features: str = "auto"  # what eval, embed and index read: embedding (the head's L2-normalised output) | pooled (the backbone's pooled features, L2-normalised) | auto (the method's choice)
    protocol: str = "auto"  # auto (kNN with labelled training images, else Recall@K + NMI on the test images) | knn | linear | retrieval | none


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = field(default_factory=new_method_config)   # ``config_methods``: name + each method's section
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """Every key as plain values, with the run's own method's settings only (what a run saves)."""
        data = asdict(self)
        data["method"] = own_method_dict(data["method"])
        return data


def _describe(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in UNIONS:  # Optional[X], X | None (``checks.readable_type``)
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={shown(value)}: expected a list of {_describe(args[0])}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}={shown(value)}: expected {_describe(tp)}")


def _method_settings_classes() -> dict:
    """section -> settings dataclass of every method known now (built-ins, plugins imported so far)."""
    from .methods import METHODS, plugins

    return {cls.settings_section(name): cls.Config for name, cls in {**METHODS, **plugins.loaded()}.items()
            if cls.Config is not None}


def moved_sections() -> dict:
    """Top-level sections of old runs read under a method's section: a method's ``Config.moved_from``."""
    return {settings.moved_from: f"method.{section}" for section, settings in _method_settings_classes().items()
            if getattr(settings, "moved_from", None)}


def set_key(cfg: Config, dotted: str, value: Any, source: str = "") -> None:
    """Set ``section.key`` (or ``section.sub.key``, e.g. ``method.nce.noise``) to ``value``, type-checked."""
    where = f" in {source}" if source else ""
    section, _, rest = dotted.partition(".")
    moved = moved_sections()
    if section in moved and rest:   # a run saved before the move, or an old command line
        dotted = f"{moved[section]}.{rest}"
    parts = dotted.split(".")
    if parts[0] == "method" and len(parts) > 1:   # a plugin named here gets its section (imported now, alone)
        include_method(cfg, value if parts[1] == "name" else parts[1])
    node = cfg
    for depth, part in enumerate(parts):
        types = typing.get_type_hints(type(node))
        prefix = ".".join(parts[:depth])
        if part not in types:
            hint = difflib.get_close_matches(part, types, n=1)
            if depth == 0:
                raise ConfigError(f"unknown config key {shown(dotted)}{where}: keys look like section.key with section "
                                  f"one of {sorted(types)}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            raise ConfigError(f"unknown config key {shown(dotted)}{where}"
                              + (f"; did you mean '{prefix}.{hint[0]}'?" if hint else
                                 f"; known keys of '{prefix}': {', '.join(types)}"))
        child = getattr(node, part)
        last = depth == len(parts) - 1
        if last and not dataclasses.is_dataclass(child):
            setattr(node, part, _coerce(value, types[part], dotted))
            return
        if last or not dataclasses.is_dataclass(child):
            kind = "a section" if last else "a key, not a section"
            raise ConfigError(f"config key {shown(dotted)}{where}: '{'.'.join(parts[:depth + 1])}' is {kind}; "
                              f"keys look like section.key" + (f" (keys of it: {', '.join(typing.get_type_hints(type(child)))})"
                                                              if last else ""))
        node = child


def _flatten(values: dict, prefix: str, source: str):
    """``{"nce": {"noise": 8}}`` under ``method`` -> [("method.nce.noise", 8)]."""
    where = f" in {source}" if source else ""
    if not isinstance(values, dict):
        raise ConfigError(f"config section {shown(prefix)}{where} must be a mapping of keys to values")
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}.{key}", source)
        else:
            yield f"{prefix}.{key}", value


def describe(cfg: Config):
    """Yield (dotted key, value, one-line meaning) for every key of ``cfg`` (of the method section: its own
    method's settings); the meanings are the comments beside the fields, so the help text cannot drift from the
    code."""
    import inspect

    def walk(node, prefix):
        comments = getattr(type(node), "comments", None)   # a generated class (config_methods) has no source
        if comments is None:
            comments = dict(re.findall(r"^\s+(\w+): [^#\n]*?(?:#\s*(.*))?$", inspect.getsource(type(node)), re.M))
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if node is cfg.method and dataclasses.is_dataclass(value) and f.name != own_section(cfg.method.name):
                continue   # another method's settings: not part of this config (``Config.to_dict``)
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", value, comments.get(f.name, "")

    yield from walk(cfg, "")


def from_dict(data: dict, source: str = "") -> Config:
    cfg = Config()
    where = f" in {source}" if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"config{where} must be a mapping of sections, got {type(data).__name__}")
    check_installed(data, source)
    for section, values in data.items():
        for dotted, value in _flatten(values, str(section), source):
            set_key(cfg, dotted, value, source)
    return cfg


# keys that do not change what a run computes: where its data lives, how long it trains, how it is shown. A table
# row's folder is the row when only these differ (``report.table_runner``); a resumed run may change them and
# RESUMABLE_KEYS (each change recorded in the run's overrides.jsonl)
SAME_RESULT_KEYS = ("train.epochs", "data.root", "data.test_root", "data.cache_dir", "data.num_workers", "train.device",
                    "train.progress", "eval.batch_size", "train.tensorboard",
                    "train.trust_unchecked_checkpoint")
# ... plus the lr (to continue after a divergence) and how the run is evaluated: the one list of resumable keys
RESUMABLE_KEYS = SAME_RESULT_KEYS + ("optim.lr", "eval.protocol", "eval.nmi_average", "eval.features")

# keys added after runs were saved without them, and the value that reproduces how those runs trained (where it
# is not the new default); a method's own are its ``Config.legacy_values`` (``legacy_values``)
LEGACY_VALUES = {"train.cpu_bf16": False, "train.cpu_fast_path": False}   # the CPU trained in float32, contiguous,
#                                                                           with PIL augmentation (engine.precision)


def legacy_values() -> dict:
    """``LEGACY_VALUES`` and every known method's ``Config.legacy_values`` under ``method.SECTION.``."""
    found = dict(LEGACY_VALUES)
    for section, settings in _method_settings_classes().items():
        found.update({f"method.{section}.{key}": value for key, value in getattr(settings, "legacy_values", {}).items()})
    return found


def completed(data: dict, source: str = "") -> dict:
    """A config dict as saved by an older version, with every key added since (the form ``Config.to_dict`` gives
    today): at the value that reproduces how the run trained (``legacy_values``), else at its default, so a run
    written before a key existed compares equal to itself and resumes as it trained. Only the run's own method's
    section is read (older runs saved every method's)."""
    data = _own_method_only(data)
    cfg = from_dict(data, source)
    for dotted, value in legacy_values().items():
        node = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and (not dotted.startswith("method.") or dotted.split(".")[1] == own_section(cfg.method.name)):
            set_key(cfg, dotted, value, source)
    return cfg.to_dict()


def _own_method_only(data: dict) -> dict:
    """A saved config without the sections of methods other than the run's own (older runs saved every one)."""
    method = data.get("method") if isinstance(data, dict) else None
    if not isinstance(method, dict):
        return data
    return {**data, "method": own_method_dict(method)}


def parse_override(text: str):
    """``"train.epochs=3"`` -> ("train.epochs", 3); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {shown(text)}: expected section.key=value, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> Config:
    """Read ``path`` (YAML) if given, apply ``overrides`` (``section.key=value``), validate."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.load(p.read_text(encoding="utf-8"), Loader=_StrictLoader) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason})") from err
        except (yaml.YAMLError, TypeError) as err:   # TypeError: a list or mapping used as a key
            raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from err
        cfg = from_dict(data, str(path))
    for text in overrides or []:
        key, value = parse_override(text)
        set_key(cfg, key, value, "--set")
    return validate(cfg)


def save_config(cfg: Config, path) -> None:
    """Write ``config.yaml`` through a temporary file and a rename: a kill at any byte leaves the old file or the
    new one, never a torn one that a resume would take for a hand edit."""
    from .atomic import atomic_file

    with atomic_file(path, "w", shared=True) as fh:
        fh.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
