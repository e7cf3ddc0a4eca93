"""Manifold similarity on a nearest-neighbour graph (Iscen et al. CVPR 2017 diffusion, used by MOM).

The graph and the similarity follow the MOM reference code (gtolias/mom with ahmetius/diffusion-retrieval):

    W_ij = max(x_i . x_j, 0)^power   if j is among the k nearest of i AND i among the k nearest of j
    S    = D^-1/2 W D^-1/2           (D = diag(row sums of W); an isolated node gets an empty row)
    f_q  = (I - alpha S)^-1 e_q      (the manifold similarity of every node to q)

The reference solves ``(I - alpha S) f = e_q`` with MATLAB's ``pcg`` (tolerance 1e-10, at most 20
iterations, returning the iterate of least residual); ``manifold_similarity`` does the same for a
batch of sources at once. With alpha = 0.99 twenty iterations do not converge: the truncation is part of
the reference's similarity, and ``iterations`` reproduces it.
"""

from __future__ import annotations

import warnings
from typing import Iterator, Tuple

import numpy as np
import torch

from .similarity import cosine_topk


def sparse_matrix(indices: torch.Tensor, values: torch.Tensor, size, csr: bool = True) -> torch.Tensor:
    """A coalesced sparse (n, m) matrix from (2, nnz) ``indices`` and ``values``: CSR (fast products) or COO."""
    m = torch.sparse_coo_tensor(indices, values, tuple(size), check_invariants=False).coalesce()
    if not csr:
        return m
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return m.to_sparse_csr()


@torch.no_grad()
def mutual_knn_graph(features: torch.Tensor, k: int = 30, power: float = 3.0, chunk_size: int = 1024) -> torch.Tensor:
    """(N, N) sparse symmetric affinity W of the mutual k-nearest-neighbour graph (cosine similarity,
    each node's k nearest counted with itself, as the reference's ``knn_wrap(V, V, k)``), weights
    ``max(sim, 0) ** power``, zero diagonal. Returns a float64 CSR tensor on the features' device."""
    n = features.shape[0]
    sims, nearest = cosine_topk(features, features, min(k, n), chunk_size)       # (N, k) each, self included
    rows = torch.arange(n, device=nearest.device).repeat_interleave(nearest.shape[1])
    cols, weights = nearest.flatten(), sims.flatten().double()
    keys = rows * n + cols
    sorted_keys = keys.sort().values
    mutual = torch.isin(cols * n + rows, sorted_keys, assume_unique=False) & (rows != cols)
    rows, cols, weights = rows[mutual], cols[mutual], weights[mutual].clamp_min(0) ** power
    return sparse_matrix(torch.stack([rows, cols]), weights, (n, n))


def _with_degree(affinity: torch.Tensor):
    """(coalesced COO W, (N,) row sums of W)."""
    w = affinity.to_sparse_coo().coalesce()
    return w, torch.zeros(w.shape[0], dtype=w.dtype, device=w.device).index_add_(0, w.indices()[0], w.values())


def normalized_affinity(affinity: torch.Tensor) -> torch.Tensor:
    """S = D^-1/2 W D^-1/2 of a sparse (N, N) affinity (the reference's ``transition_matrix``)."""
    w, degree = _with_degree(affinity)
    scale = torch.where(degree > 0, degree.clamp_min(1e-300).rsqrt(), torch.zeros_like(degree))
    i, j = w.indices()
    return sparse_matrix(w.indices(), w.values() * scale[i] * scale[j], w.shape)


