"""Nothing of the user's touched, round 3: files planted at the names of our locks, table folders that are not
ours, torn configs, full disks and file-size limits, huge values in messages, debris of killed writers, R-MAC
scales and architectures that ignore a key, unreadable images in a real folder, search and report details. Each
case plants the user's files first and checks them byte for byte after the command."""

from __future__ import annotations

import json
import os
import resource
import stat
from pathlib import Path

import numpy as np

from harness import TINY, case, cli, one_line_error
from conftest import noise_image, write_image_folder  # noqa: E402

MINE = b"the user's own file, not a lock\n"


def _run(w, *extra):
    cli("train", "--out", w / "run", "--epochs", "1", *TINY, *extra)
    return w / "run"


def _images(w, n=12):
    (w / "imgs").mkdir(exist_ok=True)
    for i in range(n):
        noise_image(i).save(w / "imgs" / f"{i:03d}.png")
    return w / "imgs"


def _same(files: dict) -> bool:
    return all(Path(p).is_file() and Path(p).read_bytes() == data for p, data in files.items())


# ---- locks never write a file they did not create ---------------------------------------------------------

@case("user-files", "train --out over the user's .invaspread.lock: refused, the file unchanged")
def _(w):
    (w / "out").mkdir()
    planted = {w / "out" / ".invaspread.lock": MINE}
    for path, data in planted.items():
        path.write_bytes(data)
    done = cli("train", "--out", w / "out", "--epochs", "1", *TINY)
    return one_line_error(done) and _same(planted), done.stderr[-200:]


@case("user-files", "train --use-existing-folder over a binary .invaspread.lock: refused, unchanged")
def _(w):
    (w / "out").mkdir()
    planted = {w / "out" / ".invaspread.lock": os.urandom(64), w / "out" / "notes.md": b"mine"}
    for path, data in planted.items():
        path.write_bytes(data)
    done = cli("train", "--out", w / "out", "--use-existing-folder", "--epochs", "1", *TINY)
    return one_line_error(done, ".invaspread.lock") and _same(planted), done.stderr[-200:]


@case("user-files", "index --out NAME beside the user's .NAME.lock: refused, the file kept")
def _(w):
    run, images = _run(w), _images(w)
    planted = {w / ".photos.index.lock": MINE}
    (w / ".photos.index.lock").write_bytes(MINE)
    done = cli("index", run, "--images", images, "--out", w / "photos.index")
    return one_line_error(done, ".photos.index.lock") and _same(planted), done.stderr[-200:]


@case("user-files", "cache clear beside a user's file named like an entry lock (and a dead temp): kept unchanged")
def _(w):
    stem = "cifar10-jpeg-00112233aabbccdd"
    planted = {w / f"{stem}.lock": MINE}
    ours = w / "cifar10-jpeg-0011223344556677.lock"   # a lock of ours (one holder line) that nobody holds: removed
    for path, data in {**planted, ours: b"pid 1 on x\n"}.items():
        path.write_bytes(data)
    (w / f".{stem}.npz.abc123.tmp").write_bytes(b"half")
    done = cli("cache", "clear", "--cache-dir", w)
    return (done.returncode == 0 and _same(planted) and not ours.exists()
            and not (w / f".{stem}.npz.abc123.tmp").exists()), done.stderr[-200:]


# ---- table folders ----------------------------------------------------------------------------------------

@case("user-files", "table --out a folder holding the user's table8.md and table8.csv: refused, unchanged")
def _(w):
    (w / "t").mkdir()
    planted = {w / "t" / "table8.md": b"# my table\n", w / "t" / "table8.csv": b"a,b\n1,2\n"}
    for path, data in planted.items():
        path.write_bytes(data)
    done = cli("table", "8", "--data-dir", w / "cifar.tar.gz", "--out", w / "t", "--epochs", "1")
    return one_line_error(done, "not a table folder") and _same(planted), done.stderr[-200:]


@case("user-files", "table --out a folder holding a table8.json that is not row records: refused, unchanged")
def _(w):
    (w / "t").mkdir()
    planted = {w / "t" / "table8.json": b'["my", "list"]'}
    (w / "t" / "table8.json").write_bytes(b'["my", "list"]')
    done = cli("table", "8", "--data-dir", w / "cifar.tar.gz", "--out", w / "t", "--epochs", "1")
    return one_line_error(done) and _same(planted), done.stderr[-200:]


# ---- torn writes, full disks, size limits -----------------------------------------------------------------

@case("user-files", "a resume whose config.yaml write is cut before its rename: the next resume is not refused")
def _(w):
    run = _run(w)
    cut = ("from invaspread import atomic\nreal = atomic.os.replace\n"
           "def cut(a, b):\n    if str(b).endswith('config.yaml'): raise KeyboardInterrupt\n    real(a, b)\n"
           "atomic.os.replace = cut\n")
    first = cli("train", "--resume", run, "--epochs", "2", prelude=cut)
    again = cli("train", "--resume", run, "--epochs", "2")
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return first.returncode == 130 and again.returncode == 0 and epochs[-1] == 2, again.stderr[-200:]


