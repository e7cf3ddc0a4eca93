"""``invaspread table N``: train every row of the paper's Table N in turn, then write tableN.md / tableN.csv.

Each row is an ordinary run folder ``OUT/<row>/`` (so ``eval``, ``embed``, ``report`` work on it). A finished row
is skipped, an interrupted one resumed, a shorter one extended; ``OUT/tableN.json`` keeps each row's status,
wall time and device. A row that fails (a bad setting for it, a diverged method) is reported as failed and
the next row runs.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..atomic import atomic_file
from ..config import SAME_RESULT_KEYS, Config, completed, load_config, parse_override, resolve_config_path
from ..engine.trainer import DivergedError
from ..errors import ConfigError, InvaspreadError
from ..locks import Lock, LockBusy
from ..outputs import check_out
from .paper_tables import EXTENDED, TABLES, PaperTable, Row

# keys that may differ between a row's folder and the row as asked now: where data lives, how long it trains
# (a finished shorter row is extended), and settings that do not change what is computed
VOLATILE = SAME_RESULT_KEYS


def get_table(number) -> PaperTable:
    """The paper's Table ``number`` (1-8), or an extended one ("1x": Table 1 with SimCLR, MoCo v2, BYOL)."""
    tables = {**{str(k): t for k, t in TABLES.items()}, **EXTENDED}
    if str(number) not in tables:
        raise ConfigError(f"table {number}: the paper has Tables {', '.join(map(str, TABLES))}; extended: "
                          f"{', '.join(EXTENDED)}")
    return tables[str(number)]


def row_overrides(row: Row, data_dir: Optional[str], epochs: Optional[int], sets: Sequence[str]) -> List[str]:
    """The --set list of a row: the user's ``sets`` (never a key the row sets itself), the row's own, the
    data and the epochs (always 0 for an evaluate-only row)."""
    own = {parse_override(s)[0] for s in row.sets}
    for text in sets:
        key = parse_override(text)[0]
        if key in own:
            raise ConfigError(f"--set {text}: row {row.name!r} sets {key} itself (that is what the row measures)")
    out = list(sets) + list(row.sets)
    if data_dir:
        out.append(f"data.root={data_dir}")
    if row.evaluate_only:
        out.append("train.epochs=0")
    elif epochs is not None:
        out.append(f"train.epochs={epochs}")
    return out


def row_config(row: Row, data_dir, epochs, sets) -> Config:
    return load_config(resolve_config_path(row.config), row_overrides(row, data_dir, epochs, sets))


def row_command(row: Row, data_dir, out: Path, epochs, sets) -> str:
    """The ``invaspread train`` command that trains ``row`` alone (what --dry-run prints)."""
    if not row.trainable:
        return f"(not trained here: {row.note})"
    words = ["invaspread", "train", "--config", row.config]
    for text in list(sets) + list(row.sets):
        words += ["--set", text]
    if row.evaluate_only:
        words += ["--epochs", "0"]
    elif epochs is not None:
        words += ["--epochs", str(epochs)]
    words += ["--data-dir", str(data_dir or "PATH"), "--out", str(out / row.slug)]
    return shlex.join(words)


def differing_keys(a: dict, b: dict, ignore=VOLATILE) -> List[str]:
    """Dotted keys (two levels, or three for method sub-sections) whose values differ between two config dicts
    (each completed with the keys added since it was saved). ``train.cpu_bf16: null`` (what this CPU computes
    fast, resolved when a run starts) matches the value the other side's run resolved it to."""
    a, b = _resolved_like(a, b), _resolved_like(b, a)
    a, b = _completed_or_same(a), _completed_or_same(b)
    out = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            va, vb = sa.get(key), sb.get(key)
            if isinstance(va, dict) or isinstance(vb, dict):
                out += [f"{section}.{key}.{k}" for k in sorted(set(va or {}) | set(vb or {}))
                        if (va or {}).get(k) != (vb or {}).get(k)]
            elif va != vb and f"{section}.{key}" not in ignore:
                out.append(f"{section}.{key}")
    return out


def _resolved_like(data: dict, other: dict) -> dict:
    train, theirs = data.get("train"), other.get("train")
    if isinstance(train, dict) and isinstance(theirs, dict) and "cpu_bf16" in train and train["cpu_bf16"] is None \
            and isinstance(theirs.get("cpu_bf16"), bool):
        return {**data, "train": {**train, "cpu_bf16": theirs["cpu_bf16"]}}
    return data


def _completed_or_same(data: dict) -> dict:
    try:
        return completed(data)
    except InvaspreadError:   # a config of unknown keys: compared as it is, so its differences are named
        return data


