"""Where images come from: in-memory arrays or files on disk, with optional labels.

Two interchangeable containers (no base class, same three members):
``len(source)``, ``source.image(i) -> PIL.Image`` (RGB) and ``source.labels`` (int64 array or None).

Readers here cover the generic layouts: a torchvision ``cifar-10-batches-py`` folder, an image
folder (``root/<class>/*.jpg`` or a flat folder of unlabelled images), an ImageFolder-layout
``.tar.gz`` archive (the shared CIFAR-10 JPEG copy) and scikit-learn's bundled digits.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from ..config import InvaspreadError
from .cache import cache_folder, entry_lock, file_digest, load_entry, store_entry
from .cache import metadata as cache_metadata

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp", ".tif", ".tiff")
IN_MEMORY_LIMIT_BYTES = 2 * 1024 ** 3


class DataError(InvaspreadError):
    pass


@dataclass
class ArrayImages:
    """Decoded images of one size held in RAM: ``images`` (N, H, W, 3) uint8."""

    images: np.ndarray
    labels: Optional[np.ndarray] = None
    classes: Optional[List[str]] = None

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"ArrayImages expects (N, H, W, 3) uint8 images, got {self.images.shape} "
                            f"{self.images.dtype}")

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def subset(self, indices) -> "ArrayImages":
        labels = None if self.labels is None else self.labels[indices]
        return ArrayImages(self.images[indices], labels, self.classes)


@dataclass
class FileImages:
    """Images read from disk on every access (large or variable-size collections)."""

    paths: List[str]
    labels: Optional[np.ndarray] = None
    classes: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return to_rgb(img, path)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path}: {err}") from err

    def subset(self, indices) -> "FileImages":
        labels = None if self.labels is None else self.labels[indices]
        return FileImages([self.paths[i] for i in indices], labels, self.classes)

    def to_memory(self, progress: bool = False) -> "ArrayImages":
        """Decode every image once; all images must share one size."""
        from tqdm.auto import tqdm

        first = np.asarray(self.image(0))
        out = np.empty((len(self),) + first.shape, np.uint8)
        for i in tqdm(range(len(self)), desc="decoding images", disable=not progress, leave=False):
            arr = np.asarray(self.image(i))
            if arr.shape != first.shape:
                raise DataError(f"{self.paths[i]} is {arr.shape[1]}x{arr.shape[0]} but {self.paths[0]} is "
                                f"{first.shape[1]}x{first.shape[0]}; set data.in_memory=false or resize the images")
            out[i] = arr
        return ArrayImages(out, self.labels, self.classes)


def to_rgb(img: Image.Image, name) -> Image.Image:
    """RGB, 8 bits per channel. PIL's ``convert("RGB")`` clips 16-bit and 32-bit integer images at 255
    (all white) and maps floats badly (all black): those are rescaled by their real range instead --
    16-bit by 65535 / 255, floats in [0, 1] by 255 -- and anything else is refused by name."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
                raise DataError(f"{name}: a floating-point image with values outside 0..1 (min {arr.min():.4g}, "
                                f"max {arr.max():.4g}); convert it to 8-bit first")
            scaled = arr * 255
        else:
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise DataError(f"{name}: a 32-bit integer image with values outside 0..65535; convert it to "
                                f"8-bit first")
            scaled = arr / 257  # 65535 -> 255
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    return img.convert("RGB")


