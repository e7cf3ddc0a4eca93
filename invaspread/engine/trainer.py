"""The training loop, the same for every method: batches of views, ``method.training_step``, SGD,
evaluation, checkpoints. It knows no method by name (see ``invaspread.methods.base`` for the contract).

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON line per
evaluated or trained epoch) and ``last.pt`` (written atomically after every epoch; ``reporter``).
``fit(..., resume=True)`` continues a run from ``last.pt`` exactly where it stopped.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import RESUMABLE_KEYS, Config, completed, from_dict, parse_override, set_key, validate
from ..config_methods import record_origin
from ..data.datasets import build_data
from ..errors import ConfigError, InvaspreadError
from ..methods import build_method
from ..models import build_model
from ..ops.distributed import barrier, broadcast_from_main, mean_over_ranks, start_from_environment, world
from .batches import make_batches
from .checkpoint import load_checkpoint, load_method_state, load_network, trusts_unchecked
from .estimate import cost_line, duration
from .evaluation import resolve_protocol
from .features import source_features
from .precision import describe as describe_precision
from .precision import forward_settings, resolve_cpu_precision, resolve_device
from .reporter import Reporter, Silent
from .run_folder import RunFolder
from .step import build_optimizer, train_step
from .schedule import learning_rate
from .tensorboard import summary_writer_class


class DivergedError(InvaspreadError):
    """Training stopped because the loss or the weights became NaN or infinite (the last finite epoch is saved)."""


def load_encoder_weights(model, path, trust_unchecked: bool = False) -> None:
    """Initialise ``model`` with the network of another run (``model.init_from``): same architecture only."""
    state = load_checkpoint(Path(path).expanduser(), trust_unchecked=trust_unchecked)
    load_network(model, state["model"], f"model.init_from={path}")


# a CPU run of fewer steps is not announced: the estimate costs a step of its own (5 % of 20 steps), and such a
# run says its cost after its third step anyway
ESTIMATE_FROM_STEPS = 20

RESUME_OVERRIDES = RESUMABLE_KEYS   # the one list (``config.RESUMABLE_KEYS``), under the name callers know


def resumed_config(state: dict, out_dir: Path, overrides) -> Config:
    """The saved config of a run, with the allowed ``overrides`` ("key=value") applied; refuses other keys
    and a ``config.yaml`` edited by hand (the run continues from last.pt's config, never silently another)."""
    import yaml

    saved = validate(from_dict(state["config"], str(out_dir / "last.pt"))).to_dict()
    on_disk = out_dir / "config.yaml"
    if on_disk.is_file():
        try:
            edited = completed(yaml.safe_load(on_disk.read_text()), str(on_disk))   # keys added since: defaults
        except (yaml.YAMLError, UnicodeDecodeError, InvaspreadError):
            edited = None
        cut = _cut_resume(state, edited, saved, str(on_disk))
        if cut is not None:
            state["unrecorded_overrides"] = cut   # recorded now, with this resume's own changes
        elif edited != saved:
            changed = sorted(key for key, _ in _changed_keys(edited or {}, saved))
            raise ConfigError(f"{on_disk} was edited ({', '.join(changed) or 'unreadable'}); a resumed run continues "
                              f"with the config saved in last.pt: undo the edit, and pass an allowed change on the "
                              f"command line instead ({', '.join(RESUME_OVERRIDES)})")
    if "unrecorded_overrides" not in state:   # config.yaml agrees with last.pt: what a cut of this resume would leave
        state["config_before_resume"] = state["config"]
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


def _cut_resume(state: dict, on_disk: Optional[dict], saved: dict, source: str) -> Optional[list]:
    """The changes of a resume that was cut after it wrote last.pt but before it rewrote config.yaml and
    overrides.jsonl (``Reporter._open_files`` saves the config it replaced, ``config_before_resume``, in last.pt
    until the first epoch's checkpoint): ``config.yaml`` is then that older config, not an edit. Returns those changes as
    ``key=value`` for overrides.jsonl, or None when ``config.yaml`` is not that state (equal, or edited)."""
    before = state.get("config_before_resume")
    if before is None or on_disk is None or on_disk == saved:
        return None
    try:
        if on_disk != completed(before, source):
            return None
    except InvaspreadError:
        return None
    return [f"{key}={value}" for key, value in _changed_keys(saved, on_disk)]


def _changed_keys(new: dict, old: dict) -> list:
    """(dotted key, value in ``new``) of every ``section.key`` of config dict ``new`` whose value differs in ``old``."""
    return [(f"{section}.{key}", values[key]) for section, values in new.items() if isinstance(values, dict)
            for key in values if values[key] != old.get(section, {}).get(key)]


@dataclass
class Run:
    """Everything one training run holds while it trains (built by ``_build``)."""

    cfg: Config
    device: torch.device
    bundle: object
    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batches: object
    runner: Optional[torch.nn.Module]   # the method under DistributedDataParallel (torchrun), else None
    start_epoch: int
    steps_done: int                     # optimizer steps of the run so far (``Method.after_step``)
    show_progress: bool
    last: dict                          # the last metrics line

    @property
    def bf16(self) -> bool:
        """Whether the steps run under bf16 autocast (``engine.precision``)."""
        return forward_settings(self.cfg, self.device)[0] is not None


def fit(cfg: Optional[Config], out_dir, resume: bool = False, log: Callable[[str], None] = print,
        use_existing_folder: bool = False, overrides=()) -> dict:
    """Train (or resume) a run of ``cfg.method`` in ``out_dir``; returns the last metrics line.
    ``use_existing_folder``: a new run may write beside foreign files of a non-empty ``out_dir``.
    ``overrides`` ("key=value", resume only): the changes of ``RESUME_OVERRIDES``, recorded in the folder."""
    out_dir, state = Path(out_dir), None
    if resume:
        state = load_checkpoint(out_dir, trust_unchecked=trusts_unchecked(overrides))
        RunFolder.check_identity(out_dir, state)   # a copied-in last.pt is refused before anything else
        cfg = resumed_config(state, out_dir, overrides)
        state["overrides"] = state.pop("unrecorded_overrides", []) + list(overrides or [])
    else:
        resolve_cpu_precision(cfg)   # a new run records what "null" meant on this CPU
        record_origin(cfg)           # ... and where its method came from, when a plugin
    device, started_group = start_from_environment(resolve_device(cfg.train.device))   # torchrun: join the group
    main = world()[0] == 0   # under torchrun rank 0 alone owns the run folder and prints
    if main and not resume:
        RunFolder.check_new(out_dir, use_existing_folder)   # before any work
    if main and cfg.train.tensorboard:
        summary_writer_class()   # a missing package is said before any work
    try:
        run = _build(cfg, state, device, out_dir, log if main else Silent().log)
        reporter = Reporter.open(cfg, out_dir, state, use_existing_folder, log) if main else Silent()
        with reporter:
            reporter.list_unreadable(run.bundle.skipped)
            return _train(run, reporter)
    finally:
        if started_group:
            torch.distributed.destroy_process_group()


def _build(cfg: Config, state: Optional[dict], device: torch.device, out_dir: Path, log) -> Run:
    """Data, network, method, optimizer and batches of a run, restored from ``state`` when resuming."""
    torch.manual_seed(cfg.train.seed)
    # a bar redrawn with carriage returns only helps a terminal; redirected logs get the epoch lines alone
    show_progress = cfg.train.progress and sys.stderr.isatty()
    bundle = build_data(cfg.data, progress=show_progress)
    resolve_protocol(cfg.eval.protocol, bundle, cfg.data.name)   # evaluation that cannot run fails before training
    model = build_model(cfg.model)
    if cfg.model.init_from and state is None:
        load_encoder_weights(model, cfg.model.init_from, cfg.train.trust_unchecked_checkpoint)
    method = _placed_method(cfg, build_method(cfg, model, len(bundle.train)), device)
    optimizer = build_optimizer(method.parameter_groups(), cfg.optim)
    start_epoch, steps_done, last = 0, 0, {}
    if state is not None:
        load_method_state(method, state)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, last = int(state["epoch"]), dict(state.get("metrics", {}))
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        log(f"resuming {out_dir} after epoch {start_epoch}/{cfg.train.epochs}")
    if cfg.train.compile and device.type == "cuda":
        for network in method.networks():
            network.compile()  # in place: state_dict keys stay those of the plain module
    batches = (make_batches(bundle.train, cfg.data, cfg.augment, bundle.mean, bundle.std, cfg.train.batch_size,
                            device, cfg.train.cpu_fast_path) if cfg.train.epochs > start_epoch else None)
    if state is not None:   # runs saved before the count was kept: every epoch had the same number of steps
        steps_done = int(state.get("schedule", {}).get("steps_done", start_epoch * (len(batches) if batches else 0)))
    runner = None
    if world()[1] > 1:  # parameters and buffers start as rank 0's; banks, clusters, plans are synchronised apart
        runner = torch.nn.parallel.DistributedDataParallel(method, device_ids=[device.index] if device.index is not None
                                                           else None, broadcast_buffers=False)
    return Run(cfg, device, bundle, method, optimizer, batches, runner, start_epoch, steps_done, show_progress, last)


def _placed_method(cfg: Config, method, device: torch.device):
    """The method on ``device``, its networks in the memory format and BatchNorm mode the config asks for."""
    method = method.to(device)
    channels_last = forward_settings(cfg, device)[1] == torch.channels_last
    if channels_last:
        for network in method.networks():
            network.to(memory_format=torch.channels_last)
    fine_tuning = cfg.model.pretrained or cfg.model.init_from is not None
    frozen_bn = fine_tuning if cfg.model.frozen_bn is None else cfg.model.frozen_bn
    method.configure_forward(torch.channels_last if channels_last else torch.contiguous_format, cfg.model.bn_groups,
                             frozen_bn)
    if (method.views * cfg.train.batch_size) % cfg.model.bn_groups:
        raise ConfigError(f"model.bn_groups={cfg.model.bn_groups} must divide the {method.views} x "
                          f"{cfg.train.batch_size} images of a step (method {cfg.method.name})")
    if world()[1] > 1 and cfg.model.sync_bn:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)   # before the optimizer sees parameters
    return method