@case("user-files", "a checkpoint write on a full disk (torch's 'unexpected pos'): one line, last.pt resumable")
def _(w):
    run = _run(w)
    full = ("import torch, os\nfrom invaspread.engine import checkpoint\nreal = torch.save\n"
            "def full(obj, fh, *a, **k):\n    fh.write(b'x' * 10)\n"
            "    raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0')\n"
            "checkpoint.torch.save = full\n"
            "class S: f_bavail, f_frsize = 1, 4096\ncheckpoint.os.statvfs = lambda p: S\n")
    done = cli("train", "--resume", run, "--epochs", "2", prelude=full)
    after = cli("train", "--resume", run, "--epochs", "2")
    return (one_line_error(done, "No space left on device", "last.pt") and after.returncode == 0
            and not [p for p in run.iterdir() if p.name.endswith(".tmp")]), done.stderr[-200:]


@case("user-files", "embed under a 4 KB file-size limit: one line, no file, no temporary")
def _(w):
    run, images = _run(w), _images(w, 40)
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "invaspread", "embed", str(run), "--images", str(images), "--out",
                           str(w / "e.npz")], capture_output=True, text=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)))
    return (one_line_error(done, "File too large") and not (w / "e.npz").exists()
            and not [p for p in w.iterdir() if p.name.endswith(".tmp")]), done.stderr[-200:]


# ---- bounded messages -------------------------------------------------------------------------------------

@case("user-files", "a 378-byte YAML of nested aliases: one short line")
def _(w):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    (w / "bomb.yaml").write_text(bomb + "model:\n  width: *i\n")
    done = cli("train", "--config", w / "bomb.yaml", "--out", w / "run", timeout=60)
    return one_line_error(done) and len(done.stderr) < 1000, f"{len(done.stderr)} bytes"


@case("user-files", "a 10 MB value and a 10 MB key in a YAML file, a 100 KB --set value: one short line each")
def _(w):
    # one command-line argument is limited to 128 KiB (Linux MAX_ARG_STRLEN): the 10 MB ones come in a file
    big = "y" * 10_000_000
    (w / "value.yaml").write_text(f"augment:\n  recipe: {big}\n")
    (w / "key.yaml").write_text(f"train:\n  {big}: 3\n")
    done = [cli("config", w / "value.yaml", timeout=60), cli("config", w / "key.yaml", timeout=60),
            cli("config", "--set", f"augment.recipe={big[:100_000]}", timeout=60)]
    return all(one_line_error(d) for d in done) and sum(len(d.stderr) for d in done) < 3000, \
        " / ".join(f"{len(d.stderr)} bytes" for d in done)


# ---- debris -----------------------------------------------------------------------------------------------

@case("user-files", "the temporaries a killed checkpoint write left: removed by the next resume, which says so")
def _(w):
    run = _run(w)
    for name in (".last.pt.a1b2c3d4.tmp", ".config.yaml.zzzz9999.tmp"):
        (run / name).write_bytes(b"half")
    (run / ".last.pt.notes.tmp").write_bytes(MINE)
    done = cli("train", "--resume", run, "--epochs", "2")
    left = sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))
    return done.returncode == 0 and left == [".last.pt.notes.tmp"] and "removed 2 temporary files" in done.stdout + \
        done.stderr, str(left)


@case("user-files", "the unfinished index a killed index left: removed by the next index, a user's folder kept")
def _(w):
    run, images = _run(w), _images(w)
    dead, mine = w / ".p.index.k2k2k2k2.building", w / ".p.index.userdata.building"
    dead.mkdir()
    (dead / "embeddings.f32").write_bytes(b"\0" * 8)
    mine.mkdir()
    (mine / "x.jpg").write_bytes(MINE)
    done = cli("index", run, "--images", images, "--out", w / "p.index")
    return done.returncode == 0 and not dead.exists() and _same({mine / "x.jpg": MINE}), done.stderr[-200:]


# ---- settings that cannot work, or that nothing reads ------------------------------------------------------

@case("user-files", "method.mom.rmac_scales=[0.01] on 16-pixel images: one line before any work")
def _(w):
    done = cli("train", "--out", w / "run", "--epochs", "1", *TINY, "--set", "method.name=mom", "--set",
               "method.mom.features=rmac", "--set", "method.mom.rmac_scales=[0.01]", "--set", "data.image_size=16")
    return one_line_error(done, "rmac_scales") and not (w / "run").exists(), done.stderr[-200:]


@case("user-files", "model.width=8 with model.arch=resnet18 (and pool_window with inception_v1): one line each")
def _(w):
    a = cli("train", "--out", w / "a", "--set", "model.arch=resnet18", "--set", "model.width=8")
    b = cli("train", "--out", w / "b", "--set", "model.arch=inception_v1", "--set", "model.pool_window=7")
    return one_line_error(a, "model.width=8") and one_line_error(b, "model.pool_window=7"), ""


