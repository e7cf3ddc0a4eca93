"""Weighted k-nearest-neighbour classification (Wu et al. 2018; the paper's Table 1-2 protocol).

A query takes its k most cosine-similar training features; each votes for its label with weight
exp(similarity / temperature); the class with the largest total wins (compared in log space, so a
small temperature cannot overflow).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ..ops import cosine_topk_chunks


def _class_scores(train_features, train_labels, test_features, k, temperature, num_classes, chunk_size):
    """Yield (start, scores (chunk, C)) over chunks of the queries; memory is O(chunk x N_train).

    A class's score is log(sum of its votes exp(sim / temperature)), computed as a per-class
    log-sum-exp: the same ranking as the plain sum, finite for any temperature (exp(1 / 0.001)
    overflows even float64), and -inf exactly for a class without a vote.
    """
    labels = train_labels.to(train_features.device).long()
    for start, sims, idx in cosine_topk_chunks(test_features, train_features, k, chunk_size):
        logits = sims.double() / temperature                                              # (chunk, k)
        voter = labels[idx]                                                               # (chunk, k)
        peak = torch.full((logits.shape[0], num_classes), -float("inf"), dtype=logits.dtype, device=logits.device)
        peak.scatter_reduce_(1, voter, logits, reduce="amax")                             # per-class max
        total = torch.zeros_like(peak).scatter_add_(1, voter, (logits - peak.gather(1, voter)).exp())
        yield start, peak + total.log()                                                   # -inf + log 0 = -inf


def _num_classes(train_labels, num_classes):
    return int(train_labels.max().item()) + 1 if num_classes is None else int(num_classes)


@torch.no_grad()
def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 k: int = 200, temperature: float = 0.1, num_classes: Optional[int] = None,
                 chunk_size: int = 1024) -> torch.Tensor:
    """Predicted labels (N_test,) by exp(sim/temperature)-weighted voting of the k nearest neighbours.

    train_features: (N_train, d); train_labels: (N_train,) int; test_features: (N_test, d).
    Features are L2-normalised here, so any scale works. Runs on the train features' device.
    """
    c = _num_classes(train_labels, num_classes)
    preds = torch.empty(test_features.shape[0], dtype=torch.long, device=train_features.device)
    for start, scores in _class_scores(train_features, train_labels, test_features, k, temperature, c, chunk_size):
        preds[start:start + scores.shape[0]] = scores.argmax(dim=1)
    return preds


@torch.no_grad()
def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 200, temperature: float = 0.1,
                 num_classes: Optional[int] = None, chunk_size: int = 1024) -> Dict[str, float]:
    """{"top1": %, "top5": %} of weighted kNN; top-5 counts a hit among the five highest-voted classes
    (a class that received no vote is never a hit)."""
    c = _num_classes(train_labels, num_classes)
    targets = test_labels.to(train_features.device).long()
    top1 = top5 = 0
    for start, scores in _class_scores(train_features, train_labels, test_features, k, temperature, c, chunk_size):
        t = targets[start:start + scores.shape[0], None]
        top_scores, ranked = scores.topk(min(5, c), dim=1)
        top1 += (ranked[:, :1] == t).sum().item()
        # a class without a single vote never counts as a hit (its rank among the -inf is arbitrary)
        top5 += ((ranked == t) & (top_scores > -float("inf"))).any(dim=1).sum().item()
    n = max(test_features.shape[0], 1)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}