def _train(run: Run, report) -> dict:
    """The epochs of ``fit``: an evaluation of the untrained network first, then train, evaluate, checkpoint."""
    cfg, epochs = run.cfg, run.cfg.train.epochs
    report.log(f"{cfg.data.name}: {len(run.bundle.train)} training images, method {cfg.method.name}, "
               f"{cfg.model.arch} on {run.device} ({describe_precision(cfg, run.device)})"
               + (f", {type(run.batches).__name__}, {len(run.batches)} step{'s' * (len(run.batches) != 1)}/epoch"
                  if run.batches else ", no training")
               + (f", {world()[1]} processes" if world()[1] > 1 else ""))
    if run.device.type != "cuda" and epochs > run.start_epoch and len(run.bundle.train) > 20000:
        report.log(f"note: {len(run.bundle.train)} images on the CPU take 10-40 minutes per epoch at full width on "
                   f"2 cores (the next line estimates it); for a quick look train a subset and a narrower "
                   f"network, e.g. --set data.subset_per_class=500 --set model.width=16")
    planned_steps = len(run.batches) * (epochs - run.start_epoch) if run.batches else 0   # method random: none
    if run.device.type != "cuda" and planned_steps >= ESTIMATE_FROM_STEPS and world()[1] == 1:
        report.log(cost_line(run))
    if run.start_epoch == 0 and (cfg.train.eval_at_start or epochs == 0):
        _evaluate_untrained(run, report)
    for epoch in range(run.start_epoch + 1, epochs + 1):
        _train_epoch(run, report, epoch)
    report.close()
    return run.last


