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


def test_unreadable_files_in_an_image_folder_are_all_found_up_front_and_skipped_or_refused(tmp_path):
    root = write_image_folder(tmp_path / "imgs", [3, 3])
    (root / "class_0" / "0001.png").write_bytes(b"")                       # empty
    (root / "class_1" / "0002.png").write_bytes(b"this is not a png")      # not an image
    said = []
    source = scan_image_folder(root, log=said.append)                      # data.unreadable=skip, the default
    assert len(source) == 4 and [p for p, _ in source.skipped] == [str(root / "class_0" / "0001.png"),
                                                                  str(root / "class_1" / "0002.png")]
    assert list(source.labels) == [0, 0, 1, 1] and str(root / "class_0" / "0001.png") not in source.paths
    assert len(said) == 1 and said[0].startswith(f"{root}: skipped 2 unreadable images: ")
    with pytest.raises(DataError) as info:
        scan_image_folder(root, unreadable="error")
    message = str(info.value)
    assert "\n" not in message and message.startswith("2 of 6 files under") and "data.unreadable=error" in message
    assert "class_0/0001.png" in message and "class_1/0002.png" in message


def test_a_decompression_bomb_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "imgs", [2, 2])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)                     # every 12 x 10 image is now a bomb
    with pytest.raises(DataError, match=r"none of the 4 image files .*class_0/0000.png .*decompression bomb"):
        scan_image_folder(root)
    with pytest.raises(DataError, match=r"4 of 4 files .*class_0/0000.png .*decompression bomb"):
        scan_image_folder(root, unreadable="error")
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


def test_a_checkpoint_that_does_not_fit_on_the_disk_names_the_file_and_the_previous_one_stays_resumable(
        tmp_path, monkeypatch):
    """What a real full disk does to ``torch.save`` ("unexpected pos", a RuntimeError): one line naming last.pt,
    the free and the needed bytes, and the epoch before stays whole and resumable."""
    import torch

    from invaspread.engine import checkpoint

    cfg = load_config(None, ["data.subset_per_class=20", "data.num_workers=0", "model.width=8", "train.epochs=2",
                             "train.batch_size=32", "train.progress=false", "eval.knn_k=10"])
    real_save = torch.save

    def full(obj, fh, *args, **kwargs):
        if obj["epoch"] >= 2:
            fh.write(b"x" * 100)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, fh, *args, **kwargs)

    class Stats:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(checkpoint.torch, "save", full)
    monkeypatch.setattr(checkpoint.os, "statvfs", lambda folder: Stats)
    with pytest.raises(InvaspreadError) as info:
        trainer.fit(cfg, tmp_path / "run", log=lambda s: None)
    message = str(info.value)
    assert "\n" not in message and f"{tmp_path / 'run' / 'last.pt'}" in message
    assert "No space left on device (0.0 MiB free, the checkpoint needs about" in message and "unchanged" in message
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")) == []
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(tmp_path / "run")["epoch"] == 1
    assert trainer.fit(None, tmp_path / "run", resume=True, log=lambda s: None)["epoch"] == 2


def test_embed_under_a_file_size_limit_is_one_line_naming_the_file(tiny_run, tmp_path):
    import resource
    import subprocess
    import sys

    from conftest import noise_image

    (tmp_path / "images").mkdir()
    for i in range(40):
        noise_image(i).save(tmp_path / "images" / f"{i}.png")
    out = tmp_path / "e.npz"
    done = subprocess.run([sys.executable, "-m", "invaspread", "embed", str(tiny_run), "--images",
                           str(tmp_path / "images"), "--out", str(out)], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)))
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "File too large" in line and "no embeddings file was written" in line, line
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
