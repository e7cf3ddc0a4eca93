"""No command deletes or replaces a file it did not create (issue 18 §2), and locks never hang (§3): cache clear
by the cache's signature, checkpoint rotation of the run's own files, report / embed / index / table outputs
published whole under locks, index files verified by search."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import noise_image, write_imagefolder_archive
from invaspread.cli import main
from invaspread.config import ConfigError, InvaspreadError, load_config
from invaspread.data.cache import entry_lock
from invaspread.data.sources import read_imagefolder_archive
from invaspread.engine.trainer import fit
from invaspread.locks import Lock

TINY = ["data.subset_per_class=20", "data.num_workers=0", "model.width=8", "model.embedding_dim=16",
        "train.batch_size=32", "train.progress=false", "eval.knn_k=10", "train.eval_every=0"]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_cache_clear_removes_only_the_caches_own_files(tmp_path, capsys):
    cache = tmp_path / "cache"
    archive = write_imagefolder_archive(tmp_path / "toy.tar.gz", {"train": [2, 2], "test": [1, 1]})
    read_imagefolder_archive(archive, ["train", "test"], cache_dir=str(cache))
    ours = sorted(p.name for p in cache.iterdir())
    assert len(ours) == 2 and any(n.endswith(".npz") for n in ours) and any(n.endswith(".lock") for n in ours)
    np.savez(cache / "embeddings.npz", embeddings=np.zeros((2, 3)))
    np.savez(cache / "my_results.npz", x=np.ones(3))
    np.savez(cache / "lookalike-0123456789abcdef.npz", x=np.ones(3))        # our name, not our content
    (cache / "poetry.lock").write_text("[[package]]\n")
    (cache / "notes-0123456789abcdef.lock").write_text("my own notes, not a lock holder line\n")
    (cache / ".x.tmp").write_text("someone's temp file")
    (cache / ".toy-0123456789abcdef.npz.abc123.tmp").write_text("a dead write of ours")
    theirs = {n: b for n, b in snapshot(cache).items() if n not in ours and not n.startswith(".toy")}
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "removed 3 cache files" in capsys.readouterr().out
    assert snapshot(cache) == theirs


def test_a_fifo_at_a_lock_name_is_refused_and_a_held_lock_names_its_holder(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / "toy-0123456789abcdef.npz"
    os.mkfifo(entry.with_suffix(".lock"))
    signal.alarm(20)   # the old code blocked forever opening the FIFO
    try:
        with pytest.raises(InvaspreadError, match="not a regular file"):
            with entry_lock(entry):
                pass
    finally:
        signal.alarm(0)
    os.unlink(entry.with_suffix(".lock"))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from invaspread.locks import Lock; "
                               f"Lock({str(entry.with_suffix('.lock'))!r}).acquire(); print('held', flush=True); "
                               "time.sleep(1.5)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said = []
    started = time.perf_counter()
    with entry_lock(entry, log=said.append):
        waited = time.perf_counter() - started
    holder.wait()
    assert len(said) == 1 and f"in use by pid {holder.pid} on" in said[0] and waited > 0.3


def test_checkpoint_rotation_removes_only_the_checkpoints_this_run_wrote(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("epoch-1.pt", "epoch-1-final.pt", "notes.txt"):
        (folder / name).write_text(f"the user's {name}")
    before = snapshot(folder)
    fit(load_config(None, TINY + ["train.epochs=3", "train.keep=1"]), folder, log=lambda _: None,
        use_existing_folder=True)
    after = snapshot(folder)
    assert {n: after[n] for n in before} == before
    assert sorted(p.name for p in folder.glob("epoch-0*.pt")) == ["epoch-0003.pt"]
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "epoch-0001.pt").write_text("the user's")
    with pytest.raises(ConfigError, match="epoch-0001.pt that no invaspread run wrote"):
        fit(load_config(None, TINY + ["train.epochs=1", "train.keep=1"]), clash, log=lambda _: None,
            use_existing_folder=True)
    assert (clash / "epoch-0001.pt").read_text() == "the user's"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("small") / "run"
    fit(load_config(None, TINY + ["train.epochs=1", "data.test_subset_per_class=5"]), run, log=lambda _: None)
    return run


def report_args(run, out):
    return ["report", str(run), "--out", str(out), "--images", "20", "--queries", "2", "-k", "2"]


def test_report_never_replaces_a_users_files_and_leaves_nothing_on_error(small_run, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my homepage</h1>")
    (site / "figure3.png").write_bytes(b"my figure")
    before = snapshot(site)
    assert main(report_args(small_run, site)) == 2
    assert snapshot(site) == before and sorted(os.listdir(tmp_path)) == ["site"]
    ours = tmp_path / "ours"
    assert main(report_args(small_run, ours)) == 0 and (ours / "index.html").is_file()
    assert main(report_args(small_run, ours)) == 0      # a report of ours is rewritten in place
    from invaspread.report import page

    def broken(*args, **kwargs):
        raise InvaspreadError("disk on fire")

    monkeypatch.setattr(page, "_run_section", broken)
    assert main(report_args(small_run, tmp_path / "new")) == 2
    assert sorted(os.listdir(tmp_path)) == ["ours", "site"]        # no partial folder, no hidden build folder


def test_embed_refuses_an_existing_file_and_a_non_finite_network(tiny_run, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        noise_image(i).save(images / f"{i}.png")
    precious = tmp_path / "precious.npz"
    precious.write_bytes(b"years of work")
    assert main(["embed", str(tiny_run), "--images", str(images), "--out", str(precious)]) == 2
    assert precious.read_bytes() == b"years of work"
    nan_run = nan_checkpoint(tiny_run, tmp_path / "nan.pt")
    capsys.readouterr()
    assert main(["embed", str(nan_run), "--images", str(images), "--out", str(tmp_path / "e.npz")]) == 2
    assert main(["index", str(nan_run), "--images", str(images), "--out", str(tmp_path / "i.index")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("NaN or infinite embeddings" in e for e in errors)
    assert sorted(os.listdir(tmp_path)) == ["imgs", "nan.pt", "precious.npz"]


def nan_checkpoint(run, path):
    """A diverged model: the run's checkpoint with every weight NaN (checksum rewritten)."""
    import torch

    from invaspread.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(run)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    save_checkpoint(state, path)
    return path


