"""Image search: `invaspread index` throughput on an image folder, and `search` latency of one query against
60,000 and 1,000,000 random 128-d unit vectors (exact torch, FAISS flat, FAISS IVF with its recall@10 over 100
queries: random vectors have no cluster structure, IVF's worst case). Prints markdown tables.

    python benchmarks/search.py --images /tmp/cifar10-jpeg            # a folder (e.g. the extracted JPEG copy)
    python benchmarks/search.py --skip-index                          # latency only

The network is the full-width CIFAR ResNet18 of configs/cifar10.yaml as initialised (throughput does not
depend on the weights); pass --run RUN to index with a trained run instead.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from invaspread.config import load_config, resolve_config_path  # noqa: E402
from invaspread.engine.checkpoint import CHECKPOINT_VERSION, save_checkpoint  # noqa: E402
from invaspread.models import build_model  # noqa: E402
from invaspread.search import build_index  # noqa: E402
from invaspread.search.index import _build_faiss, exact_search, faiss_module  # noqa: E402


def untrained_run(folder: Path) -> Path:
    cfg = load_config(resolve_config_path("cifar10"), ["method.name=random", "train.epochs=0"])
    torch.manual_seed(0)
    path = folder / "untrained.pt"
    save_checkpoint({"version": CHECKPOINT_VERSION, "model": build_model(cfg.model).state_dict(),
                     "config": cfg.to_dict(), "epoch": 0}, path)
    return path


def median_seconds(fn, repeats: int) -> float:
    fn()   # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="folder of images to index")
    parser.add_argument("--run", help="run folder or checkpoint (default: an untrained full-width network)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[60_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--index", help="an index folder (invaspread index): time and score IVF on its real "
                                        "embeddings too, with 100 of its rows as queries")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, faiss {getattr(faiss_module(False), '__version__', 'not installed')}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.images and not args.skip_index:
            run = args.run or untrained_run(tmp)
            print("\n| index | images | workers | seconds | images/s |\n| --- | ---: | ---: | ---: | ---: |")
            for workers in args.workers:
                out = tmp / f"w{workers}.index"
                meta = build_index(run, args.images, out, args.batch_size, workers, backend="torch", progress=False,
                                   log=lambda _: None)
                print(f"| {args.images} | {meta['count']:,} | {workers} | {meta['seconds']:.1f} | "
                      f"{meta['count'] / meta['seconds']:.0f} |")
                shutil.rmtree(out)
        faiss = faiss_module(False)
        print("\n| search, 1 query, k = 10 | vectors | median ms |\n| --- | ---: | ---: |")
        query = np.random.default_rng(1).normal(size=(1, 128)).astype(np.float32)
        query /= np.linalg.norm(query)
        collections = [(f"{n:,} random", n) for n in args.sizes]
        if args.index:
            from invaspread.search import SearchIndex

            real = np.array(SearchIndex(args.index).embeddings)
            collections.append((f"{len(real):,} of {args.index}", real))
        for label, n in collections:
            if isinstance(n, np.ndarray):
                vectors, n = n, len(n)
            else:
                vectors = np.random.default_rng(0).normal(size=(n, 128)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            path = tmp / "vectors.f32"
            vectors.tofile(path)
            mapped = np.memmap(path, dtype=np.float32, mode="r", shape=(n, 128))
            rows = {"torch exact (memory map, as `search`)": lambda: exact_search(mapped, query, 10)}
            if faiss is not None:
                _build_faiss(faiss, vectors, tmp / "flat.index", 0)
                flat = faiss.read_index(str(tmp / "flat.index"))
                rows["faiss IndexFlatIP (exact)"] = lambda: flat.search(query, 10)
                nlist = int(4 * np.sqrt(n))
                _build_faiss(faiss, vectors, tmp / "ivf.index", nlist)
                if label.endswith("random"):
                    many = np.random.default_rng(2).normal(size=(100, 128)).astype(np.float32)
                    many /= np.linalg.norm(many, axis=1, keepdims=True)
                else:   # real queries: rows of the collection itself
                    many = vectors[np.random.default_rng(2).choice(n, 100, replace=False)]
                exact_rows = flat.search(many, 10)[1]
                for nprobe in (16, 128):
                    probe = faiss.read_index(str(tmp / "ivf.index"))
                    probe.nprobe = nprobe
                    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(probe.search(many, 10)[1], exact_rows)])
                    rows[f"faiss IVF ({nlist} lists, nprobe {nprobe}; recall@10 {recall:.2f})"] = \
                        lambda probe=probe: probe.search(query, 10)
            for name, fn in rows.items():
                print(f"| {name} | {label} | {1000 * median_seconds(fn, args.repeats):.2f} |")


if __name__ == "__main__":
    main()
