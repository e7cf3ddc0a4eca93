"""The checks of a whole config: ``validate(cfg)`` returns ``cfg`` when every key holds a value its code accepts,
else raises a ``ConfigError`` naming the first bad key and what was expected.

The allowed values come from the registries that act on them (data sets, recipes, architectures, schedules), so a
new registry entry is accepted without an edit here. Each check takes a section of ``config.Config`` (the
whole config, or the section its name says); this module imports nothing of ``config``, which imports it.
"""

from __future__ import annotations

import math
import re

from .checks import require_temperature
from .config_methods import validate_method
from .data.benchmarks import STL10_SPLITS
from .data.datasets import DATASETS
from .data.sources import UNREADABLE
from .data.transforms import AUGMENT_RECIPES, SUCCESSOR_RECIPES
from .engine.evaluation import PROTOCOLS
from .engine.schedule import SCHEDULES
from .errors import ConfigError, shown
from .evaluate.retrieval import NMI_AVERAGES
from .methods.base import EVAL_FEATURES
from .models import BACKBONES, HEADS
from .models.timm_nets import check_timm_arch, is_timm_arch

# the allowed values of the keys with a fixed set of them, read from the registries that act on them
CHOICES = {
    "data.name": tuple(DATASETS),
    "data.stl10_split": STL10_SPLITS,
    "data.unreadable": UNREADABLE,
    "augment.recipe": AUGMENT_RECIPES,
    "model.arch": tuple(BACKBONES),
    "model.head": tuple(HEADS),
    "optim.schedule": tuple(SCHEDULES),
    "eval.protocol": ("auto", *PROTOCOLS, "none"),
    "eval.nmi_average": NMI_AVERAGES,
    "eval.features": ("auto", *EVAL_FEATURES),
}

DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def validate(cfg):
    """``cfg`` if every key holds a value its code accepts, else a ``ConfigError`` naming the first bad key."""
    _check_choices(cfg)
    _check_numbers(cfg)
    validate_method(cfg)
    _check_train(cfg.train)
    _check_optim(cfg.optim)
    _check_augment(cfg.augment)
    _check_data(cfg)
    _check_eval(cfg.eval)
    _check_model(cfg.model)
    return cfg


CIFAR_ONLY = ("width", "pool_window")   # the keys only model.arch=resnet18_cifar reads


def _check_model(model) -> None:
    """A key the chosen architecture does not read is an error, not a silently different network (the
    torchvision and Inception networks have their authors' widths and global pooling)."""
    if model.pretrained_file is not None and not (is_timm_arch(model.arch) and model.pretrained):
        raise ConfigError(f"model.pretrained_file={shown(model.pretrained_file)}: applies to model.arch=timm:NAME with "
                          f"model.pretrained=true (model.arch={model.arch}, model.pretrained={model.pretrained})")
    if is_timm_arch(model.arch):
        check_timm_arch(model.arch)
    if model.arch == "resnet18_cifar":
        return
    defaults = type(model)()   # the defaults of the class (no import of config.py: no cycle)
    unread = [key for key in CIFAR_ONLY if getattr(model, key) != getattr(defaults, key)]
    if unread:   # every such key at once: a bundled config's width and the user's pool_window in one message
        shown_keys = ", ".join(f"model.{key}={getattr(model, key)}" for key in unread)
        resets = " ".join(f"--set model.{key}={'null' if getattr(defaults, key) is None else getattr(defaults, key)}"
                          for key in unread)
        raise ConfigError(f"{shown_keys}: {'apply' if len(unread) > 1 else 'applies'} to model.arch=resnet18_cifar "
                          f"only (model.arch={model.arch} has its authors' fixed widths and global pooling); drop "
                          f"{'them' if len(unread) > 1 else 'it'} from the config, or pass {resets}")


def _check_choices(cfg) -> None:
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key == "model.arch" and is_timm_arch(value):
            continue   # any timm model: checked by name in _check_model
        if value not in allowed:
            raise ConfigError(f"{key}={shown(value)}: expected one of {', '.join(allowed)}")


def _check_numbers(cfg) -> None:
    positive = {"data.image_size": cfg.data.image_size, "eval.knn_k": cfg.eval.knn_k, "model.embedding_dim": cfg.model.embedding_dim,
                "model.width": cfg.model.width, "eval.batch_size": cfg.eval.batch_size,
                "model.bn_groups": cfg.model.bn_groups, "model.head_hidden": cfg.model.head_hidden}
    for key, value in positive.items():
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{key}={shown(value)}: expected a positive number")
    non_negative = {"optim.lr": cfg.optim.lr, "optim.momentum": cfg.optim.momentum,
                    "optim.weight_decay": cfg.optim.weight_decay, "optim.warmup_epochs": cfg.optim.warmup_epochs,
                    "data.num_workers": cfg.data.num_workers}
    for key, value in non_negative.items():
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{key}={shown(value)}: expected a finite number >= 0")