def index_folder(tiny_run, tmp_path, backend="torch"):
    images = tmp_path / "imgs"
    images.mkdir(exist_ok=True)
    for i in range(12):
        noise_image(i).save(images / f"{i:02d}.png")
    out = tmp_path / f"{backend}.index"
    assert main(["index", str(tiny_run), "--images", str(images), "--out", str(out), "--backend", backend]) == 0
    return out, images


def test_a_second_index_into_the_same_out_is_refused_and_nothing_mixes(tiny_run, tmp_path, monkeypatch, capsys):
    images = tmp_path / "imgs"
    out, images = index_folder(tiny_run, tmp_path)
    before = snapshot(out)
    assert main(["index", str(tiny_run), "--images", str(images), "--out", str(out)]) == 2      # exists
    busy = tmp_path / "busy.index"
    with Lock(tmp_path / ".busy.index.lock", remove=True).acquire():                                        # one in progress
        assert main(["index", str(tiny_run), "--images", str(images), "--out", str(busy)]) == 2
    assert f"in use by pid {os.getpid()}" in capsys.readouterr().err
    from invaspread.search import index as index_module

    real = index_module._build

    def racing(building, *args):   # another program creates the name while this one builds
        meta = real(building, *args)
        (tmp_path / "raced.index").mkdir()
        (tmp_path / "raced.index" / "theirs.txt").write_text("theirs")
        return meta

    monkeypatch.setattr(index_module, "_build", racing)
    assert main(["index", str(tiny_run), "--images", str(images), "--out", str(tmp_path / "raced.index")]) == 2
    assert os.listdir(tmp_path / "raced.index") == ["theirs.txt"] and snapshot(out) == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]    # no build folder, no lock left


