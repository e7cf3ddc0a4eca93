"""Evaluate a model on a ``DataBundle`` with one of the paper's protocols; returns a flat dict of numbers.

* ``knn`` (seen categories, Tables 1-2): weighted kNN, bank = labelled training images (eval transform).
* ``linear`` (Table 2's "Linear"): a linear classifier on frozen features of the labelled train split.
* ``retrieval`` (unseen categories, Tables 3-6): Recall@K and NMI within the test set.
"""

from __future__ import annotations

import time
from typing import Dict, Optional

import torch

from ..errors import ConfigError, InvaspreadError
from ..evaluate import knn_accuracy, linear_probe, recall_at_k
from ..evaluate import nmi as nmi_score
from .features import evaluation_network, source_features

PROTOCOLS = ("knn", "linear", "retrieval")


def _labelled(source) -> bool:
    return source is not None and source.labels is not None


def resolve_protocol(protocol: str, bundle, data_name: str = "") -> Optional[str]:
    """The protocol that ``eval.protocol`` (auto | knn | linear | retrieval | none) means for ``bundle``, checked
    before any training: ``auto`` is kNN when the training images are labelled (seen categories), otherwise
    Recall@K + NMI among the labelled test images, and None (nothing to evaluate) when there are none.
    A protocol the data cannot support is a one-line error naming the key and what to set instead."""
    if protocol == "none":
        return None
    has_queries, has_bank = _labelled(bundle.query), _labelled(bundle.bank)
    if protocol == "auto":
        if not has_queries:
            return None
        return "knn" if bundle.setting == "seen" and has_bank else "retrieval"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"eval.protocol={protocol!r}: expected one of auto, {', '.join(PROTOCOLS)}, none")
    if not has_queries:
        raise ConfigError(f"eval.protocol={protocol}: data.name={data_name} has no labelled test images"
                          + (" (set data.test_root to a folder of <class>/ sub-folders)" if data_name == "image_folder"
                             else "") + "; set eval.protocol=none to train without evaluation")
    if protocol in ("knn", "linear") and not has_bank:
        raise ConfigError(f"eval.protocol={protocol} needs labelled training images (<class>/ sub-folders), and "
                          f"data.name={data_name} has none; use eval.protocol=retrieval (Recall@K and NMI among the "
                          f"labelled test images) or auto")
    return protocol


def _features(model, source, cfg, bundle, device, progress):
    """Evaluation features of ``source`` (the test queries or the labelled bank): the layer ``eval.features``
    names, through the same ``evaluation_network`` as ``embed`` and ``index``; never scores NaN/inf."""
    features = source_features(evaluation_network(model, cfg), source, cfg.data, cfg.augment, bundle.mean,
                               bundle.std, cfg.eval.batch_size, device, progress=progress)
    if not torch.isfinite(features).all():
        raise InvaspreadError("the network's embeddings are NaN or infinite (a diverged model): no metric is "
                              "computed from them")
    return features


def evaluate(model, bundle, cfg, device, protocol: Optional[str] = None, nmi: bool = True,
             progress: bool = False) -> Dict[str, float]:
    """Run ``protocol`` (default: ``eval.protocol``) and return e.g. {"knn_top1": 83.1, ...}; {} when there is
    nothing to evaluate (``none``, or ``auto`` without labelled test images)."""
    protocol = resolve_protocol(protocol or cfg.eval.protocol, bundle, cfg.data.name)
    if protocol is None:
        return {}
    start = time.perf_counter()
    query = _features(model, bundle.query, cfg, bundle, device, progress)
    query_labels = torch.as_tensor(bundle.query.labels, device=query.device)
    if protocol == "retrieval":
        ks = tuple(cfg.eval.recall_ks)
        out = {f"recall@{k}": v for k, v in recall_at_k(query, query_labels, ks).items()}
        if nmi:
            out["nmi"] = nmi_score(query, query_labels, seed=cfg.train.seed, average=cfg.eval.nmi_average)
    else:
        bank = _features(model, bundle.bank, cfg, bundle, device, progress)
        bank_labels = torch.as_tensor(bundle.bank.labels, device=bank.device)
        num_classes = int(max(bank_labels.max().item(), query_labels.max().item())) + 1
        if protocol == "knn":
            acc = knn_accuracy(bank, bank_labels, query, query_labels, cfg.eval.knn_k, cfg.eval.knn_temperature,
                               num_classes)
            out = {"knn_top1": acc["top1"], "knn_top5": acc["top5"]}
        else:
            out = {"linear_top1": linear_probe(bank, bank_labels, query, query_labels, seed=cfg.train.seed)}
    out["eval_seconds"] = time.perf_counter() - start
    return out
