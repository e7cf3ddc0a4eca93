"""``invaspread`` command line: train, resume, config, evaluate, table, report, cache; the collection commands
(embed, index, search, export, serve) are in ``collection_cli``."""

from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path

from .collection_cli import add_collection_commands
from .config_files import bundled_configs, overrides_from_flags, resolve_config_path
from .errors import InvaspreadError


EPILOG_TRAIN = """\
examples:
  invaspread train                                   # quickstart: bundled digits, a few minutes on CPU
  invaspread train --config cifar10 --data-dir ~/data/cifar10
  invaspread train --config cifar10 --data-dir cifar10-jpeg.tar.gz --set train.epochs=3 --out runs/c3
  invaspread train --set method.invaspread.variant=paper --set method.invaspread.temperature=0.07
  invaspread train --resume runs/c3                  # continue an interrupted run exactly
  invaspread train --resume runs/c3 --epochs 300     # extend it (also --data-dir, --set optim.lr=...)
  invaspread train --config cifar10 --set method.name=nce     # a compared method (README, Table 1)
  invaspread train --config cifar10 --set method.name=random --epochs 0   # the untrained network
  invaspread config cifar10                           # every key, its value and its meaning

--config takes a YAML file or the name of a bundled config (%s).
--set section.key=value overrides one key; values are read as YAML (3, 0.1, true, null, [120, 160]).
"""


def cmd_train(args) -> int:
    from .config import load_config
    from .engine.trainer import fit

    if args.resume:
        if args.config or args.out:
            raise InvaspreadError("--resume continues the run in its own folder with its saved config; drop "
                                  + " and ".join(f for f, v in (("--config", args.config), ("--out", args.out)) if v))
        fit(None, args.resume, resume=True, overrides=overrides_from_flags(args))
        return 0
    name = args.config or "digits"
    cfg = load_config(resolve_config_path(name), overrides_from_flags(args))
    out = args.out or f"runs/{Path(name).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"run folder: {out}")
    fit(cfg, out, use_existing_folder=args.use_existing_folder)
    print(f"done; checkpoint {out}/last.pt, metrics {out}/metrics.jsonl")
    return 0


def cmd_config(args) -> int:
    """Print every key of a config with its value and meaning (``key: value  # meaning``, valid YAML)."""
    import yaml

    from .config import describe, load_config

    path = resolve_config_path(args.name, "config") if args.name else None
    cfg = load_config(path, list(args.set or []))
    if path is not None:   # the file's own header: the recipe's sources, its arithmetic, its named differences
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("#"):
                break
            print(line)
    print(f"# {args.name or 'defaults'}: every key, its value and what it means (--set section.key=value)")
    opened: list = []  # the sections (and sub-sections) whose header is printed
    for key, value, meaning in describe(cfg):
        *parents, leaf = key.split(".")
        common = 0
        while common < min(len(opened), len(parents)) and opened[common] == parents[common]:
            common += 1
        for depth in range(common, len(parents)):
            print(f"{'  ' * depth}{parents[depth]}:")
        opened = parents
        text = yaml.safe_dump({leaf: value}, default_flow_style=True, width=10_000).strip()[1:-1]
        print(f"{'  ' * len(parents)}{text}" + (f"  # {meaning}" if meaning else ""))
    return 0


