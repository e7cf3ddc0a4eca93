"""One SGD step of a method, and what a step reports besides its loss.

``Method.training_step`` returns the scalar loss, or a dict with the loss under ``"loss"`` and anything else the
step wants to say or keep: every other 0-d tensor is a *reported scalar* (BYOL's cosine, the target's spread, a
user's VICReg terms), averaged over the epoch's steps (and ranks) and written under its own name to
``metrics.jsonl`` and TensorBoard; every entry, detached, is handed to ``after_step(step, total_steps, outputs)``
(MoCo's keys for its queue). A method that returns a plain tensor keeps the two-argument ``after_step``.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from ..errors import InvaspreadError

# names the trainer writes into every metrics line itself: a reported scalar may not take them
METRICS_KEYS = ("epoch", "loss", "lr", "train_seconds", "epoch_start_seconds", "images_per_second")


def split_output(output, method) -> Tuple[torch.Tensor, Optional[dict]]:
    """(loss, the step's dict or None) of what ``method``'s ``training_step`` returned, the loss checked to be a
    floating-point scalar tensor with a gradient (no synchronisation: its finiteness is ``check_finite_loss``'s)."""
    loss, outputs = (output, None) if not isinstance(output, dict) else (output.get("loss"), output)
    what = "training_step returned" if outputs is None else "training_step's dict holds under 'loss'"
    expected = "the loss as a scalar tensor computed from the views (or a dict with it under 'loss')"
    if not isinstance(loss, torch.Tensor):
        raise InvaspreadError(f"method {type(method).__name__}: {what} {type(loss).__name__}; expected {expected}")
    if loss.dim() != 0:
        raise InvaspreadError(f"method {type(method).__name__}: {what} a tensor of shape {tuple(loss.shape)}; "
                              f"expected a scalar (0-d): reduce it, e.g. with .mean()")
    if not loss.is_floating_point():
        raise InvaspreadError(f"method {type(method).__name__}: {what} a {loss.dtype} tensor; expected a "
                              f"floating-point loss")
    if not loss.requires_grad:
        raise InvaspreadError(f"method {type(method).__name__}: {what} a tensor without a gradient (computed under "
                              f"torch.no_grad, detached, or not from the network's outputs); expected {expected}")
    return loss, outputs


def check_finite_loss(loss: torch.Tensor, method, step: int) -> None:
    """The loss of a run's first step is finite: a NaN there comes from the method, not from a divergence."""
    if not bool(torch.isfinite(loss)):
        raise InvaspreadError(f"method {type(method).__name__}: the loss of step {step}, the first this training "
                              f"ran, is {loss.item()}: its training_step computes a NaN or infinite loss from finite "
                              f"weights (a divergence would show later, at the end of an epoch)")


def reported_scalars(outputs: dict, method) -> Dict[str, torch.Tensor]:
    """The 0-d tensors of a step's dict other than the loss, detached, as float32."""
    scalars = {name: value.detach().float() for name, value in outputs.items()
               if name != "loss" and isinstance(value, torch.Tensor) and value.dim() == 0}
    taken = sorted(set(scalars) & set(METRICS_KEYS))
    if taken:
        raise InvaspreadError(f"method {type(method).__name__}: training_step reports {', '.join(taken)}, a name "
                              f"the trainer writes itself ({', '.join(METRICS_KEYS)}): rename it")
    return scalars


def train_step(method, optimizer, views, index, bf16: bool, runner=None, step: int = 1,
               total_steps: int = 1, scalars: Optional[Dict[str, torch.Tensor]] = None,
               first: bool = False) -> torch.Tensor:
    """One SGD step of ``method`` on a batch; returns the detached loss. ``bf16``: autocast to bf16 on the
    batch's device (``engine.precision`` decides when: CUDA, a CPU that computes bf16 natively).
    ``runner``: the method wrapped in ``DistributedDataParallel`` under torchrun; ``step`` / ``total_steps``:
    the run's step count after this step and its planned total (``Method.after_step``); ``scalars``: where the
    step's reported scalars are summed, by name (the epoch's totals); ``first``: the first step of a run or of a
    resume, whose loss is checked to be finite (one synchronisation)."""
    with torch.autocast(device_type=views.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, outputs = split_output((runner or method)(views, index), method)
    if first:
        check_finite_loss(loss, method, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    outputs = after_step(method, step, total_steps, outputs)
    if outputs is not None and scalars is not None:
        for name, value in reported_scalars(outputs, method).items():
            scalars[name] = scalars[name] + value if name in scalars else value
    return loss.detach()


def after_step(method, step: int, total_steps: int, outputs: Optional[dict]) -> Optional[dict]:
    """``method.after_step``, with the step's dict detached where the step returned one (only then is it passed:
    a method returning a plain loss keeps the two-argument hook); returns that detached dict."""
    if outputs is None:
        method.after_step(step, total_steps)
        return None
    outputs = {name: value.detach() if isinstance(value, torch.Tensor) else value for name, value in outputs.items()}
    method.after_step(step, total_steps, outputs)
    return outputs


def build_optimizer(parameters, optim_cfg) -> torch.optim.Optimizer:
    """SGD over ``parameters`` (tensors, or ``Method.parameter_groups``). ``optim.decay_norm_and_bias=false``
    splits every group in two: its matrices and kernels keep the group's weight decay, its vectors (BatchNorm
    weights and biases, every layer's bias) get none, as the successors' authors' LARS recipes exclude them."""
    if not optim_cfg.decay_norm_and_bias:
        groups = list(parameters)
        groups = groups if groups and isinstance(groups[0], dict) else [{"params": groups}]
        parameters = [part for group in groups for part in _vectors_without_decay(group)]
    return torch.optim.SGD(parameters, lr=optim_cfg.lr, momentum=optim_cfg.momentum, dampening=optim_cfg.dampening,
                           weight_decay=optim_cfg.weight_decay, nesterov=optim_cfg.nesterov)


def _vectors_without_decay(group: dict) -> list:
    params = list(group["params"])
    kernels, vectors = [p for p in params if p.dim() > 1], [p for p in params if p.dim() <= 1]
    return ([{**group, "params": kernels}] if kernels else []) + (
        [{**group, "params": vectors, "weight_decay": 0.0}] if vectors else [])