def corrupt(kind, folder):
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    edit = {"meta not JSON": lambda: meta_path.write_text("{not json"),
            "meta a list": lambda: meta_path.write_text("[1, 2]"),
            "count edited": lambda: meta_path.write_text(json.dumps({**meta, "count": meta["count"] + 1})),
            "count not a number": lambda: meta_path.write_text(json.dumps({**meta, "count": "12"})),
            "dim edited": lambda: meta_path.write_text(json.dumps({**meta, "dim": 64})),
            "no checksums": lambda: meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "files"})),
            "embeddings truncated": lambda: (folder / "embeddings.f32").write_bytes(
                (folder / "embeddings.f32").read_bytes()[:-4]),
            "embeddings missing": lambda: (folder / "embeddings.f32").unlink(),
            "NaN row": lambda: nan_row(folder),
            "paths short": lambda: (folder / "paths.jsonl").write_text(
                "".join((folder / "paths.jsonl").read_text().splitlines(True)[:-1])),
            "paths missing": lambda: (folder / "paths.jsonl").unlink(),
            "paths not JSON": lambda: (folder / "paths.jsonl").write_text("nope\n" * meta["count"]),
            "faiss garbage": lambda: (folder / "faiss.index").write_bytes(b"garbage" * 10),
            "faiss missing": lambda: (folder / "faiss.index").unlink(),
            "model missing": lambda: (folder / "model.pt").unlink(),
            "model damaged": lambda: (folder / "model.pt").write_bytes(b"\0" * 100)}
    edit[kind]()


def nan_row(folder):
    data = bytearray((folder / "embeddings.f32").read_bytes())
    data[:4] = np.float32(np.nan).tobytes()
    (folder / "embeddings.f32").write_bytes(bytes(data))


CORRUPTIONS = ["meta not JSON", "meta a list", "count edited", "count not a number", "dim edited", "no checksums",
               "embeddings truncated", "embeddings missing", "NaN row", "paths short", "paths missing",
               "paths not JSON", "faiss garbage", "faiss missing", "model missing", "model damaged"]


