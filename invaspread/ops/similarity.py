"""Chunked cosine nearest neighbours: the one place where a query is compared with a whole set."""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F


@torch.no_grad()
def cosine_topk_chunks(queries: torch.Tensor, reference: Optional[torch.Tensor], k: int,
                       chunk_size: int = 1024) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, similarities (c, k), indices (c, k))`` for consecutive chunks of the queries: the
    ``k`` most cosine-similar reference rows of each query, best first.

    queries: (Q, d); reference: (R, d), or None for "the queries themselves, each query excluding its own
    row" (Recall@K, nearest-neighbour positives). Rows are L2-normalised here (the reference once), so any
    scale works. Memory is O(chunk_size x R) at a time; ``k`` is clipped to the candidates. Results are
    float32 / int64 on the reference's device.
    """
    exclude_self = reference is None
    ref = F.normalize((queries if exclude_self else reference).float(), dim=1)
    k = min(k, ref.shape[0] - exclude_self)
    if k < 1:
        raise ValueError(f"cosine_topk needs at least one candidate per query, got {ref.shape[0]} rows")
    for start in range(0, queries.shape[0], chunk_size):
        q = F.normalize(queries[start:start + chunk_size].to(ref.device).float(), dim=1)
        sims = q @ ref.t()                                               # (chunk, R)
        if exclude_self:
            rows = torch.arange(q.shape[0], device=ref.device)
            sims[rows, rows + start] = -float("inf")
        top = sims.topk(k, dim=1)
        yield start, top.values, top.indices


@torch.no_grad()
def cosine_topk(queries: torch.Tensor, reference: Optional[torch.Tensor], k: int,
                chunk_size: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """All chunks of ``cosine_topk_chunks`` at once: (similarities (Q, k), indices (Q, k))."""
    chunks = list(cosine_topk_chunks(queries, reference, k, chunk_size))
    return torch.cat([c[1] for c in chunks]), torch.cat([c[2] for c in chunks])
