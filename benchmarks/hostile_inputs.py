"""Hostile and careless use of the command line, counted: every case run as a real `invaspread` process
(SIGKILL/SIGTERM/SIGINT, two processes into one folder or index or table, planted files, damaged indexes, a full
and a read-only disk, torchrun ranks killed, the user's files at our names), each judged "clean" or not. Prints one line
per case and the totals per group. Cases run in parallel threads (each drives its own processes).

    python benchmarks/hostile_inputs.py [--jobs 3] [--only GROUP] [--case TEXT] [--kills 41] [--resumes 19]

Clean means: the command ends with exit code 0 and the right result, or with exit code 2 and exactly one line
on stderr, "invaspread: error: ...", no traceback; and nothing the case checks was lost, overwritten or run.
The full-disk and read-only cases mount a small tmpfs (root only; skipped otherwise). The cases live in
benchmarks/hostile/ (kills_and_settings.py, own_data.py, outputs.py, user_files.py); the machinery in
benchmarks/hostile/harness.py.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
from harness import RESULTS, CASES, TINY, cli, load, record  # noqa: E402
import kills_and_settings  # noqa: E402,F401  (registers its cases)
import own_data  # noqa: E402,F401
import outputs  # noqa: E402,F401
import user_files  # noqa: E402,F401


def _numbered(group, i, try_once, *args):
    def run(tmp: Path):
        (tmp / f"{group}{i}").mkdir()
        try:
            clean, detail = try_once(tmp / f"{group}{i}", i, *args)
        except Exception as err:
            clean, detail = False, repr(err)
        record(group, f"{'kill try' if group == 'kill' else 'killed and resumed'} {i + 1}", clean, detail)
        shutil.rmtree(tmp / f"{group}{i}", ignore_errors=True)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3, help="cases run at once (default 3)")
    parser.add_argument("--kills", type=int, default=41)
    parser.add_argument("--resumes", type=int, default=19)
    parser.add_argument("--case", help="run the cases whose name contains this text")
    parser.add_argument("--only", help="run one group (kill, resume-exact, security, lost-data, cache, wrong, "
                                       "resume, settings, one-line, own-folders, index-search, report, table, "
                                       "cache-clear, existing-folder, torchrun, divergence, archives, user-files)")
    args = parser.parse_args()
    # started in the background (`cmd &` in a script, nohup), this process and every command it starts would
    # ignore SIGINT (an ignored signal stays ignored across exec), and the Ctrl-C cases would test nothing:
    # a handled SIGINT here is reset to the default in each child, where Python's KeyboardInterrupt takes it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        todo = [fn for fn in CASES if (not args.only or fn.group == args.only) and (not args.case or args.case in fn.name)]
        if (not args.only or args.only == "kill") and not args.case:
            todo += [_numbered("kill", i, kills_and_settings.kill_try) for i in range(args.kills)]
        if (not args.only or args.only == "resume-exact") and not args.case:
            cli("train", "--out", tmp / "reference", "--epochs", "3", *TINY)
            reference = load(tmp / "reference" / "last.pt")
            todo += [_numbered("resume-exact", i, kills_and_settings.resume_try, reference) for i in range(args.resumes)]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(lambda fn: fn(tmp), todo))
    print("\n| group | tries | clean |\n| --- | ---: | ---: |")
    for group in sorted(dict.fromkeys(g for g, _, _ in RESULTS)):
        rows = [c for g, _, c in RESULTS if g == group]
        print(f"| {group} | {len(rows)} | {sum(rows)} |")
    print(f"| all | {len(RESULTS)} | {sum(c for _, _, c in RESULTS)} |")
    print(f"\n{time.perf_counter() - started:.0f} s with {args.jobs} jobs")
    return 0 if all(c for _, _, c in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
