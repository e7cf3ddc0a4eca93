"""Operations shared by training methods and evaluation: tensors in, tensors out, no data loading."""

from .kmeans import kmeans
from .similarity import cosine_topk, cosine_topk_chunks

__all__ = ["cosine_topk", "cosine_topk_chunks", "kmeans"]
