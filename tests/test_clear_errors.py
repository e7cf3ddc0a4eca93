"""Nothing silently wrong, and one line instead of a traceback (issue 18 §3-§4): every bad value, file or
argument below ends with exit 2 and one ``invaspread: error:`` line (or a refused config), never a result."""

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import noise_image, write_imagefolder_archive
from invaspread.cli import main
from invaspread.config import ConfigError, load_config
from invaspread.data.sources import DataError, read_imagefolder_archive

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("setting, message", [
    ("eval.knn_temperature=1e-320", "expected a temperature >= 1e-06"),
    ("method.invaspread.temperature=1e-9", "expected a temperature >= 1e-06"),
    ("eval.recall_ks=[0,-5,1]", "expected a non-empty list of K >= 1"),
    ("eval.recall_ks=[]", "expected a non-empty list of K >= 1"),
    ("optim.decay_factors=[-1.0]", "expected positive lr multipliers"),
    ("optim.decay_epochs=[-3]", "expected epoch numbers >= 0"),
    ("data.subset_per_class=0", "expected null"),
    ("data.subset_per_class=-1", "expected null"),
    ("data.test_subset_per_class=0", "expected null"),
    ("data.test_subset_per_class=-1", "expected null"),
    ("model.pool_window=-1", "expected null"),
    ("train.device=meta", "expected auto, cpu, cuda or cuda:N"),
    ("train.eval_every=-2", "expected 0"),
])
def test_every_out_of_range_value_is_refused_by_name(setting, message):
    overrides = [setting] + (["optim.decay_epochs=[5]"] if setting.startswith("optim.decay_factors") else [])
    if setting.startswith("optim.decay_epochs"):
        overrides.append("optim.decay_factors=[0.1]")
    with pytest.raises(ConfigError, match=re.escape(setting.split("=")[0]) + ".*" + re.escape(message)):
        load_config(None, overrides)


def test_resume_with_a_meta_device_is_refused_and_the_checkpoint_untouched(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run), "--set", "train.device=meta"]) == 2
    assert main(["eval", str(run), "--device", "meta"]) == 2
    assert (run / "last.pt").read_bytes() == before


@pytest.mark.parametrize("content", [b"? [a, b]\n: 1\n", b"train:\n  epochs: \xff\xfe\n", b"train: {[1]: 2}\n"])
def test_a_yaml_config_with_unhashable_keys_or_other_bytes_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.yaml" in err


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "invaspread", *argv], capture_output=True, text=True, timeout=120)


def one_line(result, contains=""):
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert contains in result.stderr


