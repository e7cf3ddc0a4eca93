"""The training loop, the same for every method: batches of views, ``method.training_step``, SGD,
evaluation, checkpoints. It knows no method by name (see ``invaspread.methods.base`` for the contract).

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON line per
evaluated or trained epoch) and ``last.pt`` (written atomically after every epoch: the encoder under
"model", the method's own state under "method", optimizer, RNG, config). ``fit(..., resume=True)``
continues a run from ``last.pt`` exactly where it stopped.
"""

from __future__ import annotations

import errno
import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import (Config, ConfigError, InvaspreadError, completed, from_dict, parse_override, save_config,
                      set_key, validate)
from ..data.datasets import build_data
from ..methods import build_method
from ..models import build_model
from ..ops.distributed import barrier, broadcast_from_main, mean_over_ranks, start_from_environment, world
from .batches import make_batches
from .checkpoint import CHECKPOINT_VERSION, load_checkpoint, load_network, save_checkpoint
from .evaluation import evaluate, resolve_protocol
from .features import source_features
from .run_folder import RunFolder
from .tensorboard import ScalarLog, summary_writer_class


class DivergedError(InvaspreadError):
    """Training stopped because the loss or the weights became NaN or infinite (the last finite epoch is saved)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine (use auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device={name!r}: expected auto, cpu, cuda or cuda:N") from err


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


def train_step(method, optimizer, views, index, bf16: bool, runner=None) -> torch.Tensor:
    """One SGD step of ``method`` on a batch; returns the detached loss. ``bf16``: autocast on CUDA.
    ``runner``: the method wrapped in ``DistributedDataParallel`` under torchrun."""
    device_type = views.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16 and device_type == "cuda"):
        loss = (runner or method)(views, index)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    method.after_step()
    return loss.detach()


def build_optimizer(parameters, optim_cfg) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=optim_cfg.lr, momentum=optim_cfg.momentum, dampening=optim_cfg.dampening,
                           weight_decay=optim_cfg.weight_decay, nesterov=optim_cfg.nesterov)


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
    method.load_state_dict(saved)


def load_encoder_weights(model, path) -> None:
    """Initialise ``model`` with the network of another run (``model.init_from``): same architecture only."""
    load_network(model, load_checkpoint(Path(path).expanduser())["model"], f"model.init_from={path}")


def _rng_state(device):
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


# what may change when a run is resumed: its length, where its data lives, the lr (after a divergence), and
# settings that do not change what is computed; anything else would make the run a different one
RESUME_OVERRIDES = ("train.epochs", "optim.lr", "data.root", "data.test_root", "data.cache_dir", "data.num_workers",
                    "train.device", "train.progress", "eval.batch_size", "train.tensorboard", "eval.protocol", "eval.nmi_average")


def resumed_config(state: dict, out_dir: Path, overrides) -> Config:
    """The saved config of a run, with the allowed ``overrides`` ("key=value") applied; refuses other keys
    and a ``config.yaml`` edited by hand (the run continues from last.pt's config, never silently another)."""
    import yaml

    saved = validate(from_dict(state["config"], str(out_dir / "last.pt")))
    on_disk = out_dir / "config.yaml"
    if on_disk.is_file():
        try:
            edited = completed(yaml.safe_load(on_disk.read_text()), str(on_disk))   # keys added since: defaults
        except (yaml.YAMLError, UnicodeDecodeError, InvaspreadError):
            edited = None
        if edited != saved.to_dict():
            changed = sorted(f"{section}.{key}" for section, values in (edited or {}).items() if isinstance(values, dict)
                             for key in values if values[key] != saved.to_dict().get(section, {}).get(key))
            raise ConfigError(f"{on_disk} was edited ({', '.join(changed) or 'unreadable'}); a resumed run continues "
                              f"with the config saved in last.pt: undo the edit, and pass an allowed change on the "
                              f"command line instead ({', '.join(RESUME_OVERRIDES)})")
    cfg = from_dict(state["config"], str(out_dir / "last.pt"))
    for text in overrides or []:
        key, value = parse_override(text)
        if key not in RESUME_OVERRIDES:
            raise ConfigError(f"{key} cannot change when a run is resumed (it would be another run); allowed: "
                              f"{', '.join(RESUME_OVERRIDES)}. Start a new run, e.g. with --set model.init_from="
                              f"{out_dir}")
        set_key(cfg, key, value, "--resume")
    cfg = validate(cfg)
    if cfg.train.epochs <= int(state["epoch"]) and overrides:
        raise ConfigError(f"train.epochs={cfg.train.epochs}: the run in {out_dir} has done {state['epoch']} epochs "
                          f"already; to extend it pass more")
    return cfg


def fit(cfg: Optional[Config], out_dir, resume: bool = False, log: Callable[[str], None] = print,
        use_existing_folder: bool = False, overrides=()) -> dict:
    """Train (or resume) a run of ``cfg.method`` in ``out_dir``; returns the last metrics line.
    ``use_existing_folder``: a new run may write beside foreign files of a non-empty ``out_dir``.
    ``overrides`` ("key=value", resume only): the changes of ``RESUME_OVERRIDES``, recorded in the folder."""
    out_dir = Path(out_dir)
    state = None
    if resume:
        state = load_checkpoint(out_dir)
        RunFolder.check_identity(out_dir, state)   # a copied-in last.pt is refused before anything else
        cfg = resumed_config(state, out_dir, overrides)
        state["overrides"] = list(overrides or [])
    device, started_group = start_from_environment(resolve_device(cfg.train.device))   # torchrun: join the group
    main_process = world()[0] == 0   # under torchrun rank 0 alone owns the run folder and prints
    if not main_process:
        log = _silent
    elif not resume:
        RunFolder.check_new(out_dir, use_existing_folder)   # before any work
    if main_process and cfg.train.tensorboard:
        summary_writer_class()   # a missing package is said before any work
    try:
        return _fit(cfg, out_dir, state, device, main_process, use_existing_folder, log)
    finally:
        if started_group:
            torch.distributed.destroy_process_group()


def _silent(_: str) -> None:
    pass


def _fit(cfg, out_dir, state, device, main_process, use_existing_folder, log) -> dict:
    cuda = device.type == "cuda"
    torch.manual_seed(cfg.train.seed)

    # a bar redrawn with carriage returns only helps a terminal; redirected logs get the epoch lines alone
    show_progress = cfg.train.progress and sys.stderr.isatty()
    bundle = build_data(cfg.data, progress=show_progress)
    resolve_protocol(cfg.eval.protocol, bundle, cfg.data.name)   # evaluation that cannot run fails before training
    model = build_model(cfg.model)
    if cfg.model.init_from and state is None:
        load_encoder_weights(model, cfg.model.init_from)
    method = build_method(cfg, model, len(bundle.train)).to(device)
    channels_last = cuda and cfg.train.channels_last
    if channels_last:
        method.encoder.to(memory_format=torch.channels_last)
    fine_tuning = cfg.model.pretrained or cfg.model.init_from is not None
    frozen_bn = fine_tuning if cfg.model.frozen_bn is None else cfg.model.frozen_bn
    method.configure_forward(torch.channels_last if channels_last else torch.contiguous_format, cfg.model.bn_groups,
                             frozen_bn)
    if (method.views * cfg.train.batch_size) % cfg.model.bn_groups:
        raise ConfigError(f"model.bn_groups={cfg.model.bn_groups} must divide the {method.views} x "
                          f"{cfg.train.batch_size} images of a step (method {cfg.method.name})")
    if world()[1] > 1 and cfg.model.sync_bn:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)   # before the optimizer sees parameters
    optimizer = build_optimizer(method.parameter_groups(), cfg.optim)
    start_epoch = 0
    if state is not None:
        load_method_state(method, state)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        torch.set_rng_state(state["rng"]["torch"])
        if cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        log(f"resuming {out_dir} after epoch {start_epoch}/{cfg.train.epochs}")
    if cfg.train.compile and cuda:
        method.encoder.compile()  # in place: state_dict keys stay those of the plain module
    epochs = cfg.train.epochs
    batches = make_batches(bundle.train, cfg.data, cfg.augment, bundle.mean, bundle.std, cfg.train.batch_size,
                           device) if epochs > start_epoch else None
    runner = None
    if world()[1] > 1:  # parameters and buffers start as rank 0's; banks, clusters, plans are synchronised apart
        runner = torch.nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if cuda else None,
                                                           broadcast_buffers=False)
    if not main_process:
        return _train(cfg, method, optimizer, batches, bundle, device, None, state, start_epoch, False, log, runner)
    # the run folder appears only once data, model and batches are built: a bad setting leaves nothing behind;
    # from here on this process owns it (an exclusive lock) until the run ends
    folder = RunFolder.reopen(out_dir, state) if state is not None else RunFolder.create(out_dir, use_existing_folder)
    try:
        return _train(cfg, method, optimizer, batches, bundle, device, folder, state, start_epoch, show_progress, log,
                      runner)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM):
            raise
        then = (f"{out_dir}/last.pt holds the last epoch written: free space or fix permissions, then continue "
                f"with --resume {out_dir}" if (out_dir / "last.pt").exists() else
                "no epoch was saved: free space or fix permissions, then train again")
        raise InvaspreadError(f"cannot write to the run folder {out_dir}: {err.strerror} "
                              f"({err.filename or 'a file'}); {then}") from err
    finally:
        folder.release()