@pytest.fixture(scope="module")
def built_index(tiny_run, tmp_path_factory):
    pytest.importorskip("faiss")
    return index_folder(tiny_run, tmp_path_factory.mktemp("built"), backend="faiss")


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_damaged_index_is_one_line_at_search(kind, built_index, tmp_path, capsys):
    import shutil

    out, images = built_index
    damaged = tmp_path / "damaged.index"
    shutil.copytree(out, damaged)
    corrupt(kind, damaged)
    capsys.readouterr()
    assert main(["search", str(damaged), str(images / "00.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("invaspread: error: ") and "Traceback" not in err


def test_two_table_commands_into_one_folder_the_second_is_refused(tmp_path):
    from invaspread.report.table_runner import TABLE_LOCK, run_table

    out = tmp_path / "t8"
    out.mkdir()
    with Lock(out / TABLE_LOCK).acquire():
        with pytest.raises(InvaspreadError, match=f"table folder {out} is in use by pid {os.getpid()}"):
            run_table(8, str(tmp_path / "cifar.tar.gz"), out, epochs=1)
    assert os.listdir(out) == [TABLE_LOCK]


USERS = b"my own notes, not a lock\n"


def test_a_users_file_at_a_run_folders_lock_name_is_refused_untouched(tmp_path, capsys):
    """``train --out DIR`` where DIR holds the user's own ``.invaspread.lock``: refused by name, the file byte for
    byte as it was (the lock probe never truncates, rewrites or deletes a file it did not create)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".invaspread.lock").write_bytes(USERS)
    for extra in ([], ["--use-existing-folder"]):
        assert main(["train", "--out", str(out), "--epochs", "1", "--set", "model.width=8", *extra]) == 2
        err = capsys.readouterr().err
        assert ".invaspread.lock" in err and len(err.strip().splitlines()) == 1, err
        assert (out / ".invaspread.lock").read_bytes() == USERS
    assert sorted(p.name for p in out.iterdir()) == [".invaspread.lock"]


def test_a_users_file_beside_an_index_at_its_lock_name_is_refused_untouched(tiny_run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    noise_image(0).save(images / "a.png")
    (tmp_path / ".photos.index.lock").write_bytes(USERS)
    assert main(["index", str(tiny_run), "--images", str(images), "--out", str(tmp_path / "photos.index")]) == 2
    assert ".photos.index.lock" in capsys.readouterr().err
    assert (tmp_path / ".photos.index.lock").read_bytes() == USERS and not (tmp_path / "photos.index").exists()


def test_cache_clear_never_rewrites_a_users_file_named_like_an_entry_lock(tmp_path, capsys):
    """The "is it held?" probe of ``cache clear`` is read-only: a user's file named like an entry's lock keeps its
    bytes and stays (it is not a lock), while the dead writer's temporary file beside it goes."""
    stem = "cifar10-jpeg-0123456789abcdef"
    (tmp_path / f"{stem}.lock").write_bytes(USERS)
    (tmp_path / f".{stem}.npz.abc123.tmp").write_bytes(b"half an entry")
    (tmp_path / "cifar10-jpeg-fedcba9876543210.lock").write_bytes(b"")   # an unheld lock of ours: removed
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.lock"]
    assert (tmp_path / f"{stem}.lock").read_bytes() == USERS


def test_a_lock_of_ours_is_probed_without_a_write_and_taken_when_free(tmp_path):
    from invaspread.locks import is_held

    path = tmp_path / "x.lock"
    assert not is_held(path) and not path.exists()   # probing creates nothing
    with Lock(path, "x").acquire():
        before = path.read_bytes()
        assert is_held(path) and path.read_bytes() == before
    assert not is_held(path)
    Lock(path, "x").acquire().release()   # a lock file of ours (a holder line) is taken again


@pytest.mark.parametrize("planted", [{"table8.md": "my notes\n"}, {"table8.csv": "a,b\n", "notes.txt": "x"},
                                     {"table8.json": '["not", "row records"]'}, {"table8.json": '{"row": "done"}'}])
def test_table_out_that_is_not_a_table_folder_is_refused_untouched(planted, tmp_path):
    from invaspread.report.table_runner import run_table

    out = tmp_path / "t8"
    out.mkdir()
    for name, text in planted.items():
        (out / name).write_text(text)
    with pytest.raises(InvaspreadError, match=f"table --out {out} is not a table folder of invaspread, nor empty"):
        run_table(8, str(tmp_path / "cifar.tar.gz"), out, epochs=1, log=lambda s: None)
    assert {p.name: p.read_text() for p in out.iterdir()} == planted


def test_a_table_folder_of_ours_whose_records_were_replaced_is_refused_by_name(tmp_path):
    from invaspread.report.table_runner import TABLE_MARKER, run_table

    out = tmp_path / "t8"
    out.mkdir()
    (out / TABLE_MARKER).write_text("{}")
    (out / "table8.json").write_text('{"released": "a string, not a record"}')
    with pytest.raises(InvaspreadError, match="table8.json does not hold this command's row records"):
        run_table(8, str(tmp_path / "cifar.tar.gz"), out, epochs=1, log=lambda s: None)
    assert (out / "table8.json").read_text() == '{"released": "a string, not a record"}'


def test_the_next_run_in_a_folder_removes_the_temporaries_a_killed_write_left_and_says_so(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, ["data.subset_per_class=8", "data.num_workers=0", "model.width=8", "train.epochs=1",
                             "train.batch_size=16", "train.progress=false", "eval.knn_k=5", "data.image_size=16"])
    fit(cfg, out, log=lambda s: None)
    dead = [".last.pt.k3j_x9a2.tmp", ".config.yaml.abcdefgh.tmp", ".epoch-0001.pt.0a1b2c3d.tmp"]
    for name in dead:
        (out / name).write_bytes(b"half a file")
    (out / ".last.pt.mine.tmp").write_text("the user's, not a temporary of ours")
    said = []
    fit(None, out, resume=True, log=said.append, overrides=["train.epochs=2"])
    assert [s for s in said if s.startswith("removed 3 temporary files an interrupted write left")], said
    assert not any((out / name).exists() for name in dead) and (out / ".last.pt.mine.tmp").is_file()


def test_the_next_index_removes_the_unfinished_index_a_killed_one_left_and_nothing_else(tiny_run, tmp_path):
    from invaspread.search import build_index

    images = tmp_path / "images"
    images.mkdir()
    noise_image(0).save(images / "a.png")
    dead = tmp_path / ".photos.index.x1y2z3w4.building"
    dead.mkdir()
    (dead / "embeddings.f32").write_bytes(b"\0" * 64)
    mine = tmp_path / ".photos.index.abcdefgh.building"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"the user's")
    said = []
    build_index(tiny_run, images, tmp_path / "photos.index", progress=False, log=said.append)
    assert not dead.exists() and (mine / "holiday.jpg").read_bytes() == b"the user's"
    assert any(s.startswith(f"removed {dead}") for s in said) and (tmp_path / "photos.index").is_dir()


def test_the_next_report_removes_the_unfinished_report_a_killed_one_left_and_nothing_else(small_run, tmp_path):
    from invaspread.report.page import write_report

    dead = tmp_path / ".site.q1w2e3r4.building"
    dead.mkdir()
    (dead / "figure3.png").write_bytes(b"half a png")
    mine = tmp_path / ".site.holidays.building"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    said = []
    write_report([small_run], tmp_path / "site", images=20, queries=2, k=2, log=said.append)
    assert not dead.exists() and (mine / "notes.txt").read_text() == "the user's"
    assert any(s.startswith(f"removed {dead}") for s in said) and (tmp_path / "site" / "index.html").is_file()
    assert not (tmp_path / ".site.lock").exists()   # the report's lock is removed with it


@pytest.mark.parametrize("what", ["overrides.jsonl", "metrics.jsonl"])
def test_a_run_folders_appended_files_are_rewritten_whole_never_half(what, tmp_path, monkeypatch):
    """overrides.jsonl and metrics.jsonl get their lines through the atomic writer: cut before the rename, the
    file is exactly the old one (an append cut mid-line would leave half a line)."""
    from invaspread import atomic
    from invaspread.engine.run_folder import RunFolder

    folder = RunFolder(tmp_path, "run-id")
    write = (lambda: folder.record_overrides(1, ["optim.lr=0.01"])) if what == "overrides.jsonl" else \
        (lambda: folder.append_metrics({"epoch": 2, "loss": 1.0}))
    write()
    before = (tmp_path / what).read_bytes()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write()
    assert (tmp_path / what).read_bytes() == before and before.count(b"\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == [what]
    monkeypatch.undo()
    write()
    assert (tmp_path / what).read_bytes().count(b"\n") == 2


def test_table_files_are_written_whole(tmp_path, monkeypatch):
    """tableN.md / .csv of a table folder are replaced through the atomic writer: cut before the rename, the
    previous table stays as it was."""
    from invaspread import atomic
    from invaspread.report.table_runner import run_table

    out = tmp_path / "t8"
    run_table(8, str(tmp_path / "no-data.tar.gz"), out, epochs=1, log=lambda s: None)   # rows fail: no data
    before = {name: (out / name).read_bytes() for name in ("table8.md", "table8.csv")}

    def killed(src, dst):
        if str(dst).endswith((".md", ".csv")):
            raise KeyboardInterrupt
        return os.rename(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        run_table(8, str(tmp_path / "no-data.tar.gz"), out, epochs=1, log=lambda s: None)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