def first_per_class(labels: np.ndarray, n: Optional[int]) -> np.ndarray:
    """Indices of the first ``n`` items of every class, in their original order (all when n is None)."""
    if n is None:
        return np.arange(len(labels))
    seen: dict = defaultdict(int)
    keep = []
    for i, y in enumerate(labels):
        if seen[int(y)] < n:
            seen[int(y)] += 1
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def scan_image_folder(root, labelled: Optional[bool] = None) -> FileImages:
    """``root/<class>/<image>`` (labelled, classes sorted as in torchvision's ImageFolder) or a flat
    folder of images (unlabelled). Files are sorted by name within each class."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if labelled is None:
        labelled = bool(class_dirs)
    if labelled:
        paths, labels = [], []
        for label, d in enumerate(class_dirs):
            files = sorted(p for p in d.rglob("*") if p.is_file() and _is_image(p.name))
            paths += [str(p) for p in files]
            labels += [label] * len(files)
        source = FileImages(paths, np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs])
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and _is_image(p.name))
        source = FileImages([str(p) for p in files])
    if len(source) == 0:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    check_headers(source.paths, root)
    return source


def check_headers(paths: Sequence[str], root) -> None:
    """Open every file's header (no decoding: about 50 us a file) so that a file that is not an image, an
    empty one or a decompression bomb is reported up front, all of them at once, not by a DataLoader
    worker when it happens to be sampled."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.size
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            bad.append(f"{path} ({' '.join(str(err).split())})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(f"{len(bad)} of {len(paths)} files under {root} are not readable images: {shown}. "
                        f"Remove or replace them")


def maybe_to_memory(source: FileImages, in_memory: Optional[bool], progress: bool = True):
    """Decode into RAM when asked (True) or, for None, when all images look small enough."""
    if in_memory is False:
        return source
    if in_memory is None:
        with Image.open(source.paths[0]) as img:
            w, h = img.size
        if len(source) * w * h * 3 > IN_MEMORY_LIMIT_BYTES:
            return source
        try:
            return source.to_memory(progress)
        except DataError:
            return source  # variable sizes: stay on disk
    return source.to_memory(progress)