def _evaluate_untrained(run: Run, report) -> None:
    result = report.evaluate(run)
    run.last = {"epoch": 0, **result}
    if result:
        report.metrics(run.last)
    else:
        report.log("epoch 0: nothing to evaluate (eval.protocol=none, or no labelled test images: for an image folder "
                   "set data.test_root to a folder of <class>/ sub-folders)")
    if run.cfg.train.epochs == 0:  # an evaluate-only run (method random) still leaves a checkpoint for eval / embed
        report.checkpoint(run, 0, run.cfg.optim.lr, run.last)


def _train_epoch(run: Run, report, epoch: int) -> None:
    """One epoch: the method's start (clustering, mining: timed apart), the steps, the checks, the metrics line,
    an evaluation when due, the checkpoint."""
    cfg = run.cfg
    t_start = time.perf_counter()
    plan = _start_epoch(run, epoch)
    start_seconds = time.perf_counter() - t_start
    mean_loss, lr, steps, train_seconds, reported = _run_steps(run, report, epoch, plan)
    _check_finite(run, report, epoch, mean_loss)
    run.last = {"epoch": epoch, "loss": mean_loss, "lr": lr, "train_seconds": train_seconds,
                "epoch_start_seconds": start_seconds,
                "images_per_second": run.method.views * steps * cfg.train.batch_size / train_seconds,
                **reported}   # the method's own names, none of the above (``engine.step.METRICS_KEYS``)
    every = cfg.train.eval_every
    if epoch == cfg.train.epochs or (every > 0 and epoch % every == 0):
        run.last.update(report.evaluate(run, nmi=epoch == cfg.train.epochs))   # rank 0; the others wait at barrier
    report.metrics(run.last)
    report.checkpoint(run, epoch, lr, run.last)
    barrier()


