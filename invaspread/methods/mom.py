"""MOM, Mining on Manifolds (Iscen, Tolias, Avrithis, Chum, CVPR 2018; reference gtolias/mom).

Mining (``mine_pools``, once from the initial network, or every ``remine_every`` epochs), on the
L2-normalised features of the un-augmented training set, with the reference's parameters:

- the mutual 30-NN graph with edge weights similarity^3, S = D^-1/2 W D^-1/2, and the manifold
  similarity f_a = (I - 0.99 S)^-1 e_a of every node to anchor a, by 20 conjugate-gradient
  iterations (``ops.manifold``; the reference's ``knngraph``, ``transition_matrix`` and ``dfs``);
- anchors: every image (``anchors=all``, the reference's fine-grained setup, ``mom_CUB.m``), or the
  ``num_anchors`` strongest local maxima of the random walk's stationary distribution on the largest
  connected component (``anchors=local_max``, the retrieval setup of ``mom.m``; mining then stays on
  that component, as there);
- positives of a: its manifold top-50 that are not among its Euclidean top-50 (counting a itself),
  by manifold similarity, at most 50, each weighted by its manifold similarity (``posmine``);
- negatives of a: its Euclidean top-100 (at most half the images) that are not among its manifold
  top-100, by Euclidean similarity, at most 50 (``negmine``).

Training (the reference's ``py/train.py`` and ``cub2011.py``): every epoch re-embeds the training set,
then draws as many tuples as there are training images: a uniform anchor, a uniform positive of its
pool and a negative drawn uniformly among the 10 of its pool closest to the anchor in the current
embedding; ``WeightedTripletLoss`` with squared distances, margin 0.5, weighted by the positive's
manifold similarity. One step embeds anchors, positives and negatives in one pass (V = 3 views).

Named differences: the descriptors are the network's own pooled features (``features=pooled``) or its
embedding, not R-MAC of a separate network; the per-epoch negative ranking embeds un-augmented images
(the reference embeds training-augmented ones); a node with zero manifold similarity is never a manifold
neighbour (the reference may rank zeros by index), so every positive has a positive weight; anchors
without a positive or a negative are not drawn (the reference would fail on them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import require, require_choice, require_positive
from ..errors import ConfigError
from ..losses import WeightedTripletLoss
from ..ops.rmac import rmac_descriptors
from ..ops.manifold import (largest_component, local_maxima, manifold_similarity_chunks, mutual_knn_graph,
                            normalized_affinity, sparse_matrix, stationary_distribution)
from .base import Method, epoch_generator


@dataclass
class MOMConfig:
    """Mining on Manifolds (Iscen et al. 2018): triplets mined from a kNN graph's manifold similarity."""

    features: str = "pooled"  # mine on "rmac" (multi-scale R-MAC of the last feature map, PCA-whitened: the reference's descriptors), "pooled" backbone features or the "embedding"
    rmac_dims: int = 512  # features=rmac: dimensions kept by the PCA-whitening (reference: 512)
    rmac_scales: List[float] = field(default_factory=lambda: [1.0, 0.7071, 0.5])  # features=rmac: input scales (reference: 1, 1/sqrt(2), 1/2)
    rmac_levels: int = 3  # features=rmac: region levels (Tolias et al.: 3)
    graph_neighbours: int = 30  # k of the mutual kNN graph (reference: 30)
    similarity_power: float = 3.0  # edge weight = similarity ** power (reference: 3)
    alpha: float = 0.99  # random-walk restart: f = (I - alpha S)^-1 e_anchor (reference: 0.99)
    cg_iterations: int = 20  # conjugate-gradient iterations per anchor (reference's pcg: 20)
    anchors: str = "all"  # "all" images (reference's fine-grained setup) | "local_max" of the random walk (retrieval)
    num_anchors: int = 1500  # anchors=local_max: keep the strongest this many (reference: 1500)
    positive_k: int = 50  # positives: manifold top-k that are not Euclidean top-k (reference: 50)
    negative_k: int = 100  # negatives: Euclidean top-k that are not manifold top-k (reference, CUB: 100)
    pool_size: int = 50  # keep at most this many positives / negatives per anchor (reference: 50)
    negative_candidates: int = 10  # a tuple's negative: uniform among the pool's this-many closest (reference: 10)
    margin: float = 0.5  # m of max(0, m + d2(a, p) - d2(a, n)) (reference: 0.5)
    remine_every: int = 0  # mine again every E epochs; 0 = once, from the initial network (the paper's MOM)

    def check(self, prefix: str) -> None:
        require_choice(prefix, self, "features", ("rmac", "pooled", "embedding"))
        require_choice(prefix, self, "anchors", ("all", "local_max"))
        require_positive(prefix, self, "graph_neighbours", "similarity_power", "cg_iterations", "num_anchors",
                         "positive_k", "negative_k", "pool_size", "negative_candidates", "margin", "rmac_dims",
                         "rmac_levels")
        require(bool(self.rmac_scales) and all(0 < s <= 4 for s in self.rmac_scales), f"{prefix}.rmac_scales",
                self.rmac_scales, "a non-empty list of input scales in (0, 4], e.g. [1.0, 0.7071, 0.5]")
        require(0 < self.alpha < 1, f"{prefix}.alpha", self.alpha, "0 < alpha < 1")
        require(self.remine_every >= 0, f"{prefix}.remine_every", self.remine_every, "0 (mine once) or more")