def read_imagefolder_archive(archive, splits: Sequence[str], per_class: Optional[dict] = None,
                             cache_dir: Optional[str] = None, progress: bool = False) -> dict:
    """Decode an ImageFolder-layout ``.tar.gz`` (``[prefix/]split/<class>/<file>``) into ArrayImages.

    Returns {split: ArrayImages}, rows ordered by (class, file name). ``per_class[split]`` keeps only the
    first N files (by name) of each class. The whole archive is decoded once into a checked cache entry
    keyed by its content (``invaspread.data.cache``); subsets are slices of it.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist")
    per_class = per_class or {}
    key = hashlib.sha1(f"{file_digest(archive)}|{sorted(splits)}".encode()).hexdigest()[:16]
    entry = cache_folder(cache_dir) / f"{archive.name.split('.')[0]}-{key}.npz"
    arrays = load_entry(entry)
    if arrays is None:
        with entry_lock(entry):
            arrays = load_entry(entry)  # built by another process while this one waited for the lock
            if arrays is None:
                arrays = _decode_archive(archive, splits, progress)
                store_entry(entry, {**arrays, "__meta__": cache_metadata(archive, splits)})
    classes = [str(c) for c in arrays["classes"]]
    out = {}
    for s in splits:
        images, labels = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if per_class.get(s) is not None:
            keep = first_per_class(labels, per_class[s])
            images, labels = images[keep], labels[keep]
        out[s] = ArrayImages(images, labels, classes)
    return out


MAX_MEMBER_BYTES = 256 * 1024 ** 2  # no image file is this large; a bigger member is refused, never read


def _decode_archive(archive: Path, splits: Sequence[str], progress: bool) -> dict:
    """Every image of ``splits`` in the archive: {"classes", "<split>_images", "<split>_labels"} arrays."""
    pattern = re.compile(r"^(?:.*/)?(" + "|".join(map(re.escape, splits)) + r")/([^/]+)/([^/]+)$")
    raw: dict = {s: defaultdict(list) for s in splits}  # split -> class -> [(name, bytes)]
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                m = pattern.match(member.name)
                if not member.isfile() or m is None or not _is_image(m.group(3)):
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{archive}: member {member.name} is {member.size / 1024 ** 2:.0f} MiB; an image "
                                    f"file over {MAX_MEMBER_BYTES // 1024 ** 2} MiB is refused (not read)")
                raw[m.group(1)][m.group(2)].append((m.group(3), tar.extractfile(member).read()))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot read archive {archive}: {err}") from err
    classes = sorted(set().union(*[raw[s].keys() for s in splits]))
    if not classes:
        raise DataError(f"archive {archive} has no images laid out as {'|'.join(splits)}/<class>/<file>")
    from tqdm.auto import tqdm

    out = {"classes": np.asarray(classes)}
    for s in splits:
        images, labels = [], []
        todo = [(label, f"{s}/{c}/{name}", data) for label, c in enumerate(classes)
                for name, data in sorted(raw[s].get(c, []))]
        for label, member, data in tqdm(todo, desc=f"decoding {archive.name} {s}", disable=not progress, leave=False):
            try:
                images.append(np.asarray(to_rgb(Image.open(io.BytesIO(data)), f"{archive}: {member}")))
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err))  # PIL names the buffer
                raise DataError(f"{archive}: member {member} is not a readable image ({reason})") from err
            labels.append(label)
        if not images:
            raise DataError(f"archive {archive} has no images under split '{s}/'")
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise DataError(f"archive {archive}: images of split '{s}' differ in size {sorted(shapes)[:3]}")
        out[f"{s}_images"], out[f"{s}_labels"] = np.stack(images), np.asarray(labels, dtype=np.int64)
    return out


CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what real ``cifar-10-batches-py`` files hold: dicts, lists, str/bytes, numbers and
    numpy arrays. Any other global (``os.system``, ``builtins.open``, ...) is refused before it is
    looked up, so a planted batch file cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which no CIFAR-10 batch contains")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            batch = _BatchUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({err}); refusing to load it") from err
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (it holds a {type(batch).__name__}, not a dict)")
    return batch


def load_cifar10_python(root, train: bool, download: bool = False) -> ArrayImages:
    """The standard ``cifar-10-batches-py`` folder under ``root`` (pickled dicts with b"data"
    (N, 3072) uint8 and b"labels"), downloaded by torchvision first when ``download`` is set. The files
    are read with an unpickler that admits only the types real batches contain."""
    folder = Path(root) / "cifar-10-batches-py"
    if download and not folder.is_dir():
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), train=train, download=True)
        except OSError as err:  # URLError when offline
            raise DataError(f"could not download CIFAR-10 into {root}: {err}. Offline, point data.root at a "
                            f"cifar-10-batches-py folder, an image folder with train/ and test/, or "
                            f"cifar10-jpeg.tar.gz") from err
    names = CIFAR10_TRAIN_BATCHES if train else ["test_batch"]
    data, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 batch file {path} is missing; set data.download=true to download CIFAR-10")
        batch = _load_batch(path)
        try:
            data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += [int(y) for y in batch.get("labels", batch.get("fine_labels", []))]
        except (KeyError, ValueError, TypeError) as err:
            raise DataError(f"{path} is not a CIFAR-10 python batch: {err}") from err
    meta = folder / "batches.meta"
    classes = None
    if meta.is_file():
        names = _load_batch(meta).get("label_names")
        classes = [str(c) for c in names] if isinstance(names, list) else None
    images = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))
    return ArrayImages(images, np.asarray(labels, dtype=np.int64), classes)


def load_digits_images(size: int = 32) -> tuple:
    """scikit-learn's bundled 8x8 digits (1,797 images), upsampled to ``size`` and made RGB.

    Returns (train, test): a fixed stratified split, the first 70% of each class for training.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    resized = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in gray])
    images = np.repeat(resized[..., None], 3, axis=3)
    labels = digits.target.astype(np.int64)
    train_mask = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        train_mask[idx[: int(0.7 * len(idx))]] = True
    classes = [str(c) for c in range(10)]
    return (ArrayImages(images[train_mask], labels[train_mask], classes),
            ArrayImages(images[~train_mask], labels[~train_mask], classes))
