"""A user's own folder (issue 18 §1): one rule for which images a folder holds, the same count in train, eval,
embed and index; labels only from the ImageFolder layout; eval.protocol checked before training; EXIF
orientation applied everywhere; the README's own-images block runs as written; report of an unlabelled run."""

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import noise_image, write_image_folder, write_mixed_folder
from invaspread.cli import main
from invaspread.config import ConfigError, load_config
from invaspread.data.datasets import build_data
from invaspread.data.sources import DataError, FileImages, read_imagefolder_archive, scan_image_folder
from invaspread.engine.trainer import fit
from invaspread.search.index import SearchIndex, collection_files

REPO = Path(__file__).resolve().parents[1]
QUICK = ["model.width=8", "data.num_workers=0", "train.progress=false", "train.batch_size=4", "eval.knn_k=3"]


def on_disk(root: Path):
    """Independent reference: every non-hidden image file under root, by os.walk."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(folder, f) for f in files
                  if not f.startswith(".") and f.lower().endswith((".png", ".jpg", ".jpeg"))]
    return sorted(found)


def test_a_mixed_folder_loses_no_image_in_any_command_and_says_why_it_is_unlabelled(tmp_path, tiny_run, capsys):
    photos = write_mixed_folder(tmp_path / "photos")
    want = on_disk(photos)
    assert len(want) == 15
    source = scan_image_folder(photos)
    assert sorted(source.paths) == want and source.labels is None
    note = capsys.readouterr().err
    assert re.search(r"photos: 6 images at the top level \(e\.g\. img00\.png\): labels not used \(15 unlabelled", note)

    cfg = load_config(None, QUICK + ["data.name=image_folder", f"data.root={photos}"])
    assert len(build_data(cfg.data, progress=False).train) == 15                        # train / eval
    assert sorted(collection_files(photos)) == want                                     # index
    assert main(["embed", str(tiny_run), "--images", str(photos), "--out", str(tmp_path / "e.npz")]) == 0
    assert sorted(np.load(tmp_path / "e.npz")["paths"]) == want                         # embed
    assert main(["index", str(tiny_run), "--images", str(photos), "--out", str(tmp_path / "p.index"),
                 "--backend", "torch"]) == 0
    assert sorted(SearchIndex(tmp_path / "p.index").paths) == want


def test_labels_only_when_every_image_is_directly_in_a_first_level_class_folder(tmp_path, capsys):
    root = write_image_folder(tmp_path / "labelled", [2, 3])
    src = scan_image_folder(root)
    assert src.classes == ["class_0", "class_1"] and list(src.labels) == [0, 0, 1, 1, 1]
    (root / "class_1" / "deeper").mkdir()
    noise_image(5).save(root / "class_1" / "deeper" / "x.png")
    capsys.readouterr()
    src = scan_image_folder(root)
    assert len(src) == 6 and src.labels is None
    assert "1 image in nested folders (e.g. class_1/deeper/x.png): labels not used" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"<class>/ sub-folders only .* 1 image in nested folders"):
        scan_image_folder(root, labelled=True)
    flat = tmp_path / "flat"
    flat.mkdir()
    noise_image(1).save(flat / "a.png")
    assert scan_image_folder(flat).labels is None and capsys.readouterr().err == ""   # nothing to explain


def test_eval_protocol_is_checked_before_training_and_leaves_no_folder(tmp_path):
    photos = write_mixed_folder(tmp_path / "photos")
    test = write_image_folder(tmp_path / "test", [2, 2])
    base = QUICK + ["data.name=image_folder", f"data.root={photos}", "train.epochs=1"]
    with pytest.raises(ConfigError, match="eval.protocol=knn needs labelled training images"):
        fit(load_config(None, base + [f"data.test_root={test}", "eval.protocol=knn"]), tmp_path / "r1", log=print)
    with pytest.raises(ConfigError, match="eval.protocol=retrieval: data.name=image_folder has no labelled test"):
        fit(load_config(None, base + ["eval.protocol=retrieval"]), tmp_path / "r2", log=print)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    with pytest.raises(ConfigError, match="eval.protocol='sometimes': expected one of auto"):
        load_config(None, ["eval.protocol=sometimes"])
    auto = fit(load_config(None, base + [f"data.test_root={test}"]), tmp_path / "r3", log=lambda _: None)
    assert "recall@1" in auto and "nmi" in auto and "knn_top1" not in auto
    none = fit(load_config(None, base + [f"data.test_root={test}", "eval.protocol=none"]), tmp_path / "r4",
               log=lambda _: None)
    assert not any(k.startswith(("recall", "knn", "nmi")) for k in none)


def exif_rotated(path: Path, stored: np.ndarray, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif)


def test_exif_orientation_is_applied_by_every_reader(tmp_path, tiny_run):
    stored = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)   # 30 wide, 20 high
    upright = np.rot90(stored, k=-1)    # orientation 6: the viewer turns it 90 degrees clockwise
    folder = tmp_path / "phone"
    folder.mkdir()
    exif_rotated(folder / "photo.png", stored)
    assert np.array_equal(np.asarray(FileImages([str(folder / "photo.png")]).image(0)), upright)
    import io
    import tarfile

    archive = tmp_path / "phone.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for split in ("train", "test"):
            data = (folder / "photo.png").read_bytes()
            info = tarfile.TarInfo(f"{split}/c0/photo.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    decoded = read_imagefolder_archive(archive, ["train", "test"], cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(decoded["train"].images[0], upright)
    # index and search embed the upright image: a plain copy of the upright pixels is found at similarity 1
    Image.fromarray(upright).save(folder / "upright.png")
    assert main(["index", str(tiny_run), "--images", str(folder), "--out", str(tmp_path / "i"), "--backend",
                 "torch"]) == 0
    index = SearchIndex(tmp_path / "i")
    np.testing.assert_allclose(index.embeddings[0], index.embeddings[1], atol=1e-6)
    scores, _ = index.search(index.embed([str(folder / "photo.png")]), 2)
    np.testing.assert_allclose(scores[0], 1.0, atol=1e-5)


def readme_block(heading: str) -> list:
    """The commands of the first bash block under ``heading`` in README.md (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")].replace("\\\n", " ")
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_own_images_block_runs_as_written(tmp_path, monkeypatch, capsys):
    """Each command of README "Train on your own images", with ~ expanded to a generated home as a shell would;
    the training alone is shortened (one epoch, a narrow network, small batches) to fit a test."""
    home = tmp_path / "home"
    write_mixed_folder(home / "photos")
    noise_image(77).save(home / "photos" / "beach.jpg")
    write_image_folder(home / "photos_test", [3, 3], size=(32, 32))
    monkeypatch.chdir(tmp_path)
    commands = readme_block("## Train on your own images")
    assert [c.split()[1] for c in commands] == ["train", "eval", "embed", "index", "search"]
    for command in commands:
        argv = shlex.split(command.replace("~/", f"{home}/"))[1:]
        if argv[0] == "train":   # (model.width is not shortened: resnet18 has fixed widths, and refuses it)
            argv += ["--epochs", "1", "--set", "train.batch_size=4", "--set", "data.num_workers=0", "--set",
                     "train.progress=false"]
        assert main(argv) == 0, command
    out = capsys.readouterr().out
    assert "recall@1" in out and "16 images" in out
    query, first = out.splitlines()[-6:-4]   # search: the query, then its 5 neighbours, itself first
    assert query.endswith("beach.jpg") and first.split()[1:] == ["1.0000", query]


def test_report_of_an_unlabelled_run_plots_its_loss_and_says_its_epoch(tmp_path):
    from invaspread.report import figures
    from invaspread.report.page import write_report

    photos = write_mixed_folder(tmp_path / "photos")
    run = tmp_path / "run"
    fit(load_config(None, QUICK + ["data.name=image_folder", f"data.root={photos}", "train.epochs=2"]), run,
        log=lambda _: None)
    curve = figures.learning_curve(figures.read_metrics(run))
    assert curve["metric"] == "loss" and curve["epoch"] == [1, 2] and all(np.isfinite(curve["value"]))
    page = write_report([run], tmp_path / "site", log=lambda _: None).read_text()
    assert "epoch 2 of 2" in page and "epoch ?" not in page and ">loss<" in page


def test_an_unreadable_image_is_skipped_counted_and_named_the_same_way_by_every_command(tmp_path, tiny_run, capsys):
    """A real folder has a corrupt file: train, embed and index leave it out, say so in one line (the first names,
    the count) and list all of them (RUN/unreadable.txt, the npz's 'skipped', the index's meta.json);
    data.unreadable=error makes it an error naming it, before a run folder exists."""
    import json

    folder = tmp_path / "photos"
    write_image_folder(folder, [6, 6], size=(16, 16))
    (folder / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "class_0" / "notes.txt").write_text("not an image, not counted")
    sets = ["--set", "data.name=image_folder", "--set", "model.width=8", "--set", "data.num_workers=0",
            "--set", "train.batch_size=4", "--set", "eval.knn_k=3", "--set", "train.progress=false"]
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(folder), "--epochs", "1", "--out", str(run), *sets]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "unreadable" in line]
    assert len(said) == 1 and "skipped 1 unreadable image" in said[0] and "broken.jpg" in said[0], err
    assert (run / "unreadable.txt").read_text().startswith(str(folder / "class_1" / "broken.jpg") + "\t")
    assert main(["embed", str(run), "--images", str(folder), "--out", str(tmp_path / "e.npz")]) == 0
    saved = np.load(tmp_path / "e.npz")
    assert list(saved["skipped"]) == [str(folder / "class_1" / "broken.jpg")] and len(saved["paths"]) == 12
    assert main(["index", str(run), "--images", str(folder), "--out", str(tmp_path / "p.index")]) == 0
    out = capsys.readouterr()
    # one line each names it (embed's, index's); their summaries only count it
    assert sum("broken.jpg" in line for line in out.err.splitlines() + out.out.splitlines()) == 2, out
    meta = json.loads((tmp_path / "p.index" / "meta.json").read_text())
    assert [s["path"] for s in meta["skipped"]] == [str(folder / "class_1" / "broken.jpg")] and meta["count"] == 12
    strict = tmp_path / "strict"
    assert main(["train", "--data-dir", str(folder), "--epochs", "1", "--out", str(strict), *sets,
                 "--set", "data.unreadable=error"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 of 13 files" in err and "broken.jpg" in err and "data.unreadable=error" in err and not strict.exists()
