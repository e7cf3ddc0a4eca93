"""`invaspread table`, `invaspread report` and TensorBoard scalars: checked against the paper's text, the
run's metrics.jsonl, brute-force neighbours and pair counts."""

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invaspread.cli import main
from invaspread.config import load_config, resolve_config_path
from invaspread.data.sources import ArrayImages
from invaspread.engine.trainer import fit
from invaspread.report import figures
from invaspread.report.page import paper_rows_for, write_report
from invaspread.report.paper_tables import TABLES
from invaspread.report.table_runner import render, row_config, run_table

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper.txt"
TINY = ["model.width=8", "train.batch_size=64", "data.num_workers=0", "train.progress=false", "eval.knn_k=10"]


def _paper_value(text: str):
    text = text.strip()
    if text == "-":
        return None
    try:
        return float(text)
    except ValueError:
        return text  # Table 2's Training column: "None", "5K", "105K"


def paper_rows(number: int):
    """(name, values) of every row of Table ``number`` as printed in the paper's text (independent of our table
    definitions): the tab-separated block above the caption; Tables 7-8 are printed transposed."""
    if not PAPER.is_file():
        pytest.skip(f"no paper text at {PAPER}")
    lines = PAPER.read_text().splitlines()
    caption = next(i for i, line in enumerate(lines) if line.startswith(f"Table {number}:"))
    block, i = [], caption - 1
    while not lines[i].strip():
        i -= 1
    while "\t" in lines[i]:
        block.insert(0, lines[i])
        if lines[i].startswith(("Methods\t", "Strategy\t")):
            break
        i -= 1
    header, body = block[0].split("\t"), block[1:]
    if header[0] == "Strategy":
        values = body[0].split("\t")[1:]
        return [(name, (_paper_value(v),)) for name, v in zip(header[1:], values)]
    rows = []
    for line in body:
        if line.startswith("\t"):   # "Supervised Learning" / "Unsupervised Learning" section labels
            continue
        name, *values = line.split("\t")
        rows.append((name.strip(), tuple(_paper_value(v) for v in values)))
    return rows


