"""Evaluation: functions that take feature tensors and return numbers."""

from .features import embed_uint8, extract_features, source_features
from .knn import knn_accuracy, knn_classify

__all__ = ["embed_uint8", "extract_features", "knn_accuracy", "knn_classify", "source_features"]
