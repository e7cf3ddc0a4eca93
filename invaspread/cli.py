"""``invaspread`` command line: train, resume, evaluate, embed, cache."""

from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path

from .config_files import bundled_configs, resolve_config_path
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


def _overrides(args) -> list:
    sets = list(args.set or [])
    if getattr(args, "data_dir", None):
        sets.append(f"data.root={args.data_dir}")
    if getattr(args, "epochs", None) is not None:
        sets.append(f"train.epochs={args.epochs}")
    if getattr(args, "device", None):
        sets.append(f"train.device={args.device}")
    return sets


def cmd_train(args) -> int:
    from .config import load_config
    from .engine.trainer import fit

    if args.resume:
        if args.config or args.out:
            raise InvaspreadError("--resume continues the run in its own folder with its saved config; drop "
                                  + " and ".join(f for f, v in (("--config", args.config), ("--out", args.out)) if v))
        fit(None, args.resume, resume=True, overrides=_overrides(args))
        return 0
    name = args.config or "digits"
    cfg = load_config(resolve_config_path(name), _overrides(args))
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

    cfg, state, model, device = load_run(args.run, _overrides(args))
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


def cmd_embed(args) -> int:
    import numpy as np

    from .outputs import check_new_path, check_out, new_file
    from .search.embed import embed_images

    out = check_out(args.out, "embed --out", folder=False)   # a folder is refused before a suffix is added
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")  # numpy would append it anyway: say where the file really is
    out = check_out(out, "embed --out", folder=False)
    check_new_path(out, "embed --out")   # before the work; publishing checks again
    source, feats, state = embed_images(args.run, args.images, args.batch_size, overrides=_overrides(args),
                                        progress=sys.stderr.isatty())
    extra = {} if source.labels is None else {"labels": source.labels, "classes": np.asarray(source.classes)}
    if source.skipped:   # the unreadable files left out, every one (the line above named the first few)
        extra["skipped"] = np.asarray([path for path, _ in source.skipped])
    with new_file(out, "embed --out") as fh:
        np.savez(fh, embeddings=feats, paths=np.asarray(source.paths), **extra)
    print(f"{len(source)} images from {args.images} -> {out} ({feats.shape[1]}-d, L2-normalised; "
          f"model of epoch {state['epoch']})" + (f"; {len(source.skipped)} unreadable files left out, listed in its "
                                                 f"array 'skipped'" if source.skipped else ""))
    return 0


def cmd_export(args) -> int:
    from .export import SUFFIXES, export_run

    export_run(args.run, args.format, args.out or f"model{SUFFIXES[args.format]}", _overrides(args))
    return 0


def cmd_serve(args) -> int:
    from .search.serve import serve

    if args.k < 1:
        raise InvaspreadError(f"serve -k {args.k}: expected a positive number")
    serve(args.index, args.host, args.port, args.k)
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


def cmd_index(args) -> int:
    from .search import build_index

    if args.add:
        return _index_add(args)
    if args.run is None or args.out is None:
        raise InvaspreadError("index needs RUN_DIR_OR_CHECKPOINT and --out INDEX to build an index, or --add INDEX "
                              "to add images to one: see invaspread index --help")
    build_index(args.run, args.images, args.out, args.batch_size, args.workers, args.backend, args.ivf, args.device,
                progress=sys.stderr.isatty(), overrides=args.set or ())
    return 0


def _index_add(args) -> int:
    from .search.grow import add_to_index

    given = [flag for flag, value in (("RUN_DIR_OR_CHECKPOINT", args.run), ("--out", args.out), ("--ivf", args.ivf),
                                      ("--set", args.set), ("--backend", args.backend != "auto")) if value]
    if given:
        raise InvaspreadError(f"index --add INDEX takes no {', '.join(given)}: the index's own network, config and "
                              f"FAISS kind embed and hold the new images")
    add_to_index(args.add, args.images, args.batch_size, args.workers, args.device, progress=sys.stderr.isatty())
    return 0


def cmd_search(args) -> int:
    import json

    from .search import SearchIndex
    from .search.index import printable

    for flag, value in (("-k", args.k), ("--nprobe", args.nprobe)):
        if value < 1:
            raise InvaspreadError(f"search {flag} {value}: expected a positive number")
    index = SearchIndex(args.index)
    k = min(args.k + args.exclude_self, len(index.paths))   # one more: the query's own file, when indexed
    scores, rows = index.search(index.embed(args.queries, args.device), k, args.backend, args.nprobe)
    for query, query_scores, query_rows in zip(args.queries, scores, rows):
        hits = [{"path": index.paths[r], "score": round(float(s), 6)} for s, r in zip(query_scores, query_rows) if r >= 0]
        if args.exclude_self:
            hits = [hit for hit in hits if not _same_file(hit["path"], query)][:args.k]
        if args.json:   # a name that is not UTF-8 stays exact as JSON's \\udcNN escape
            print(json.dumps({"query": query, "results": hits}))
            continue
        print(printable(query))
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank:3d}  {hit['score']:.4f}  {printable(hit['path'])}")
    return 0


def _same_file(a: str, b: str) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


BACKEND_CHOICES = ("auto", "faiss", "torch")


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