def test_index_and_search_arguments_out_of_range(tiny_run, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        noise_image(i).save(images / f"{i}.png")
    base = ["index", str(tiny_run), "--images", str(images)]
    for extra, message in ((["--ivf", "-1"], "--ivf -1"), (["--workers", "-1"], "--workers -1"),
                           (["--batch-size", "0"], "--batch-size 0")):
        capsys.readouterr()
        assert main(base + ["--out", str(tmp_path / "x.index")] + extra) == 2
        assert message in capsys.readouterr().err
    pytest.importorskip("faiss")
    assert main(base + ["--out", str(tmp_path / "ivf.index"), "--ivf", "10"]) == 2       # 10 lists, 3 images
    assert "more inverted lists than the 3 images" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["imgs"]                                       # nothing built
    assert main(base + ["--out", str(tmp_path / "ok.index")]) == 0
    for nprobe in ("0", "-1"):
        capsys.readouterr()
        assert main(["search", str(tmp_path / "ok.index"), str(images / "0.png"), "--nprobe", nprobe]) == 2
        assert f"--nprobe {nprobe}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "table", "report", "embed", "index"])
@pytest.mark.parametrize("where", ["a file", "under /proc", "a name over 255 bytes"])
def test_an_impossible_out_is_one_line_before_any_work(command, where, tiny_run, tmp_path):
    out = {"a file": tmp_path / "file.txt", "under /proc": Path("/proc/invaspread-out/x"),
           "a name over 255 bytes": tmp_path / ("n" * 300)}[where]
    if where == "a file":
        out.write_text("the user's")
    if command == "embed" and where == "a file":
        pytest.skip("embed writes a file: an existing one is refused (test_never_overwrite)")
    argv = {"train": ["train", "--epochs", "1", "--out", str(out)],
            "table": ["table", "8", "--data-dir", str(tmp_path / "c.tar.gz"), "--out", str(out)],
            "report": ["report", str(tiny_run), "--out", str(out)],
            "embed": ["embed", str(tiny_run), "--images", str(tmp_path), "--out", str(out)],
            "index": ["index", str(tiny_run), "--images", str(tmp_path), "--out", str(out)]}[command]
    one_line(run_cli(*argv))
    if where == "a file":
        assert out.read_text() == "the user's"


def test_a_table_record_set_aside_beside_a_row_does_not_break_report(tmp_path):
    from invaspread.report.page import table_membership

    run = tmp_path / "hard"
    run.mkdir()
    (tmp_path / "table8-old.json").write_text("{}")
    (tmp_path / "table8.json").write_text('{"hard": {"status": "done"}}')
    assert [(t, r) for t, r, _ in table_membership(run)] == [(8, "Hard")]


def test_a_file_name_that_is_not_utf8_is_printed_by_search(tiny_run, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    name = os.fsdecode(b"caf\xe9.png")      # Latin-1 bytes: not UTF-8
    noise_image(3).save(images / name)
    noise_image(4).save(images / "b.png")
    assert main(["index", str(tiny_run), "--images", str(images), "--out", str(tmp_path / "i"), "--backend",
                 "torch"]) == 0
    result = run_cli("search", str(tmp_path / "i"), str(images / "b.png"), "-k", "2")
    assert result.returncode == 0 and "caf\\xe9.png" in result.stdout, result.stderr
    result = run_cli("search", str(tmp_path / "i"), str(images / "b.png"), "-k", "2", "--json")
    assert result.returncode == 0 and "caf\\udce9.png" in result.stdout


def test_resuming_a_memory_bank_run_on_data_of_another_size_says_which_sizes(tmp_path):
    from invaspread.engine.trainer import fit

    sets = ["data.subset_per_class=4", "data.num_workers=0", "model.width=8", "train.batch_size=16",
            "train.progress=false", "train.eval_every=0", "method.name=npsoftmax"]
    run = tmp_path / "run"
    fit(load_config(None, sets + ["train.epochs=1"]), run, log=lambda _: None)
    import torch

    from invaspread.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(run)
    key = next(k for k in state["method"] if k.endswith("features"))
    state["method"][key] = torch.zeros(55, state["method"][key].shape[1])   # the memory bank of another data set
    save_checkpoint(state, run / "last.pt")
    one_line(run_cli("train", "--resume", str(run), "--epochs", "2"), f"{key} (55, 128) in the checkpoint, (40, 128) now")


def test_a_resume_under_another_number_of_processes_is_recorded(tmp_path):
    import json

    from invaspread.engine.checkpoint import load_checkpoint, save_checkpoint
    from invaspread.engine.trainer import fit

    sets = ["data.subset_per_class=4", "data.num_workers=0", "model.width=8", "train.batch_size=16",
            "train.progress=false", "train.eval_every=0"]
    run = tmp_path / "run"
    fit(load_config(None, sets + ["train.epochs=1"]), run, log=lambda _: None)
    state = load_checkpoint(run)
    assert state["world_size"] == 1
    state["world_size"] = 2   # as torchrun --nproc-per-node 2 would have written it
    save_checkpoint(state, run / "last.pt")
    fit(None, run, resume=True, overrides=["train.epochs=2"], log=lambda _: None)
    lines = [json.loads(line) for line in (run / "overrides.jsonl").read_text().splitlines()]
    assert lines[-1]["processes"] == {"before": 2, "now": 1}
    assert load_checkpoint(run)["epoch"] == 2 and load_checkpoint(run)["world_size"] == 1


def test_config_piped_into_head_ends_quietly():
    result = subprocess.run(f"{sys.executable} -m invaspread config cifar10 | head -2", shell=True,
                            capture_output=True, text=True, timeout=60)
    assert len(result.stdout.splitlines()) == 2 and result.stderr == ""


def test_interrupting_index_says_what_index_leaves(tiny_run, tmp_path, monkeypatch, capsys):
    from invaspread.search import index as index_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "_build", interrupted)
    images = tmp_path / "imgs"
    images.mkdir()
    noise_image(0).save(images / "a.png")
    assert main(["index", str(tiny_run), "--images", str(images), "--out", str(tmp_path / "i")]) == 130
    err = capsys.readouterr().err
    assert "last.pt" not in err and "no index was written" in err
    assert sorted(os.listdir(tmp_path)) == ["imgs"]


@pytest.mark.parametrize("kind", ["zip", "text", "truncated"])
def test_an_archive_that_is_not_a_tar_gz_is_one_line(tmp_path, kind):
    path = tmp_path / "cifar10.tar.gz"
    if kind == "zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("train/a/0.jpg", b"x")
    elif kind == "text":
        path.write_text("hello\n" * 100)
    else:
        write_imagefolder_archive(tmp_path / "full.tar.gz", {"train": [3, 3], "test": [2, 2]})
        path.write_bytes((tmp_path / "full.tar.gz").read_bytes()[:300])
    with pytest.raises(DataError, match="cannot read archive") as info:
        read_imagefolder_archive(path, ["train", "test"], cache_dir=str(tmp_path / "cache"))
    assert "\n" not in str(info.value)


def test_an_archive_whose_test_classes_are_not_trained_is_refused(tmp_path):
    from invaspread.data.datasets import build_data

    archive = write_imagefolder_archive(tmp_path / "c.tar.gz", {"train": [3, 3, 0], "test": [2, 2, 2]})
    cfg = load_config(None, [f"data.root={archive}", "data.name=cifar10", f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(DataError, match="test class\\(es\\) c2 have no training images"):
        build_data(cfg.data, progress=False)


def test_archive_memory_is_bounded_in_total_and_by_image_size(tmp_path, monkeypatch):
    from invaspread.data import sources

    archive = write_imagefolder_archive(tmp_path / "c.tar.gz", {"train": [3, 3], "test": [2, 2]})
    monkeypatch.setattr(sources, "ARCHIVE_MEMORY_LIMIT", 5 * 32 * 32 * 3)   # five decoded images
    with pytest.raises(DataError, match="decode to more than"):
        read_imagefolder_archive(archive, ["train", "test"], cache_dir=str(tmp_path / "cache"))
    monkeypatch.undo()
    odd = tmp_path / "odd.tar.gz"
    with tarfile.open(odd, "w:gz") as tar:
        for i, size in enumerate([(32, 32), (64, 48)]):
            buf = io.BytesIO()
            noise_image(i, size).save(buf, format="PNG")
            info = tarfile.TarInfo(f"train/a/{i}.png")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    with pytest.raises(DataError, match="train/a/1.png is 64x48 but train/a/0.png is 32x32"):
        read_imagefolder_archive(odd, ["train"], cache_dir=str(tmp_path / "cache"))


def test_messages_count_and_point_at_what_exists(capsys):
    from invaspread.config import describe

    assert main(["config", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "config nonexistent: no such file" in err and "--config" not in err
    readme = (REPO / "README.md").read_text()
    headings = set(re.findall(r"^#+ (.+)$", readme, re.M))
    pointers = [m for _, _, meaning in describe(load_config()) for m in re.findall(r'README "([^"]+)"', meaning)]
    assert pointers and all(p in headings for p in pointers), pointers


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefgh", "bcdefghi")) + \
    "train:\n  epochs: *i\n"


@pytest.mark.parametrize("case", ["alias bomb", "10 MB value", "10 MB key"])
def test_an_error_message_is_bounded_whatever_the_value(case, tmp_path, capsys):
    """A YAML of nested aliases (9^9 leaves, a few hundred bytes) and 10 MB values: the error is one short line."""
    import time

    if case == "alias bomb":
        path = tmp_path / "bomb.yaml"
        path.write_text(BOMB)
        args = ["config", str(path)]
    else:
        big = "x" * 10_000_000
        args = ["config", "--set", f"data.name={big}" if case == "10 MB value" else f"data.{big}=1"]
    start = time.perf_counter()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err) < 1000 and err.count("\n") == 1, err[:2000]
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("scales, bad", [("[0.01]", "0.01"), ("[1.0, 0.05]", "0.05")])
def test_rmac_scales_too_small_for_the_images_are_one_line_before_any_work(scales, bad, tmp_path):
    from invaspread.engine.trainer import fit

    cfg = load_config(None, ["model.width=8", "data.image_size=16", "data.subset_per_class=8", "data.num_workers=0",
                             "train.batch_size=16", "train.epochs=1", "method.name=mom", "method.mom.features=rmac",
                             f"method.mom.rmac_scales={scales}", "train.progress=false"])
    with pytest.raises(ConfigError, match=rf"method.mom.rmac_scales=.*: scale {bad} turns the 16-pixel images .* too "
                                          rf"small for model.arch=resnet18_cifar"):
        fit(cfg, tmp_path / "run", log=lambda s: None)
    assert not (tmp_path / "run").exists()