def _first_kept(candidates: torch.Tensor, keep: torch.Tensor, values: torch.Tensor, size: int):
    """Per row, the first ``size`` candidates where ``keep`` holds, in order: ((c, size) ids padded with -1,
    (c, size) values padded with 0)."""
    c = candidates.shape[0]
    position = keep.long().cumsum(1) - 1
    take = keep & (position < size)
    ids = torch.full((c, size), -1, dtype=torch.long, device=candidates.device)
    vals = torch.zeros(c, size, dtype=values.dtype, device=candidates.device)
    row = torch.arange(c, device=candidates.device)[:, None].expand_as(candidates)
    ids[row[take], position[take]] = candidates[take]
    vals[row[take], position[take]] = values[take]
    return ids, vals


def _subgraph(affinity: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """The sparse affinity restricted to ``nodes`` (M,), renumbered 0..M-1 in their order."""
    w = affinity.to_sparse_coo().coalesce()
    new_id = torch.full((w.shape[0],), -1, dtype=torch.long, device=w.device)
    new_id[nodes] = torch.arange(nodes.shape[0], device=w.device)
    i, j = new_id[w.indices()[0]], new_id[w.indices()[1]]
    inside = (i >= 0) & (j >= 0)
    m = nodes.shape[0]
    return sparse_matrix(torch.stack([i[inside], j[inside]]), w.values()[inside], (m, m))


@torch.no_grad()
def mine_pools(features: torch.Tensor, graph_neighbours: int = 30, similarity_power: float = 3.0,
               alpha: float = 0.99, cg_iterations: int = 20, anchors: str = "all", num_anchors: int = 1500,
               positive_k: int = 50, negative_k: int = 100, pool_size: int = 50,
               chunk_size: Optional[int] = None, progress: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """MOM's mining on (N, D) features (any scale; rows are L2-normalised here).

    Returns ``anchor`` (N,) bool, ``positives`` / ``negatives`` (N, pool_size) int64 ids padded with -1
    (rows of non-anchors empty) and ``positive_weights`` (N, pool_size) float32 manifold similarities.
    Anchors are solved ``chunk_size`` at a time: memory O(N x chunk_size) beyond the graph (default 32 on
    the CPU, where wider sparse products lose more to cache misses than they gain, 1024 on a GPU).
    ``progress``: a bar over the anchors (None: on a terminal only).
    """
    from tqdm.auto import tqdm

    n_all = features.shape[0]
    x = F.normalize(features.float(), dim=1)
    affinity = mutual_knn_graph(x, graph_neighbours, similarity_power)
    nodes = torch.arange(n_all, device=x.device)
    if anchors == "local_max":
        nodes = largest_component(affinity)
        affinity = _subgraph(affinity, nodes)
        x = x[nodes]
        score = stationary_distribution(affinity)
        maxima = local_maxima(affinity, score)
        anchor_ids = maxima[score[maxima].argsort(descending=True)[:num_anchors]]
    elif anchors == "all":
        anchor_ids = torch.arange(n_all, device=x.device)
    else:
        raise ValueError(f"anchors must be 'all' or 'local_max', got {anchors!r}")
    s = normalized_affinity(affinity).to(torch.float32)
    n = x.shape[0]
    pos_k, neg_k = min(positive_k, n), min(math.ceil(n / 2), negative_k)     # negmine's "at most half"
    out = {"anchor": torch.zeros(n_all, dtype=torch.bool, device=x.device),
           "positives": torch.full((n_all, pool_size), -1, dtype=torch.long, device=x.device),
           "positive_weights": torch.zeros(n_all, pool_size, device=x.device),
           "negatives": torch.full((n_all, pool_size), -1, dtype=torch.long, device=x.device)}
    chunk_size = chunk_size or (1024 if x.is_cuda else 32)
    bar = tqdm(total=anchor_ids.numel(), desc="MOM mining", unit="anchor", leave=False,
               disable=None if progress is None else not progress)
    for start, manifold in manifold_similarity_chunks(s, anchor_ids, alpha, cg_iterations, chunk_size):
        bar.update(manifold.shape[1])
        a = anchor_ids[start:start + manifold.shape[1]]                          # (c,) local ids
        manifold = manifold.t()                                                  # (c, n)
        euclid_sim, euclid_rank = (x[a] @ x.t()).topk(max(pos_k, neg_k), dim=1)  # anchor itself first
        m_val, m_ids = manifold.topk(max(pos_k, neg_k), dim=1)
        m_ok = m_val > 0                                                         # zero similarity: no neighbour
        in_euclid = torch.zeros_like(manifold, dtype=torch.bool).scatter_(1, euclid_rank[:, :pos_k], True)
        in_manifold = torch.zeros_like(manifold, dtype=torch.bool)
        in_manifold.scatter_(1, m_ids[:, :neg_k], m_ok[:, :neg_k])
        pos_ids, pos_w = _first_kept(m_ids[:, :pos_k], m_ok[:, :pos_k] & ~in_euclid.gather(1, m_ids[:, :pos_k]),
                                     m_val[:, :pos_k], pool_size)
        neg_cand = euclid_rank[:, :neg_k]
        neg_ids, _ = _first_kept(neg_cand, ~in_manifold.gather(1, neg_cand), euclid_sim[:, :neg_k], pool_size)
        rows = nodes[a]
        out["anchor"][rows] = True
        out["positives"][rows] = torch.where(pos_ids >= 0, nodes[pos_ids.clamp_min(0)], pos_ids)
        out["positive_weights"][rows] = pos_w.float()
        out["negatives"][rows] = torch.where(neg_ids >= 0, nodes[neg_ids.clamp_min(0)], neg_ids)
    bar.close()
    return out


def draw_tuples(pools: Dict[str, torch.Tensor], embedding: torch.Tensor, count: int, candidates: int,
                generator: torch.Generator):
    """``count`` (anchor, positive, negative) tuples as the reference's ``CUB2011.__getitem__`` draws them:
    a uniform anchor among those with a positive and a negative, a uniform positive of its pool, a negative
    uniform among the ``candidates`` of its pool closest to the anchor in ``embedding`` (N, d).
    Returns ((count, 3) int64 image ids, (count,) positive weights), on the CPU."""
    positives, negatives = pools["positives"].cpu(), pools["negatives"].cpu()
    n_pos, n_neg = (positives >= 0).sum(1), (negatives >= 0).sum(1)
    usable = torch.nonzero(pools["anchor"].cpu() & (n_pos > 0) & (n_neg > 0)).flatten()
    if usable.numel() == 0:
        raise ConfigError(f"MOM mined no anchor with both a positive and a negative among {positives.shape[0]} "
                          f"images: lower method.mom.positive_k / negative_k / graph_neighbours for so few images")
    e = embedding.float().cpu()
    neg = negatives[usable]                                                      # (A, P)
    closest = torch.empty_like(neg)
    for s in range(0, neg.shape[0], 4096):                                       # memory O(4096 x P x d)
        part = neg[s:s + 4096]
        dist = ((e[usable[s:s + 4096], None] - e[part.clamp_min(0)]) ** 2).sum(-1).masked_fill(part < 0, float("inf"))
        closest[s:s + 4096] = part.gather(1, dist.argsort(dim=1, stable=True))  # padding last
    pick = torch.randint(0, usable.numel(), (count,), generator=generator)
    u_pos, u_neg = torch.rand(count, generator=generator), torch.rand(count, generator=generator)
    anchor = usable[pick]
    pos_slot = (u_pos * n_pos[anchor]).long()
    neg_slot = (u_neg * n_neg[anchor].clamp(max=candidates)).long()
    plan = torch.stack([anchor, positives[anchor, pos_slot], closest[pick, neg_slot]], dim=1)
    return plan, pools["positive_weights"].cpu()[anchor, pos_slot]


class MOM(Method):
    views = 3  # anchor, positive, negative
    Config = MOMConfig

    def __init__(self, encoder: nn.Module, num_instances: int, settings, seed: int = 0):
        super().__init__(encoder)
        self.options, self.seed = settings, int(seed)
        self.loss = WeightedTripletLoss(settings.margin)
        p = settings.pool_size
        # the mined pools are buffers: checkpointed, so a resumed run trains on the same tuples
        self.register_buffer("anchor", torch.zeros(num_instances, dtype=torch.bool))
        self.register_buffer("positives", torch.full((num_instances, p), -1, dtype=torch.long))
        self.register_buffer("positive_weights", torch.zeros(num_instances, p))
        self.register_buffer("negatives", torch.full((num_instances, p), -1, dtype=torch.long))
        self.register_buffer("mined_at_epoch", torch.tensor(0))
        self._plan = self._weights = None

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        settings = cls.settings(cfg)
        if settings.features == "rmac":
            check_rmac_scales(encoder.backbone, cfg.data.image_size, settings.rmac_scales, cfg.model.arch)
        return cls(encoder, num_instances, settings, cfg.train.seed)

    def _pools(self):
        return {"anchor": self.anchor, "positives": self.positives, "positive_weights": self.positive_weights,
                "negatives": self.negatives}

    def descriptors(self, train_features) -> torch.Tensor:
        """(N, D) what mining reads: R-MAC of the backbone (``rmac``), its pooled features, or the embedding."""
        c = self.options
        if c.features == "rmac":
            return rmac_descriptors(train_features, self.encoder.backbone, c.rmac_dims, c.rmac_scales, c.rmac_levels)
        return train_features(c.features == "pooled")

    def on_epoch_start(self, epoch, train_features):
        c = self.options
        due = int(self.mined_at_epoch) == 0 or (c.remine_every > 0 and (epoch - 1) % c.remine_every == 0)
        if due:
            mined = mine_pools(self.descriptors(train_features), c.graph_neighbours, c.similarity_power,
                               c.alpha, c.cg_iterations, c.anchors, c.num_anchors, c.positive_k, c.negative_k,
                               c.pool_size)
            for name, value in mined.items():
                getattr(self, name).copy_(value)
            self.mined_at_epoch.fill_(epoch)
        embedding = train_features(False)
        self._plan, weights = draw_tuples(self._pools(), embedding, self.anchor.shape[0], c.negative_candidates,
                                          epoch_generator(self.seed, epoch, salt=1))
        self._weights = weights.to(self.positive_weights.device)

    def epoch_plan(self):
        return self._plan

    def epoch_state(self) -> List[torch.Tensor]:
        return super().epoch_state() + [self._weights]   # derived with the plan: rank 0's for every rank

    def training_step(self, views, rows):
        z = self.embed(views)                                                    # (3, B, d)
        return self.loss(z[0], z[1], z[2], self._weights[rows.to(self._weights.device)])


def check_rmac_scales(backbone: nn.Module, image_size: int, scales, arch: str) -> None:
    """Every R-MAC input scale gives the backbone an image it can map (before any training): a tiny forward per
    scale in eval mode, so a scale too small for the images is one line up front, not a traceback at mining."""
    was_training = backbone.training
    backbone.eval()
    try:
        for scale in scales:
            side = int(image_size * scale)   # what F.interpolate(scale_factor=scale) makes of the image
            try:
                with torch.no_grad():
                    backbone(torch.zeros(1, 3, side, side, device=next(backbone.parameters()).device))
            except (RuntimeError, ValueError) as err:
                raise ConfigError(f"method.mom.rmac_scales={list(scales)}: scale {scale} turns the {image_size}-pixel "
                                  f"images (data.image_size) into {side}x{side} ones, too small for model.arch={arch} "
                                  f"({' '.join(str(err).split())[:80]}); use larger scales or larger images") from None
    finally:
        backbone.train(was_training)

