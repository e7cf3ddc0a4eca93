"""A checkpoint without a content checksum (written by hand, or by invaspread before the checksum existed) is
refused by every command that reads one, unless ``--set train.trust_unchecked_checkpoint=true`` says to trust it
(issue 28, 7): nothing else could tell an edited config or weights from what was saved."""

import hashlib

import numpy as np
import pytest
import torch

from conftest import noise_image, tiny_method_config
from invaspread.cli import main
from invaspread.engine.checkpoint import load_checkpoint
from invaspread.engine.trainer import fit
from invaspread.search import SearchIndex

TRUST = "train.trust_unchecked_checkpoint=true"


def unchecked_copy(run, path, edit=None):
    """``run``'s checkpoint saved by plain ``torch.save``: no checksum; ``edit(state)`` changes it first."""
    state = torch.load(run / "last.pt", weights_only=True)
    state.pop("checksum")
    if edit:
        edit(state)
    torch.save(state, path)
    return path


def edit_config(state):
    state["config"]["eval"]["knn_k"] = 3          # what a hand edit of the saved config looks like


def image_folder(root):
    root.mkdir()
    for i in range(3):
        noise_image(i).save(root / f"{i}.png")
    return root


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("edit", [None, edit_config], ids=["as saved", "config edited"])
def test_eval_embed_index_refuse_a_checkpoint_without_checksum_and_write_nothing(tiny_run, tmp_path, capsys, edit):
    bad = unchecked_copy(tiny_run, tmp_path / "hand.pt", edit)
    images = image_folder(tmp_path / "imgs")
    commands = {"eval": ["eval", str(bad)],
                "embed": ["embed", str(bad), "--images", str(images), "--out", str(tmp_path / "e.npz")],
                "index": ["index", str(bad), "--images", str(images), "--out", str(tmp_path / "i.index")]}
    before = hashlib.sha256(bad.read_bytes()).hexdigest()
    for name, argv in commands.items():
        assert main(argv) == 2, name
        one_error_line(capsys, str(bad), "carries no checksum", TRUST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hand.pt", "imgs"]
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == before


def test_the_trust_setting_reads_it_and_the_index_keeps_the_set_features(tiny_run, tmp_path, capsys):
    bad = unchecked_copy(tiny_run, tmp_path / "hand.pt", edit_config)
    images = image_folder(tmp_path / "imgs")
    assert main(["eval", str(bad), "--set", TRUST]) == 0
    assert main(["embed", str(bad), "--images", str(images), "--out", str(tmp_path / "e.npz"), "--set", TRUST,
                 "--set", "eval.features=pooled"]) == 0
    assert main(["index", str(bad), "--images", str(images), "--out", str(tmp_path / "i.index"), "--set", TRUST,
                 "--set", "eval.features=pooled"]) == 0
    saved = load_checkpoint(tmp_path / "i.index" / "model.pt")   # the index writes its own, checksummed
    assert saved["config"]["eval"]["features"] == "pooled" and saved["config"]["eval"]["knn_k"] == 3
    assert saved["config"]["train"]["device"] == "auto"
    saved_embeddings = np.load(tmp_path / "e.npz")
    embedded = saved_embeddings["embeddings"]
    index = SearchIndex(tmp_path / "i.index")                   # the queries go through the same (pooled) features
    queries = index.embed([str(images / "0.png"), str(images / "2.png")])
    rows = {p.rsplit("/", 1)[-1]: i for i, p in enumerate(saved_embeddings["paths"])}
    np.testing.assert_allclose(queries, embedded[[rows["0.png"], rows["2.png"]]], atol=1e-5)


def test_resume_and_init_from_refuse_an_unchecked_last_pt_unless_trusted(tmp_path, capsys):
    cfg = tiny_method_config("invaspread", ["train.epochs=1", "train.cpu_bf16=false"])
    fit(cfg, tmp_path / "run", log=lambda _: None)
    unchecked_copy(tmp_path / "run", tmp_path / "run" / "last.pt")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 2
    one_error_line(capsys, "last.pt", "carries no checksum")
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    init = ["train", "--config", "digits", "--out", str(tmp_path / "fine"), "--epochs", "0",
            "--set", f"model.init_from={tmp_path / 'run'}", *[f"--set={k}" for k in (
                "model.width=8", "model.embedding_dim=16", "data.image_size=16", "data.subset_per_class=8",
                "data.num_workers=0", "train.progress=false", "eval.knn_k=5", "model.head_hidden=32")]]
    assert main(init) == 2
    one_error_line(capsys, "carries no checksum")
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--set", TRUST]) == 0
    resumed = load_checkpoint(tmp_path / "run")                 # written again, now with its checksum
    assert resumed["epoch"] == 2 and resumed["config"]["train"]["trust_unchecked_checkpoint"] is True
