"""Unseen-category metrics (paper Section 4.2, Tables 3-6): Recall@K and NMI within a test set."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def recall_at_k(features: torch.Tensor, labels, ks: Sequence[int] = (1, 2, 4, 8),
                chunk_size: int = 256) -> Dict[int, float]:
    """{k: %} of queries with at least one same-label item among their k most cosine-similar others.

    Every test item is a query against all the others (itself excluded). Memory is
    O(chunk_size x N), so 60,502 Stanford Online Products features run on a laptop CPU.
    """
    x = F.normalize(torch.as_tensor(features).float(), dim=1)
    y = torch.as_tensor(np.asarray(labels)).to(x.device)
    n, kmax = x.shape[0], min(max(ks), x.shape[0] - 1)
    first_hit = torch.empty(n, dtype=torch.long, device=x.device)  # rank of the first same-label item
    for start in range(0, n, chunk_size):
        sims = x[start:start + chunk_size] @ x.t()
        rows = torch.arange(sims.shape[0], device=x.device)
        sims[rows, rows + start] = -float("inf")
        top = sims.topk(kmax, dim=1).indices
        hit = y[top] == y[start:start + chunk_size, None]
        # argmax of a boolean row = first True; rows without a hit get rank kmax
        first_hit[start:start + chunk_size] = torch.where(hit.any(1), hit.float().argmax(1), kmax)
    return {int(k): 100.0 * (first_hit < k).float().mean().item() for k in ks}


def normalized_mutual_info(labels_true, labels_pred) -> float:
    """NMI with the arithmetic-mean normalisation: I(U; V) / ((H(U) + H(V)) / 2)."""
    _, a = np.unique(np.asarray(labels_true), return_inverse=True)
    _, b = np.unique(np.asarray(labels_pred), return_inverse=True)
    n = len(a)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1)
    joint /= n
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    ha = float(-(pa * np.log(pa)).sum())
    hb = float(-(pb * np.log(pb)).sum())
    if ha == 0.0 and hb == 0.0:
        return 1.0
    return max(mi, 0.0) / max((ha + hb) / 2, 1e-300)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, seed: int = 0, max_iter: int = 50, tol: float = 1e-4,
           chunk_size: int = 4096, n_init: int = 1) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns cluster ids (N,). Squared Euclidean distance.

    With ``n_init > 1`` the run of lowest inertia (sum of squared distances) among ``n_init`` seeds wins.
    """
    x = torch.as_tensor(x).float()
    if n_init > 1:
        runs = [kmeans(x, k, seed + i, max_iter, tol, chunk_size) for i in range(n_init)]
        return min(runs, key=lambda ids: _inertia(x, ids, k))
    n = x.shape[0]
    g = torch.Generator(device="cpu").manual_seed(seed)
    sq = (x * x).sum(1)
    centres = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centres[0] = x[torch.randint(n, (1,), generator=g).item()]
    closest = (sq - 2 * x @ centres[0] + centres[0] @ centres[0]).clamp_min(0)
    uniform = torch.rand(k, generator=g, dtype=torch.float64)
    for c in range(1, k):
        # D^2 sampling: pick a point with probability proportional to its squared distance
        cdf = torch.cumsum(closest.double(), 0)
        i = int(torch.searchsorted(cdf, uniform[c] * cdf[-1]).clamp(max=n - 1))
        centres[c] = x[i]
        torch.minimum(closest, (sq - 2 * x @ centres[c] + centres[c] @ centres[c]).clamp_min(0), out=closest)

    def assign(centres):
        ids = torch.empty(n, dtype=torch.long, device=x.device)
        csq = (centres * centres).sum(1)
        for s in range(0, n, chunk_size):
            ids[s:s + chunk_size] = (csq[None] - 2 * x[s:s + chunk_size] @ centres.t()).argmin(1)
        return ids

    scale = x.var(0).mean().item() * tol
    for _ in range(max_iter):
        ids = assign(centres)
        counts = torch.bincount(ids, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, ids, x)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)  # keep empty ones
        shift = ((new - centres) ** 2).sum().item()
        centres = new
        if shift <= scale:
            break
    return assign(centres)


def _inertia(x, ids, k) -> float:
    counts = torch.bincount(ids, minlength=k).to(x.dtype).clamp_min(1)
    centres = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, ids, x) / counts[:, None]
    return ((x - centres[ids]) ** 2).sum().item()


def nmi(features: torch.Tensor, labels, seed: int = 0, max_iter: int = 50, n_init=None) -> float:
    """NMI (%) between k-means clusters of the L2-normalised features (k = number of classes) and labels.

    ``n_init`` k-means restarts (best inertia kept); by default 10 as in scikit-learn's classic
    setting, and 1 for large problems (N x k > 5e7, e.g. Stanford Online Products, as the
    released code's ``fast_kmeans``).
    """
    x = F.normalize(torch.as_tensor(features).float(), dim=1)
    labels = np.asarray(torch.as_tensor(labels).cpu())
    k = len(np.unique(labels))
    if n_init is None:
        n_init = 10 if x.shape[0] * k <= 5e7 else 1
    clusters = kmeans(x, k, seed=seed, max_iter=max_iter, n_init=n_init).cpu().numpy()
    return 100.0 * normalized_mutual_info(labels, clusters)