@pytest.mark.parametrize("number", sorted(TABLES))
def test_every_table_lists_exactly_the_papers_rows_and_numbers(number, capsys):
    ours = [(row.name, tuple(row.paper)) for row in TABLES[number].rows]
    assert ours == paper_rows(number)
    assert main(["table", str(number), "--dry-run"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines()[1:] if not line.strip().startswith("#")]
    assert [line.strip().startswith(row.name) for row, line in zip(TABLES[number].rows, printed)] == \
        [True] * len(TABLES[number].rows) and len(printed) == len(TABLES[number].rows)
    for row, line in zip(TABLES[number].rows, printed):
        assert ("invaspread train --config" in line) == row.trainable


def test_dry_run_commands_build_the_rows_configs():
    """Every trainable row's command is valid and differs from the table's full row only where it should."""
    for table in TABLES.values():
        for row in table.rows:
            if row.trainable:
                cfg = row_config(row, None, None, ())
                if row.evaluate_only:
                    assert cfg.train.epochs == 0
                own = load_config(resolve_config_path(row.config)).method.name   # mom_*.yaml name their method
                assert cfg.method.name == next((s.split("=")[1] for s in row.sets if s.startswith("method.name=")), own)
    full = TABLES[8].rows[0]
    # a run trained with the Table 1 "Ours" recipe is recognised as Tables 1 / 7 / 8's full model
    cfg = load_config(resolve_config_path("cifar10"), ["data.root=/elsewhere", "train.epochs=5"]).to_dict()
    matches = {(t, r) for t, r, _ in paper_rows_for(cfg)}
    assert matches == {(1, "Ours"), (7, "Full"), (8, "Full")} and full.name == "Full"
    cfg["method"]["invaspread"]["temperature"] = 0.5
    assert paper_rows_for(cfg) == []


def test_render_puts_ours_beside_the_papers_numbers():
    table = TABLES[2]
    records = {table.rows[0].slug: {"status": "done", "metrics": {"knn_top1": 23.456, "linear_top1": 30.0},
                                    "epochs": 0, "wall_seconds": 12.0, "device": "cpu"},
               table.rows[5].slug: {"status": "failed", "error": "boom"}}
    md, text = render(table, records, Path("out"), 3, ["model.width=8"], "STL")
    rows = list(csv_rows(text))
    assert rows[0][:4] == ["row", "paper Training", "paper Linear", "paper kNN"]
    assert rows[1][:6] == ["RandomCNN", "None", "-", "22.4", "30.0", "23.5"] and rows[1][-1] == "done"
    assert rows[2][-1].startswith("not implemented: quoted") and rows[6][-1] == "failed: boom"
    assert rows[10][:4] == ["Ours", "105K", "77.9", "81.6"] and rows[10][-1] == "not run"
    assert "Shortened: every trained row ran 3 epochs" in md and "--set model.width=8" in md


def csv_rows(text):
    import csv
    import io

    return csv.reader(io.StringIO(text))


def test_table_trains_skips_and_extends_rows(tmp_path):
    """Table 8 on the bundled digits (a stand-in for CIFAR-10): every row trained, its metric in the table equal
    to its checkpoint's; run again: skipped; with more epochs: each row resumed to the new length."""
    sets = TINY + ["data.name=digits", "data.subset_per_class=40", "eval.batch_size=256"]
    logs = []
    assert run_table(8, "unused-for-digits", tmp_path, epochs=1, sets=sets, log=logs.append) == 0
    records = json.loads((tmp_path / "table8.json").read_text())
    assert set(records) == {"full", "no_da", "hard", "easy"}
    md = (tmp_path / "table8.md").read_text()
    for row in TABLES[8].rows:
        state = torch.load(tmp_path / row.slug / "last.pt", weights_only=True)
        assert state["epoch"] == 1 and records[row.slug]["metrics"]["knn_top1"] == state["metrics"]["knn_top1"]
        assert f"| {row.name} | {row.paper[0]} | {state['metrics']['knn_top1']:.1f} | 1 |" in md
    no_da = torch.load(tmp_path / "no_da" / "last.pt", weights_only=True)["config"]["augment"]
    assert (no_da["crop"], no_da["flip"], no_da["grayscale_p"], no_da["color_jitter"]) == (False, False, 0, 0)

    logs.clear()
    run_table(8, "unused-for-digits", tmp_path, epochs=1, sets=sets, log=logs.append)
    assert sum("skipped" in line for line in logs) == 4
    run_table(8, "unused-for-digits", tmp_path, epochs=2, sets=sets, log=logs.append)
    for row in TABLES[8].rows:
        epochs = [json.loads(line)["epoch"] for line in (tmp_path / row.slug / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [0, 1, 2]
        assert json.loads((tmp_path / row.slug / "overrides.jsonl").read_text().splitlines()[0])["overrides"] == \
            ["train.epochs=2"]
    assert "| Full | 83.6 |" in (tmp_path / "table8.md").read_text() and "| 2 |" in (tmp_path / "table8.md").read_text()
    # a row folder trained with other settings is never adopted
    failed = run_table(8, "unused-for-digits", tmp_path, epochs=2, sets=sets[:-1] + ["eval.batch_size=128",
                                                                                   "method.invaspread.temperature=0.2"], log=logs.append)
    assert failed == 4 and "other settings (method.invaspread.temperature)" in json.loads((tmp_path / "table8.json").read_text())[
        "full"]["error"]


def test_table_refuses_a_set_that_a_row_measures(tmp_path):
    assert main(["table", "8", "--data-dir", "x", "--out", str(tmp_path), "--set", "method.invaspread.negatives=all"]) == 2


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = load_config(None, TINY + ["train.epochs=2", "train.save_epochs=[1]", "train.tensorboard=true",
                                    "data.subset_per_class=40"])
    fit(cfg, out, log=lambda _: None)
    return out


def test_tensorboard_scalars_equal_the_metrics_lines(digits_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(digits_run / "tensorboard"))
    events.Reload()
    lines = [json.loads(s) for s in (digits_run / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("eval/knn_top1", "knn_top1"),
                     ("speed/images_per_second", "images_per_second")):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        want = [(line["epoch"], line[key]) for line in lines if key in line]
        assert [s for s, _ in got] == [s for s, _ in want]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
    seconds = [e.value for e in events.Scalars("time/epoch_seconds")]
    np.testing.assert_allclose(seconds, [line.get("train_seconds", 0) + line.get("epoch_start_seconds", 0)
                                         + line["eval_seconds"] for line in lines], rtol=1e-6)


def test_tensorboard_missing_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "train.tensorboard=true"]) == 2
    assert "pip install 'invaspread[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_report_figures_are_the_runs_data(digits_run, tmp_path):
    page = write_report([digits_run], tmp_path / "rep", images=60, queries=4, k=5, log=lambda _: None)
    text = page.read_text()
    sources = re.findall(r'src="([^"]+)"', text)
    assert sorted(sources) == sorted(["figure3.png", "run-figure5.png", "run-figure4-epoch0.png",
                                      "run-figure4-epoch1.png", "run-figure4-epoch2.png"])
    for name in sources:
        with Image.open(tmp_path / "rep" / name) as img:
            img.load()
            expected = {"figure3.png": (1100, 400), "run-figure5.png": (1100, 380)}.get(name, (6 * 78 + 6, 4 * 78))
            assert img.size == expected
    assert "60 test images" in text and "1,770 negative pairs" in text and "60 positive" in text
    # Figure 3 plots exactly metrics.jsonl: epochs, values and the cumulative logged seconds
    lines = [json.loads(s) for s in (digits_run / "metrics.jsonl").read_text().splitlines()]
    fig = figures.plot_learning_curves({"run": figures.learning_curve(lines)})
    by_epoch, by_time = fig.axes
    assert list(by_epoch.lines[0].get_xdata()) == [line["epoch"] for line in lines]
    assert list(by_epoch.lines[0].get_ydata()) == [line["knn_top1"] for line in lines]
    spent = np.cumsum([sum(line.get(k, 0.0) for k in ("train_seconds", "epoch_start_seconds", "eval_seconds"))
                       for line in lines])
    np.testing.assert_allclose(by_time.lines[0].get_xdata(), spent)
    ticks = [t for t in by_epoch.get_xticks() if by_epoch.get_xlim()[0] <= t <= by_epoch.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks   # 2 epochs: no tick at 0.5 or 1.5
    # the folder as mkdir makes it (the umask's permissions), so a web server can serve it
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "rep").stat().st_mode & 0o777 == 0o777 & ~umask


def test_pair_similarities_count_every_pair_once():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16)).eval()
    images = np.random.default_rng(0).integers(0, 256, (25, 8, 8, 3), dtype=np.uint8)
    source = ArrayImages(images, np.arange(25) % 3)

    def identity(img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255

    positives, negatives = figures.pair_similarities(model, source, identity, range(25), "cpu")
    assert positives.shape == (25,) and negatives.shape == (300,)
    with torch.no_grad():
        z = torch.nn.functional.normalize(model(torch.stack([identity(source.image(i)) for i in range(25)])), dim=1)
    naive = [float(z[i] @ z[j]) for i in range(25) for j in range(i + 1, 25)]
    np.testing.assert_allclose(negatives, naive, atol=1e-6)
    np.testing.assert_allclose(positives, 1.0, atol=1e-6)   # a deterministic "augmentation": the views agree
    counts = figures.similarity_histograms(positives, negatives)
    assert counts["positive"].sum() == 25 and counts["negative"].sum() == 300


def test_retrieval_grid_frames_agree_with_labels():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 40)
    source = ArrayImages(rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), labels)
    features = torch.from_numpy(rng.normal(size=(40, 8)))
    queries = [3, 17, 29]
    neighbours = figures.retrieval_neighbours(features, queries, 6)
    f = features / features.norm(dim=1, keepdim=True)
    for q, row in zip(queries, neighbours):
        brute = sorted((j for j in range(40) if j != q), key=lambda j: -float(f[q] @ f[j]))[:6]
        assert list(row) == brute
    grid, correct = figures.retrieval_grid(source, queries, neighbours)
    for r, q in enumerate(queries):
        assert figures.frame_colour(grid, r, 0) == (128, 128, 128)
        for c, j in enumerate(neighbours[r], start=1):
            assert correct[r, c - 1] == (labels[j] == labels[q])
            assert figures.frame_colour(grid, r, c) == (figures.GREEN if labels[j] == labels[q] else figures.RED)


