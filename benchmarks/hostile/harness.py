"""The hostile-input harness's machinery: run `invaspread` as a real process, judge it, record the verdict.

Clean means: the command ends with exit code 0 and the right result, or with exit code 2 and exactly one line
on stderr, "invaspread: error: ...", no traceback; and nothing the case checks was lost, overwritten or run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import itertools
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

TINY = ["--set", "model.width=8", "--set", "data.subset_per_class=30", "--set", "train.batch_size=32",
        "--set", "data.num_workers=0", "--set", "train.progress=false", "--set", "eval.knn_k=10"]
# a checkpoint write slowed to 2 s between its two halves (the kill lands inside it)
SLOW_SAVE = ("import time, torch, io; real = torch.save\n"
             "def slow(obj, f, *a, **k):\n"
             "    buf = io.BytesIO(); real(obj, buf, *a, **k); data = buf.getvalue()\n"
             "    f.write(data[: len(data) // 2]); f.flush(); print('SAVING', flush=True); time.sleep(2)\n"
             "    f.write(data[len(data) // 2:])\n"
             "torch.save = slow\n")
RESULTS = []   # (group, name, clean)
CASES = []     # functions run(tmp) -> None, each with .group and .name
_PRINT = threading.Lock()
_IDS = itertools.count()


def cli(*args, cwd=None, prelude="", timeout=300, env=None):
    code = prelude + "import sys; from invaspread.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


def one_line_error(proc, *needles) -> bool:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return (proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("invaspread: error: ")
            and "Traceback" not in proc.stderr and all(n in lines[0] for n in needles))


def record(group, name, clean, detail=""):
    with _PRINT:   # cases run in parallel threads
        RESULTS.append((group, name, bool(clean)))
        print(f"[{'clean' if clean else 'NOT CLEAN':9s}] {group:14s} {name}" + (f"  ({detail})" if detail else ""),
              flush=True)


def case(group, name):
    def wrap(fn):
        def run(tmp: Path):
            work = tmp / f"{group}-{next(_IDS)}"
            work.mkdir()
            try:
                clean, detail = fn(work)
            except Exception as err:  # the harness itself must not stop: an unexpected failure is "not clean"
                clean, detail = False, f"{type(err).__name__}: {err}"
            record(group, name, clean, detail)
        run.group, run.name = group, name
        CASES.append(run)
        return run
    return wrap


def load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def finite_checkpoint(path) -> bool:
    import torch

    return all(torch.isfinite(v).all() for v in load(path)["model"].values() if v.is_floating_point())


def metric_epochs(run):
    return [json.loads(line)["epoch"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
