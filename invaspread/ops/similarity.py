"""Chunked cosine nearest neighbours: the one place where a query is compared with a whole set."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


@torch.no_grad()
def cosine_topk(queries: torch.Tensor, reference: Optional[torch.Tensor], k: int,
                exclude: Optional[torch.Tensor] = None, chunk_size: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most cosine-similar reference rows of every query, best first.

    queries: (Q, d); reference: (R, d), or None for "the queries themselves, each query excluding its
    own row" (Recall@K, nearest-neighbour positives). exclude: optional (Q,) reference row to leave out
    for each query (e.g. the query itself when the queries are a slice of the reference). Rows are
    L2-normalised here, so any scale works. Memory is O(chunk_size x R). Returns (similarities (Q, k)
    float32, indices (Q, k) int64) on the reference's device; ``k`` is clipped to the candidates.
    """
    if reference is None:
        reference = queries
        exclude = torch.arange(queries.shape[0], device=queries.device)
    ref = F.normalize(reference.float(), dim=1)
    k = min(k, ref.shape[0] - (exclude is not None))
    if k < 1:
        raise ValueError(f"cosine_topk needs at least one candidate per query, got {ref.shape[0]} rows")
    sims_out = torch.empty(queries.shape[0], k, dtype=torch.float32, device=ref.device)
    idx_out = torch.empty(queries.shape[0], k, dtype=torch.long, device=ref.device)
    for start in range(0, queries.shape[0], chunk_size):
        q = F.normalize(queries[start:start + chunk_size].to(ref.device).float(), dim=1)
        sims = q @ ref.t()                                               # (chunk, R)
        if exclude is not None:
            rows = torch.arange(q.shape[0], device=ref.device)
            sims[rows, exclude[start:start + q.shape[0]].to(ref.device)] = -float("inf")
        top = sims.topk(k, dim=1)
        sims_out[start:start + q.shape[0]], idx_out[start:start + q.shape[0]] = top.values, top.indices
    return sims_out, idx_out