def cmd_eval(args) -> int:
    import torch

    from .data.datasets import build_data
    from .engine.checkpoint import load_run
    from .engine.evaluation import evaluate, resolve_protocol

    cfg, state, model, device = load_run(args.run, overrides_from_flags(args))
    bundle = build_data(cfg.data, progress=True)
    protocol = resolve_protocol(args.protocol or cfg.eval.protocol, bundle, cfg.data.name)
    if protocol is None:
        raise InvaspreadError(f"data.name={cfg.data.name} has no labelled evaluation images (eval.protocol="
                              f"{args.protocol or cfg.eval.protocol}); for an image folder set data.test_root with "
                              f"--set data.test_root=DIR")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evaluate(model, bundle, cfg, device, protocol, progress=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "evaluation changed the model"
    print(f"{cfg.data.name}, epoch {state['epoch']}, protocol {protocol}:")
    for key, value in result.items():
        print(f"  {key:>14s}  {value:8.2f}")
    return 0


def cmd_cache(args) -> int:
    """List or empty the decoded-image cache."""
    from .data.cache import cache_folder, clear_entries, list_entries

    folder = cache_folder(args.cache_dir)
    if args.action == "clear":
        removed, freed = clear_entries(args.cache_dir)
        print(f"{folder}: removed {removed} cache file{'s' * (removed != 1)} ({freed / 1024 ** 2:.1f} MiB); other "
              f"files there are not the cache's and were left alone")
        return 0
    entries = list_entries(args.cache_dir)
    print(f"{folder}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {sum(size for _, size, _ in entries) / 1024 ** 2:.1f} MiB")
    for path, size, meta in entries:
        what = meta.get("archive", meta.get("state", "?"))
        print(f"  {path.name}  {size / 1024 ** 2:8.1f} MiB  {meta.get('created', '')}  {what}")
    return 0


def cmd_table(args) -> int:
    from .report.table_runner import run_table

    number = int(args.number) if args.number.isdigit() else args.number
    failed = run_table(number, args.data_dir, args.out or f"runs/table{args.number}", args.epochs,
                       list(args.set or []), args.dry_run)
    if failed:
        print(f"invaspread: {failed} row(s) failed (see the table's status column)", file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args) -> int:
    from .report.page import write_report

    write_report(args.runs, args.out, args.data_dir, args.images, args.queries, args.k)
    return 0


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train an embedding (or resume a run)",
                           description="Train an embedding with InvaSpread or a compared method (method.name); writes config.yaml, metrics.jsonl, last.pt.",
                           epilog=EPILOG_TRAIN % ", ".join(bundled_configs()),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML file or bundled config name (default: digits)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    train.add_argument("--data-dir", help="shortcut for --set data.root=DIR")
    train.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    train.add_argument("--device", help="shortcut for --set train.device=DEVICE (auto, cpu, cuda)")
    train.add_argument("--out", help="run folder (default: runs/CONFIG-TIMESTAMP)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its last.pt with its saved config; only --epochs, "
                            "--data-dir and a few --set keys (optim.lr, data.*_root/cache_dir/num_workers, "
                            "train.device/progress, eval.batch_size) may change, recorded in overrides.jsonl")
    train.add_argument("--use-existing-folder", action="store_true",
                       help="let --out name a non-empty folder that is not a run: the run's files go beside the "
                            "ones there (a file of the same name is never overwritten)")
    train.set_defaults(func=cmd_train)


def _add_config(sub) -> None:
    cf = sub.add_parser("config", help="print every config key with its value and meaning",
                        description="Print a config (a bundled name, a YAML file, or the defaults) with every key, "
                                    "its value and a one-line meaning. The output is valid YAML: save it, edit it "
                                    "and pass it to train --config.")
    cf.add_argument("name", nargs="?", help=f"bundled config ({', '.join(bundled_configs())}) or a YAML file")
    cf.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key first (repeatable)")
    cf.set_defaults(func=cmd_config)


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a trained run or checkpoint",
                        description="Evaluate a checkpoint with one of the paper's protocols: knn (Tables 1-2), "
                                    "linear (Table 2), retrieval = Recall@K + NMI (Tables 3-6). The default is the "
                                    "run's eval.protocol (auto: knn when the training images are labelled, else "
                                    "retrieval among the labelled test images).")
    ev.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    ev.add_argument("--protocol", choices=["auto", "knn", "linear", "retrieval"],
                    help="overrides the run's eval.protocol for this evaluation")
    ev.add_argument("--data-dir", help="data location, if it moved since training")
    ev.add_argument("--device", help="auto, cpu or cuda")
    ev.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. eval.knn_k=20")
    ev.set_defaults(func=cmd_eval)


