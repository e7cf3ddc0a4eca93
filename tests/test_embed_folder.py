"""``invaspread.embed_folder(run, folder) -> (paths, features)`` (issue 29, 5): against the network applied by
hand to the images (ToTensor + Normalize written out, images already at the run's size), and against what the
``embed`` command writes."""

import numpy as np
import torch

import invaspread
from conftest import noise_image
from invaspread.cli import main
from invaspread.config import from_dict
from invaspread.data.transforms import normalisation
from invaspread.models import build_model


def by_hand(run, files):
    """The run's network, float32, on the images normalised by hand: the reference."""
    state = torch.load(run / "last.pt", weights_only=True)
    cfg = from_dict(state["config"])
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    mean, std = (np.asarray(v, dtype=np.float32).reshape(3, 1, 1) for v in normalisation(cfg.data))
    from PIL import Image

    x = np.stack([(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255 - mean) / std
                  for f in files])
    with torch.no_grad():
        z = model.eval()(torch.from_numpy(x)).double()
    return torch.nn.functional.normalize(z, dim=1).numpy()


def test_embed_folder_is_the_network_on_the_folder_and_the_embed_command(tiny_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "album").mkdir(parents=True)
    names = ["b.png", "a.png", "album/c.png"]
    for i, name in enumerate(names):
        noise_image(i).save(folder / name)                    # 32 x 32: the run's size, no resize involved
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"not a png")         # unreadable: skipped, named on stderr
    paths, features = invaspread.embed_folder(tiny_run, folder)
    assert paths == [str(folder / n) for n in ("a.png", "album/c.png", "b.png")]   # sorted by path, recursive
    assert features.dtype == np.float32 and features.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(features, by_hand(tiny_run, paths), atol=1e-5)
    assert "broken.png" in capsys.readouterr().err

    assert main(["embed", str(tiny_run), "--images", str(folder), "--out", str(tmp_path / "e.npz")]) == 0
    written = np.load(tmp_path / "e.npz")
    assert list(written["paths"]) == paths
    np.testing.assert_array_equal(written["embeddings"], features)


def test_embed_folder_takes_config_changes_like_embed_set(tiny_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        noise_image(i).save(folder / f"{i}.png")
    _, embedding = invaspread.embed_folder(tiny_run, folder)
    _, pooled = invaspread.embed_folder(tiny_run, folder, overrides=["eval.features=pooled"])
    assert embedding.shape[1] == 128 and pooled.shape[1] == 64   # width 8: 8 x 8 pooled channels
