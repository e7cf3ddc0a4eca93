"""Data readers on fixtures written in the real layouts; transforms; the two-view dataset."""

import numpy as np
import pytest
import torch

from conftest import coloured_image, write_cifar10_python, write_image_folder, write_imagefolder_archive
from invaspread.config import AugmentConfig, DataConfig
from invaspread.data.bundle import PlannedViewsDataset, ViewsDataset
from invaspread.data.datasets import build_data
from invaspread.data.sources import (ArrayImages, DataError, first_per_class, read_imagefolder_archive,
                                     scan_image_folder)
from invaspread.data.eval_transform import eval_transform
from invaspread.data.transforms import train_transform


def mean_label(image) -> int:
    """coloured_image encodes the label as 20 * label (+ <5 noise) in every channel."""
    return int(round((np.asarray(image, dtype=float).mean() - 2) / 20))


def test_labelled_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "imgs", [3, 5, 2])
    src = scan_image_folder(root)
    assert len(src) == 10 and src.classes == ["class_0", "class_1", "class_2"]
    assert list(src.labels) == [0] * 3 + [1] * 5 + [2] * 2
    assert all(mean_label(src.image(i)) == src.labels[i] for i in range(len(src)))


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(4):
        coloured_image(1, i).save(tmp_path / f"{i}.jpg")
    src = scan_image_folder(tmp_path)
    assert len(src) == 4 and src.labels is None


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no images"):
        scan_image_folder(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")


def test_imagefolder_archive_reads_splits_subsets_and_caches(tmp_path):
    archive = write_imagefolder_archive(tmp_path / "toy.tar.gz", {"train": [4, 3], "test": [2, 2]}, prefix="toy/")
    out = read_imagefolder_archive(archive, ["train", "test"], {"train": 2}, cache_dir=tmp_path / "cache")
    assert out["train"].images.shape == (4, 32, 32, 3) and list(out["train"].labels) == [0, 0, 1, 1]
    assert out["test"].images.shape == (4, 32, 32, 3)
    assert [mean_label(out["test"].image(i)) for i in range(4)] == [0, 0, 1, 1]
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1
    again = read_imagefolder_archive(archive, ["train", "test"], {"train": 2}, cache_dir=tmp_path / "cache")
    assert np.array_equal(again["train"].images, out["train"].images)


def test_cifar10_from_python_batches(tmp_path):
    root = write_cifar10_python(tmp_path / "c10", per_batch=4)
    bundle = build_data(DataConfig(name="cifar10", root=str(root)), progress=False)
    assert len(bundle.train) == 20 and len(bundle.query) == 4
    assert bundle.train.images.shape == (20, 32, 32, 3)
    assert all(mean_label(bundle.train.image(i)) == bundle.train.labels[i] for i in range(20))
    assert bundle.bank is bundle.train and bundle.setting == "seen"


def test_cifar10_from_train_test_folders_and_archive_agree(tmp_path):
    folders = tmp_path / "folders"
    write_image_folder(folders / "train", [2, 2], fmt="png", size=(32, 32))
    write_image_folder(folders / "test", [1, 1], fmt="png", size=(32, 32))
    b = build_data(DataConfig(name="cifar10", root=str(folders)), progress=False)
    assert len(b.train) == 4 and len(b.query) == 2 and b.train.images.dtype == np.uint8

    archive_dir = tmp_path / "arch"
    archive_dir.mkdir()
    write_imagefolder_archive(archive_dir / "cifar10-jpeg.tar.gz", {"train": [3, 3], "test": [2, 2]})
    for root in (archive_dir, archive_dir / "cifar10-jpeg.tar.gz"):  # the folder or the file itself
        b = build_data(DataConfig(name="cifar10", root=str(root), cache_dir=str(tmp_path / "c"),
                                  subset_per_class=2), progress=False)
        assert len(b.train) == 4 and len(b.query) == 4


def test_cifar10_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        build_data(DataConfig(name="cifar10", root=str(tmp_path / "missing")), progress=False)
    with pytest.raises(DataError, match="--data-dir"):
        build_data(DataConfig(name="cifar10"), progress=False)


def test_unseen_cifar_split_uses_disjoint_classes(tmp_path):
    archive = write_imagefolder_archive(tmp_path / "a.tar.gz", {"train": [2] * 10, "test": [1] * 10})
    b = build_data(DataConfig(name="cifar10_unseen", root=str(archive), cache_dir=str(tmp_path)), progress=False)
    assert set(b.train.labels) == {0, 1, 2, 3, 4} and set(b.query.labels) == {5, 6, 7, 8, 9}
    assert b.bank is None and b.setting == "unseen"


def test_digits_default_runs_offline():
    b = build_data(DataConfig(name="digits", image_size=32), progress=False)
    assert b.train.images.shape[1:] == (32, 32, 3) and len(b.train) + len(b.query) == 1797
    assert set(b.train.labels) == set(range(10)) == set(b.query.labels)


def test_first_per_class_keeps_order():
    labels = np.array([1, 0, 1, 1, 0, 2, 0])
    assert list(first_per_class(labels, 2)) == [0, 1, 2, 4, 5]


def test_views_dataset_yields_independent_views_and_index():
    images = np.stack([np.asarray(coloured_image(i % 3, i, (32, 32))) for i in range(6)])
    transform = train_transform(AugmentConfig(), 32, (0.5,) * 3, (0.5,) * 3)
    ds = ViewsDataset(ArrayImages(images), transform)
    torch.manual_seed(0)
    (v1, v2), idx = ds[4]
    assert v1.shape == v2.shape == (3, 32, 32) and idx == 4
    assert not torch.equal(v1, v2)
    one, idx = ViewsDataset(ArrayImages(images), transform, views=1)[3]
    assert len(one) == 1 and idx == 3
    # a planned item draws its second view from another image (InvaSpread's neighbour positives); index = row
    plain = PlannedViewsDataset(ArrayImages(images), lambda img: torch.from_numpy(np.asarray(img).copy()),
                                torch.tensor([[0, 1], [4, 5]]))
    (first, second), row = plain[1]
    assert row == 1 and torch.equal(first, torch.from_numpy(images[4])) and torch.equal(second, torch.from_numpy(images[5]))
    # one transform per view (BYOL's asymmetric recipe): view v by transforms[v % len]
    per_view = [lambda img: "first", lambda img: "second"]
    assert ViewsDataset(ArrayImages(images), per_view, views=3)[2] == (["first", "second", "first"], 2)
    assert PlannedViewsDataset(ArrayImages(images), per_view, torch.tensor([[0, 1]]))[0] == (["first", "second"], 0)


def test_eval_transform_is_identity_plus_normalise_for_cifar_size():
    img = coloured_image(2, 0, (32, 32))
    t = eval_transform(AugmentConfig(), 32, (0.0,) * 3, (1.0,) * 3)
    expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(t(img), expected)
    assert torch.equal(t(img), t(img))  # deterministic


def test_finegrained_recipe_shapes():
    aug = AugmentConfig(recipe="finegrained")
    img = coloured_image(1, 0, (300, 280))
    assert train_transform(aug, 227, (0,) * 3, (1,) * 3, resize=256)(img).shape == (3, 227, 227)
    assert eval_transform(aug, 227, (0,) * 3, (1,) * 3, resize=256)(img).shape == (3, 227, 227)


class _Payload:
    """A planted 'batch' whose unpickling would create a file (a stand-in for os.system)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("planted", ["data_batch_3", "batches.meta"])
def test_planted_cifar_batch_cannot_run_code(tmp_path, planted):
    import pickle

    from invaspread.data.sources import DataError, load_cifar10_python

    root = write_cifar10_python(tmp_path / "c10", per_batch=2)
    marker = tmp_path / "pwned"
    with (root / "cifar-10-batches-py" / planted).open("wb") as fh:
        pickle.dump({"data": _Payload(str(marker)), "labels": [0, 1], "label_names": _Payload(str(marker))}, fh)
    with pytest.raises(DataError, match=f"{planted} is not a CIFAR-10 python batch.*refers to .*open"):
        load_cifar10_python(root, train=True)
    assert not marker.exists(), "the payload ran"
    # the genuine files (numpy arrays, lists, strings) still load
    root2 = write_cifar10_python(tmp_path / "ok", per_batch=3)
    train = load_cifar10_python(root2, train=True)
    assert train.images.shape == (15, 32, 32, 3) and train.classes[0] == "class0"


def test_test_root_labels_follow_the_training_class_names(tmp_path):
    """A test folder without class_1 keeps class_2's label as 2 (kNN against the training bank)."""
    import shutil

    train_root = write_image_folder(tmp_path / "train", [3, 3, 3])
    test_root = write_image_folder(tmp_path / "test", [2, 2, 2])
    shutil.rmtree(test_root / "class_1")
    cfg = DataConfig(name="image_folder", root=str(train_root), test_root=str(test_root), image_size=16)
    bundle = build_data(cfg, progress=False)
    assert list(bundle.query.labels) == [0, 0, 2, 2] and bundle.query.classes == bundle.train.classes
    (test_root / "class_9").mkdir()
    coloured_image(9, 0).save(test_root / "class_9" / "0.png")
    with pytest.raises(DataError, match="class_9 are not among the training classes"):
        build_data(cfg, progress=False)


def test_16_bit_and_float_images_keep_their_range(tmp_path):
    """PIL's convert('RGB') turns a 16-bit PNG white and a float TIFF black; ours rescales by the real range."""
    from PIL import Image

    ramp16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)    # 0 .. 63,000
    Image.fromarray(ramp16).save(tmp_path / "a16.png")
    ramp_f = (np.arange(64, dtype=np.float32).reshape(8, 8) / 63)                        # 0 .. 1
    Image.fromarray(ramp_f, mode="F").save(tmp_path / "b_float.tif")
    source = scan_image_folder(tmp_path)
    got16, got_f = (np.asarray(source.image(i)) for i in range(2))
    np.testing.assert_array_equal(got16[..., 0], np.rint(ramp16 / 257).astype(np.uint8))
    np.testing.assert_array_equal(got_f[..., 1], np.rint(ramp_f * 255).astype(np.uint8))
    assert got16.shape == (8, 8, 3) and got16[..., 0].max() == 245 and got_f[..., 2].max() == 255
    Image.fromarray(ramp_f * 40, mode="F").save(tmp_path / "c_hdr.tif")
    with pytest.raises(DataError, match="c_hdr.tif: a floating-point image with values outside 0..1"):
        scan_image_folder(tmp_path).image(2)


def test_corrupt_archive_member_is_named(tmp_path):
    import io
    import tarfile

    path = write_imagefolder_archive(tmp_path / "a.tar.gz", {"train": [2], "test": [1]})
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for m, data in members:
            if m.name.endswith("0001.jpg"):
                data = b"not a jpeg at all"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    with pytest.raises(DataError, match=r"member train/c0/0001.jpg is not a readable image") as info:
        read_imagefolder_archive(bad, ["train", "test"], cache_dir=str(tmp_path / "cache"))
    assert "BytesIO" not in str(info.value)   # the member's name, not PIL's name for its buffer
