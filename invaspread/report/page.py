"""``invaspread report RUN [RUN ...] --out DIR``: the paper's figures for your runs, on one HTML page.

``DIR/index.html`` shows the PNGs written beside it: Figure 3 (every run on one plot), and per run Figure 5
(similarity histograms, trained vs untrained network), Figure 4 (retrieval grids at every kept epoch) and the
final metrics with the paper's number where the run's config is a row of a paper table.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import InvaspreadError
from ..locks import held
from ..outputs import check_out, new_folder, publish_folder
from . import figures

METRIC_NAMES = {"knn_top1": "kNN top-1", "knn_top5": "kNN top-5", "linear_top1": "Linear top-1", "nmi": "NMI"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def paper_rows_for(cfg_dict: dict) -> List[tuple]:
    """(table, row, {metric: paper value}) of every paper-table row whose config equals ``cfg_dict`` apart from
    where the data lives and how long it trained (see ``table_runner.VOLATILE``)."""
    from .paper_tables import TABLES
    from .table_runner import differing_keys, row_config

    matches = []
    for table in TABLES.values():
        for row in table.rows:
            if not row.trainable:
                continue
            try:
                candidate = row_config(row, cfg_dict["data"]["root"], None, ()).to_dict()
            except InvaspreadError:
                continue
            if not differing_keys(cfg_dict, candidate):
                paper = {c.metric: v for c, v in zip(table.columns, row.paper) if c.metric and v is not None}
                matches.append((table.number, row.name, paper))
    return matches


def final_metrics(lines: Sequence[dict]) -> dict:
    """The last evaluated line of a run (its reported result: never the best epoch); for a run that evaluated
    nothing, its last line (the loss and timings of its last epoch)."""
    evaluated = [line for line in lines if any(key in line for key in figures.ACCURACY_METRICS)]
    return evaluated[-1] if evaluated else (dict(lines[-1]) if lines else {})


def kept_checkpoints(run: Path) -> Dict[int, Path]:
    """epoch -> every epoch-NNNN.pt the run kept (train.save_epochs / train.keep), by file name."""
    from ..engine.run_folder import KEPT_NAME

    return dict(sorted((int(p.stem.split("-")[1]), p) for p in run.glob("epoch-*.pt") if KEPT_NAME.match(p.name)))


def write_report(runs: Sequence, out, data_dir: Optional[str] = None, images: int = 2000, queries: int = 8,
                 k: int = 8, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Write ``out/index.html`` and its PNGs for ``runs`` (run folders); returns the page's path.
    ``images``: test images (a fixed random sample) used by Figures 4 and 5; ``queries`` x ``k``: the grid."""
    for flag, value in (("--images", images), ("--queries", queries), ("-k", k)):
        if value < 1:
            raise InvaspreadError(f"report {flag} {value}: expected a positive number")
    out = check_out(out, "report --out")
    runs = [Path(r) for r in runs]
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            raise InvaspreadError(f"{run} is not a run folder (no metrics.jsonl)")
    previous = _previous_report(out)
    names: Dict[Path, str] = {}
    for run in runs:
        name = _slug(run.name)
        names[run] = name if name not in names.values() else f"{name}-{len(names)}"
    with held(out.parent / f".{out.name}.lock", f"report {out}", remove=True):   # one report into a name at a time
        _remove_dead_buildings(out, log)
        _build_and_publish(runs, names, out, previous, data_dir, images, queries, k, seed, log)
    log(f"wrote {out / 'index.html'}")
    return out / "index.html"


def _remove_dead_buildings(out: Path, log) -> None:
    """``.NAME.XXXXXXXX.building`` folders beside ``out`` that a killed report left: with the report's lock held,
    none has a living writer; removed when they hold only a report's files (PNGs, index.html, its marker)."""
    pattern = re.compile(rf"^\.{re.escape(out.name[:200])}\.[a-z0-9_]{{8}}\.building$")
    for path in sorted(out.parent.iterdir()):
        if (pattern.match(path.name) and path.is_dir() and not path.is_symlink() and all(
                p.is_file() and (p.suffix in (".png", ".html") or p.name == REPORT_MARKER) for p in path.iterdir())):
            shutil.rmtree(path)
            log(f"removed {path}: the unfinished report of an interrupted report command")


