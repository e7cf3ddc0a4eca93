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
import sys
import tarfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

from ..errors import InvaspreadError
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
    skipped: List[Tuple[str, str]] = field(default_factory=list)   # (path, reason): unreadable files left out

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return to_rgb(upright(img), path)
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


def upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: a phone photo's EXIF orientation tag (rotated or mirrored
    sensor data) applied, as every viewer does. Every reader (train, eval, embed, index, search, archives)
    goes through here, so a photo is the same pixels everywhere."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):   # a damaged EXIF block: the pixels as stored
        return img
    return ImageOps.exif_transpose(img) if orientation in range(2, 9) else img


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


def _note(text: str) -> None:
    print(f"invaspread: {text}", file=sys.stderr)


# data.unreadable: what a file that is not a readable image does in a folder a command reads
UNREADABLE = ("skip", "error")


def scan_image_folder(root, labelled: Optional[bool] = None, check: bool = True,
                      log: Optional[Callable[[str], None]] = _note, unreadable: str = "skip") -> FileImages:
    """Every image file under ``root``, recursively (hidden files and folders skipped), sorted by path: the one
    rule that ``train``, ``eval``, ``embed`` and ``index`` share, so all four see the same images.

    Labels come from the folder only when *every* image sits directly in a first-level ``<class>/`` folder
    (torchvision's ImageFolder layout; classes sorted by name). Otherwise the folder is unlabelled and, where it
    has sub-folders, ``log`` says why ("450 images at the top level: labels not used"); no image is dropped.
    ``labelled=True`` requires the labelled layout (an error says which images break it); ``False`` never
    labels. ``check``: open every file's header now (``unreadable_files``); ``unreadable`` (``data.unreadable``)
    says what a file that is not a readable image does: "skip" (left out, counted and named in one line through
    ``log``, listed in the source's ``skipped``) or "error" (all of them named in one error). ``index`` reads
    every file once anyway, so it passes ``check=False`` and skips them as it goes, the same way."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if _is_image(path.name) and not any(part.startswith(".") for part in relative.parts) and path.is_file():
            found.append(relative)
    found.sort(key=lambda rel: rel.parts)
    if not found:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    loose = [rel for rel in found if len(rel.parts) == 1]
    nested = [rel for rel in found if len(rel.parts) > 2]
    why = None
    if loose:
        why = f"{_count(len(loose), 'image')} at the top level (e.g. {loose[0]})"
    elif nested:
        why = f"{_count(len(nested), 'image')} in nested folders (e.g. {nested[0]})"
    if labelled and why:
        raise DataError(f"{root} must hold images in <class>/ sub-folders only (<class>/<image>), but it has {why}")
    paths = [str(root / rel) for rel in found]
    if labelled is False or why:
        if why and labelled is None and (loose and len(loose) < len(found) or nested) and log is not None:
            log(f"{root}: {why}: labels not used ({_count(len(found), 'unlabelled image')})")
        source = FileImages(paths)
    else:
        classes = sorted({rel.parts[0] for rel in found})
        number = {name: i for i, name in enumerate(classes)}
        source = FileImages(paths, np.asarray([number[rel.parts[0]] for rel in found], dtype=np.int64), classes)
    if check:
        bad = unreadable_files(source.paths)
        if bad and unreadable == "error":
            raise DataError(f"{len(bad)} of {len(source)} files under {root} are not readable images: "
                            f"{describe_unreadable(bad)} (data.unreadable=error; remove or replace them)")
        if bad:
            broken = {path for path, _ in bad}
            source = source.subset([i for i, path in enumerate(source.paths) if path not in broken])
            source.skipped = bad
            if not len(source):
                raise DataError(f"none of the {len(bad)} image files under {root} is readable: {describe_unreadable(bad)}")
            if log is not None:
                log(f"{root}: skipped {_count(len(bad), 'unreadable image')}: {describe_unreadable(bad)} (set "
                    f"data.unreadable=error to stop instead)")
    return source


def describe_unreadable(bad: Sequence[Tuple[str, str]], first: int = 3) -> str:
    """The first few unreadable files and why, and how many more: one bounded line however many there are."""
    shown = "; ".join(f"{path} ({reason[:120]})" for path, reason in bad[:first])
    return shown + (f"; and {len(bad) - first} more" if len(bad) > first else "")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def unreadable_files(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """(path, reason) of every file whose header does not open as an image (no decoding: about 50 us a file): a
    file that is not an image, an empty one or a decompression bomb is found up front, all of them at once, not
    by a DataLoader worker when it happens to be sampled."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.size
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            bad.append((path, " ".join(str(err).split())))
    return bad


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
    entry = archive_entry(archive, splits, cache_dir)
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


