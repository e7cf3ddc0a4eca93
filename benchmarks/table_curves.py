"""Read a `invaspread table` folder's row runs and print, as Markdown, what the table itself does not show:
seconds per epoch, kNN top-1 along training (Figure 3's numbers), and per epoch the quantity that explains
whether a row learns (NCE's partition / Z, DeepCluster's cluster sizes and classifier loss, the triplet gap).

    python benchmarks/table_curves.py runs/table1 [--epochs 0 1 2 5 10 15] [--figure3 figure3.png]

Only the row folders' ``metrics.jsonl`` is read: nothing is trained or evaluated. ``--figure3`` draws the
report's Figure 3 (kNN per epoch and per second) of every row, as ``invaspread report`` draws it, without the
report's per-run figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import yaml

# metrics.jsonl keys that say why a row learns or not, per method (written by the methods' training_step)
EXPLAINING = {"nce": ["loss", "nce_z_ratio"], "deepcluster": ["loss", "clusters_used", "largest_cluster_share"],
              "triplet": ["loss", "triplet_gap", "triplet_active"],
              "triplet_hard": ["loss", "triplet_gap", "triplet_active"], "exemplar": ["loss"], "npsoftmax": ["loss"],
              "invaspread": ["loss"]}


def read_rows(folder: Path) -> dict:
    """{row folder name: {"method", "epochs": {epoch: metrics line}}}, in the table's own order where its
    ``tableN.json`` gives one."""
    records = sorted(folder.glob("table*.json"))
    order = list(json.loads(records[0].read_text())) if records else []
    runs = [p for p in folder.iterdir() if (p / "metrics.jsonl").is_file()]
    rows = {}
    for run in sorted(runs, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name)):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        method = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("method", {}).get("name", "?")
        rows[run.name] = {"method": method, "epochs": {line["epoch"]: line for line in lines}}
    return rows


def seconds_per_epoch(epochs: dict) -> str:
    trained = [e for n, e in epochs.items() if n > 0]
    if not trained:
        return "-"
    per = [e.get("train_seconds", 0) + e.get("epoch_start_seconds", 0) + e.get("eval_seconds", 0) for e in trained]
    return f"{statistics.median(per):.0f}"


def curve_table(rows: dict, marks) -> list:
    out = ["| row | s/epoch (median: train + preparation + kNN) | " + " | ".join(f"ep {m}" for m in marks)
           + " | best (epoch) | last - epoch 0 |", "|---|---:|" + "---:|" * len(marks) + "---:|---:|"]
    for name, row in rows.items():
        epochs = row["epochs"]
        knn = {n: e["knn_top1"] for n, e in epochs.items() if "knn_top1" in e}
        best = max(knn, key=lambda n: (knn[n], -n)) if knn else None
        gain = knn[max(knn)] - knn.get(0, math.nan) if knn else math.nan
        cells = [f"{knn[m]:.2f}" if m in knn else "" for m in marks]
        out.append(f"| {name} | {seconds_per_epoch(epochs)} | " + " | ".join(cells)
                   + f" | {knn[best]:.2f} ({best}) | {gain:+.2f} |" if knn else f"| {name} | - |")
    return out


def explaining_tables(rows: dict) -> list:
    out = []
    for name, row in rows.items():
        keys = EXPLAINING.get(row["method"])
        epochs = [e for n, e in sorted(row["epochs"].items()) if n > 0]
        if not keys or not epochs:
            continue
        keys = [k for k in keys if any(k in e for e in epochs)]
        out += ["", f"{name} ({row['method']}), per epoch:", "",
                "| epoch | " + " | ".join(keys) + " | kNN top-1 |", "|---:|" + "---:|" * (len(keys) + 1)]
        for e in epochs:
            out.append(f"| {e['epoch']} | " + " | ".join(f"{e[k]:.4g}" if k in e else "" for k in keys)
                       + f" | {e.get('knn_top1', float('nan')):.2f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the table's --out folder (its rows are subfolders)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[0, 1, 2, 5, 10, 15], help="epochs to show")
    parser.add_argument("--figure3", type=Path, help="also write Figure 3 of the rows to this PNG (a new file)")
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"table_curves.py: {args.folder} is not a folder")
    rows = read_rows(args.folder)
    if not rows:
        raise SystemExit(f"table_curves.py: no row runs (subfolders with metrics.jsonl) under {args.folder}")
    print("\n".join(curve_table(rows, args.epochs) + explaining_tables(rows)))
    if args.figure3:
        from invaspread.report.figures import learning_curve, plot_learning_curves, read_metrics

        if args.figure3.exists():
            raise SystemExit(f"table_curves.py: {args.figure3} exists; it is not replaced")
        curves = {name: learning_curve(read_metrics(args.folder / name)) for name in rows}
        plot_learning_curves(curves).savefig(args.figure3, dpi=100)


if __name__ == "__main__":
    main()
