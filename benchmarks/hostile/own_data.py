"""Issue 18's cases about the user's own data and settings: a mixed folder seen whole by every command, the
README's own-images block, EXIF orientation, eval.protocol, out-of-range settings, archives that are not what
they claim, torchrun resumed under another size and a rank killed, and every method diverging."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image

from harness import REPO, TINY, case, cli, finite_checkpoint, load, metric_epochs, one_line_error
from conftest import noise_image, write_image_folder, write_imagefolder_archive, write_mixed_folder  # noqa: E402

QUICK_ANY_ARCH = ["--set", "train.batch_size=4", "--set", "data.num_workers=0", "--set", "train.progress=false",
                  "--set", "eval.knn_k=3"]
QUICK = ["--set", "model.width=8", *QUICK_ANY_ARCH]


def _count(text, pattern):
    found = re.search(pattern, text)
    return int(found.group(1)) if found else None


# ---- own folders ------------------------------------------------------------------------------------------

@case("own-folders", "a mixed folder: train, embed and index all see its 15 images")
def _(w):
    photos = write_mixed_folder(w / "photos")
    train = cli("train", "--set", "data.name=image_folder", "--data-dir", photos, "--out", w / "run", "--epochs", "1",
                *QUICK)
    embed = cli("embed", w / "run", "--images", photos, "--out", w / "e.npz")
    index = cli("index", w / "run", "--images", photos, "--out", w / "p.index", "--backend", "torch")
    counts = [_count(train.stdout, r"(\d+) training images"), _count(embed.stdout, r"^(\d+) images"),
              _count(index.stdout, r"^(\d+) images")]
    said = "6 images at the top level" in train.stderr and "labels not used" in train.stderr
    return counts == [15, 15, 15] and said, f"counts {counts}"


@case("own-folders", "the README's own-images block runs as written (training shortened)")
def _(w):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Train on your own images"):]
    block = section[section.index("```bash") + 7:]
    commands = [c for c in block[:block.index("```")].replace("\\\n", " ").splitlines() if c.strip()]
    home = w / "home"
    write_mixed_folder(home / "photos")
    noise_image(77).save(home / "photos" / "beach.jpg")
    write_image_folder(home / "photos_test", [3, 3], size=(32, 32))
    codes = []
    for command in commands:
        argv = shlex.split(command.replace("~/", f"{home}/"))[1:]
        if argv[0] == "train":   # shortened; not by model.width, which the block's model.arch=resnet18 refuses
            argv += ["--epochs", "1", *QUICK_ANY_ARCH]
        codes.append(cli(*argv, cwd=w).returncode)
    return codes == [0] * len(commands) and len(commands) == 5, f"exit codes {codes}"


@case("own-folders", "a phone photo's EXIF orientation: embedded as the upright copy")
def _(w):
    stored = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    (w / "imgs").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(w / "imgs" / "phone.png", exif=exif)
    Image.fromarray(np.rot90(stored, k=-1)).save(w / "imgs" / "upright.png")
    cli("train", "--out", w / "run", "--epochs", "0", "--set", "method.name=random", *QUICK)
    cli("embed", w / "run", "--images", w / "imgs", "--out", w / "e.npz")
    z = np.load(w / "e.npz")["embeddings"]
    return float(z[0] @ z[1]) > 0.99999, f"cosine {float(z[0] @ z[1]):.6f}"


@case("own-folders", "eval.protocol=knn on an unlabelled folder: refused before any folder is made")
def _(w):
    photos = w / "photos"   # flat: unlabelled without a note on stderr
    photos.mkdir()
    for i in range(8):
        noise_image(i).save(photos / f"{i}.png")
    proc = cli("train", "--set", "data.name=image_folder", "--data-dir", photos, "--out", w / "run",
               "--set", f"data.test_root={write_image_folder(w / 'test', [2, 2])}", "--set", "eval.protocol=knn",
               *QUICK)
    return one_line_error(proc, "eval.protocol=knn") and not (w / "run").exists(), proc.stderr.strip()[-120:]


@case("own-folders", "an unlabelled run without test images: report plots its loss, says its epoch")
def _(w):
    photos = write_mixed_folder(w / "photos")
    cli("train", "--set", "data.name=image_folder", "--data-dir", photos, "--out", w / "run", "--epochs", "2", *QUICK)
    proc = cli("report", w / "run", "--out", w / "site")
    page = (w / "site" / "index.html").read_text() if proc.returncode == 0 else ""
    return "epoch 2 of 2" in page and ">loss<" in page, proc.stderr.strip()[-120:]


# ---- settings ---------------------------------------------------------------------------------------------

for _key in ("eval.knn_temperature=1e-320", "eval.recall_ks=[0,-5,1]", "eval.recall_ks=[]",
             "optim.decay_factors=[-1.0]", "data.subset_per_class=0", "data.subset_per_class=-1",
             "data.test_subset_per_class=0", "model.pool_window=-1", "train.device=meta", "eval.protocol=maybe"):
    case("settings", f"{_key} is refused by name")(
        lambda w, k=_key: (lambda p: (one_line_error(p, k.split("=")[0] + "="), p.stderr.strip()[-100:]))(
            cli("train", "--out", w / "r", *TINY, "--set", k, *(["--set", "optim.decay_epochs=[1]"]
                                                                 if k.startswith("optim.decay") else []))))


@case("settings", "--resume --set train.device=meta: refused, last.pt unchanged")
def _(w):
    cli("train", "--out", w / "run", "--epochs", "1", *TINY)
    before = (w / "run" / "last.pt").read_bytes()
    proc = cli("train", "--resume", w / "run", "--set", "train.device=meta")
    return one_line_error(proc, "train.device") and (w / "run" / "last.pt").read_bytes() == before, ""


for _name, _bytes in (("unhashable keys", b"? [a, b]\n: 1\n"), ("non-UTF-8 bytes", b"train:\n  epochs: \xff\n")):
    case("settings", f"a YAML config with {_name}")(
        lambda w, b=_bytes: ((w / "c.yaml").write_bytes(b), (lambda p: (one_line_error(p, "c.yaml"), p.stderr[-100:]))(
            cli("train", "--config", w / "c.yaml", "--out", w / "r")))[1])


@case("settings", "`config nonexistent` names the argument it got, `config cifar10 | head` ends quietly")
def _(w):
    missing = cli("config", "nonexistent")
    piped = subprocess.run(f"{sys.executable} -m invaspread config cifar10 | head -3", shell=True, capture_output=True,
                           text=True)
    return (one_line_error(missing, "config nonexistent") and "--config" not in missing.stderr
            and piped.stderr == "" and len(piped.stdout.splitlines()) == 3), piped.stderr[-100:]


# ---- archives ---------------------------------------------------------------------------------------------

def _archive_train(w, path):
    return cli("train", "--config", "cifar10", "--data-dir", path, "--out", w / "r", "--set",
               f"data.cache_dir={w / 'cache'}", *TINY)


@case("archives", "test classes absent from training: refused, not kNN 0")
def _(w):
    path = write_imagefolder_archive(w / "c.tar.gz", {"train": [4, 4, 0], "test": [2, 2, 2]})
    proc = _archive_train(w, path)
    return one_line_error(proc, "no training images"), proc.stderr.strip()[-120:]


@case("archives", "a zip named .tar.gz")
def _(w):
    import zipfile

    with zipfile.ZipFile(w / "c.tar.gz", "w") as z:
        z.writestr("train/a/0.jpg", b"x")
    return (lambda p: (one_line_error(p, "cannot read archive"), p.stderr[-100:]))(_archive_train(w, w / "c.tar.gz"))


@case("archives", "a text file named .tar.gz")
def _(w):
    (w / "c.tar.gz").write_text("hello\n" * 50)
    return (lambda p: (one_line_error(p, "cannot read archive"), p.stderr[-100:]))(_archive_train(w, w / "c.tar.gz"))


@case("archives", "a 12000x12000 image after a 32x32 one: refused from its header (memory bounded)")
def _(w):
    path = w / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for i, image in enumerate([noise_image(0), Image.new("RGB", (12000, 12000))]):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            info = tarfile.TarInfo(f"train/a/{i}.png")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
        for split in ("test",):
            buf = io.BytesIO()
            noise_image(1).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{split}/a/0.png")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    peak = ("import atexit, resource, os; atexit.register(lambda: open(os.environ['PEAK_FILE'], 'w').write("
            "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n")
    proc = cli("train", "--config", "cifar10", "--data-dir", path, "--out", w / "r", "--set",
               f"data.cache_dir={w / 'cache'}", *TINY, prelude=peak, env={"PEAK_FILE": str(w / "peak")})
    mib = int((w / "peak").read_text()) / 1024
    return one_line_error(proc, "is 12000x12000 but") and mib < 1500, f"peak RSS {mib:.0f} MiB (decoded: 412 MiB)"


# ---- torchrun ---------------------------------------------------------------------------------------------

def _torchrun(n, *args, wait=True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m",
               "invaspread", *map(str, args)]
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)


def _processes_recorded(run):
    import json

    lines = [json.loads(line) for line in (run / "overrides.jsonl").read_text().splitlines()]
    return [line["processes"] for line in lines if "processes" in line]


@case("torchrun", "a 2-process run resumed by 1 process: finishes, the change is recorded")
def _(w):
    first = _torchrun(2, "train", "--out", w / "run", "--epochs", "1", *TINY)
    second = cli("train", "--resume", w / "run", "--epochs", "2")
    ok = first.returncode == 0 and second.returncode == 0 and metric_epochs(w / "run")[-1] == 2
    return ok and _processes_recorded(w / "run") == [{"before": 2, "now": 1}], second.stderr.strip()[-120:]


@case("torchrun", "a rank killed mid-run: the last checkpoint loads, a 1-process resume finishes")
def _(w):
    proc = _torchrun(2, "train", "--out", w / "run", "--epochs", "3", *TINY, wait=False)
    for line in proc.stdout:
        if line.startswith("epoch=1 "):
            break
    children = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "invaspread"], capture_output=True, text=True)
    pids = [int(p) for p in children.stdout.split()]
    if pids:
        os.kill(pids[-1], signal.SIGKILL)    # one rank dies; torchrun tears the other down
    proc.wait(timeout=120)
    load(w / "run" / "last.pt")
    resumed = cli("train", "--resume", w / "run")
    return resumed.returncode == 0 and metric_epochs(w / "run")[-1] == 3, \
        f"killed pid {pids[-1:] or 'none'}; resume rc {resumed.returncode}"


# ---- every method diverging -------------------------------------------------------------------------------

for _method, _extra in (("invaspread", []), ("exemplar", []), ("npsoftmax", []), ("nce", ["method.nce.noise=16"]),
                        ("triplet", []), ("triplet_hard", []), ("deepcluster", ["method.deepcluster.clusters=5"]),
                        ("mom", ["method.mom.graph_neighbours=5", "method.mom.positive_k=5", "method.mom.negative_k=10",
                                 "method.mom.pool_size=5"])):
    def _diverge(w, method=_method, extra=_extra):
        sets = sum((["--set", s] for s in [f"method.name={method}", "train.keep=2", *extra]), [])
        first = cli("train", "--out", w / "run", "--epochs", "1", *TINY, *sets)          # one sane epoch, then lr 1e8
        proc = cli("train", "--resume", w / "run", "--epochs", "3", "--set", "optim.lr=1e8")
        saved = list((w / "run").glob("*.pt"))
        true = proc.returncode == 0 or ("still holds epoch 1" in proc.stderr and load(w / "run" / "last.pt")["epoch"] == 1)
        ok = first.returncode == 0 and (proc.returncode == 0 or one_line_error(proc, "NaN or infinite")) and true
        return ok and all(finite_checkpoint(p) for p in saved), \
            f"rc {proc.returncode}, {len(saved)} finite checkpoints; {proc.stderr.strip()[-80:]}"
    case("divergence", f"{_method}: one epoch, then lr 1e8: no non-finite checkpoint, a true message")(_diverge)


@case("divergence", "a diverged network's NaN embeddings: embed and index refuse, write nothing")
def _(w):
    import torch

    cli("train", "--out", w / "run", "--epochs", "0", "--set", "method.name=random", *TINY)
    from invaspread.engine.checkpoint import save_checkpoint

    state = load(w / "run" / "last.pt")
    state.pop("checksum", None)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    save_checkpoint(state, w / "nan.pt")   # checksummed as a run's own: a checkpoint without one is refused
    images = write_image_folder(w / "imgs", [2, 2])
    embed = cli("embed", w / "nan.pt", "--images", images, "--out", w / "e.npz")
    index = cli("index", w / "nan.pt", "--images", images, "--out", w / "i.index")
    nothing = not (w / "e.npz").exists() and not (w / "i.index").exists()
    return one_line_error(embed, "NaN") and one_line_error(index, "NaN") and nothing, embed.stderr.strip()[-100:]
