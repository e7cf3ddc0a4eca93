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
    """NMI with the arithmetic-mean normalisation: I(U; V) / ((H(U) + H(V)) / 2).

    The contingency table is kept sparse (only occurring label pairs), so 11,316 x 11,316 classes
    cost memory proportional to the number of items, not to the table size.
    """
    _, a = np.unique(np.asarray(labels_true), return_inverse=True)
    _, b = np.unique(np.asarray(labels_pred), return_inverse=True)
    n = len(a)
    pa, pb = np.bincount(a) / n, np.bincount(b) / n
    pairs, counts = np.unique(a.astype(np.int64) * (b.max() + 1) + b, return_counts=True)
    ai, bi = pairs // (b.max() + 1), pairs % (b.max() + 1)
    pij = counts / n
    mi = float((pij * np.log(pij / (pa[ai] * pb[bi]))).sum())
    ha = float(-(pa * np.log(pa)).sum())
    hb = float(-(pb * np.log(pb)).sum())
    if ha == 0.0 and hb == 0.0:
        return 1.0
    return max(mi, 0.0) / max((ha + hb) / 2, 1e-300)


def _kmeans_pp_seeds(x: torch.Tensor, sq: torch.Tensor, k: int, g: torch.Generator, per_pass: int):
    """k-means++ (D^2) seeding.

    ``per_pass == 1``: greedy k-means++ as scikit-learn: each step draws 2 + ln(k) candidates and keeps
    the one that lowers the total squared distance most. ``per_pass > 1`` (large k): ``per_pass``
    centres are drawn from the same distance distribution before the distances are refreshed with one
    matrix product, trading a little seeding quality for ``per_pass`` times fewer passes over the data.
    """
    n = x.shape[0]
    centres = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centres[0] = x[torch.randint(n, (1,), generator=g).item()]
    closest = (sq - 2 * x @ centres[0] + centres[0] @ centres[0]).clamp_min_(0)
    candidates = 2 + int(np.log(k)) if per_pass == 1 else per_pass
    filled = 1
    while filled < k:
        m = min(per_pass, k - filled)
        cdf = torch.cumsum(closest.double(), 0)
        draws = torch.rand(max(m, candidates), generator=g, dtype=torch.float64).to(cdf.device) * cdf[-1]
        picked = torch.searchsorted(cdf, draws).clamp_(max=n - 1)
        new = x[picked]                                                   # (c, d)
        dist = (x @ new.t()).mul_(-2).add_(sq[:, None]).add_((new * new).sum(1)[None]).clamp_min_(0)
        if per_pass == 1:
            best = torch.minimum(closest[:, None], dist).sum(0).argmin()
            new, dist = new[best:best + 1], dist[:, best:best + 1]
        centres[filled:filled + m] = new[:m]
        torch.minimum(closest, dist[:, :m].min(1).values, out=closest)
        filled += m
    return centres


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, seed: int = 0, max_iter: int = 50, tol: float = 1e-4,
           chunk_size: int = 4096, n_init: int = 1, seeds_per_pass=None) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns cluster ids (N,). Squared Euclidean distance.

    Stops when the squared centre shift falls below ``tol`` x the mean feature variance (as
    scikit-learn). With ``n_init > 1`` the run of lowest inertia among ``n_init`` seeds wins.
    ``seeds_per_pass`` defaults to 1 (exact k-means++) for k <= 1000 and k // 1000 (at most 16) above.
    """
    x = torch.as_tensor(x).float()
    if n_init > 1:
        runs = [kmeans(x, k, seed + i, max_iter, tol, chunk_size, 1, seeds_per_pass) for i in range(n_init)]
        return min(runs, key=lambda ids: _inertia(x, ids, k))
    n = x.shape[0]
    g = torch.Generator(device="cpu").manual_seed(seed)
    sq = (x * x).sum(1)
    per_pass = seeds_per_pass or min(16, max(1, k // 1000))
    centres = _kmeans_pp_seeds(x, sq, k, g, per_pass)

    def assign(centres):
        ids = torch.empty(n, dtype=torch.long, device=x.device)
        csq = (centres * centres).sum(1)
        for s in range(0, n, chunk_size):
            ids[s:s + chunk_size] = (x[s:s + chunk_size] @ centres.t()).mul_(-2).add_(csq).argmin(1)
        return ids

    threshold = x.var(0).mean().item() * tol
    for _ in range(max_iter):
        ids = assign(centres)
        counts = torch.bincount(ids, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, ids, x)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)  # keep empty ones
        shift = ((new - centres) ** 2).sum().item()
        centres = new
        if shift <= threshold:
            break
    return assign(centres)


def _inertia(x, ids, k) -> float:
    counts = torch.bincount(ids, minlength=k).to(x.dtype).clamp_min(1)
    centres = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, ids, x) / counts[:, None]
    return ((x - centres[ids]) ** 2).sum().item()


def nmi(features: torch.Tensor, labels, seed: int = 0, max_iter: int = 30, n_init=None) -> float:
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