def _add_embed(sub) -> None:
    em = sub.add_parser("embed", help="embed a folder of images with a trained model",
                        description="Write the L2-normalised embeddings of every image under --images (a flat "
                                    "folder or <class>/ sub-folders) to an .npz file with arrays embeddings (N, d), "
                                    "paths (N,) and, for sub-folders, labels and classes. Images get the run's "
                                    "evaluation transform (resized to data.image_size). Cosine similarity between "
                                    "two images is the dot product of their embeddings.")
    em.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    em.add_argument("--images", required=True, help="folder of images to embed")
    em.add_argument("--out", default="embeddings.npz", help="output .npz (default: embeddings.npz)")
    em.add_argument("--batch-size", type=int, default=256)
    em.add_argument("--device", help="auto, cpu or cuda")
    em.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    em.set_defaults(func=cmd_embed)


def _add_export(sub) -> None:
    ex = sub.add_parser("export", help="the evaluation network as an ONNX or TorchScript file",
                        description="Write the network that embed uses (its features, L2-normalised, the "
                                    "normalisation inside) as a file that runs without invaspread: input 'images' "
                                    "(batch, 3, S, S) floats in [0, 1], any batch size; output 'embeddings' "
                                    "(batch, d). FILE.json beside it says how to resize and crop the images.",
                        epilog="examples:\n  invaspread export runs/cifar10 --format onnx --out cifar10.onnx\n"
                               "  invaspread export runs/cifar10 --format torchscript --out cifar10.pt",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    ex.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                    help="onnx (pip install 'invaspread[export]'; run with onnxruntime) or torchscript (torch.jit.load)")
    ex.add_argument("--out", metavar="FILE", help="the file to write (default: model.onnx or model.pt); never replaced")
    ex.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. eval.features=pooled")
    ex.set_defaults(func=cmd_export)


def _add_serve(sub) -> None:
    sv = sub.add_parser("serve", help="a local page to browse an index and search it by click or upload",
                        description="Serve a page over INDEX: a grid of its images; click one, or upload one, to "
                                    "see its k nearest neighbours with scores and paths. Only the index's own images "
                                    "are served, by row number. Local by default (127.0.0.1); Ctrl-C stops.",
                        epilog="example:\n  invaspread serve photos.index --port 8000   # then open "
                               "http://127.0.0.1:8000/",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sv.add_argument("index", metavar="INDEX")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free one)")
    sv.add_argument("-k", type=int, default=8, help="neighbours shown (default 8)")
    sv.set_defaults(func=cmd_serve)


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


def _add_index(sub) -> None:
    ix = sub.add_parser("index", help="embed an image collection for search",
                        description="Embed every image under --images (recursively; any size: batched, memory "
                                    "bounded by a batch) with a trained run's network into an index folder. "
                                    "Unreadable files are listed and skipped. With FAISS installed (pip install "
                                    "'invaspread[faiss]') a FAISS index is built too: exact inner product, or IVF "
                                    "with --ivf NLIST for collections past a million images. --add INDEX grows an "
                                    "index: only the images it does not hold are embedded, and the grown index "
                                    "replaces the old one in one step.",
                        epilog="examples:\n  invaspread index runs/cifar10 --images ~/photos --out photos.index\n"
                               "  invaspread index --add photos.index --images ~/photos   # only the new photos\n"
                               "  invaspread search photos.index query.jpg -k 10",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ix.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT", nargs="?", help="the trained run (not with --add)")
    ix.add_argument("--images", required=True, help="folder of images (searched recursively)")
    ix.add_argument("--out", help="index folder to create (e.g. photos.index)")
    ix.add_argument("--add", metavar="INDEX", help="add the images under --images that INDEX does not hold yet, "
                                                   "embedded by INDEX's own network (nothing is embedded twice)")
    ix.add_argument("--batch-size", type=int, default=256)
    ix.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images (default 0)")
    ix.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                    help="auto: FAISS when installed, else exact torch search at query time")
    ix.add_argument("--ivf", type=int, default=0, metavar="NLIST",
                    help="FAISS IVF index with NLIST lists (approximate; 0 = exact, the default)")
    ix.add_argument("--device", help="auto, cpu or cuda")
    ix.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a key of the run's config, e.g. eval.features=pooled")
    ix.set_defaults(func=cmd_index)


def _add_search(sub) -> None:
    se = sub.add_parser("search", help="find the images of an index nearest to query images",
                        description="Print the k nearest indexed images of each query image with their cosine "
                                    "similarity (1.0: the same embedding). Queries go through the network the "
                                    "index was built with. Read the scores as a ranking: a network trained "
                                    "briefly puts every image at a similarity near 1 (0.96-0.97 for all), "
                                    "and only their order says which are closest.")
    se.add_argument("index", metavar="INDEX_DIR")
    se.add_argument("queries", nargs="+", metavar="QUERY_IMAGE")
    se.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    se.add_argument("--json", action="store_true", help='one JSON list per query: [{"path": ..., "score": ...}]')
    se.add_argument("--exclude-self", action="store_true",
                    help="leave the query's own file out of its results (a query taken from the indexed folder)")
    se.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                    help="auto: the index's FAISS index when it has one and faiss is installed, else exact torch")
    se.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query (IVF indexes only)")
    se.add_argument("--device", help="auto, cpu or cuda")
    se.set_defaults(func=cmd_search)


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
    for add in (_add_train, _add_config, _add_eval, _add_embed, _add_table, _add_report, _add_index, _add_search,
                _add_export, _add_serve, _add_cache):
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
