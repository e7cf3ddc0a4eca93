"""`invaspread index` / `search`: both search paths equal brute force; the index holds the network's own
embeddings; unreadable files are skipped and listed."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from invaspread.cli import main
from invaspread.data.eval_transform import eval_transform
from invaspread.data.transforms import normalisation
from invaspread.engine.checkpoint import load_run
from invaspread.search import SearchIndex, build_index, exact_search



def brute_force(vectors, queries, k):
    """Scores and rows of the k largest inner products, by a plain sort of every score."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


def unit_rows(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk_rows", [7, 64, 1 << 18])
def test_exact_search_equals_brute_force(chunk_rows):
    vectors, queries = unit_rows(500, 16, 0), unit_rows(9, 16, 1)
    scores, rows = exact_search(vectors, queries, 12, chunk_rows=chunk_rows)
    want_scores, want_rows = brute_force(vectors, queries, 12)
    assert (rows == want_rows).all()
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_faiss_exact_and_ivf_equal_brute_force():
    faiss = pytest.importorskip("faiss")
    vectors, queries = unit_rows(2000, 32, 2), unit_rows(5, 32, 3)
    want_scores, want_rows = brute_force(vectors, queries, 10)
    flat = faiss.IndexFlatIP(32)
    flat.add(vectors)
    scores, rows = flat.search(queries, 10)
    assert (rows == want_rows).all()
    from invaspread.search.index import _build_faiss

    # IVF visiting every list is exact too
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        meta = _build_faiss(faiss, vectors, Path(tmp) / "ivf.index", ivf=8)
        ivf = faiss.read_index(str(Path(tmp) / "ivf.index"))
        ivf.nprobe = 8
        scores, rows = ivf.search(queries, 10)
    assert meta["ivf"] == 8 and (rows == want_rows).all()
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.fixture(scope="module")
def run_and_images(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    images = root / "photos"
    (images / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(30):
        size = (32, 32) if i % 3 else (40, 24)   # mixed sizes: the evaluation transform resizes
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            images / ("nested" if i % 2 else ".") / f"img{i:02d}.png")
    (images / "nested" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "empty.png").write_bytes(b"")
    return tiny_run, images


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_index_holds_the_networks_embeddings_and_search_equals_brute_force(run_and_images, tmp_path, backend):
    if backend == "faiss":
        pytest.importorskip("faiss")
    run, images = run_and_images
    logs = []
    meta = build_index(run, images, tmp_path / "p.index", batch_size=7, backend=backend, progress=False,
                       log=logs.append)
    assert meta["count"] == 30 and sorted(s["path"].rsplit("/", 1)[1] for s in meta["skipped"]) == \
        ["broken.jpg", "empty.png"]
    said = [line for line in logs if "unreadable" in line and "broken.jpg" in line]   # one line names them
    assert len(said) == 1 and "skipped 2 unreadable files" in said[0] and "empty.png" in said[0], logs
    index = SearchIndex(tmp_path / "p.index")
    assert (index.meta["faiss"] is not None) == (backend == "faiss")
    # every row is the run's network applied to that file with the evaluation transform
    cfg, _, model, _ = load_run(run)
    transform = eval_transform(cfg.augment, cfg.data.image_size, *normalisation(cfg.data), cfg.data.resize)
    with torch.no_grad():
        for row in (0, 11, 29):
            with Image.open(index.paths[row]) as img:
                z = torch.nn.functional.normalize(model(transform(img.convert("RGB"))[None]), dim=1)[0].numpy()
            np.testing.assert_allclose(index.embeddings[row], z, atol=1e-5)
    queries = index.embed([index.paths[5], index.paths[20]])
    scores, rows = index.search(queries, 8, backend=backend)
    want_scores, want_rows = brute_force(np.asarray(index.embeddings), queries, 8)
    assert (rows == want_rows).all() and list(rows[:, 0]) == [5, 20]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_search_cli_json_and_errors(run_and_images, tmp_path, capsys):
    run, images = run_and_images
    out = tmp_path / "p.index"
    assert main(["index", str(run), "--images", str(images), "--out", str(out), "--backend", "torch"]) == 0
    query = str(images / "img00.png")
    capsys.readouterr()
    assert main(["search", str(out), query, query, "-k", "3", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        answer = json.loads(line)
        assert answer["query"] == query   # each line names its query
        hits = answer["results"]
        assert len(hits) == 3 and set(hits[0]) == {"path", "score"}
        assert hits[0]["path"] == query and abs(hits[0]["score"] - 1.0) < 1e-5
        assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    # --exclude-self: the same ranking without the query's own file, still k results
    relative = os.path.relpath(query)   # the same file named another way
    assert main(["search", str(out), relative, "-k", "3", "--json", "--exclude-self"]) == 0
    without = json.loads(capsys.readouterr().out)["results"]
    assert [h["path"] for h in without] == [h["path"] for h in hits[1:]] + [without[-1]["path"]]
    assert len(without) == 3 and query not in [h["path"] for h in without]
    assert main(["index", str(run), "--images", str(images), "--out", str(out)]) == 2          # exists
    assert main(["search", str(tmp_path), query]) == 2                                          # not an index
    assert main(["search", str(out), str(images / "missing.png")]) == 2
    assert main(["search", str(out), query, "--backend", "faiss"]) == 2                         # built without
    assert main(["index", str(run), "--images", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 5 and all(e.startswith("invaspread: error: ") for e in errors)


def test_a_checkpoint_loaded_into_another_architecture_is_one_line(run_and_images, capsys):
    run, _ = run_and_images
    assert main(["eval", str(run), "--set", "model.width=16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit the model.* config" in err and "Traceback" not in err