# ---- a real photo folder ----------------------------------------------------------------------------------

def _photos(w):
    folder = w / "photos"
    write_image_folder(folder, [5, 5], size=(16, 16))
    (folder / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "class_0" / "notes.txt").write_text("x")
    (folder / "class_0" / ".DS_Store").write_bytes(b"\0\0")
    return folder


@case("user-files", "train, embed and index of a folder with a corrupt image: skipped, named once, listed")
def _(w):
    folder = _photos(w)
    sets = [*TINY, "--set", "data.name=image_folder", "--set", "train.batch_size=4", "--set", "eval.knn_k=3"]
    train = cli("train", "--data-dir", folder, "--out", w / "run", "--epochs", "1", *sets)
    embed = cli("embed", w / "run", "--images", folder, "--out", w / "e.npz")
    index = cli("index", w / "run", "--images", folder, "--out", w / "p.index")
    said = [sum("broken.jpg" in line for line in (d.stdout + d.stderr).splitlines()) for d in (train, embed, index)]
    listed = (w / "run" / "unreadable.txt").is_file() and "broken.jpg" in (w / "run" / "unreadable.txt").read_text()
    return (all(d.returncode == 0 for d in (train, embed, index)) and said == [1, 1, 1] and listed
            and list(np.load(w / "e.npz")["skipped"]) == [str(folder / "class_1" / "broken.jpg")]), str(said)


@case("user-files", "data.unreadable=error: the corrupt image is one line naming it, no run folder")
def _(w):
    folder = _photos(w)
    done = cli("train", "--data-dir", folder, "--out", w / "run", "--epochs", "1", *TINY, "--set",
               "data.name=image_folder", "--set", "data.unreadable=error")
    return one_line_error(done, "broken.jpg") and not (w / "run").exists(), done.stderr[-200:]


# ---- search and report ------------------------------------------------------------------------------------

@case("user-files", "search --exclude-self: the query's own file is not among its k results")
def _(w):
    run, images = _run(w), _images(w)
    cli("index", run, "--images", images, "--out", w / "p.index")
    done = cli("search", w / "p.index", images / "003.png", "-k", "3", "--json", "--exclude-self")
    hits = json.loads(done.stdout)["results"] if done.returncode == 0 else []
    return len(hits) == 3 and all(not h["path"].endswith("003.png") for h in hits), done.stderr[-200:]


@case("user-files", "a new report folder has the umask's permissions, not mkdtemp's 0700")
def _(w):
    run = _run(w)
    done = cli("report", run, "--out", w / "site", "--images", "40", timeout=600)
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((w / "site").stat().st_mode) if (w / "site").is_dir() else None
    return done.returncode == 0 and mode == 0o777 & ~umask, f"mode {mode and oct(mode)}"


# ---- checkpoints without a checksum -----------------------------------------------------------------------

def _unchecked(run, path, knn_k=None):
    import torch

    state = torch.load(run / "last.pt", weights_only=True)
    state.pop("checksum")
    if knn_k is not None:
        state["config"]["eval"]["knn_k"] = knn_k          # a hand edit of the saved config
    torch.save(state, path)
    return path


@case("user-files", "a checkpoint without checksum, its config edited: eval, embed, index refuse, write nothing")
def _(w):
    run, images = _run(w), _images(w, 4)
    bad = _unchecked(run, w / "hand.pt", knn_k=3)
    done = [cli("eval", bad), cli("embed", bad, "--images", images, "--out", w / "e.npz"),
            cli("index", bad, "--images", images, "--out", w / "i.index")]
    nothing = not (w / "e.npz").exists() and not (w / "i.index").exists()
    return all(one_line_error(d, "no checksum") for d in done) and nothing, done[0].stderr[-200:]


@case("user-files", "a run's last.pt without checksum: --resume refuses it unchanged; trusted, it resumes")
def _(w):
    run = _run(w)
    _unchecked(run, run / "last.pt")
    planted = {run / "last.pt": (run / "last.pt").read_bytes()}
    refused = cli("train", "--resume", run, "--epochs", "2")
    kept = _same(planted)
    trusted = cli("train", "--resume", run, "--epochs", "2", "--set", "train.trust_unchecked_checkpoint=true")
    return one_line_error(refused, "no checksum") and kept and trusted.returncode == 0, refused.stderr[-200:]


@case("user-files", "model.init_from a checkpoint without checksum: refused before any run folder")
def _(w):
    run = _run(w)
    bad = _unchecked(run, w / "hand.pt")
    done = cli("train", "--out", w / "fine", "--epochs", "1", *TINY, "--set", f"model.init_from={bad}")
    return one_line_error(done, "no checksum") and not (w / "fine").exists(), done.stderr[-200:]
