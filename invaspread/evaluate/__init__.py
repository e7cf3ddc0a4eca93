"""Evaluation metrics: functions that take feature tensors and return numbers (no data loading here).

Feature banks are built by ``invaspread.engine.features`` with an explicit evaluation transform.
"""

from .knn import knn_accuracy, knn_classify
from .linear import linear_probe
from .retrieval import nmi, normalized_mutual_info, recall_at_k

__all__ = ["knn_accuracy", "knn_classify", "linear_probe", "nmi", "normalized_mutual_info", "recall_at_k"]
