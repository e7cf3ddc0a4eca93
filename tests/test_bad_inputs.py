"""Bad files and a failing disk end in one line naming what is wrong (issue 11, one-line errors)."""

import errno

import numpy as np
import pytest
from PIL import Image

from conftest import write_image_folder
from invaspread.config import InvaspreadError, load_config
from invaspread.data.sources import DataError, FileImages, scan_image_folder
from invaspread.engine import reporter, trainer
from invaspread.engine.batches import CPUBatches


def test_unreadable_files_in_an_image_folder_are_all_reported_up_front(tmp_path):
    root = write_image_folder(tmp_path / "imgs", [3, 3])
    (root / "class_0" / "0001.png").write_bytes(b"")                       # empty
    (root / "class_1" / "0002.png").write_bytes(b"this is not a png")      # not an image
    with pytest.raises(DataError) as info:
        scan_image_folder(root)
    message = str(info.value)
    assert "\n" not in message and message.startswith("2 of 6 files under")
    assert "class_0/0001.png" in message and "class_1/0002.png" in message


def test_a_decompression_bomb_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", [2, 2])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)                     # every 12 x 10 image is now a bomb
    with pytest.raises(DataError, match=r"4 of 4 files .*class_0/0000.png .*decompression bomb"):
        scan_image_folder(root)
    with pytest.raises(DataError, match="cannot read image .*0000.png"):
        FileImages([str(root / "class_0" / "0000.png")]).image(0)


def test_an_image_that_fails_while_decoding_in_a_worker_is_one_line(tmp_path):
    """A truncated file passes the header check; the DataLoader worker's error reaches the user as the line
    that names the file, not the worker's traceback."""
    root = write_image_folder(tmp_path / "imgs", [4, 4], fmt="jpg", size=(64, 64))
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "class_0" / f"{i:04d}.jpg", quality=95)
    bad = root / "class_0" / "0002.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    source = scan_image_folder(root)
    cfg = load_config(None, ["data.image_size=32", "data.num_workers=1"])
    batches = CPUBatches(source, cfg.data, cfg.augment, (0.5,) * 3, (0.5,) * 3, 8, __import__("torch").device("cpu"))
    batches.num_workers = 1
    with pytest.raises(DataError) as info:
        for _ in batches.epoch(0, 1):
            pass
    message = str(info.value)
    assert "\n" not in message and "0002.jpg" in message and "Traceback" not in message


def test_a_full_disk_is_a_one_line_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    real = reporter.save_checkpoint

    def full_disk(state, path):
        if state["epoch"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(state, path)

    monkeypatch.setattr(reporter, "save_checkpoint", full_disk)
    cfg = load_config(None, ["data.subset_per_class=20", "data.num_workers=0", "model.width=8", "train.epochs=2",
                             "train.batch_size=32", "train.progress=false", "eval.knn_k=10"])
    with pytest.raises(InvaspreadError) as info:
        trainer.fit(cfg, tmp_path / "run", log=lambda s: None)
    message = str(info.value)
    assert "No space left on device" in message and "--resume" in message and "\n" not in message
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