def _check_train(train) -> None:
    if train.keep < 0:
        raise ConfigError(f"train.keep={train.keep}: expected 0 (last.pt only) or a number of epochs to keep")
    if any(e < 1 for e in train.save_epochs):
        raise ConfigError(f"train.save_epochs={train.save_epochs}: expected epoch numbers >= 1")
    if train.epochs < 0:
        raise ConfigError(f"train.epochs={train.epochs}: expected 0 (evaluate only) or more")
    if train.batch_size < 2:
        raise ConfigError(f"train.batch_size={train.batch_size}: the loss needs at least 2 instances per batch")
    if train.eval_every < 0:
        raise ConfigError(f"train.eval_every={train.eval_every}: expected 0 (only at the end) or a number of epochs")
    if not DEVICE_NAME.match(train.device):
        raise ConfigError(f"train.device={shown(train.device)}: expected auto, cpu, cuda or cuda:N")
    if not 0 <= train.seed < 2 ** 63:
        raise ConfigError(f"train.seed={train.seed}: expected an integer from 0 to 9223372036854775807")


def _check_optim(optim) -> None:
    if len(optim.decay_epochs) != len(optim.decay_factors):
        raise ConfigError(f"optim.decay_epochs {optim.decay_epochs} and optim.decay_factors "
                          f"{optim.decay_factors} must have the same length")
    if not 0 <= optim.dampening < 1:
        raise ConfigError(f"optim.dampening={optim.dampening}: expected 0 <= dampening < 1")
    if optim.nesterov and (optim.dampening != 0 or optim.momentum == 0):
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0 and optim.dampening=0 (torch.optim.SGD)")
    if any(not (f > 0 and math.isfinite(f)) for f in optim.decay_factors):
        raise ConfigError(f"optim.decay_factors={optim.decay_factors}: expected positive lr multipliers, e.g. "
                          f"[0.1, 0.01]")
    if any(e < 0 for e in optim.decay_epochs):
        raise ConfigError(f"optim.decay_epochs={optim.decay_epochs}: expected epoch numbers >= 0")


def _check_augment(aug) -> None:
    if not 0 <= aug.color_jitter <= 0.5:
        raise ConfigError(f"augment.color_jitter={aug.color_jitter}: expected 0..0.5 (hue range limit)")
    if not 0 <= aug.grayscale_p <= 1:
        raise ConfigError(f"augment.grayscale_p={aug.grayscale_p}: expected a probability in 0..1")
    if not 0 < aug.crop_scale_min <= 1:
        raise ConfigError(f"augment.crop_scale_min={aug.crop_scale_min}: expected 0 < value <= 1")
    _check_successor_recipe(aug)


def _check_data(cfg) -> None:
    for key, value in (("data.mean", cfg.data.mean), ("data.std", cfg.data.std)):
        if value is not None and len(value) != 3:
            raise ConfigError(f"{key}={value}: expected 3 numbers (R, G, B)")
    if cfg.data.std is not None and not all(v > 0 and math.isfinite(v) for v in cfg.data.std):
        raise ConfigError(f"data.std={cfg.data.std}: every channel's std must be a positive number (images are "
                          f"divided by it)")
    for key, value in (("data.subset_per_class", cfg.data.subset_per_class),
                       ("data.test_subset_per_class", cfg.data.test_subset_per_class),
                       ("model.pool_window", cfg.model.pool_window), ("data.resize", cfg.data.resize)):
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value}: expected null (all / the default) or a positive number")


def _check_eval(ev) -> None:
    require_temperature("eval.knn_temperature", ev.knn_temperature)
    if not ev.recall_ks or any(k < 1 for k in ev.recall_ks):
        raise ConfigError(f"eval.recall_ks={ev.recall_ks}: expected a non-empty list of K >= 1, e.g. [1, 2, 4, 8]")


def _check_successor_recipe(aug):
    """A successor's recipe (simclr / mocov2 / byol) fixes its own strengths: the released recipe's strength keys
    may only switch an operation off (0), never set a strength that would silently go unused."""
    if aug.recipe not in SUCCESSOR_RECIPES:
        return
    defaults = type(aug)()
    for key, off in (("crop_scale_min", None), ("color_jitter", 0.0), ("grayscale_p", 0.0)):
        value = getattr(aug, key)
        if value != getattr(defaults, key) and value != off:
            raise ConfigError(f"augment.{key}={value}: augment.recipe={aug.recipe} uses its authors' strengths "
                              f"(data/transforms.py){'; 0 removes the operation' if off is not None else ''}; for "
                              f"your own strengths use augment.recipe=released")
