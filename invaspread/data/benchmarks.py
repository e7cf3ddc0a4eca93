"""The paper's benchmark data sets, read from their original archive layouts.

* STL-10 (``stl10_binary/``, also torchvision's layout): train 5K labelled, test 8K, unlabeled 100K.
* CUB-200-2011 (``CUB_200_2011/images.txt``, ``image_class_labels.txt``, ``images/``): classes
  1-100 (5,864 images) train, 101-200 (5,924) test.
* Cars196 (``cars_annos.mat`` + ``car_ims/``, or torchvision's ``devkit/`` layout): classes 1-98
  (8,054) train, 99-196 (8,131) test.
* Stanford Online Products (``Stanford_Online_Products/Ebay_train.txt``, ``Ebay_test.txt``):
  59,551 train images of 11,318 classes, 60,502 test images of 11,316 classes.

No label is used for training; the unseen-category sets evaluate within their test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .bundle import DataBundle, subset_per_class
from .sources import ArrayImages, DataError, FileImages, maybe_to_memory


def _locate(root, marker: str, folders=()) -> Path:
    """The folder under ``root`` (root itself or one of ``folders``) that contains ``marker``."""
    if root is None:
        raise DataError(f"data.root is not set: point it at the folder holding {marker}")
    root = Path(root).expanduser()
    for base in [root] + [root / f for f in folders]:
        if (base / marker).exists():
            return base
    raise DataError(f"data.root={root}: {marker} not found there" +
                    (f" nor in {', '.join(folders)}/" if folders else ""))


def _relabel(labels) -> np.ndarray:
    return np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)


# --- STL-10 -------------------------------------------------------------------------------------------


def read_stl10_split(folder: Path, split: str) -> ArrayImages:
    """``{split}_X.bin``: N x 3 x 96 x 96 uint8 stored column-major; ``{split}_y.bin``: labels 1..10."""
    x_path = folder / f"{split}_X.bin"
    if not x_path.is_file():
        raise DataError(f"STL-10 file {x_path} is missing")
    raw = np.fromfile(x_path, dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise DataError(f"{x_path} has {raw.size} bytes, not a multiple of one 3x96x96 image")
    images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))  # -> N, H, W, C
    labels = None
    y_path = folder / f"{split}_y.bin"
    if y_path.is_file():
        labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
        if len(labels) != len(images):
            raise DataError(f"{y_path} has {len(labels)} labels for {len(images)} images")
    names = folder / "class_names.txt"
    classes = names.read_text().split() if names.is_file() else None
    return ArrayImages(images, labels, classes)


# data.stl10_split: the labelled 5,000, or with the 100,000 unlabelled images (Table 2's "105K")
STL10_SPLITS = ("train", "train+unlabeled")


def _stl10(cfg, progress):
    if cfg.download:
        from torchvision.datasets import STL10

        STL10(str(cfg.root), split="train", download=True)
    folder = _locate(cfg.root, "train_X.bin", ["stl10_binary"])
    train = subset_per_class(read_stl10_split(folder, "train"), cfg.subset_per_class)
    test = subset_per_class(read_stl10_split(folder, "test"), cfg.test_subset_per_class)
    source = train
    if cfg.stl10_split == "train+unlabeled":
        unlabeled = read_stl10_split(folder, "unlabeled")
        source = ArrayImages(np.concatenate([train.images, unlabeled.images]))
    return DataBundle(source, train, test, "seen")


# --- unseen-category fine-grained sets ----------------------------------------------------------------


def _split_by_class(paths, labels, first_test_class: int):
    labels = np.asarray(labels)
    train, test = labels < first_test_class, labels >= first_test_class
    return (FileImages([p for p, t in zip(paths, train) if t], _relabel(labels[train])),
            FileImages([p for p, t in zip(paths, test) if t], _relabel(labels[test])))


def read_cub200(root):
    """(train, test) FileImages of CUB-200-2011 split by class: 1-100 / 101-200."""
    base = _locate(root, "images.txt", ["CUB_200_2011"])
    ids_paths = dict(line.split() for line in (base / "images.txt").read_text().splitlines() if line.strip())
    ids_labels = dict(line.split() for line in (base / "image_class_labels.txt").read_text().splitlines()
                      if line.strip())
    order = sorted(ids_paths, key=int)
    paths = [str(base / "images" / ids_paths[i]) for i in order]
    return _split_by_class(paths, [int(ids_labels[i]) for i in order], 101)


def read_cars196(root):
    """(train, test) FileImages of Cars196 split by class: 1-98 / 99-196."""
    from scipy.io import loadmat

    root_path = Path(root).expanduser() if root else None
    try:
        base = _locate(root, "cars_annos.mat", ["stanford_cars", "CARS_196"])
        ann = loadmat(base / "cars_annos.mat", squeeze_me=True)["annotations"]
        paths = [str(base / str(p)) for p in np.atleast_1d(ann["relative_im_path"])]
        labels = np.atleast_1d(ann["class"]).astype(np.int64)
    except DataError:
        # torchvision's StanfordCars layout: devkit/ annotations + cars_train/ and cars_test/ images
        base = _locate(root_path, "devkit/cars_train_annos.mat", ["stanford_cars"])
        paths, labels = [], []
        for folder, mat in (("cars_train", "devkit/cars_train_annos.mat"),
                            ("cars_test", "cars_test_annos_withlabels.mat")):
            if not (base / mat).is_file():
                raise DataError(f"Cars196: {base / mat} is missing")
            ann = loadmat(base / mat, squeeze_me=True)["annotations"]
            paths += [str(base / folder / str(f)) for f in np.atleast_1d(ann["fname"])]
            labels += list(np.atleast_1d(ann["class"]).astype(np.int64))
    return _split_by_class(paths, labels, 99)


def read_sop(root):
    """(train, test) FileImages of Stanford Online Products from Ebay_train.txt / Ebay_test.txt."""
    base = _locate(root, "Ebay_train.txt", ["Stanford_Online_Products"])
    out = []
    for name in ("Ebay_train.txt", "Ebay_test.txt"):
        lines = (base / name).read_text().splitlines()
        if not lines or not lines[0].startswith("image_id"):
            raise DataError(f"{base / name}: expected a header line 'image_id class_id super_class_id path'")
        rows = [line.split() for line in lines[1:] if line.strip()]
        out.append(FileImages([str(base / r[3]) for r in rows], _relabel([int(r[1]) for r in rows])))
    return tuple(out)


def _unseen(reader):
    def load(cfg, progress):
        train, test = reader(cfg.root)
        train = maybe_to_memory(subset_per_class(train, cfg.subset_per_class), cfg.in_memory, progress)
        test = maybe_to_memory(subset_per_class(test, cfg.test_subset_per_class), cfg.in_memory, progress)
        # labels of the training split exist in the files but are never used (unsupervised)
        return DataBundle(train, None, test, "unseen")
    return load


# name -> function(data_config, progress) -> DataBundle, merged into ``datasets.DATASETS``
BENCHMARKS = {
    "stl10": _stl10,
    "cub200": _unseen(read_cub200),
    "cars196": _unseen(read_cars196),
    "sop": _unseen(read_sop),
}