def _build_and_publish(runs, names, out: Path, previous, data_dir, images, queries, k, seed, log) -> None:
    building = new_folder(out, "report --out")
    try:
        curves = {names[r]: figures.learning_curve(figures.read_metrics(r)) for r in runs}
        _save(figures.plot_learning_curves(curves), building / "figure3.png")
        sections = []
        for run in runs:
            log(f"report: {run}")
            sections.append(_run_section(run, names[run], building, data_dir, images, queries, k, seed))
        (building / "index.html").write_text(_page(runs, names, curves, sections))
        written = sorted(p.name for p in building.iterdir())
        (building / REPORT_MARKER).write_text(json.dumps({"files": written}))
        _publish(building, out, previous)
    finally:
        shutil.rmtree(building, ignore_errors=True)


REPORT_MARKER = ".invaspread-report"


def _previous_report(out: Path) -> Optional[List[str]]:
    """The files an earlier report wrote into ``out`` (they may be replaced); None when ``out`` is new or empty.
    A non-empty folder that is not a report of ours is refused: its files are never replaced."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    try:
        files = json.loads((out / REPORT_MARKER).read_text())["files"]
        if isinstance(files, list) and all(isinstance(f, str) and "/" not in f for f in files):
            return files
    except (OSError, ValueError, KeyError, TypeError):
        pass
    shown = ", ".join(sorted(p.name for p in out.iterdir())[:4])
    raise InvaspreadError(f"report --out {out} is a folder that holds files no report wrote ({shown}...); they are "
                          f"never replaced: choose a new or empty folder")


def _publish(building: Path, out: Path, previous: Optional[List[str]]) -> None:
    """The finished page appears in ``out``: by one rename when ``out`` is new, else file by file over an earlier
    report's own files, whose leftovers (runs no longer in the report) are removed."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        umask = os.umask(0)
        os.umask(umask)
        building.chmod(0o777 & ~umask)   # a new folder as mkdir would make it (mkdtemp's 0700: no web server reads it)
        publish_folder(building, out, "report --out")
        return
    new = {p.name for p in building.iterdir()}
    for name in sorted(new - {REPORT_MARKER}) + [REPORT_MARKER]:   # the marker last: it lists what is ours
        if (out / name).exists() and name not in (previous or []) and name != REPORT_MARKER:
            raise InvaspreadError(f"report --out {out}: {name} appeared there and is not the report's; it is not "
                                  f"replaced")
        os.replace(building / name, out / name)
    for name in set(previous or []) - new:
        (out / name).unlink(missing_ok=True)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)


def _figure4(name: str, out: Path, test, query_rows, grids: dict, cfg, bundle, overrides, device, k: int) -> list:
    """One retrieval grid (PNG) and its caption per network of ``grids`` (epoch -> network or checkpoint)."""
    from PIL import Image

    from ..engine.checkpoint import load_run
    from ..engine.features import evaluation_network, source_features

    parts = []
    labels = np.asarray(test.labels)
    for epoch, net_or_path in grids.items():
        net = net_or_path if isinstance(net_or_path, torch.nn.Module) else load_run(net_or_path, overrides)[2]
        feats = source_features(evaluation_network(net, cfg), test, cfg.data, cfg.augment, bundle.mean, bundle.std,
                                cfg.eval.batch_size, device)
        everyone = figures.retrieval_neighbours(feats, range(len(test)), k)   # the grid's rows are among them
        grid, correct = figures.retrieval_grid(test, query_rows, everyone[query_rows])
        Image.fromarray(grid).save(out / f"{name}-figure4-epoch{epoch}.png")
        precision = 100 * float((labels[everyone] == labels[:, None]).mean())
        parts.append(f"<p>epoch {epoch}: {int(correct.sum())} of the {correct.size} images shown are correct; "
                     f"precision@{k} over all {len(test)} test queries: {precision:.1f} %</p>"
                     f'<img src="{name}-figure4-epoch{epoch}.png" alt="Figure 4 of {html.escape(name)}, epoch {epoch}">')
    return parts


