"""Unseen-category metrics (paper Section 4.2, Tables 3-6): Recall@K and NMI within a test set."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..ops import cosine_topk_chunks, kmeans


@torch.no_grad()
def recall_at_k(features: torch.Tensor, labels, ks: Sequence[int] = (1, 2, 4, 8),
                chunk_size: int = 1024) -> Dict[int, float]:
    """{k: %} of queries with at least one same-label item among their k most cosine-similar others.

    Every test item is a query against all the others (itself excluded). Memory is
    O(chunk_size x N), so 60,502 Stanford Online Products features run on a laptop CPU.
    """
    x = torch.as_tensor(features)
    y = torch.as_tensor(np.asarray(labels)).to(x.device)
    first_hit = torch.empty(x.shape[0], dtype=torch.long, device=x.device)  # rank of the first same-label item
    for start, _, top in cosine_topk_chunks(x, None, max(ks), chunk_size):  # (chunk, kmax), the query excluded
        hit = y[top] == y[start:start + top.shape[0], None]
        # argmax of a boolean row = first True; rows without a hit get rank kmax
        first_hit[start:start + top.shape[0]] = torch.where(hit.any(1), hit.float().argmax(1), top.shape[1])
    return {int(k): 100.0 * (first_hit < k).float().mean().item() for k in ks}


NMI_AVERAGES = ("arithmetic", "geometric")


def normalized_mutual_info(labels_true, labels_pred, average: str = "arithmetic") -> float:
    """NMI: I(U; V) / ((H(U) + H(V)) / 2) (``arithmetic``, scikit-learn's default since 0.22) or
    I(U; V) / sqrt(H(U) H(V)) (``geometric``, its default before: what the released code's
    ``normalized_mutual_info_score`` call computed, so the paper's NMI columns).

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
    if average not in NMI_AVERAGES:
        raise ValueError(f"NMI average {average!r}: expected one of {', '.join(NMI_AVERAGES)}")
    if ha == 0.0 and hb == 0.0:
        return 1.0
    normaliser = (ha + hb) / 2 if average == "arithmetic" else np.sqrt(ha * hb)
    return max(mi, 0.0) / max(normaliser, 1e-300)


def nmi(features: torch.Tensor, labels, seed: int = 0, max_iter: int = 300, n_init=None,
        average: str = "arithmetic") -> float:
    """NMI (%) between k-means clusters of the L2-normalised features (k = number of classes) and labels.

    ``n_init`` k-means restarts (best inertia kept); by default 10 as in scikit-learn's classic
    setting, and 1 for large problems (N x k > 5e7, e.g. Stanford Online Products, as the
    released code's ``fast_kmeans``). ``average``: the NMI's normalisation (``normalized_mutual_info``).
    """
    x = F.normalize(torch.as_tensor(features).float(), dim=1)
    labels = np.asarray(torch.as_tensor(labels).cpu())
    k = len(np.unique(labels))
    if n_init is None:
        n_init = 10 if x.shape[0] * k <= 5e7 else 1
    clusters = kmeans(x, k, seed=seed, max_iter=max_iter, n_init=n_init).cpu().numpy()
    return 100.0 * normalized_mutual_info(labels, clusters, average)