def _add_table(sub) -> None:
    tb = sub.add_parser("table", help="train every row of one of the paper's tables and write it beside the paper's",
                        description="Train every row of the paper's Table N (1-8) in turn with the bundled configs, "
                                    "or of 1x (Table 1's rows and SimCLR, MoCo v2, BYOL), "
                                    "each in its own run folder OUT/<row>/, then write OUT/tableN.md and tableN.csv: "
                                    "each row's metrics beside the paper's numbers, with epochs, wall time and "
                                    "device. Resumable: a finished row is skipped, an interrupted one resumed. Rows "
                                    "the harness does not train (supervised methods, numbers quoted from other "
                                    "papers) are listed as such.",
                        epilog="examples:\n  invaspread table 1 --dry-run\n  invaspread table 1x --dry-run\n"
                               "  invaspread table 1 --data-dir cifar10-jpeg.tar.gz --out runs/table1\n"
                               "  invaspread table 8 --data-dir cifar10-jpeg.tar.gz --epochs 20 --set model.width=16",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tb.add_argument("number", choices=[*map(str, range(1, 9)), "1x"], metavar="N",
                    help="the paper's table, 1-8, or 1x (Table 1 with the methods after the paper)")
    tb.add_argument("--data-dir", help="the table's data set (Tables 1, 7, 8: CIFAR-10; 2: STL-10; 3: CUB-200; "
                                       "4, 6: SOP; 5: Cars196)")
    tb.add_argument("--out", help="folder of the table and its row runs (default: runs/tableN)")
    tb.add_argument("--epochs", type=int, help="train every row for E epochs instead (the table says so)")
    tb.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key in every row (repeatable)")
    tb.add_argument("--dry-run", action="store_true", help="print each row and its train command; train nothing")
    tb.set_defaults(func=cmd_table)


def _add_report(sub) -> None:
    rp = sub.add_parser("report", help="the paper's figures for your runs, on one HTML page",
                        description="Write DIR/index.html and its PNGs: Figure 3 (kNN or R@1 per epoch and per "
                                    "second, every run on one plot), and per run Figure 5 (cosine similarity of "
                                    "positive and negative pairs, trained vs untrained network), Figure 4 "
                                    "(retrieval grids at every kept epoch: train.save_epochs) and the final metrics "
                                    "beside the paper's number where the run is a paper-table row.")
    rp.add_argument("runs", nargs="+", metavar="RUN_DIR")
    rp.add_argument("--out", required=True, help="folder for index.html and the PNGs")
    rp.add_argument("--data-dir", help="data location, if it moved since training")
    rp.add_argument("--images", type=int, default=2000, help="test images sampled for Figures 4-5 (default 2000)")
    rp.add_argument("--queries", type=int, default=8, help="queries in the retrieval grid (default 8)")
    rp.add_argument("-k", type=int, default=8, help="neighbours per query in the grid (default 8)")
    rp.set_defaults(func=cmd_report)


def _add_cache(sub) -> None:
    ca = sub.add_parser("cache", help="list or empty the decoded-image cache",
                        description="Archives (the CIFAR-10 JPEG copy, ...) are decoded once into a checked cache "
                                    "entry per archive content; subsets are sliced from it. 'list' shows the "
                                    "entries, 'clear' removes them (they are rebuilt when next needed).")
    ca.add_argument("action", choices=["list", "clear"])
    ca.add_argument("--cache-dir", help="cache folder (default: $INVASPREAD_CACHE, else ~/.cache/invaspread)")
    ca.set_defaults(func=cmd_cache)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="invaspread",
        description="Unsupervised embedding learning with invariant and spreading instance features "
                    "(Ye et al., CVPR 2019). Learns L2-normalised embeddings from unlabelled images.")
    parser.add_argument("--version", action="version", version=f"invaspread {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_train, _add_config, _add_eval):
        add(sub)
    add_collection_commands(sub)   # embed, index, search, export, serve
    for add in (_add_table, _add_report, _add_cache):
        add(sub)
    return parser


INTERRUPTED = {   # what an interrupted command leaves behind, by command
    "train": "every finished epoch is saved in the run folder's last.pt (continue with: invaspread train --resume "
             "RUN_DIR)",
    "table": "every finished epoch of the row in progress is saved; run the same table command again to go on",
    "index": "no index was written or changed (the partial one is removed); run the command again",
    "embed": "no embeddings file was written; run the command again",
    "export": "no file was written; run the command again",
    "serve": "the page is no longer served; nothing was changed",
    "report": "no report was written (the partial one is removed); run the command again",
}


# a write refused by the file system: one line naming the file, never a traceback
FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``): the command ends as on Ctrl-C, with the same one line, nothing half-written."""


def _interrupt_on_sigterm(signum, frame):
    raise Terminated


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import signal
    import threading

    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        return _run_command(args)
    finally:
        if signal.getsignal(signal.SIGTERM) is _interrupt_on_sigterm:
            signal.signal(signal.SIGTERM, previous)


def _run_command(args) -> int:
    """``args.func(args)``, its errors and interruptions as one line and an exit status."""
    try:
        return args.func(args)
    except InvaspreadError as err:
        print(f"invaspread: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"\ninvaspread: {'terminated' if isinstance(err, Terminated) else 'interrupted'}; "
              f"{INTERRUPTED.get(args.command, 'nothing was changed')}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except BrokenPipeError:   # `invaspread config cifar10 | head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error when Python flushes
        return 141
    except OSError as err:
        if err.errno not in FULL_OR_READ_ONLY:
            raise
        print(f"invaspread: error: cannot write {err.filename or 'a file'}: {err.strerror}; nothing that existed was "
              f"replaced ({INTERRUPTED.get(args.command, 'free space and run the command again')})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