def _run_section(run: Path, name: str, out: Path, data_dir, images: int, queries: int, k: int, seed: int) -> str:
    from ..data.datasets import build_data
    from ..data.transforms import train_transform
    from ..engine.checkpoint import load_run
    from ..engine.features import evaluation_network
    from ..models import build_model

    kept = kept_checkpoints(run)
    newest = run / "last.pt" if (run / "last.pt").is_file() else kept.get(max(kept, default=-1))
    if newest is None:
        raise InvaspreadError(f"{run} has no checkpoint (last.pt or epoch-NNNN.pt): nothing to draw Figures 4-5 from")
    overrides = [f"data.root={data_dir}"] if data_dir else []
    cfg, state, model, device = load_run(newest, overrides)
    bundle = build_data(cfg.data, progress=False)
    lines = figures.read_metrics(run)
    parts = [f"<h2>{html.escape(name)}</h2>", _metrics_table(cfg, {"epoch": state["epoch"], **final_metrics(lines)}, run)]
    if bundle.query is None or bundle.query.labels is None:
        return "\n".join(parts + ["<p>No labelled test images: Figures 4 and 5 need them.</p>"])
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(bundle.query), min(images, len(bundle.query)), replace=False))
    test = bundle.query.subset(sample)
    augment = train_transform(cfg.augment, cfg.data.image_size, bundle.mean, bundle.std, cfg.data.resize)

    torch.manual_seed(cfg.train.seed)   # the network as the run started it (pretrained weights where it had them)
    networks = {"trained (epoch %d)" % state["epoch"]: model}
    try:
        networks["untrained"] = build_model(cfg.model).to(device).eval()
    except InvaspreadError as err:
        parts.append(f"<p>Untrained network not shown: {html.escape(str(err))}</p>")
    # the features the run is evaluated on (eval.features: the pooled backbone for SimCLR, MoCo v2, BYOL)
    panels = {label: figures.similarity_histograms(*figures.pair_similarities(evaluation_network(net, cfg), test,
                                                                                augment, range(len(test)), device,
                                                                                seed))
              for label, net in networks.items()}
    _save(figures.plot_similarity_histograms(panels), out / f"{name}-figure5.png")
    counts = ", ".join(f"{int(c['positive'].sum()):,} positive / {int(c['negative'].sum()):,} negative pairs ({label})"
                       for label, c in panels.items())
    parts.append(f"<h3>Figure 5: similarity of positive and negative pairs</h3><p>{counts}, over {len(test)} test "
                 f"images, two views each drawn with the run's training augmentation.</p>"
                 f'<img src="{name}-figure5.png" alt="Figure 5 of {html.escape(name)}">')

    query_rows = rng.choice(len(test), min(queries, len(test)), replace=False)
    parts.append(f"<h3>Figure 4: top-{k} retrieval among {len(test)} test images (green: same label, red: "
                 f"another; the grey image is the query)</h3>")
    grids = {0: networks.get("untrained")} if "untrained" in networks else {}
    grids.update(kept)
    grids[int(state["epoch"])] = model   # the newest network is loaded already
    parts += _figure4(name, out, test, query_rows, grids, cfg, bundle, overrides, device, k)
    return "\n".join(parts)


def table_membership(run: Path) -> List[tuple]:
    """(table, row, {metric: paper value}) when ``run`` is a row folder of ``invaspread table`` (OUT/<row>/ beside
    OUT/tableN.json), whatever --epochs / --set the table was run with."""
    import json

    from .paper_tables import TABLES

    found = []
    for records in run.parent.glob("table*.json"):
        if not re.fullmatch(r"table\d+\.json", records.name):   # tableN-old.json and the like are not a table's
            continue
        number = int(records.stem[len("table"):])
        try:
            slugs = json.loads(records.read_text())
        except (OSError, ValueError):
            continue
        if number not in TABLES or run.name not in slugs:
            continue
        for row in TABLES[number].rows:
            if row.slug == run.name:
                paper = {c.metric: v for c, v in zip(TABLES[number].columns, row.paper) if c.metric and v is not None}
                found.append((number, row.name, paper))
    return found


def _metrics_table(cfg, final: dict, run: Path) -> str:
    matches = paper_rows_for(cfg.to_dict()) or table_membership(run)
    rows = []
    for key, value in final.items():
        if key == "epoch" or not isinstance(value, (int, float)) or key.endswith("seconds") or key in ("lr",):
            continue
        paper = "; ".join(f"Table {t} {html.escape(r)}: {p[key]}" for t, r, p in matches if key in p)
        rows.append(f"<tr><td>{html.escape(METRIC_NAMES.get(key, key))}</td><td>{value:.2f}</td>"
                    f"<td>{paper or '-'}</td></tr>")
    where = f"epoch {final.get('epoch', '?')} of {cfg.train.epochs}, method {cfg.method.name}, data {cfg.data.name}"
    return (f"<p>{html.escape(str(run))}: {html.escape(where)}</p><table><tr><th>metric</th><th>this run</th>"
            f"<th>paper</th></tr>{''.join(rows)}</table>")


def _page(runs, names, curves, sections) -> str:
    listing = "".join(f"<li>{html.escape(names[r])}: {html.escape(str(r))} ({len(curves[names[r]]['epoch'])} "
                      f"evaluated epochs)</li>" for r in runs)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>invaspread report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head>
<body><h1>invaspread report</h1><ul>{listing}</ul>
<h2>Figure 3: learning speed</h2><img src="figure3.png" alt="Figure 3">
{''.join(sections)}
</body></html>
"""
