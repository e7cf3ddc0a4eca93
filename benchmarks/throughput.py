"""Training throughput: CPU augmentation in DataLoader workers (the released code's pipeline) against
the device-resident data + on-device per-sample augmentation path, in one run, one table.

    python benchmarks/throughput.py --data ../shared/data/cifar10/cifar10-jpeg.tar.gz      # GPU, full size
    python benchmarks/throughput.py --data digits --width 16 --steps 5 --batch-sizes 64   # CPU, small

(The distance of `train`'s step from the model's own floor, per precision: benchmarks/step_floor.py.)

Per row: seconds per epoch (extrapolated from timed steps over the training set), images per second
(2 views per instance), augmentation alone (views per second, no model), peak GPU memory. The last
line times the kNN evaluation (feature bank of the training set + test queries, on the device).
"""

from __future__ import annotations

import argparse
import time

import torch

from invaspread.config import load_config
from invaspread.data.datasets import build_data
from invaspread.engine.batches import CPUBatches, DeviceBatches
from invaspread.engine.evaluation import evaluate
from invaspread.engine.precision import cpu_computes_bf16, forward_settings
from invaspread.engine.precision import resolve_device
from invaspread.engine.trainer import build_optimizer, train_step
from invaspread.methods import build_method
from invaspread.models import build_model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(batches, steps, device):
    """Views per second of the augmentation pipeline alone."""
    it = batches.epoch(seed=0, epoch=1)
    next(it)
    sync(device)
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        views, _ = next(it)
        n += views.shape[0] * views.shape[1]
    sync(device)
    return n / (time.perf_counter() - t0)


def time_training(cfg, bundle, batches, steps, device, compile_model):
    """(encoder, seconds per step, peak GiB) of ``cfg.method`` on ``batches``, after warm-up steps."""
    torch.manual_seed(0)
    method = build_method(cfg, build_model(cfg.model), len(bundle.train)).to(device)
    autocast_dtype, memory_format = forward_settings(cfg, device)   # what `train` computes in on this device
    bf16 = autocast_dtype is not None
    if memory_format == torch.channels_last:
        method.encoder.to(memory_format=torch.channels_last)
        method.configure_forward(torch.channels_last)
    if compile_model:
        method.encoder.compile()
    optimizer = build_optimizer(method.parameters(), cfg.optim)
    method.train()
    it = batches.epoch(0, 1, method.views)
    warmup = 5 if compile_model else 2
    for _ in range(warmup):
        train_step(method, optimizer, *next(it), bf16)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(method, optimizer, *next(it), bf16)
    sync(device)
    seconds_per_step = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return method.encoder, seconds_per_step, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="'digits' or a CIFAR-10 location (archive, folder)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512], help="instances per step")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the CPU pipeline")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row")
    parser.add_argument("--width", type=int, default=64, help="ResNet18-CIFAR width (64 = paper)")
    parser.add_argument("--subset-per-class", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="add rows with torch.compile (CUDA)")
    args = parser.parse_args()

    sets = [f"model.width={args.width}", f"train.device={args.device}", f"data.num_workers={args.workers}",
            "train.progress=false"]
    if args.data == "digits":
        cfg = load_config(None, sets + ["data.name=digits"])
    else:
        cfg = load_config(None, sets + ["data.name=cifar10", f"data.root={args.data}"])
    if args.subset_per_class:
        cfg.data.subset_per_class = args.subset_per_class
    device = resolve_device(cfg.train.device)
    t0 = time.perf_counter()
    bundle = build_data(cfg.data, progress=False)
    print(f"data: {len(bundle.train)} training images loaded in {time.perf_counter() - t0:.1f}s; device: "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; torch {torch.__version__}")

    rows = []
    variants = [("cpu-aug x%d workers, fp32" % args.workers, CPUBatches, False, False),
                ("device-aug, " + ("bf16+channels_last" if device.type == "cuda" or cpu_computes_bf16() else
                                   "fp32+channels_last"), DeviceBatches, True, False)]
    if args.compile and device.type == "cuda":
        variants.append(("device-aug, bf16+CL+compile", DeviceBatches, True, True))
    model = None
    for batch in args.batch_sizes:
        for name, cls, fast, compile_model in variants:
            cfg.train.bf16 = cfg.train.channels_last = cfg.train.cpu_fast_path = fast
            cfg.train.cpu_bf16 = fast and cpu_computes_bf16()
            batches = cls(bundle.train, cfg.data, cfg.augment, bundle.mean, bundle.std, batch, device)
            steps = min(args.steps, len(batches) - 6)  # leave room for the warm-up steps
            if steps < 1:
                print(f"skipping {name} at batch {batch}: {len(batches)} steps per epoch are too few to time")
                continue
            views = time_batches(batches, steps, device)
            model, sps, peak = time_training(cfg, bundle, batches, steps, device, compile_model)
            rows.append((name, batch, sps * len(batches), 2 * batch / sps, views, peak))
            del batches

    cfg.train.bf16 = cfg.train.channels_last = cfg.train.cpu_fast_path = True
    cfg.train.cpu_bf16 = cpu_computes_bf16()
    evaluate(model, bundle, cfg, device)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    result = evaluate(model, bundle, cfg, device)
    sync(device)
    knn_seconds = time.perf_counter() - t0

    header = f"{'pipeline':34s} {'batch':>5s} {'s/epoch':>9s} {'images/s':>10s} {'aug views/s':>12s} {'peak GiB':>9s}"
    print(header)
    print("-" * len(header))
    for name, batch, spe, ips, views, peak in rows:
        peak_text = f"{peak:9.2f}" if peak == peak else f"{'-':>9s}"  # NaN on the CPU
        print(f"{name:34s} {batch:5d} {spe:9.2f} {ips:10.0f} {views:12.0f} {peak_text}")
    print(f"kNN evaluation ({len(bundle.bank)} bank + {len(bundle.query)} queries, features included): "
          f"{knn_seconds:.2f}s (top-1 {result['knn_top1']:.1f}% of the last timed model)")


if __name__ == "__main__":
    main()