def test_table_2_rows_get_the_linear_column(tmp_path):
    """Table 2's Linear column: the frozen-feature linear probe of the row's final network."""
    from invaspread.data.datasets import build_data
    from invaspread.engine.checkpoint import load_run
    from invaspread.engine.evaluation import evaluate
    from invaspread.report.table_runner import _train_row

    table = TABLES[2]
    ours_5k = next(r for r in table.rows if r.slug == "ours_5k")
    cfg = row_config(ours_5k, "unused", 1, TINY + ["data.name=digits", "data.image_size=32", "data.subset_per_class=40"])
    record = _train_row(ours_5k, cfg, tmp_path / ours_5k.slug, table, lambda _: None)
    cfg, _, model, device = load_run(tmp_path / ours_5k.slug)
    expected = evaluate(model, build_data(cfg.data), cfg, device, "linear")["linear_top1"]
    assert record["metrics"]["linear_top1"] == expected and "knn_top1" in record["metrics"]
    assert record["epochs"] == 1 and cfg.method.name == "invaspread"


def test_report_refuses_bad_counts_and_folders_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 2          # no metrics.jsonl
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep"), "-k", "0"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "not a run folder" in errors[0] and "-k 0" in errors[1]
    assert not (tmp_path / "rep").exists()


def test_learning_curve_of_an_unseen_category_run_is_recall_at_1():
    lines = [{"epoch": 0, "recall@1": 40.0, "nmi": 50.0, "eval_seconds": 2.0},
             {"epoch": 1, "loss": 5.0, "train_seconds": 10.0, "epoch_start_seconds": 1.0},   # not evaluated
             {"epoch": 2, "loss": 4.0, "train_seconds": 10.0, "recall@1": 45.5, "eval_seconds": 2.0}]
    curve = figures.learning_curve(lines)
    assert curve == {"metric": "recall@1", "epoch": [0, 2], "seconds": [2.0, 25.0], "value": [40.0, 45.5]}
    fig = figures.plot_learning_curves({"cub": curve})
    assert fig.axes[0].get_ylabel() == "R@1 (%)"