def _train(cfg, method, optimizer, batches, bundle, device, folder, state, start_epoch, show_progress, log,
           runner=None) -> dict:
    """The epochs of ``fit`` in an open, locked run folder (``folder`` None: a torchrun rank other than 0,
    which trains its share and writes nothing)."""
    main = folder is not None
    cuda, epochs = device.type == "cuda", cfg.train.epochs
    out_dir = folder.path if main else None
    scalars = None
    if main:
        _open_run_files(cfg, folder, state, start_epoch, log)
        scalars = ScalarLog(out_dir, start_epoch) if cfg.train.tensorboard else None
    log(f"{cfg.data.name}: {len(bundle.train)} training images, method {cfg.method.name}, {cfg.model.arch} on "
        f"{device}" + (f", {type(batches).__name__}, {len(batches)} step{'s' * (len(batches) != 1)}/epoch" if batches
                        else ", no training")
        + (f", {world()[1]} processes" if world()[1] > 1 else ""))

    def write(line: dict):
        if not main:
            return
        folder.append_metrics(line)
        if scalars is not None:
            scalars.add(line)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in line.items()}
        log(" ".join(f"{k}={v}" for k, v in shown.items()))

    def due(epoch: int) -> bool:
        every = cfg.train.eval_every
        return epoch == epochs or (every > 0 and epoch % every == 0)

    def checkpoint(epoch: int, lr: float, last: dict):
        if not main:
            return
        save_checkpoint({"version": CHECKPOINT_VERSION, "model": method.encoder.state_dict(),
                         "method": method_checkpoint_state(method), "optimizer": optimizer.state_dict(),
                         "schedule": {"lr": lr, "epochs_done": epoch}, "epoch": epoch, "config": cfg.to_dict(),
                         "rng": _rng_state(device), "metrics": last, "run_id": folder.run_id,
                         "world_size": world()[1]}, out_dir / "last.pt")
        folder.keep_checkpoints(epoch, cfg.train.keep, cfg.train.save_epochs)

    def train_features(pooled: bool) -> torch.Tensor:
        """The un-augmented training set through the encoder in eval mode (evaluation transform)."""
        return source_features(method.encoder, bundle.train, cfg.data, cfg.augment, bundle.mean, bundle.std,
                               cfg.eval.batch_size, device, pooled=pooled)

    if not cuda and epochs > start_epoch and len(bundle.train) > 20000:
        log(f"note: {len(bundle.train)} images on the CPU take an hour or more per epoch at full width on 2 cores "
            f"(the third step prints the estimate); for a quick look train a subset and a narrower network, e.g. "
            f"--set data.subset_per_class=500 --set model.width=16")
    last = {} if state is None else dict(state.get("metrics", {}))
    if start_epoch == 0 and (cfg.train.eval_at_start or epochs == 0) and main:
        result = evaluate(method.encoder, bundle, cfg, device, progress=show_progress)
        last = {"epoch": 0, **result}
        if result:
            write(last)
        else:
            log("epoch 0: nothing to evaluate (eval.protocol=none, or no labelled test images: for an image folder "
                "set data.test_root to a folder of <class>/ sub-folders)")
        if epochs == 0:  # an evaluate-only run (method random) still leaves a checkpoint for eval / embed
            checkpoint(0, cfg.optim.lr, last)
    from tqdm.auto import tqdm

    for epoch in range(start_epoch + 1, epochs + 1):
        t_start = time.perf_counter()
        method.on_epoch_start(epoch, train_features)   # clustering, mining: timed apart from the steps
        plan = method.epoch_plan()
        if world()[1] > 1:  # one clustering / mining / plan for all ranks: rank 0's
            for tensor in list(method_checkpoint_state(method).values()) + ([] if plan is None else [plan]):
                broadcast_from_main(tensor)
        start_seconds = time.perf_counter() - t_start
        for parameter in method.reinitialised_parameters():
            optimizer.state.pop(parameter, None)
        method.train()
        t0 = time.perf_counter()
        total_loss = torch.zeros((), device=device)
        steps = batches.steps(plan)
        if steps == 0 and plan is not None:
            raise ConfigError(f"method {cfg.method.name} planned {plan.shape[0]} items for epoch {epoch}, fewer than "
                              f"train.batch_size={cfg.train.batch_size}")
        stream = batches.epoch(cfg.train.seed, epoch, method.views, method.second_view_index(), plan)
        bar = tqdm(stream, total=steps, desc=f"epoch {epoch}/{epochs}", disable=not show_progress, leave=False)
        for step, (views, index) in enumerate(bar):
            lr = learning_rate(cfg.optim, epochs, epoch - 1 + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(method, optimizer, views, index, cfg.train.bf16, runner)
            total_loss += loss
            if epoch == start_epoch + 1 and not cuda and step in (0, 2) and steps > 3:
                # on the CPU, say early what an epoch will cost (the first step also starts the loader)
                if step == 0:
                    first_done = time.perf_counter()
                else:
                    per_step = (time.perf_counter() - first_done) / 2
                    log(f"CPU: {per_step:.2f}s per step, about {(first_done - t0 + per_step * (steps - 1)) / 60:.1f} "
                        f"min per epoch")
            if show_progress and step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}")
        if cuda:
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
        total_loss = mean_over_ranks(total_loss)       # the mean over ranks: the global batch's loss
        finite_state = all(torch.isfinite(t).all() for t in method.state_dict().values() if t.is_floating_point())
        if not (torch.isfinite(total_loss) and finite_state):
            what = "the loss" if not torch.isfinite(total_loss) else "the network's weights"
            advice = (f"{out_dir}/last.pt still holds epoch {epoch - 1}, the last finite one: continue it with a lower "
                      f"lr, e.g. invaspread train --resume {out_dir} --set optim.lr={cfg.optim.lr / 10:g}"
                      if main and (out_dir / "last.pt").exists() else
                      "no checkpoint was written: train again with a lower optim.lr (or a higher temperature)")
            raise DivergedError(f"epoch {epoch}: {what} became NaN or infinite, so this epoch is not saved; {advice}")
        last = {"epoch": epoch, "loss": total_loss.item() / steps, "lr": lr, "train_seconds": train_seconds,
                "epoch_start_seconds": start_seconds,
                "images_per_second": method.views * steps * cfg.train.batch_size / train_seconds}
        if due(epoch) and main:   # under torchrun rank 0 evaluates while the others wait at the barrier
            last.update(evaluate(method.encoder, bundle, cfg, device, nmi=epoch == epochs, progress=show_progress))
        write(last)
        checkpoint(epoch, lr, last)
        barrier()
    if scalars is not None:
        scalars.close()   # every line was flushed when written: an exception before here loses nothing
    return last


def _open_run_files(cfg, folder, state, start_epoch, log) -> None:
    """config.yaml, the resumed run's metrics and overrides, in the folder rank 0 owns."""
    out_dir = folder.path
    if state is not None and state["overrides"]:  # last.pt and config.yaml agree on the changed config at once
        save_checkpoint({**{k: v for k, v in state.items() if k != "overrides"}, "config": cfg.to_dict()},
                        out_dir / "last.pt")
    save_config(cfg, out_dir / "config.yaml")
    if state is not None:
        # lines of an epoch interrupted after logging but before its checkpoint are set aside, not lost
        folder.keep_epochs_up_to(start_epoch)
        if state["overrides"]:
            folder.record_overrides(start_epoch, state["overrides"])
            log(f"resumed with {' '.join(state['overrides'])} (recorded in {out_dir / 'overrides.jsonl'})")
        before, now = int(state.get("world_size", 1)), world()[1]
        if before != now:   # the global batch is split differently (BatchNorm statistics, per-rank shares)
            folder.record_overrides(start_epoch, [], processes={"before": before, "now": now})
            log(f"resumed with {now} process{'es' * (now != 1)} (the run had {before}; recorded in "
                f"{out_dir / 'overrides.jsonl'})")
