"""What a CPU run will cost, said before any long work: the network's own step timed on a copy of it."""

from __future__ import annotations

import copy
import time

import torch

from .precision import forward_settings


def network_step_seconds(network: torch.nn.Module, images: torch.Tensor, bf16: bool, optim_cfg) -> float:
    """Seconds of one forward + backward + SGD step of a copy of ``network`` on ``images`` (no method code runs;
    the network itself and the global random stream are left as they were)."""
    rng = torch.get_rng_state()
    network = copy.deepcopy(network).train()
    optimizer = torch.optim.SGD(network.parameters(), lr=optim_cfg.lr, momentum=optim_cfg.momentum,
                                weight_decay=optim_cfg.weight_decay)
    try:
        t0 = time.perf_counter()
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = network(images)
        out.float().square().mean().backward()
        optimizer.step()
        return time.perf_counter() - t0
    finally:
        torch.set_rng_state(rng)


def duration(seconds: float) -> str:
    """'40 s' under a minute, else '11.0 min'."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def cost_line(run) -> str:
    """'CPU: about 5.44s per step (...), 35.3 min per epoch[; first the untrained network's evaluation ...]' for a
    ``trainer.Run`` about to train."""
    cfg, views = run.cfg, run.method.views
    size, memory_format = cfg.data.image_size, forward_settings(cfg, run.device)[1]
    images = torch.randn(views * cfg.train.batch_size, 3, size, size, device=run.device)
    per_step = network_step_seconds(run.method.encoder, images.contiguous(memory_format=memory_format), run.bf16,
                                    cfg.optim)
    text = (f"CPU: about {per_step:.2f}s per step (the network's step, timed on a copy before training), "
            f"{duration(per_step * len(run.batches))} per epoch")
    evaluated = sum(len(s) for s in (run.bundle.bank, run.bundle.query) if s is not None)
    # a forward pass in eval mode costs about a third of a training step per image
    eval_minutes = evaluated * per_step / (3 * views * cfg.train.batch_size) / 60
    if cfg.train.eval_at_start and run.start_epoch == 0 and evaluated and eval_minutes >= 0.5:
        text += (f"; first the untrained network's evaluation over {evaluated} images, about {eval_minutes:.0f} min "
                 f"(skip it with --set train.eval_at_start=false)")
    return text
