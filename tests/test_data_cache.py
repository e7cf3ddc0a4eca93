"""The decoded-image cache (issue 11, item 5): checked entries rebuilt when bad, a content key, one entry per
archive with subsets sliced from it, exclusive unique temp files, a lock per entry (two real processes), and
``invaspread cache list|clear``."""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from conftest import write_imagefolder_archive
from invaspread.cli import main
from invaspread.data.cache import load_entry
from invaspread.data.sources import DataError, read_imagefolder_archive


def toy(tmp_path, counts=None, name="toy.tar.gz"):
    return write_imagefolder_archive(tmp_path / name, counts or {"train": [4, 3], "test": [2, 2]}, prefix="toy/")


def read(archive, cache, per_class=None):
    return read_imagefolder_archive(archive, ["train", "test"], per_class, cache_dir=str(cache))


def entries(cache):
    return sorted(cache.glob("*.npz"))


def test_subsets_are_slices_of_one_full_entry(tmp_path):
    archive, cache = toy(tmp_path), tmp_path / "cache"
    full = read(archive, cache)
    two = read(archive, cache, {"train": 2})
    one = read(archive, cache, {"train": 1, "test": 1})
    assert len(entries(cache)) == 1
    assert list(two["train"].labels) == [0, 0, 1, 1] and np.array_equal(two["train"].images, full["train"].images[[0, 1, 4, 5]])
    assert list(one["test"].labels) == [0, 1] and len(one["train"]) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_entry_is_rebuilt_not_fatal(tmp_path, damage):
    archive, cache = toy(tmp_path), tmp_path / "cache"
    good = read(archive, cache)
    entry = entries(cache)[0]
    data = bytearray(entry.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xFF
    else:
        data = bytearray(b"not a zip file at all")
    entry.write_bytes(bytes(data))
    assert load_entry(entry) is None
    again = read(archive, cache)
    assert np.array_equal(again["train"].images, good["train"].images)
    assert load_entry(entries(cache)[0]) is not None, "the entry was rewritten whole"


def test_a_replaced_archive_with_the_same_size_and_mtime_is_decoded_again(tmp_path):
    cache = tmp_path / "cache"
    archive = toy(tmp_path)
    first = read(archive, cache)
    stat = archive.stat()
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:   # same names, the two classes' images swapped
        for (m, _), (_, data) in zip(members, members[::-1]):
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    os.replace(other, archive)
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = read(archive, cache)
    assert not np.array_equal(second["train"].images, first["train"].images)


def test_planted_links_at_the_entry_and_temp_names_never_redirect_a_write(tmp_path):
    archive, cache = toy(tmp_path), tmp_path / "cache"
    read(archive, cache)
    entry = entries(cache)[0]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    entry.unlink()
    entry.symlink_to(victim)                                       # a link planted at the entry's name
    (cache / (entry.stem + ".tmp.npz")).symlink_to(victim)        # and at the old fixed temp name
    out = read(archive, cache)
    assert len(out["train"]) == 7 and victim.read_text() == "precious"
    assert not entry.is_symlink() and load_entry(entry) is not None
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "no temp file left behind"


def test_two_processes_decoding_the_same_archive_share_one_valid_entry(tmp_path):
    archive, cache = toy(tmp_path, {"train": [60, 60], "test": [20, 20]}), tmp_path / "cache"
    code = ("import sys, numpy as np; from invaspread.data.sources import read_imagefolder_archive as r; "
            "o = r(sys.argv[1], ['train', 'test'], None, cache_dir=sys.argv[2]); "
            "print(int(o['train'].images.astype(np.int64).sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(archive), str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    expected = int(read(archive, tmp_path / "fresh")["train"].images.astype(np.int64).sum())
    assert [int(out.strip()) for out, _ in results] == [expected, expected]
    assert len(entries(cache)) == 1 and load_entry(entries(cache)[0]) is not None


def test_an_oversized_member_is_refused_without_reading_it(tmp_path, monkeypatch):
    import invaspread.data.sources as sources

    archive = toy(tmp_path)
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 100)
    with pytest.raises(DataError, match=r"member toy/train/c0/0000.jpg is .* refused"):
        read(archive, tmp_path / "cache")


def test_cache_command_lists_and_clears(tmp_path, capsys):
    archive, cache = toy(tmp_path), tmp_path / "cache"
    read(archive, cache)
    assert main(["cache", "list", "--cache-dir", str(cache)]) == 0
    listed = capsys.readouterr().out
    assert "1 entry," in listed and str(archive) in listed
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert entries(cache) == [] and "removed" in capsys.readouterr().out