def run_table(number: int, data_dir: Optional[str], out, epochs: Optional[int] = None, sets: Sequence[str] = (),
              dry_run: bool = False, log: Callable[[str], None] = print) -> int:
    """Train (or skip, resume, extend) every trainable row, then write the table; returns the number of
    rows that failed. ``dry_run``: print each row and its command, train nothing."""
    table, out = get_table(number), Path(out)
    if dry_run:
        log(f"Table {number}: {table.caption} ({len(table.rows)} rows; --data-dir: {table.data})")
        for row in table.rows:
            log(f"  {row.name:<24s} {row_command(row, data_dir, out, epochs, sets)}")
            if row.trainable and row.note:
                log(f"  {'':<24s} # {row.note}")
        return 0
    if not data_dir:
        raise ConfigError(f"table {number} trains on {table.data}: give --data-dir PATH")
    configs = {row.slug: row_config(row, data_dir, epochs, sets) for row in table.rows if row.trainable}  # all checked first
    out = check_out(out, "table --out")
    check_table_folder(out, table)   # before anything is written there
    try:
        out.mkdir(exist_ok=True)
    except OSError as err:
        raise InvaspreadError(f"table --out {out}: cannot create it ({err.strerror or err})") from err
    try:   # one table command per folder: a second one would report the first one's rows as failed
        lock = Lock(out / TABLE_LOCK, f"table folder {out}").acquire()
    except LockBusy as err:
        raise InvaspreadError(f"{err}: one table command per folder at a time") from None
    try:
        if not (out / TABLE_MARKER).is_file():
            with atomic_file(out / TABLE_MARKER, "w", shared=True) as fh:
                json.dump({"invaspread": "table folder", "tables": [str(number)]}, fh)
        return _run_rows(table, out, configs, epochs, sets, data_dir, log)
    finally:
        lock.release()


TABLE_LOCK = ".invaspread-table.lock"
TABLE_MARKER = ".invaspread-table"   # what makes a folder a table folder of ours (written when it is first used)


def _our_records(data) -> bool:
    """A ``tableN.json`` this command wrote: row slug -> a dict with the row's status."""
    return isinstance(data, dict) and all(isinstance(v, dict) and v.get("status") in ("done", "failed", "diverged")
                                          for v in data.values())


def check_table_folder(out: Path, table: PaperTable) -> None:
    """``table --out`` is a new or empty folder, or a table folder of ours (its marker, or -- written before the
    marker existed -- a ``tableN.json`` of row records): anything else is the user's, refused untouched."""
    if not out.is_dir() or (out / TABLE_MARKER).is_file():
        return
    names = sorted(p.name for p in out.iterdir() if p.name != TABLE_LOCK)   # a lock of ours: its holder is named
    if not names:
        return
    records = out / f"table{table.number}.json"
    try:
        if records.is_file() and _our_records(json.loads(records.read_text())):
            return
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    raise InvaspreadError(f"table --out {out} is not a table folder of invaspread, nor empty (it holds "
                          f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''}); nothing there was touched: "
                          f"choose a new or empty folder")


def _run_rows(table: PaperTable, out: Path, configs: dict, epochs, sets, data_dir, log) -> int:
    number = table.number
    records_path = out / f"table{number}.json"
    try:
        records = json.loads(records_path.read_text()) if records_path.is_file() else {}
    except json.JSONDecodeError as err:
        raise InvaspreadError(f"{records_path} is not valid JSON ({err}); it only holds each row's status and wall "
                              f"time: move it aside and run again (finished rows are still skipped)") from err
    if not _our_records(records):
        raise InvaspreadError(f"{records_path} does not hold this command's row records (row -> status); it was "
                              f"left as it is: move it aside and run again (finished rows are still skipped)")
    for row in table.rows:
        if not row.trainable:
            continue
        log(f"--- Table {number}, row {row.name!r} -> {out / row.slug}")
        record = records.get(row.slug, {})
        started = time.perf_counter()
        try:
            record.update(_train_row(row, configs[row.slug], out / row.slug, table, log))
            record["status"] = "done"
            record.pop("error", None)
        except DivergedError as err:   # its numbers are those of the last finite epoch, never a plain result
            record.update(status="diverged", error=str(err), **_last_saved(out / row.slug))
            log(f"row {row.name!r} diverged: {err}")
        except InvaspreadError as err:
            record.update(status="failed", error=str(err))
            log(f"row {row.name!r} failed: {err}")
        record["wall_seconds"] = record.get("wall_seconds", 0.0) + time.perf_counter() - started
        records[row.slug] = record
        with atomic_file(records_path, "w") as fh:
            json.dump(records, fh, indent=1)
    _mark_below_random(table, records)
    with atomic_file(records_path, "w") as fh:
        json.dump(records, fh, indent=1)
    md, rows_csv = render(table, records, out, epochs, sets, data_dir)
    for suffix, text in (("md", md), ("csv", rows_csv)):   # the old file or the new one, whatever the moment of a kill
        with atomic_file(out / f"table{number}.{suffix}", "w", shared=True) as fh:
            fh.write(text)
    log(md)
    log(f"wrote {out / f'table{number}.md'} and {out / f'table{number}.csv'}")
    diverged = [slug for slug, r in records.items() if r.get("status") == "diverged"]
    if diverged:
        log(f"diverged (numbers kept, marked in the table): {', '.join(diverged)}")
    return sum(r.get("status") == "failed" for r in records.values())


