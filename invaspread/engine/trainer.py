"""The training loop: two views per instance, InvaSpreadLoss, SGD, evaluation, checkpoints.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON line per
evaluated or trained epoch) and ``last.pt`` (written atomically after every epoch).
``fit(..., resume=True)`` continues a run from ``last.pt`` exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..config import Config, ConfigError, InvaspreadError, from_dict, save_config, validate
from ..data.datasets import build_data
from ..evaluate import source_features
from ..losses import build_loss
from ..models import build_model
from .batches import make_batches
from .checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from .evaluation import evaluate


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine (use auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device={name!r}: {err}") from err


def learning_rate(optim_cfg, epochs: int, epoch_progress: float) -> float:
    """lr at ``epoch_progress`` epochs into training (0-based, fractional within an epoch).

    step: lr x decay_factors[i] once epoch >= decay_epochs[i] (paper: x0.1 at 120, x0.01 at 160);
    cosine: half-cosine from lr to 0 after warm-up; constant: lr. Warm-up is linear from 0.
    """
    lr, warmup = optim_cfg.lr, optim_cfg.warmup_epochs
    if warmup > 0 and epoch_progress < warmup:
        return lr * epoch_progress / warmup
    if optim_cfg.schedule == "cosine":
        span = max(epochs - warmup, 1e-8)
        return lr * 0.5 * (1 + math.cos(math.pi * min((epoch_progress - warmup) / span, 1.0)))
    if optim_cfg.schedule == "step":
        factor = 1.0
        for milestone, f in zip(optim_cfg.decay_epochs, optim_cfg.decay_factors):
            if int(epoch_progress) >= milestone:
                factor = f
        return lr * factor
    return lr


def nearest_neighbour_positives(features: torch.Tensor, generator: torch.Generator, chunk_size: int = 4096):
    """The paper's CUB-200 option (Section 4.2): the positive of instance i is, with probability 1/2,
    its own second view, else (an augmented view of) its nearest other instance by cosine similarity.

    features: (N, D), e.g. pool5 features of the non-augmented training images. Returns (N,) int64.
    """
    feats = torch.nn.functional.normalize(features.float(), dim=1)
    nn_index = torch.empty(feats.shape[0], dtype=torch.long, device=feats.device)
    for start in range(0, feats.shape[0], chunk_size):
        sims = feats[start:start + chunk_size] @ feats.t()
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + start] = -float("inf")  # never the instance itself
        nn_index[start:start + chunk_size] = sims.argmax(1)
    own = torch.arange(feats.shape[0])
    use_neighbour = torch.rand(feats.shape[0], generator=generator) < 0.5
    return torch.where(use_neighbour, nn_index.cpu(), own).numpy()


def train_step(forward, criterion, optimizer, v1, v2, train_cfg, device) -> torch.Tensor:
    """One SGD step on a batch of view pairs (both views in one forward pass, as the released code).

    Returns the detached loss; on CUDA, bf16 autocast and channels_last follow ``train_cfg``."""
    cuda = device.type == "cuda"
    x = torch.cat([v1, v2])
    if cuda and train_cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=train_cfg.bf16 and cuda):
        z1, z2 = forward(x).chunk(2)
        loss = criterion(z1, z2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def build_optimizer(model, optim_cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                           weight_decay=optim_cfg.weight_decay, nesterov=optim_cfg.nesterov)


def _rng_state(device):
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def fit(cfg: Optional[Config], out_dir, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) a run in ``out_dir``; returns the last metrics line."""
    out_dir = Path(out_dir)
    state = None
    if resume:
        state = load_checkpoint(out_dir)
        cfg = validate(from_dict(state["config"], str(out_dir / "last.pt")))
    elif (out_dir / "last.pt").exists():
        raise ConfigError(f"{out_dir} already holds a run (last.pt); continue it with --resume {out_dir} "
                          f"or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)

    bundle = build_data(cfg.data, progress=cfg.train.progress)
    model = build_model(cfg.model).to(device)
    cuda = device.type == "cuda"
    if cuda and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_loss(cfg.loss)
    optimizer = build_optimizer(model, cfg.optim)
    batches = make_batches(bundle.train, cfg.data, cfg.augment, bundle.mean, bundle.std, cfg.train.batch_size, device)
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        log(f"resuming {out_dir} after epoch {start_epoch}/{cfg.train.epochs}")
    forward = torch.compile(model) if (cfg.train.compile and cuda) else model
    log(f"{cfg.data.name}: {len(bundle.train)} training images, {cfg.model.arch} on {device}, "
        f"{type(batches).__name__}, {len(batches)} steps/epoch")

    metrics_path = out_dir / "metrics.jsonl"
    if state is not None and metrics_path.exists():
        # drop lines of an epoch that was interrupted after logging but before its checkpoint
        kept = [ln for ln in metrics_path.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= start_epoch]
        metrics_path.write_text("".join(ln + "\n" for ln in kept))

    def write(line: dict):
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in line.items()}
        log(" ".join(f"{k}={v}" for k, v in shown.items()))

    def due(epoch: int) -> bool:
        every = cfg.train.eval_every
        return epoch == cfg.train.epochs or (every > 0 and epoch % every == 0)

    last = {} if state is None else dict(state.get("metrics", {}))
    if start_epoch == 0 and cfg.train.eval_at_start:
        last = {"epoch": 0, **evaluate(model, bundle, cfg, device)}
        write(last)
    from tqdm.auto import tqdm

    for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
        if cfg.loss.positive == "augmentation_or_neighbour":
            pool5 = source_features(model, bundle.train, cfg.data, cfg.augment, bundle.mean, bundle.std,
                                    cfg.eval.batch_size, device, pooled=True)
            gen = torch.Generator().manual_seed(cfg.train.seed * 7919 + epoch)
            batches.set_positive_index(nearest_neighbour_positives(pool5, gen))
        model.train()
        t0 = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        steps = len(batches)
        bar = tqdm(batches.epoch(cfg.train.seed, epoch), total=steps, desc=f"epoch {epoch}/{cfg.train.epochs}",
                   disable=not cfg.train.progress, leave=False)
        for step, (v1, v2, _) in enumerate(bar):
            lr = learning_rate(cfg.optim, cfg.train.epochs, epoch - 1 + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(forward, criterion, optimizer, v1, v2, cfg.train, device)
            total_loss += loss
            if cfg.train.progress and step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}")
        if cuda:
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
        if not torch.isfinite(total_loss):
            raise InvaspreadError(f"epoch {epoch}: the loss is not finite; {out_dir}/last.pt still holds epoch "
                                  f"{epoch - 1}. Lower optim.lr or raise loss.temperature")
        last = {"epoch": epoch, "loss": total_loss.item() / steps, "lr": lr, "train_seconds": train_seconds,
                "images_per_second": 2 * steps * cfg.train.batch_size / train_seconds}
        if due(epoch):
            last.update(evaluate(model, bundle, cfg, device, nmi=epoch == cfg.train.epochs))
        write(last)
        save_checkpoint({"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "schedule": {"lr": lr, "epochs_done": epoch}, "epoch": epoch, "config": cfg.to_dict(),
                         "rng": _rng_state(device), "metrics": last}, out_dir / "last.pt")
    return last