def _start_epoch(run: Run, epoch: int) -> Optional[torch.Tensor]:
    """``on_epoch_start``, rank 0's epoch state for every rank, reinitialised parameters' optimizer state
    dropped; returns the epoch's plan (None: every instance once, shuffled)."""
    cfg, method = run.cfg, run.method

    def train_features(pooled: bool, network: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """The un-augmented training set through the encoder (or ``network``) in eval mode (evaluation
        transform)."""
        return source_features(network or method.encoder, run.bundle.train, cfg.data, cfg.augment, run.bundle.mean,
                               run.bundle.std, cfg.eval.batch_size, run.device, pooled=pooled and network is None)

    method.on_epoch_start(epoch, train_features)
    if world()[1] > 1:  # one clustering / mining / plan for all ranks: rank 0's
        for tensor in method.epoch_state():
            broadcast_from_main(tensor)
    for parameter in method.reinitialised_parameters():
        run.optimizer.state.pop(parameter, None)
    plan = method.epoch_plan()
    if plan is not None and run.batches.steps(plan) == 0:
        raise ConfigError(f"method {cfg.method.name} planned {plan.shape[0]} items for epoch {epoch}, fewer than "
                          f"train.batch_size={cfg.train.batch_size}")
    return plan


def _run_steps(run: Run, report, epoch: int, plan: Optional[torch.Tensor]):
    """The SGD steps of one epoch; returns (mean loss over steps and ranks, last lr, steps, seconds, the method's
    reported scalars averaged the same way)."""
    from tqdm.auto import tqdm

    cfg, epochs = run.cfg, run.cfg.train.epochs
    steps = run.batches.steps(plan)
    total_steps = run.steps_done + (epochs - epoch + 1) * steps   # what the run plans from here, as now configured
    run.method.train()
    t0 = time.perf_counter()
    total_loss = torch.zeros((), device=run.device)
    scalar_totals = {}   # the method's reported scalars, summed by name (``engine.step``)
    stream = run.batches.epoch(cfg.train.seed, epoch, run.method.views, plan)
    bar = tqdm(stream, total=steps, desc=f"epoch {epoch}/{epochs}", disable=not run.show_progress, leave=False)
    for step, (views, index) in enumerate(bar):
        lr = learning_rate(cfg.optim, epochs, epoch - 1 + step / steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        run.steps_done += 1
        loss = train_step(run.method, run.optimizer, views, index, run.bf16, run.runner, run.steps_done,
                          total_steps, scalar_totals, first=epoch == run.start_epoch + 1 and step == 0)
        total_loss += loss
        if epoch == run.start_epoch + 1 and run.device.type != "cuda" and step in (0, 2) and steps > 3:
            # on the CPU, say early what an epoch will cost (the first step also starts the loader)
            if step == 0:
                first_done = time.perf_counter()
            else:
                per_step = (time.perf_counter() - first_done) / 2
                report.log(f"CPU: {per_step:.2f}s per step, about "
                           f"{duration(first_done - t0 + per_step * (steps - 1))} per epoch")
        if run.show_progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4g}")
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    train_seconds = time.perf_counter() - t0
    means = {name: mean_over_ranks(total).item() / steps for name, total in scalar_totals.items()}
    return mean_over_ranks(total_loss).item() / steps, lr, steps, train_seconds, means   # over ranks and steps


def _check_finite(run: Run, report, epoch: int, mean_loss: float) -> None:
    """A NaN or infinite loss or state stops the run before the epoch is saved, saying how to continue."""
    finite_state = all(torch.isfinite(t).all() for t in run.method.state_dict().values() if t.is_floating_point())
    if math.isfinite(mean_loss) and finite_state:
        return
    what = "the loss" if not math.isfinite(mean_loss) else "the network's weights"
    out_dir, lr = report.path, run.cfg.optim.lr
    advice = (f"{out_dir}/last.pt still holds epoch {epoch - 1}, the last finite one: continue it with a lower lr, "
              f"e.g. invaspread train --resume {out_dir} --set optim.lr={lr / 10:g}"
              if out_dir is not None and (out_dir / "last.pt").exists() else
              "no checkpoint was written: train again with a lower optim.lr (or a higher temperature)")
    raise DivergedError(f"epoch {epoch}: {what} became NaN or infinite, so this epoch is not saved; {advice}")