@torch.no_grad()
def manifold_similarity(s: torch.Tensor, sources: torch.Tensor, alpha: float = 0.99, iterations: int = 20,
                        tol: float = 1e-10) -> torch.Tensor:
    """(N, c) dense: column j solves (I - alpha S) f = e_{sources[j]} by conjugate gradients.

    s: (N, N) sparse symmetric S (``normalized_affinity``), sources: (c,) node ids. Like MATLAB's
    ``pcg(A, b, tol, iterations)``: a column stops once its relative residual is <= ``tol``, and a
    column that did not converge returns its iterate of least residual. Computed in the dtype of ``s``.
    """
    n, c = s.shape[0], sources.shape[0]
    b = torch.zeros(n, c, dtype=s.dtype, device=s.device)
    b[sources.to(s.device), torch.arange(c, device=s.device)] = 1.0
    x = torch.zeros_like(b)
    r = b                                                          # residual b - A x at x = 0
    p = r.clone()
    ap = torch.empty_like(b)
    rs = torch.linalg.vecdot(r, r, dim=0)
    best, best_res = x.clone(), rs.sqrt()
    active = best_res > tol
    for _ in range(iterations):
        if not bool(active.any()):
            break
        torch.add(p, s @ p, alpha=-alpha, out=ap)                  # A p = p - alpha S p
        step = torch.where(active, rs / torch.linalg.vecdot(p, ap, dim=0), torch.zeros_like(rs))
        x.addcmul_(p, step)
        r.addcmul_(ap, step, value=-1)
        rs_new = torch.linalg.vecdot(r, r, dim=0)
        res = rs_new.sqrt()
        better = res < best_res
        torch.where(better, x, best, out=best)                      # MATLAB's pcg: the least-residual iterate
        best_res = torch.minimum(res, best_res)
        active = active & (res > tol)
        p.mul_(torch.where(active, rs_new / rs, torch.zeros_like(rs))).add_(r)
        rs = rs_new
    return best


def manifold_similarity_chunks(s: torch.Tensor, sources: torch.Tensor, alpha: float, iterations: int,
                               chunk_size: int = 512) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield ``(start, (N, c) similarities)`` for consecutive chunks of ``sources``: memory
    O(N x chunk_size) whatever the number of sources."""
    for start in range(0, sources.shape[0], chunk_size):
        yield start, manifold_similarity(s, sources[start:start + chunk_size], alpha, iterations)


def stationary_distribution(affinity: torch.Tensor, iterations: int = 1000) -> torch.Tensor:
    """(N,) the reference's ``powiter(D^-1 W)``: r <- r P, r <- r / ||r||_2 from the uniform vector,
    ``iterations`` times (P = D^-1 W, the random walk's transition matrix)."""
    w, degree = _with_degree(affinity)
    inv = torch.where(degree > 0, 1 / degree.clamp_min(1e-300), torch.zeros_like(degree))
    transition_t = sparse_matrix(w.indices().flip(0), w.values() * inv[w.indices()[0]], w.shape)  # P^T: r P = (P^T r)^T
    r = torch.full((w.shape[0], 1), 1.0 / w.shape[0], dtype=w.dtype, device=w.device)
    for _ in range(iterations):
        r = transition_t @ r
        r = r / r.norm()
    return r[:, 0]


def largest_component(affinity: torch.Tensor) -> torch.Tensor:
    """(M,) ids of the nodes of the largest connected component (the reference's ``largecc(G, 1)``)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    w = affinity.to_sparse_coo().coalesce().cpu()
    i, j = w.indices().numpy()
    graph = csr_matrix((np.ones(i.shape[0]), (i, j)), shape=w.shape)
    _, labels = connected_components(graph, directed=False)
    biggest = np.bincount(labels).argmax()
    return torch.from_numpy(np.flatnonzero(labels == biggest)).to(affinity.device)


def local_maxima(affinity: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """(M,) ids of the nodes whose ``score`` exceeds that of every graph neighbour (``graphlmax``, l=1);
    a node without neighbours is not a local maximum (MATLAB's max of nothing is empty, so its test fails)."""
    w = affinity.to_sparse_coo().coalesce()
    i, j = w.indices()
    neighbour_best = torch.full_like(score, float("inf")).scatter_reduce(0, i, score[j], "amax", include_self=False)
    has_neighbour = torch.zeros_like(score, dtype=torch.bool).index_fill_(0, i, True)
    return torch.nonzero(has_neighbour & (score > neighbour_best)).flatten()
