"""Time and peak memory of Recall@K and NMI at Stanford Online Products' test size on the CPU.

    python benchmarks/retrieval_metrics.py                  # 60,502 x 128 features, 11,316 labels

Random unit features and labels drawn like SOP's (about 5.3 images per class). Peak memory is the
process's maximum resident set size, the features included.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from invaspread.evaluate.retrieval import nmi, recall_at_k


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60502)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    labels = np.concatenate([np.arange(args.classes), rng.integers(0, args.classes, args.n - args.classes)])
    centres = torch.nn.functional.normalize(torch.randn(args.classes, args.dim), dim=1)
    features = torch.nn.functional.normalize(centres[labels] + 1.5 * torch.randn(args.n, args.dim) / args.dim ** 0.5,
                                             dim=1)
    print(f"{args.n} features x {args.dim}, {args.classes} classes, torch threads {torch.get_num_threads()}; "
          f"RSS before metrics {peak_rss_gib():.2f} GiB")
    rows = []
    t0 = time.perf_counter()
    recalls = recall_at_k(features, labels, args.ks)
    rows.append(("recall_at_k " + "/".join(map(str, args.ks)), time.perf_counter() - t0, peak_rss_gib(),
                 " ".join(f"R@{k}={v:.1f}" for k, v in recalls.items())))
    t0 = time.perf_counter()
    score = nmi(features, labels, seed=0)
    rows.append(("nmi (k-means, k = classes)", time.perf_counter() - t0, peak_rss_gib(), f"NMI={score:.1f}"))
    print(f"{'metric':30s} {'seconds':>8s} {'peak RSS GiB':>13s}  value")
    for name, sec, rss, value in rows:
        print(f"{name:30s} {sec:8.1f} {rss:13.2f}  {value}")


if __name__ == "__main__":
    main()
