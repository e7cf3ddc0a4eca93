"""Shared fixtures: tiny data sets written in the exact on-disk layouts the readers expect."""

import io
import os
import pickle
import re
import tarfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Under pytest-xdist (the README's ``-n 2``) each worker computes on one thread, and so do the processes its tests
# start (OMP_NUM_THREADS is read by torch at start-up): two workers on two cores, not four threads fighting for
# two. A test that fixes its own thread count (the integration trainings) sets it explicitly.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Order only (nothing is asserted about time): the trainings that take minutes run first, the longest first (their
# seconds on a 2-core float32 CPU, one thread), so that under pytest-xdist both workers start on them at once and
# the short tests fill in behind; a long test collected last would run alone at the end.
LEARNS = "test_integration_methods.py::test_method_learns_on_cifar10_subset"
LONG_FIRST = {f"{LEARNS}[byol]": 277, "::test_cifar10_subset_knn": 50, f"{LEARNS}[npsoftmax]": 106,
              f"{LEARNS}[nce]": 105, f"{LEARNS}[exemplar]": 92, f"{LEARNS}[mocov2]": 71, f"{LEARNS}[deepcluster]": 68,
              f"{LEARNS}[triplet]": 66, "::test_cifar10_unseen": 60, "::test_two_process_run": 56,
              f"{LEARNS}[simclr]": 48, "::test_killed_then_resumed_run_matches": 31, "::test_the_readmes_plugin": 27}


def pytest_configure(config):
    # under -n, hand the tests out one at a time: xdist's default sends each worker a run of consecutive tests at
    # once, and every long test (first, above) would land on the first worker
    if getattr(config.option, "maxschedchunk", "absent") is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(config, items):
    def seconds(item):
        return max((s for key, s in LONG_FIRST.items() if key in item.nodeid), default=0)

    items.sort(key=lambda item: -seconds(item))   # stable: the rest keep their order


REPO = Path(__file__).resolve().parents[1]
CIFAR10_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"


def cifar10_archive() -> Path:
    """The shared CIFAR-10 JPEG copy; required in CI, skipped elsewhere when absent."""
    if not CIFAR10_ARCHIVE.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the shared CIFAR-10 copy at {CIFAR10_ARCHIVE}")
        pytest.skip(f"no CIFAR-10 copy at {CIFAR10_ARCHIVE}")
    return CIFAR10_ARCHIVE


def coloured_image(label: int, index: int, size=(12, 10)) -> Image.Image:
    """A deterministic image whose mean colour encodes its label (so tests can check labels)."""
    rng = np.random.default_rng(label * 1000 + index)
    arr = np.full((size[1], size[0], 3), 20 * label, dtype=np.uint8)
    arr += rng.integers(0, 5, arr.shape, dtype=np.uint8)
    return Image.fromarray(arr)


def write_image_folder(root: Path, counts, fmt="png", size=(12, 10)):
    """root/<class_k>/<i>.<fmt> with counts[k] images of class k."""
    for label, n in enumerate(counts):
        d = root / f"class_{label}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            coloured_image(label, i, size).save(d / f"{i:04d}.{fmt}")
    return root


def write_imagefolder_archive(path: Path, counts_by_split, prefix=""):
    """A .tar.gz holding [prefix/]split/<class>/NNNN.jpg, like the shared CIFAR-10 copy."""
    with tarfile.open(path, "w:gz") as tar:
        for split, counts in counts_by_split.items():
            for label, n in enumerate(counts):
                for i in range(n):
                    buf = io.BytesIO()
                    coloured_image(label, i, (32, 32)).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"{prefix}{split}/c{label}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def write_cifar10_python(root: Path, per_batch=4):
    """cifar-10-batches-py with five training batches and a test batch (pickled dicts, 3072-byte rows)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = list(rng.integers(0, 10, per_batch))
        data = np.stack([np.asarray(coloured_image(y, j, (32, 32))).transpose(2, 0, 1).reshape(-1)
                         for j, y in enumerate(labels)])
        with (folder / name).open("wb") as fh:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, fh)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)
    return root


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory):
    """One decoded-array cache for every test that reads the CIFAR-10 archive: the archive is decoded once per
    session, under pytest-xdist once for all workers (the folder above the workers' own; the cache's entry lock
    makes the second worker wait for the first's decode)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cifar-cache"


def noise_image(seed: int, size=(32, 32)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_mixed_folder(root: Path) -> Path:
    """What a user's photo folder looks like: 6 loose images, a vacation/ folder with a day2/ sub-folder, misc/,
    and hidden entries (skipped by every command): 15 images in all."""
    for sub, n in (("", 6), ("vacation", 3), ("vacation/day2", 2), ("misc", 4)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise_image(len(sub) * 100 + i).save(root / sub / f"img{i:02d}.png")
    (root / ".thumbnails").mkdir()
    noise_image(0).save(root / ".thumbnails" / "t.png")
    noise_image(1).save(root / ".hidden.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished run (the untrained width-8 network on the bundled digits): something to embed and index with."""
    from invaspread.config import load_config
    from invaspread.engine.trainer import fit

    root = tmp_path_factory.mktemp("tiny-run")
    cfg = load_config(None, ["model.width=8", "train.epochs=0", "data.num_workers=0", "train.progress=false",
                             "method.name=random", "train.cpu_bf16=false"])   # compared with float32 references
    fit(cfg, root / "run", log=lambda _: None)
    return root / "run"


class Interrupted(Exception):
    """Raised right after a run's first checkpoint: what a kill at an epoch boundary leaves."""


def tiny_method_config(name, extra=()):
    """A 2-epoch run of method ``name`` on 80 digits images at 16 x 16, width 8: seconds on a CPU."""
    from invaspread.config import load_config

    return load_config(None, ["model.width=8", "model.embedding_dim=16", "data.image_size=16", "train.batch_size=16",
                              "data.subset_per_class=8", "data.num_workers=0", "train.progress=false", "eval.knn_k=5",
                              "optim.schedule=cosine", f"method.name={name}", "train.epochs=2", "model.head_hidden=32",
                              "method.byol.predictor_hidden=32", "method.mocov2.queue=40", *extra])


def train_until_first_checkpoint(cfg, out, monkeypatch) -> None:
    """``fit(cfg, out)`` stopped right after its first ``last.pt`` is written (the checkpoint is complete)."""
    from invaspread.engine import reporter, trainer

    real_save = reporter.save_checkpoint

    def save_then_stop(state, path):
        real_save(state, path)
        raise Interrupted

    monkeypatch.setattr(reporter, "save_checkpoint", save_then_stop)
    try:
        with pytest.raises(Interrupted):
            trainer.fit(cfg, out, log=lambda s: None)
    finally:
        monkeypatch.setattr(reporter, "save_checkpoint", real_save)


def readme_blocks():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Your own method", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    toml = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    return python, tomllib.loads(toml)["project"]["entry-points"]["invaspread.methods"]


def install_dist(site: Path, dist: str, version: str, points: dict, files: dict) -> None:
    """An installed distribution as importlib.metadata sees it: ``files`` (relative path -> text) in ``site`` and a
    dist-info whose entry points are ``points`` (group -> {name: "module:attr"})."""
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in named.items())
                                                   for group, named in points.items()))


def install_readme_plugin(site):
    """The README's module and entry-point lines as an installed distribution (a dist-info on the path)."""
    python, points = readme_blocks()
    assert len(python.strip().splitlines()) <= 45
    module = points["align_uniform"].split(":")[0]
    install_dist(site, "my-methods", "0.1", {"invaspread.methods": points}, {f"{module}.py": python})
