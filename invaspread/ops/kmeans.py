"""k-means with k-means++ seeding on torch tensors (any device): NMI, DeepCluster's pseudo-labels."""

from __future__ import annotations

import numpy as np
import torch


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


def _split_empty_clusters(centres: torch.Tensor, counts: torch.Tensor, g: torch.Generator,
                          eps: float = 1.0 / 1024) -> int:
    """faiss's remedy for empty clusters, which DeepCluster relies on: each empty centre becomes a copy of
    a cluster picked with probability proportional to (its size - 1), the two copies pushed apart by a
    symmetric relative perturbation of +-eps per coordinate (alternating signs), and the picked
    cluster's count is shared between them. In place; returns the number of clusters split."""
    counts = counts.clone()
    sign = torch.ones(centres.shape[1], dtype=centres.dtype, device=centres.device)
    sign[1::2] = -1
    empty = (counts == 0).nonzero().flatten().tolist()
    for ci in empty:
        weights = (counts - 1).clamp_min(0).double().cpu()
        if weights.sum() <= 0:  # every cluster has a single point: nothing to split
            return empty.index(ci)
        cj = torch.multinomial(weights, 1, generator=g).item()
        centres[ci] = centres[cj] * (1 + eps * sign)
        centres[cj] = centres[cj] * (1 - eps * sign)
        counts[ci] = torch.div(counts[cj], 2, rounding_mode="floor")
        counts[cj] -= counts[ci]
    return len(empty)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, seed: int = 0, max_iter: int = 300, tol: float = 1e-4,
           chunk_size: int = 4096, n_init: int = 1, seeds_per_pass=None, empty: str = "keep") -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns cluster ids (N,). Squared Euclidean distance.

    Stops when the squared centre shift falls below ``tol`` x the mean feature variance (as
    scikit-learn; ``tol=0`` runs ``max_iter`` iterations unless nothing moves). With ``n_init > 1`` the
    run of lowest inertia among ``n_init`` seeds wins. ``seeds_per_pass`` defaults to 1 (exact
    k-means++) for k <= 1000 and k // 1000 (at most 16) above. ``empty``: what an iteration does with a
    centre that lost all its points: "keep" it where it is (scikit-learn relocates it; NMI never
    meets one in practice), or "split" a populated cluster into it as faiss does (DeepCluster).
    Memory is O(N x d + chunk_size x k).
    """
    if empty not in ("keep", "split"):
        raise ValueError(f"kmeans empty must be 'keep' or 'split', got {empty!r}")
    x = torch.as_tensor(x).float()
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans needs 1 <= k <= {x.shape[0]} points, got k={k}")
    if n_init > 1:
        runs = [kmeans(x, k, seed + i, max_iter, tol, chunk_size, 1, seeds_per_pass, empty) for i in range(n_init)]
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
        if empty == "split":
            _split_empty_clusters(new, counts, g)
        shift = ((new - centres) ** 2).sum().item()
        centres = new
        if shift <= threshold:
            break
    return assign(centres)


def _inertia(x, ids, k) -> float:
    counts = torch.bincount(ids, minlength=k).to(x.dtype).clamp_min(1)
    centres = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, ids, x) / counts[:, None]
    return ((x - centres[ids]) ** 2).sum().item()