def test_table_8_hard_is_the_released_branch_and_dry_runs_say_each_rows_recipe(capsys):
    """Issue 20 §2: the paper's Hard 83.2 came from the released hard branch; the row, README and dry run agree."""
    from invaspread.report.paper_tables import TABLES

    hard = next(r for r in TABLES[8].rows if r.name == "Hard")
    assert hard.sets == ("method.invaspread.negatives=released",)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "| Table 8, Hard | `--config cifar10 --set method.invaspread.negatives=released`" in readme
    assert main(["table", "8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "method.invaspread.negatives=released" in out and "method.invaspread.negatives=hard: the normalised reading" in out


def test_a_row_that_diverges_or_ends_below_random_is_marked_diverged_with_its_numbers(tmp_path, monkeypatch):
    from invaspread.engine.trainer import DivergedError
    from invaspread.report import table_runner

    outcome = {"randomcnn": 30.0, "deepcluster_10": 25.0, "exemplar": 40.0}

    def fake_row(row, cfg, folder, table, log):
        if row.slug in outcome:
            return {"epochs": 1, "metrics": {"knn_top1": outcome[row.slug]}}
        raise DivergedError("epoch 2: the loss became NaN or infinite, so this epoch is not saved")

    monkeypatch.setattr(table_runner, "_train_row", fake_row)
    failed = table_runner.run_table(1, "data", tmp_path, log=lambda _: None)
    records = json.loads((tmp_path / "table1.json").read_text())
    assert failed == 0
    assert records["randomcnn"]["status"] == "done" and records["exemplar"]["status"] == "done"
    assert records["deepcluster_10"]["status"] == "diverged"
    assert "knn_top1 25.0 is below the untrained network's 30.0" in records["deepcluster_10"]["error"]
    assert records["ours"]["status"] == "diverged" and "became NaN" in records["ours"]["error"]
    md = (tmp_path / "table1.md").read_text()
    assert "| 25.0 |" in md and "diverged: knn_top1 25.0 is below" in md


def test_a_row_asked_with_auto_precision_matches_its_run_whatever_the_cpu_resolved_it_to():
    """``train.cpu_bf16: null`` is resolved when a run starts (true on a CPU with native bf16): a finished row is
    the row asked again, on either kind of CPU; an explicit other precision is another run."""
    from invaspread.report.table_runner import differing_keys

    asked = load_config(None, []).to_dict()
    assert asked["train"]["cpu_bf16"] is None
    for resolved in (True, False):
        saved = load_config(None, [f"train.cpu_bf16={str(resolved).lower()}"]).to_dict()
        assert differing_keys(saved, asked) == [] and differing_keys(asked, saved) == []
        other = load_config(None, [f"train.cpu_bf16={str(not resolved).lower()}"]).to_dict()
        assert differing_keys(saved, other) == ["train.cpu_bf16"]
