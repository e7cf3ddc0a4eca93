"""Seconds per training step of every method in ``METHODS``, at the paper's batch (128 instances) on
the full-width ResNet18, next to the encoder's own forward + backward for the same images.

    python benchmarks/methods.py                         # CPU here: full width, 3 timed steps
    python benchmarks/methods.py --device cuda --steps 50 --instances 50000

The "loss + state" column times what a method adds to its encoder, on fixed embeddings of the same
shape: its loss forward and backward, its own parameters' SGD step (Exemplar's W) and ``after_step``
(the memory bank's update). Inputs are random tensors of CIFAR-10's shape; banks / weights are sized
for ``--instances``. "epoch start s" is ``on_epoch_start`` on random features of ``--instances`` images
(DeepCluster's clustering, MOM's mining; benchmarks/clustering.py measures those at real sizes).
"""

from __future__ import annotations

import argparse
import time

import torch

from invaspread.config import load_config
from invaspread.engine.step import after_step, split_output
from invaspread.engine.precision import resolve_device
from invaspread.engine.trainer import build_optimizer, train_step
from invaspread.methods import METHODS, build_method
from invaspread.models import build_model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, steps, device, warmup):
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128, help="instances per step (paper: 128)")
    parser.add_argument("--instances", type=int, default=50000, help="training-set size (bank / W rows)")
    parser.add_argument("--width", type=int, default=64, help="ResNet18-CIFAR width (64 = paper)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=[m for m, c in METHODS.items() if c.trainable])
    args = parser.parse_args()

    device = resolve_device(args.device)
    cfg = load_config(None, [f"model.width={args.width}", f"train.device={args.device}"])
    cuda = device.type == "cuda"
    print(f"device: {torch.cuda.get_device_name(device) if cuda else f'CPU ({torch.get_num_threads()} threads)'}; "
          f"torch {torch.__version__}; batch {args.batch_size}; bank/W rows {args.instances}; "
          f"{'bf16 autocast + channels_last' if cuda else 'float32'}")
    rows = []
    for name in args.methods:
        cfg.method.name = name
        torch.manual_seed(0)
        method = build_method(cfg, build_model(cfg.model), args.instances).to(device)
        if cuda:
            method.encoder.to(memory_format=torch.channels_last)
            method.configure_forward(torch.channels_last)
        # the epoch's preparation (DeepCluster's clustering, MOM's mining, on random features) is timed apart
        dims = {True: method.encoder.backbone.out_features, False: cfg.model.embedding_dim}
        features = {pooled: torch.randn(args.instances, d, device=device) for pooled, d in dims.items()}
        sync(device)
        t0 = time.perf_counter()
        method.on_epoch_start(1, lambda pooled: features[pooled])
        sync(device)
        start_s = time.perf_counter() - t0
        optimizer = build_optimizer(method.parameters(), cfg.optim)
        method.train()
        views = torch.randn(method.views, args.batch_size, 3, 32, 32, device=device)
        index = torch.randperm(args.instances, device=device)[:args.batch_size]
        step_s = timed(lambda: train_step(method, optimizer, views, index, cuda), args.steps, device, args.warmup)

        # the method's own share: the same step on fixed embeddings, the encoder out of the way
        with torch.no_grad():
            fixed = method.embed(views).float()
        own = [p for n, p in method.named_parameters() if not n.startswith("encoder.")]
        own_optimizer = build_optimizer(own, cfg.optim) if own else None
        # any views, any network (MoCo's key encoder, BYOL's target): the first V fixed embeddings
        method.embed = lambda views_, *_, **__: fixed[:views_.shape[0]].clone().requires_grad_(True)

        def loss_and_state():
            loss, outputs = split_output(method.training_step(views, index), method)
            loss.backward()
            if own_optimizer is not None:
                own_optimizer.step()
                own_optimizer.zero_grad(set_to_none=True)
            after_step(method, 1, 1, outputs)

        own_s = timed(loss_and_state, max(args.steps, 10), device, args.warmup)
        rows.append((name, method.views, method.views * args.batch_size, step_s, own_s,
                     step_s * (args.instances // args.batch_size), start_s))
        del method, optimizer

    header = (f"{'method':14s} {'views':>5s} {'images/step':>11s} {'s/step':>8s} {'loss + state s':>15s} "
              f"{'share':>6s} {'s/epoch':>9s} {'epoch start s':>13s}")
    print(header)
    print("-" * len(header))
    for name, v, images, step_s, own_s, epoch_s, start_s in rows:
        print(f"{name:14s} {v:5d} {images:11d} {step_s:8.3f} {own_s:15.4f} {100 * own_s / step_s:5.1f}% "
              f"{epoch_s:9.1f} {start_s:13.2f}")


if __name__ == "__main__":
    main()
