"""Time and peak memory of one DeepCluster clustering pass and one MOM mining pass at the paper's data sizes.

    python benchmarks/clustering.py                      # CPU here: CIFAR-10 (50,000) and SOP (59,551) sizes
    python benchmarks/clustering.py --device cuda
    python benchmarks/clustering.py --sizes 5000 --cases deepcluster-100 mom   # a quick look

DeepCluster's pass is what ``DeepCluster.on_epoch_start`` does after embedding the training set: PCA-whitening
of the 128-d embeddings, then k-means (k = 10 / 100 / 1000, 20 iterations, faiss's empty-cluster split).
MOM's pass is ``mine_pools`` with the reference's parameters (mutual 30-NN graph, 20 conjugate-gradient
iterations per anchor, every image an anchor) on the pooled backbone features (512-d ResNet18 for CIFAR-10,
1024-d Inception for SOP). The features are a synthetic mixture of 100 Gaussian clusters (timing does not
depend on what the network learned; the graph's density is like real features'). Each case runs in its own
process, so "peak MiB" is that process's peak resident memory (CPU; torch itself and the features included)
or peak allocated GPU memory, and "of which the pass" what the pass added to the peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

CASES = ("deepcluster-10", "deepcluster-100", "deepcluster-1000", "mom")
NAMES = {50000: "CIFAR-10 train", 59551: "SOP train"}


def features(n: int, dim: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(100, dim, generator=g)
    x = centres[torch.randint(0, 100, (n,), generator=g)] + 0.7 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1).to(device)


def run_case(case: str, n: int, device: str) -> dict:
    from invaspread.methods.deepcluster import pca_whiten
    from invaspread.methods.mom import mine_pools
    from invaspread.ops import kmeans

    dev = torch.device(device)
    dim = 128 if case.startswith("deepcluster") else (512 if n == 50000 else 1024)
    x = features(n, dim, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev) / 2 ** 20
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if case.startswith("deepcluster"):
        k = int(case.split("-")[1])
        ids = kmeans(pca_whiten(x, 256), k, seed=0, max_iter=20, tol=0.0, empty="split")
        detail = f"{int((torch.bincount(ids, minlength=k) > 0).sum())} non-empty clusters"
    else:
        pools = mine_pools(x, progress=False)
        n_pos = (pools["positives"] >= 0).sum(1).float().mean().item()
        n_neg = (pools["negatives"] >= 0).sum(1).float().mean().item()
        detail = f"{n_pos:.1f} positives, {n_neg:.1f} negatives per anchor"
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": time.perf_counter() - t0, "peak_mib": peak, "added_mib": peak - before, "dim": dim,
            "detail": detail}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50000, 59551])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], int(args.child[1]), args.device)))
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}")
    print("| pass | images | dims | seconds | peak MiB | of which the pass | result |\n|---|---:|---:|---:|---:|---:|---|")
    for n in args.sizes:
        for case in args.cases:
            out = subprocess.run([sys.executable, __file__, "--device", args.device, "--child", case, str(n)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"| {case} | {n} | | failed | | {out.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = f"{n} ({NAMES[n]})" if n in NAMES else str(n)
            print(f"| {case} | {label} | {r['dim']} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | {r['added_mib']:.0f} | "
                  f"{r['detail']} |",
                  flush=True)


if __name__ == "__main__":
    main()
