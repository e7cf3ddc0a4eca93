"""Flat checkpoint dicts, written atomically with a content checksum and read without unpickling
arbitrary objects."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
from pathlib import Path

import torch

from ..atomic import atomic_file
from ..config import completed
from ..errors import ConfigError, InvaspreadError

CHECKPOINT_VERSION = 1


def content_digest(value, digest=None) -> str:
    """SHA-256 over every tensor's bytes and every other value's repr, in a fixed order: a flipped bit in
    any weight, buffer, optimizer slot or RNG state changes it."""
    digest = digest or hashlib.sha256()
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            content_digest(value[key], digest)
    elif isinstance(value, (list, tuple)):
        for item in value:
            content_digest(item, digest)
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        digest.update(repr(value).encode())
    return digest.hexdigest()


def save_checkpoint(state: dict, path) -> None:
    """Write ``state`` (plus its ``checksum``) to ``path`` via a temporary file + rename, so a kill never
    leaves half a file. A write that fails for want of space (PyTorch says "unexpected pos") is an ``OSError``
    of the file system's reason, naming the file and the bytes it needs: the previous file stays whole."""
    path = Path(path)
    try:
        with atomic_file(path) as fh:
            torch.save({**state, "checksum": content_digest(state)}, fh)
    except RuntimeError as err:
        if "unexpected pos" not in str(err) and "PytorchStreamWriter" not in str(err):
            raise
        needed = sum(v.numel() * v.element_size() for v in _tensors(state))
        free = _free_bytes(path.parent)
        reason = (f"No space left on device ({free / 2 ** 20:.1f} MiB free, the checkpoint needs about "
                  f"{needed / 2 ** 20:.1f} MiB)" if free is not None and free < 2 * needed + 2 ** 20 else
                  f"the write failed ({' '.join(str(err).split())[:120]})")
        raise OSError(errno.ENOSPC if "No space" in reason else errno.EIO, reason, str(path)) from err


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _free_bytes(folder: Path):
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return stats.f_bavail * stats.f_frsize


TRUST_UNCHECKED = "train.trust_unchecked_checkpoint"


def trusts_unchecked(overrides) -> bool:
    """Whether the ``overrides`` ("key=value") say ``train.trust_unchecked_checkpoint=true``: read before the
    checkpoint, whose config they then adjust."""
    from ..config import parse_override

    return any(key == TRUST_UNCHECKED and value is True for key, value in map(parse_override, overrides or ()))


def load_checkpoint(path, map_location="cpu", trust_unchecked: bool = False) -> dict:
    """Load a checkpoint (a file, or a run folder holding ``last.pt``) with ``weights_only=True``. Every checkpoint
    invaspread writes carries a content checksum; one without (written by hand, or before the checksum existed)
    is refused unless ``trust_unchecked``: nothing could tell an edited config or weights from what was saved."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise InvaspreadError(f"no checkpoint at {path} (expected a run folder with last.pt, or a .pt file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:   # weights_only refused a global: arbitrary objects, maybe code
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        raise InvaspreadError(f"cannot load checkpoint {path}: it holds objects other than tensors and plain values"
                              f"{f' ({found.group(1)})' if found else ''}, refused unread since loading them could "
                              f"run code") from err
    except Exception as err:  # not a checkpoint at all, truncated, ...
        first = (str(err).strip().splitlines() or [""])[0]
        raise InvaspreadError(f"cannot load checkpoint {path}: not a readable PyTorch checkpoint "
                              f"({type(err).__name__}: {first})") from err
    if not isinstance(state, dict):
        raise InvaspreadError(f"{path} is not an invaspread checkpoint (it holds a {type(state).__name__})")
    stored = state.pop("checksum", None)
    if stored is None and not trust_unchecked:
        raise InvaspreadError(f"{path} carries no checksum (written by hand, or by invaspread before 2026-11-27), so "
                              f"nothing can tell its config and weights from what was saved; refused. If you trust "
                              f"the file: --set {TRUST_UNCHECKED}=true")
    if stored is not None and stored != content_digest(state):
        raise InvaspreadError(f"{path} is corrupt: its content no longer matches the checksum written with it "
                              f"(disk or copy damage); use an intact copy")
    missing = {"model", "config", "epoch"} - set(state)
    if missing:
        raise InvaspreadError(f"{path} is not an invaspread checkpoint (missing {sorted(missing)})")
    try:   # keys added since it was saved: at the values that reproduce how it trained
        state["config"] = completed(state["config"], str(path))
    except InvaspreadError:
        pass   # a key this version does not know: named by whoever reads the config
    return state


def load_run(path, overrides=()):
    """(config, checkpoint, model in eval mode on its device, device) of a run folder or checkpoint file;
    ``overrides`` ("key=value") adjust the saved config (data moved, another device)."""
    from ..config import from_dict, parse_override, set_key, validate
    from ..models import build_model
    from .precision import resolve_device

    state = load_checkpoint(path, trust_unchecked=trusts_unchecked(overrides))
    cfg = from_dict(state["config"], str(path))
    for text in overrides:
        set_key(cfg, *parse_override(text), source="--set")
    validate(cfg)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg.model)
    load_network(model, state["model"], str(path), "; drop the --set model.* overrides")
    return cfg, state, model.to(device).eval(), device


def load_network(model, weights: dict, source: str, advice: str = "") -> None:
    """``model.load_state_dict(weights)``; a network of another architecture is a one-line error naming
    ``source`` (a model.* setting changed, or a checkpoint of another run)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"{source}: its network does not fit the model.* config ({first}){advice}") from err


def method_checkpoint_state(method) -> dict:
    """The method's own state (banks, classifier weights, constants) without the encoder's weights,
    which the checkpoint keeps under "model" (what ``eval`` and ``embed`` load)."""
    return {k: v for k, v in method.state_dict().items() if not k.startswith("encoder.")}


def load_method_state(method, state: dict) -> None:
    saved = {**{f"encoder.{k}": v for k, v in state["model"].items()}, **state.get("method", {})}
    ours = method.state_dict()
    differ = [f"{key} {tuple(value.shape)} in the checkpoint, {tuple(ours[key].shape)} now" for key, value in saved.items()
              if key in ours and hasattr(value, "shape") and tuple(value.shape) != tuple(ours[key].shape)]
    if differ:   # a memory bank or classifier sized by the data set: the data changed under the run
        raise ConfigError(f"the run's state does not fit this data ({'; '.join(differ[:2])}): a memory bank or "
                          f"classifier has one row per training image (or cluster), so the run must resume on the data "
                          f"it started with (check data.root and data.subset_per_class)")
    missing, unexpected = sorted(set(ours) - set(saved)), sorted(set(saved) - set(ours))
    if missing or unexpected:   # the method's code changed between save and resume (a plugin's, typically)
        said = [f"{what} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for what, keys in
                (("the method now has", missing), ("the checkpoint has", unexpected)) if keys]
        raise ConfigError(f"method {type(method).__name__}: the run's saved state does not fit the method as installed "
                          f"now ({'; '.join(said)}, not in the other): its code changed since the run was saved; "
                          f"resume with the version that saved it, or start a new run from its network with --set "
                          f"model.init_from=RUN_DIR")
    method.load_state_dict(saved)
