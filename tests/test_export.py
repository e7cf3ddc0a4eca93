"""``invaspread export`` (issue 29, 2): the exported file, run by onnxruntime or ``torch.jit.load`` on images
prepared only from ``FILE.json`` (PIL and numpy, no invaspread), gives ``embed``'s embeddings to 1e-4, for a
batch size other than the one it was exported with."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import noise_image
from invaspread.cli import main


def prepared(path, description):
    """What a deployment without invaspread does with FILE.json: resize (and crop), [0, 1], channels first."""
    img = Image.open(path).convert("RGB")
    for step in description["preprocess"]:
        if step["op"] == "resize" and "shorter_side" in step:
            w, h = img.size
            scale = step["shorter_side"] / min(w, h)
            img = img.resize((max(step["shorter_side"], int(w * scale)), max(step["shorter_side"], int(h * scale))),
                             Image.BILINEAR)
        elif step["op"] == "resize":
            img = img.resize((step["width"], step["height"]), Image.BILINEAR)
        elif step["op"] == "center_crop":
            w, h, size = *img.size, step["size"]
            left, top = round((w - size) / 2), round((h - size) / 2)
            img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255


def run_torchscript(path, x):
    return torch.jit.load(str(path))(torch.from_numpy(x)).detach().numpy()


def run_onnx(path, x):
    onnxruntime = pytest.importorskip("onnxruntime")
    return onnxruntime.InferenceSession(str(path)).run(["embeddings"], {"images": x})[0]


@pytest.mark.parametrize("fmt, runtime", [("torchscript", run_torchscript), ("onnx", run_onnx)])
@pytest.mark.parametrize("features", ["embedding", "pooled"])
def test_the_exported_network_gives_embeds_numbers(tiny_run, tmp_path, capsys, fmt, runtime, features):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(5):
        noise_image(i, size=(40, 36) if i % 2 else (32, 32)).save(images / f"{i}.png")   # some resized
    sets = ["--set", f"eval.features={features}"]
    out = tmp_path / f"model.{fmt}"
    assert main(["export", str(tiny_run), "--format", fmt, "--out", str(out), *sets]) == 0
    description = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert description["output"]["features"] == features and description["input"]["name"] == "images"
    assert main(["embed", str(tiny_run), "--images", str(images), "--out", str(tmp_path / "e.npz"), *sets]) == 0
    embedded = np.load(tmp_path / "e.npz")
    x = np.stack([prepared(p, description) for p in embedded["paths"]])        # 5 images: exported with 2
    got = runtime(out, x)
    assert got.shape == embedded["embeddings"].shape == (5, description["output"]["shape"][1])
    np.testing.assert_allclose(got, embedded["embeddings"], atol=1e-4)


def test_export_never_replaces_a_file_and_names_a_bad_format(tiny_run, tmp_path, capsys):
    mine = tmp_path / "model.pt.json"
    mine.write_text("the user's own notes")
    assert main(["export", str(tiny_run), "--format", "torchscript", "--out", str(tmp_path / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.pt.json" in err
    assert mine.read_text() == "the user's own notes" and sorted(p.name for p in tmp_path.iterdir()) == [
        "model.pt.json"]
