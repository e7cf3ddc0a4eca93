"""What a data-set reader returns (``DataBundle``) and the torch ``Dataset`` views of an image source."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from .sources import first_per_class


@dataclass
class DataBundle:
    train: object  # ArrayImages | FileImages; labels, if any, are never used for training
    bank: Optional[object]  # labelled reference set (seen setting), evaluated with the eval transform
    query: Optional[object]  # labelled test set
    setting: str  # "seen" (kNN, linear) or "unseen" (Recall@K, NMI)
    mean: Sequence[float] = ()  # Normalize values, filled in by build_data
    std: Sequence[float] = ()
    skipped: list = field(default_factory=list)  # (path, reason) of the unreadable files the folders' scans left out


def usable_workers(requested: int) -> int:
    """DataLoader workers for ``requested`` (``data.num_workers``, configs written for GPU machines): at most the
    CPU cores this process may use, since more only adds contention (and PyTorch's warning about it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(int(requested), cores))


def subset_per_class(source, n: Optional[int]):
    """The first ``n`` images of every class of a labelled source (the source itself when n is None)."""
    if n is None or source.labels is None:
        return source
    return source.subset(first_per_class(source.labels, n))


def images_as_tensor(source) -> torch.Tensor:
    """(N, 3, H, W) uint8 view of an in-memory source, for device-resident training data."""
    return torch.from_numpy(source.images).permute(0, 3, 1, 2)


def _per_view(transforms) -> list:
    """A list of per-view transforms from one transform (every view alike) or a sequence of them."""
    return [transforms] if callable(transforms) else list(transforms)


class ViewsDataset(Dataset):
    """Yields ``([view_1, ..., view_V], index)``: V independent augmentations of instance ``index``, view v by
    ``transforms[v % len(transforms)]`` (a method that draws views from other images plans its epoch:
    ``PlannedViewsDataset``)."""

    def __init__(self, source, transforms, views: int = 2):
        self.source, self.transforms, self.views = source, _per_view(transforms), views

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return [self.transforms[v % len(self.transforms)](self.source.image(i)) for v in range(self.views)], i


class PlannedViewsDataset(Dataset):
    """Yields ``([view_1, ..., view_V], row)``: view v of item ``row`` augments image ``plan[row, v]``
    (an epoch planned by a method: DeepCluster's cluster-uniform draws, MOM's mined tuples), by
    ``transforms[v % len(transforms)]``."""

    def __init__(self, source, transforms, plan):
        self.source, self.transforms, self.plan = source, _per_view(transforms), plan.cpu().numpy()

    def __len__(self):
        return self.plan.shape[0]

    def __getitem__(self, row):
        return [self.transforms[v % len(self.transforms)](self.source.image(int(i)))
                for v, i in enumerate(self.plan[row])], row


class EvalDataset(Dataset):
    """Yields ``(image, index)`` with a deterministic evaluation transform."""

    def __init__(self, source, transform):
        self.source, self.transform = source, transform

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return self.transform(self.source.image(i)), i
