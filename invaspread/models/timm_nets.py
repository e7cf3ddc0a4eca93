"""Backbones by name from timm (``model.arch=timm:NAME``, e.g. ``timm:resnet50``, ``timm:convnext_nano``,
``timm:vit_small_patch16_224``): the network without its classifier (``num_classes=0``: pooled features), the
feature dimension read from the model (``num_features``).

Pretrained weights come from a local file (``model.pretrained_file``) or, with ``model.pretrained=true``, from
timm's own cache (the Hugging Face hub cache, ``$HF_HOME``) as timm finds them; offline and absent, that is one
line saying where to put them. timm is an optional extra: ``pip install 'invaspread[timm]'``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from ..errors import ConfigError
from .torchvision_nets import PretrainedWeightsUnavailable

TIMM_PREFIX = "timm:"


def is_timm_arch(arch: str) -> bool:
    return isinstance(arch, str) and arch.startswith(TIMM_PREFIX)


def _timm(arch: str):
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.arch={arch} needs timm: pip install 'invaspread[timm]'") from None
    return timm


def check_timm_arch(arch: str) -> None:
    """A name timm does not know is one line with the closest names it does."""
    timm, name = _timm(arch), arch[len(TIMM_PREFIX):]
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        raise ConfigError(f"model.arch={arch}: timm has no model {name!r}"
                          + (f" (did you mean {', '.join(TIMM_PREFIX + c for c in close)}?)" if close else
                             "; timm.list_models('*PATTERN*') lists its names"))


def timm_backbone(cfg):
    """(backbone, feature dimension) for ``cfg.arch = "timm:NAME"``."""
    check_timm_arch(cfg.arch)
    timm, name = _timm(cfg.arch), cfg.arch[len(TIMM_PREFIX):]
    kwargs = {"num_classes": 0}
    if cfg.pretrained_file:
        path = Path(cfg.pretrained_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.pretrained_file={cfg.pretrained_file}: no such file (expected the weights of "
                              f"timm's {name}, .safetensors or .pth)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    elif cfg.pretrained:
        kwargs["pretrained"] = True
    try:
        with _hub_quiet():
            net = timm.create_model(name, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:   # hub offline, a cache miss, a file of another model
        if not kwargs.get("pretrained"):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise PretrainedWeightsUnavailable(
            f"model.arch={cfg.arch} with pretrained weights: they could not be loaded ({first}). Put them in the "
            f"Hugging Face cache once (online: python -c \"import timm; timm.create_model('{name}', "
            f"pretrained=True)\"), or give a local file with --set model.pretrained_file=PATH, or set "
            f"model.pretrained=false to train from scratch") from err
    return net, net.num_features


class _hub_quiet:
    """The Hugging Face hub's own warnings (one per failed request) off while timm looks for weights: the one
    line that matters is ours."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("huggingface_hub")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
