"""How far `train`'s step is from the model's own floor, on whatever device it is given: one table.

    python benchmarks/step_floor.py --data ../shared/data/cifar10/cifar10-jpeg.tar.gz      # full width + 16 + 8
    python benchmarks/step_floor.py --widths 8 --steps 5                                  # digits, quick

Per row (InvaSpread, the paper's 128 instances = 256 images per step unless --batch):
  floor      the method's forward (network and loss) + backward + SGD step on batches of views drawn
             before the timing: no data, no augmentation; at the row's precision and memory format
  full step  what `train` does per step: the batch source (PIL workers or on-device augmentation), the same
             step, the lr update; both built by the trainer itself (``engine.trainer._build``)
  ratio      full step / floor;  s/epoch: full step x 390 (50,000 CIFAR-10 images / 128)
Rows: the run's default on this device (``engine.precision``) and the pipeline before the CPU fast path
(float32, contiguous, PIL augmentation in DataLoader workers), and the other precision forced: float32 on a
CPU with native bf16, bf16 (emulated: what auto avoids) on one without. Median of --steps timed steps after 2 warm-up steps; floor and full steps
alternate, so a shared machine's drift in speed falls on both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from invaspread.config import load_config
from invaspread.engine import trainer
from invaspread.engine.precision import cpu_computes_bf16, describe, resolve_cpu_precision, resolve_device

EPOCH_STEPS = 50000 // 128


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``): machines of one kind differ, and so do their floors."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(steps_by_name: dict, steps: int, device) -> dict:
    """{name: median seconds}; the named steps alternate, so drift of a shared machine's speed hits all alike."""
    times = {name: [] for name in steps_by_name}
    for i in range(steps + 2):
        for name, step in steps_by_name.items():
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(sets, steps: int):
    cfg = load_config(None, sets)
    resolve_cpu_precision(cfg)
    device = resolve_device(cfg.train.device)
    with tempfile.TemporaryDirectory() as tmp:
        run = trainer._build(cfg, None, device, Path(tmp), lambda s: None)
    run.method.train()
    stream = run.batches.epoch(cfg.train.seed, 1, run.method.views)
    # the floor cycles through batches drawn before the timing (one fixed batch stepped on again and again
    # measured slower than the full step here: 6.07 s against 4.90 s at full width, float32, 2 cores)
    if len(run.batches) < steps + 2:
        raise SystemExit(f"step_floor.py: {len(run.batches)} batches per epoch, {steps + 2} needed for --steps "
                         f"{steps} (2 warm-up steps first): raise --subset-per-class")
    drawn = [next(stream) for _ in range(steps + 2)]
    stream = run.batches.epoch(cfg.train.seed, 2, run.method.views)

    def floor_step():
        views, index = drawn.pop()
        trainer.train_step(run.method, run.optimizer, views, index, run.bf16)

    def full_step():
        views, index = next(stream)
        for group in run.optimizer.param_groups:
            group["lr"] = cfg.optim.lr
        trainer.train_step(run.method, run.optimizer, views, index, run.bf16)

    seconds = timed({"floor": floor_step, "full": full_step}, steps, device)
    return describe(cfg, device), type(run.batches).__name__, seconds["floor"], seconds["full"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="'digits' (bundled) or a CIFAR-10 location (archive, folder)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 16, 8], help="ResNet18-CIFAR widths (64 = paper)")
    parser.add_argument("--batch", type=int, default=128, help="instances per step (2 views each)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after 2 warm-up steps)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the PIL pipeline row")
    parser.add_argument("--subset-per-class", type=int, default=None,
                        help="CIFAR-10 images per class to keep (enough for the timed steps)")
    args = parser.parse_args()

    data = (["data.name=digits"] if args.data == "digits" else
            ["data.name=cifar10", f"data.root={args.data}", "data.test_subset_per_class=1"]
            + ([f"data.subset_per_class={args.subset_per_class}"] if args.subset_per_class else []))
    base = data + [f"train.device={args.device}", f"train.batch_size={args.batch}", "train.progress=false",
                   f"data.num_workers={args.workers}", "train.epochs=1"]
    device = resolve_device(args.device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()}; torch "
          f"{torch.__version__}; {torch.get_num_threads()} threads; native bf16 on this CPU: {cpu_computes_bf16()}")
    variants = [("default", [])]
    if device.type == "cpu":
        variants.append(("before the fast path", ["train.cpu_fast_path=false", "train.cpu_bf16=false"]))
        if cpu_computes_bf16():
            variants.append(("float32 forced", ["train.cpu_bf16=false"]))
        else:
            variants.append(("bf16 forced", ["train.cpu_bf16=true"]))
    else:
        variants.append(("fp32, PIL workers", ["train.bf16=false", "train.channels_last=false",
                                               "augment.on_device=false"]))
    rows = []
    for width in args.widths:
        for name, sets in variants:
            mode, source, floor, full = measure(base + [f"model.width={width}"] + sets, args.steps)
            rows.append((width, name, mode, source, floor, full))
            print(f"  measured width {width} {name}: floor {floor:.3f}s, full step {full:.3f}s", flush=True)

    header = ("| width | row | precision, memory format | batches | floor s/step | full s/step | full / floor "
              "| s/epoch (390 steps) |")
    print()
    print(header)
    print("|" + "|".join("---" if i < 4 else "---:" for i in range(8)) + "|")
    for width, name, mode, source, floor, full in rows:
        print(f"| {width} | {name} | {mode} | {source} | {floor:.3f} | {full:.3f} | {full / floor:.2f} "
              f"| {full * EPOCH_STEPS:.0f} |")


if __name__ == "__main__":
    main()