def _last_saved(folder: Path) -> dict:
    """epochs and metrics of the last checkpoint a diverged row left ({} when it saved none)."""
    from ..engine.checkpoint import load_checkpoint

    if not (folder / "last.pt").is_file():
        return {}
    state = load_checkpoint(folder)
    return {"epochs": int(state["epoch"]),
            "metrics": {k: v for k, v in state.get("metrics", {}).items() if isinstance(v, (int, float))}}


def _mark_below_random(table: PaperTable, records: Dict[str, dict]) -> None:
    """A row whose headline metric ended below the table's untrained-network row learned nothing that the
    random network did not already have: ``diverged``, with its numbers, never a plain result."""
    metric = next(c.metric for c in table.columns if c.metric)
    randoms = [r for r in table.rows if r.trainable and "method.name=random" in r.sets]
    baseline = records.get(randoms[0].slug, {}) if randoms else {}
    floor = baseline.get("metrics", {}).get(metric) if baseline.get("status") == "done" else None
    if floor is None:
        return
    for row in table.rows:
        record = records.get(row.slug, {})
        value = record.get("metrics", {}).get(metric)
        if row is not randoms[0] and record.get("status") == "done" and value is not None and value < floor:
            record.update(status="diverged", error=f"{metric} {value:.1f} is below the untrained network's "
                                                   f"{floor:.1f} ({randoms[0].name})")


def _train_row(row: Row, cfg: Config, folder: Path, table: PaperTable, log) -> dict:
    """Bring one row's run folder to ``cfg`` (new, resumed or extended) and return its record fields."""
    from ..engine.checkpoint import load_checkpoint
    from ..engine.precision import resolve_device
    from ..engine.trainer import fit

    resolved = resolve_device(cfg.train.device)
    device = str(resolved)
    if resolved.type == "cuda":   # the table says which card produced its numbers
        import torch

        device += f" ({torch.cuda.get_device_name(resolved)})"
    new = {}
    if (folder / "last.pt").exists():
        state = load_checkpoint(folder)
        differ = differing_keys(state["config"], cfg.to_dict())
        if differ:
            raise ConfigError(f"{folder} holds a run with other settings ({', '.join(differ[:4])}); remove it or "
                              f"choose another --out")
        done = int(state["epoch"])
        if done < cfg.train.epochs:
            log(f"resuming after epoch {done} of {cfg.train.epochs}")
            changed = [f"{key}={value}" for key, value in (("train.epochs", cfg.train.epochs),
                                                           ("data.root", cfg.data.root))
                       if state["config"][key.split(".")[0]][key.split(".")[1]] != value]
            fit(None, folder, resume=True, log=log, overrides=changed)
            new["device"] = device
        else:
            log(f"finished earlier ({done} epochs): skipped")
    else:
        fit(cfg, folder, log=log)
        new["device"] = device
    state = load_checkpoint(folder)
    new["epochs"] = int(state["epoch"])
    new["metrics"] = {k: v for k, v in state.get("metrics", {}).items() if isinstance(v, (int, float))}
    if table.needs_linear and "linear_top1" not in new["metrics"]:
        new["metrics"]["linear_top1"] = _linear(folder)
    return new


def _linear(folder: Path) -> float:
    """Table 2's Linear column for a finished run (frozen features of the labelled train split)."""
    from ..data.datasets import build_data
    from ..engine.checkpoint import load_run
    from ..engine.evaluation import evaluate

    cfg, _, model, device = load_run(folder)
    return evaluate(model, build_data(cfg.data), cfg, device, "linear")["linear_top1"]


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def render(table: PaperTable, records: Dict[str, dict], out: Path, epochs, sets, data_dir):
    """(markdown, csv) of the table: the paper's numbers beside ours, with epochs, wall time and device."""
    metric_columns = [c for c in table.columns if c.metric]
    header = (["row"] + [f"paper {c.header}" for c in table.columns] + [f"ours {c.header}" for c in metric_columns]
              + ["epochs", "wall s", "device", "status"])
    lines = []
    for row in table.rows:
        record = records.get(row.slug, {})
        ours = record.get("metrics", {})
        status = (record.get("status", "not run") if row.trainable else f"not implemented: {row.note}")
        if record.get("status") in ("failed", "diverged"):
            status = f"{record['status']}: {record.get('error', '')}"
        lines.append([row.name] + [_cell(v) for v in row.paper] + [_cell(ours.get(c.metric)) for c in metric_columns]
                     + [_cell(record.get("epochs")), _cell(record.get("wall_seconds")), record.get("device", "-"),
                        status])
    text = io.StringIO()
    csv.writer(text).writerows([header] + lines)
    notes = [f"# Table {table.number}: {table.caption}", "",
             f"Data: {data_dir} ({table.data}); run folders under {out}/."]
    if epochs is not None:
        notes.append(f"**Shortened: every trained row ran {epochs} epochs** (the paper's recipe: the config's "
                     f"train.epochs); the paper's numbers are after the full schedule.")
    if sets:
        notes.append("Every row also had: " + " ".join(f"--set {s}" for s in sets))
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in lines]
    return "\n".join(notes + [""] + md) + "\n", text.getvalue()
