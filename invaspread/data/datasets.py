"""Data sets by name (``DATASETS``, a plain dict) and ``build_data``.

Every loader returns a ``DataBundle``: the unlabelled training images, and for evaluation either a
labelled reference bank + queries (seen categories: kNN / linear probe) or queries alone (unseen
categories: Recall@K / NMI within the test set).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .benchmarks import BENCHMARKS
from .bundle import DataBundle, subset_per_class
from .sources import (DataError, load_cifar10_python, load_digits_images, maybe_to_memory,
                      read_imagefolder_archive, scan_image_folder)
from .transforms import normalisation


def _digits(cfg, progress):
    train, test = load_digits_images(cfg.image_size)
    train = subset_per_class(train, cfg.subset_per_class)
    return DataBundle(train, train, subset_per_class(test, cfg.test_subset_per_class), "seen")


def cifar10_splits(cfg, progress: bool = True):
    """(train, test) ArrayImages from whatever ``data.root`` holds, tried in this order: an archive
    file; a folder with ``train/`` and ``test/`` image folders; torchvision's ``cifar-10-batches-py``
    (or its parent); a folder with exactly one ``.tar.gz``; else a download when ``data.download``."""
    per_class = {"train": cfg.subset_per_class, "test": cfg.test_subset_per_class}
    if cfg.root is None:
        raise DataError("data.root is not set: give the CIFAR-10 location with --data-dir (a cifar-10-batches-py "
                        "parent folder, an image folder with train/ and test/, or cifar10-jpeg.tar.gz)")
    root = Path(cfg.root).expanduser()
    archives = sorted(root.glob("*.tar.gz")) + sorted(root.glob("*.tgz")) if root.is_dir() else []
    if root.name == "cifar-10-batches-py":
        root = root.parent
    if root.is_file() or (len(archives) == 1 and not (root / "train").is_dir()
                          and not (root / "cifar-10-batches-py").is_dir()):
        splits = read_imagefolder_archive(root if root.is_file() else archives[0], ["train", "test"], per_class,
                                          cfg.cache_dir, progress)
        return splits["train"], splits["test"]
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = (scan_image_folder(root / split, labelled=True, unreadable=cfg.unreadable)
                       for split in ("train", "test"))
        test.labels, test.classes = _labels_by_class_name(test, train.classes, root / "test"), train.classes
        skipped = train.skipped + test.skipped
        train, test = (maybe_to_memory(subset_per_class(source, per_class[split]),
                                       True if cfg.in_memory is None else cfg.in_memory, progress)
                       for split, source in (("train", train), ("test", test)))
        train.skipped = skipped   # read by _cifar10 into the bundle
        return train, test
    if not (root / "cifar-10-batches-py").is_dir() and not cfg.download:
        raise DataError(f"data.root={cfg.root}: found neither cifar-10-batches-py/, train/ and test/ folders, nor "
                        f"one .tar.gz archive; set data.download=true to download CIFAR-10 there")
    train = load_cifar10_python(root, True, cfg.download)
    test = load_cifar10_python(root, False, cfg.download)
    return subset_per_class(train, per_class["train"]), subset_per_class(test, per_class["test"])


def _cifar10(cfg, progress):
    train, test = cifar10_splits(cfg, progress)
    absent = sorted(set(np.unique(test.labels).tolist()) - set(np.unique(train.labels).tolist()))
    if absent:   # kNN could never predict them: every such query would count as wrong
        names = [test.classes[i] if test.classes else str(i) for i in absent]
        raise DataError(f"data.root={cfg.root}: test class(es) {', '.join(names)} have no training images; kNN "
                        f"evaluation needs every test class among the training classes")
    return DataBundle(train, train, test, "seen", skipped=getattr(train, "skipped", []))


def _cifar10_unseen(cfg, progress):
    """Offline stand-in for the unseen-category protocol: train on classes 0-4, test on 5-9."""
    train, test = cifar10_splits(cfg, progress)
    skipped = getattr(train, "skipped", [])
    train = train.subset(np.flatnonzero(train.labels < 5))
    test = test.subset(np.flatnonzero(test.labels >= 5))
    return DataBundle(train, None, test, "unseen", skipped=skipped)


def _image_folder(cfg, progress):
    if cfg.root is None:
        raise DataError("data.name=image_folder needs data.root (a folder of images, or of <class>/ sub-folders)")
    scanned = scan_image_folder(cfg.root, unreadable=cfg.unreadable)
    skipped = list(scanned.skipped)
    train = maybe_to_memory(subset_per_class(scanned, cfg.subset_per_class), cfg.in_memory, progress)
    bank = query = None
    if cfg.test_root is not None:
        query = scan_image_folder(cfg.test_root, labelled=True, unreadable=cfg.unreadable)
        skipped += query.skipped
        if train.labels is not None:
            bank = train
            query.labels = _labels_by_class_name(query, train.classes, cfg.test_root)
            query.classes = train.classes
        query = maybe_to_memory(subset_per_class(query, cfg.test_subset_per_class), cfg.in_memory, progress)
    return DataBundle(train, bank, query, "seen", skipped=skipped)


def _labels_by_class_name(query, train_classes, test_root):
    """The test folder's labels renumbered as the training folder's classes of the same name: each folder
    numbers its own sub-folders, so a test folder missing one class would otherwise shift every label."""
    index = {name: i for i, name in enumerate(train_classes)}
    unknown = sorted(set(query.classes) - set(index))
    if unknown:
        raise DataError(f"{test_root}: class folder(s) {', '.join(unknown)} are not among the training classes "
                        f"({', '.join(train_classes)}); kNN evaluation needs every test class among them")
    return np.asarray([index[query.classes[y]] for y in query.labels], dtype=np.int64)


# name -> function(data_config, progress) -> DataBundle
DATASETS = {
    "digits": _digits,
    "cifar10": _cifar10,
    "cifar10_unseen": _cifar10_unseen,
    "image_folder": _image_folder,
    **BENCHMARKS,  # stl10, cub200, cars196, sop
}


def build_data(cfg, progress: bool = True) -> DataBundle:
    if cfg.name not in DATASETS:
        raise DataError(f"data.name={cfg.name!r} is unknown; choose one of {sorted(DATASETS)}")
    bundle = DATASETS[cfg.name](cfg, progress)
    bundle.mean, bundle.std = normalisation(cfg)
    return bundle