def archive_entry(archive: Path, splits: Sequence[str], cache_dir: Optional[str] = None) -> Path:
    """The cache entry of an archive's ``splits``: ``NAME-<16 hex of a SHA-1 of its bytes and the splits>.npz``
    (its lock: the same name ending in ``.lock``)."""
    key = hashlib.sha1(f"{file_digest(archive)}|{sorted(splits)}".encode()).hexdigest()[:16]
    return cache_folder(cache_dir) / f"{Path(archive).name.split('.')[0]}-{key}.npz"


MAX_MEMBER_BYTES = 256 * 1024 ** 2  # no image file is this large; a bigger member is refused, never read


ARCHIVE_MEMORY_LIMIT = 8 * 1024 ** 3  # decoded bytes an archive may take in RAM (CIFAR-10: 184 MB)


def _decode_archive(archive: Path, splits: Sequence[str], progress: bool) -> dict:
    """Every image of ``splits`` in the archive: {"classes", "<split>_images", "<split>_labels"} arrays.

    Members are decoded as they stream past (never held as compressed bytes), each checked against the first
    image of its split for size before it is decoded, and the decoded total against ``ARCHIVE_MEMORY_LIMIT``:
    memory stays bounded by the images themselves, whatever the archive holds."""
    from tqdm.auto import tqdm

    pattern = re.compile(r"^(?:.*/)?(" + "|".join(map(re.escape, splits)) + r")/([^/]+)/([^/]+)$")
    decoded: dict = {s: defaultdict(list) for s in splits}  # split -> class -> [(name, image array)]
    first: dict = {}   # split -> (member, (H, W))
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tqdm(tar, desc=f"decoding {archive.name}", disable=not progress, leave=False):
                m = pattern.match(member.name)
                if not member.isfile() or m is None or not _is_image(m.group(3)):
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{archive}: member {member.name} is {member.size / 1024 ** 2:.0f} MiB; an image "
                                    f"file over {MAX_MEMBER_BYTES // 1024 ** 2} MiB is refused (not read)")
                split = m.group(1)
                image = _decode_member(archive, member.name, tar.extractfile(member), first.setdefault(split, None))
                first[split] = first[split] or (member.name, image.shape)
                total += image.nbytes
                if total > ARCHIVE_MEMORY_LIMIT:
                    raise DataError(f"{archive}: its images decode to more than {ARCHIVE_MEMORY_LIMIT / 1024 ** 3:.0f} "
                                    f"GiB; extract it and train on the folder with data.in_memory=false")
                decoded[split][m.group(2)].append((m.group(3), image))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read archive {archive}: {' '.join(str(err).split()) or type(err).__name__} (expected "
                        f"a .tar.gz of {'|'.join(splits)}/<class>/<image> files)") from err
    classes = sorted(set().union(*[decoded[s].keys() for s in splits]))
    if not classes:
        raise DataError(f"archive {archive} has no images laid out as {'|'.join(splits)}/<class>/<file>")
    out = {"classes": np.asarray(classes)}
    for s in splits:
        rows = [(label, image) for label, c in enumerate(classes)
                for _, image in sorted(decoded[s].get(c, []), key=lambda item: item[0])]
        if not rows:
            raise DataError(f"archive {archive} has no images under split '{s}/'")
        out[f"{s}_images"] = np.stack([image for _, image in rows])
        out[f"{s}_labels"] = np.asarray([label for label, _ in rows], dtype=np.int64)
        decoded[s].clear()
    return out


def _decode_member(archive: Path, name: str, data, first) -> np.ndarray:
    """One archive member as an (H, W, 3) uint8 array; one of another size than the split's ``first`` image is
    refused from its header, before it is decoded."""
    try:
        img = upright(Image.open(io.BytesIO(data.read())))
        if first is not None and (img.size[1], img.size[0]) != first[1][:2]:
            raise DataError(f"archive {archive}: {name} is {img.size[0]}x{img.size[1]} but {first[0]} is "
                            f"{first[1][1]}x{first[1][0]}; every image of a split must have one size")
        return np.asarray(to_rgb(img, f"{archive}: {name}"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err))  # PIL names the buffer
        raise DataError(f"{archive}: member {name} is not a readable image ({reason})") from err


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
