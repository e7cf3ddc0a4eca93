"""STL-10, CUB-200-2011, Cars196 and Stanford Online Products read from fixtures in their real layouts."""

import numpy as np
import pytest
from scipy.io import savemat

from conftest import coloured_image
from invaspread.config import DataConfig
from invaspread.data.datasets import build_data
from invaspread.data.sources import DataError


def write_stl10(root, n_train=6, n_test=4, n_unlabeled=5):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        hwc = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        hwc[:, 0, 5, 0] = 255  # a marker pixel at row 0, column 5 of the red channel
        # stored column-major per channel: N x C x W x H
        hwc.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    return root


def test_stl10_binary_layout_splits_and_orientation(tmp_path):
    root = write_stl10(tmp_path)
    b = build_data(DataConfig(name="stl10", root=str(root), image_size=96), progress=False)
    assert b.train.images.shape == (6, 96, 96, 3) and len(b.query) == 4
    assert list(b.bank.labels) == [0, 1, 2, 3, 4, 5]
    assert (b.train.images[:, 0, 5, 0] == 255).all()
    b = build_data(DataConfig(name="stl10", root=str(root / "stl10_binary"), stl10_split="train+unlabeled",
                              image_size=96), progress=False)
    assert len(b.train) == 11 and b.train.labels is None and len(b.bank) == 6


def write_cub(root, per_class=2, classes=200):
    base = root / "CUB_200_2011"
    lines, label_lines = [], []
    k = 1
    for c in range(1, classes + 1):
        d = base / "images" / f"{c:03d}.Bird_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            coloured_image(c % 10, i, (8, 6)).save(d / f"img_{i}.jpg")
            lines.append(f"{k} {c:03d}.Bird_{c}/img_{i}.jpg")
            label_lines.append(f"{k} {c}")
            k += 1
    (base / "images.txt").write_text("\n".join(lines) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(label_lines) + "\n")
    return root


def test_cub200_splits_by_class(tmp_path):
    b = build_data(DataConfig(name="cub200", root=str(write_cub(tmp_path)), in_memory=False), progress=False)
    assert len(b.train) == 200 and len(b.query) == 200 and b.setting == "unseen"
    assert len(set(b.query.labels)) == 100 and b.query.labels.min() == 0
    assert b.train.paths[0].endswith("001.Bird_1/img_0.jpg") and b.train.paths[-1].endswith("100.Bird_100/img_1.jpg")
    assert list(b.train.labels[:4]) == [0, 0, 1, 1]
    assert b.query.paths[0].endswith("101.Bird_101/img_0.jpg")


def write_cars_annos(root, per_class=1):
    (root / "car_ims").mkdir(parents=True)
    paths, classes, test = [], [], []
    k = 1
    for c in range(1, 197):
        for i in range(per_class):
            name = f"car_ims/{k:06d}.jpg"
            coloured_image(c % 10, i, (8, 6)).save(root / name)
            paths.append(name)
            classes.append(c)
            test.append(k % 2)  # the mat's own train/test flag is ignored by the class split
            k += 1
    rec = np.zeros(len(paths), dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    rec["relative_im_path"], rec["class"], rec["test"] = paths, classes, test
    savemat(root / "cars_annos.mat", {"annotations": rec})
    return root


def test_cars196_annos_mat_splits_by_class(tmp_path):
    b = build_data(DataConfig(name="cars196", root=str(write_cars_annos(tmp_path, per_class=2)),
                                  in_memory=False), progress=False)
    assert len(b.train) == 98 * 2 and len(b.query) == 98 * 2
    assert b.query.paths[0].endswith(f"{98 * 2 + 1:06d}.jpg")


def test_cars196_torchvision_layout(tmp_path):
    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    for folder, mat, offset in (("cars_train", "devkit/cars_train_annos.mat", 0),
                                ("cars_test", "cars_test_annos_withlabels.mat", 1)):
        (base / folder).mkdir()
        names = [f"{c:05d}.jpg" for c in range(1, 197)]
        for n in names:
            coloured_image(1, offset, (8, 6)).save(base / folder / n)
        rec = np.zeros(196, dtype=[("fname", "O"), ("class", "O")])
        rec["fname"], rec["class"] = names, list(range(1, 197))
        savemat(base / mat, {"annotations": rec})
    b = build_data(DataConfig(name="cars196", root=str(tmp_path)), progress=False)
    assert len(b.train) == 2 * 98 and len(b.query) == 2 * 98


def test_sop_text_files(tmp_path):
    base = tmp_path / "Stanford_Online_Products"
    for name, classes in (("Ebay_train.txt", range(1, 4)), ("Ebay_test.txt", range(11319, 11322))):
        rows = ["image_id class_id super_class_id path"]
        for k, c in enumerate(classes):
            for i in range(2):
                rel = f"bicycle_final/{c}_{i}.JPG"
                (base / "bicycle_final").mkdir(parents=True, exist_ok=True)
                coloured_image(c % 10, i, (8, 6)).save(base / rel, format="JPEG")
                rows.append(f"{k * 2 + i + 1} {c} 1 {rel}")
        (base / name).write_text("\n".join(rows) + "\n")
    b = build_data(DataConfig(name="sop", root=str(tmp_path)), progress=False)
    assert len(b.train) == 6 and len(b.query) == 6
    assert list(b.query.labels) == [0, 0, 1, 1, 2, 2]
    assert b.query.image(0).size == (8, 6)


def test_missing_benchmark_files_are_clear_errors(tmp_path):
    for name, marker in (("cub200", "images.txt"), ("sop", "Ebay_train.txt"), ("stl10", "train_X.bin")):
        with pytest.raises(DataError, match=marker):
            build_data(DataConfig(name=name, root=str(tmp_path)), progress=False)
