"""``invaspread index --add INDEX --images DIR`` (issue 29, 3): the grown index equals an index built from
scratch over the union, nothing is embedded twice, and a failure or kill leaves the old index as it was."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from conftest import noise_image
from invaspread.cli import main
from invaspread.search import SearchIndex, grow

BACKENDS = ["torch", pytest.param("faiss", marks=pytest.mark.skipif(grow.faiss_module(False) is None,
                                                                    reason="faiss-cpu is not installed"))]


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def photos(root, first, count):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + count):
        noise_image(i).save(root / f"{i:02d}.png")
    return root


def rows_by_path(index):
    return {p: np.asarray(index.embeddings[r]) for r, p in enumerate(index.paths)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_added_index_equals_one_built_over_the_union(tiny_run, tmp_path, capsys, backend):
    folder = photos(tmp_path / "photos", 0, 5)
    grown = tmp_path / "grown.index"
    assert main(["index", str(tiny_run), "--images", str(folder), "--out", str(grown), "--backend", backend]) == 0
    photos(folder / "new album", 5, 4)                         # the collection grows: 4 photos, one folder more
    assert main(["index", "--add", str(grown), "--images", str(folder)]) == 0
    assert "4 new images" in capsys.readouterr().out
    scratch = tmp_path / "scratch.index"
    assert main(["index", str(tiny_run), "--images", str(folder), "--out", str(scratch), "--backend", backend]) == 0

    old_and_new, reference = SearchIndex(grown), SearchIndex(scratch)
    assert old_and_new.meta["count"] == reference.meta["count"] == 9
    assert sorted(old_and_new.paths) == sorted(reference.paths)
    assert old_and_new.paths[:5] == reference.paths[:5]        # the old rows first, unchanged
    ours, theirs = rows_by_path(old_and_new), rows_by_path(reference)
    for path in theirs:   # other batches (5 + 4 images, not 9): the same network, up to the kernels' rounding
        np.testing.assert_allclose(ours[path], theirs[path], atol=1e-6)
    queries = reference.embed([str(folder / "02.png"), str(folder / "new album" / "07.png")])
    for index in (old_and_new, reference):                    # search answers over old and new together
        assert bool(index.meta["faiss"]) == (backend == "faiss")
    (s1, r1), (s2, r2) = old_and_new.search(queries, 9), reference.search(queries, 9)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    assert [[old_and_new.paths[r] for r in row] for row in r1] == [[reference.paths[r] for r in row] for row in r2]
    assert old_and_new.meta["added"][0]["count"] == 4


def test_adding_what_is_there_embeds_nothing_and_changes_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    folder = photos(tmp_path / "photos", 0, 4)
    index = tmp_path / "p.index"
    assert main(["index", str(tiny_run), "--images", str(folder), "--out", str(index), "--backend", "torch"]) == 0
    before = snapshot(index)
    embedded = []
    real = grow.embed_into
    monkeypatch.setattr(grow, "embed_into", lambda vectors, paths, *a: embedded.append(list(paths)) or
                        real(vectors, paths, *a))
    assert main(["index", "--add", str(index), "--images", str(folder)]) == 0
    assert "in the index already; nothing added" in capsys.readouterr().out
    assert snapshot(index) == before and embedded == []
    photos(folder, 4, 2)
    (folder / "broken.png").write_bytes(b"not a png")
    assert main(["index", "--add", str(index), "--images", str(folder)]) == 0
    assert embedded == [[str(folder / "04.png"), str(folder / "05.png"), str(folder / "broken.png")]]
    meta = json.loads((index / "meta.json").read_text())
    assert meta["count"] == 6 and [s["path"] for s in meta["skipped"]] == [str(folder / "broken.png")]
    assert "broken.png" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.index", "photos"]   # no lock, no building left


@pytest.mark.parametrize("atomic_swap", [True, False], ids=["renameat2", "two renames"])
def test_a_failure_while_adding_leaves_the_old_index_whole(tiny_run, tmp_path, monkeypatch, capsys, atomic_swap):
    folder = photos(tmp_path / "photos", 0, 3)
    index = tmp_path / "p.index"
    assert main(["index", str(tiny_run), "--images", str(folder), "--out", str(index), "--backend", "torch"]) == 0
    before = snapshot(index)
    photos(folder, 3, 2)

    def interrupted(vectors, paths, *args):
        vectors.write(b"\0" * 64)                              # half-written rows, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(grow, "embed_into", interrupted)
    assert main(["index", "--add", str(index), "--images", str(folder)]) == 130
    assert "no index was written or changed" in capsys.readouterr().err
    assert snapshot(index) == before and sorted(p.name for p in tmp_path.iterdir()) == ["p.index", "photos"]
    monkeypatch.undo()
    if not atomic_swap:
        monkeypatch.setattr("invaspread.outputs.exchange_folders", lambda a, b: False)
    assert main(["index", "--add", str(index), "--images", str(folder)]) == 0
    assert SearchIndex(index).meta["count"] == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["p.index",
                                                                                                     "photos"]


def test_index_add_arguments_are_checked_in_one_line(tiny_run, tmp_path, capsys):
    folder = photos(tmp_path / "photos", 0, 2)
    cases = [(["index", "--add", str(tmp_path / "none.index"), "--images", str(folder)], "not an index folder"),
             (["index", str(tiny_run), "--add", str(tmp_path / "x"), "--images", str(folder)], "takes no RUN"),
             (["index", "--add", str(folder), "--images", str(folder), "--out", "y"], "takes no --out"),
             (["index", "--images", str(folder)], "needs RUN_DIR_OR_CHECKPOINT and --out"),
             (["index", "--add", str(folder), "--images", str(folder)], "not an invaspread index")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    shutil.rmtree(folder / ".." / "photos")                    # nothing was written beside it meanwhile
    assert sorted(p.name for p in tmp_path.iterdir()) == []
