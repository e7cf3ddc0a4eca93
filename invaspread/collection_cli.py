"""The collection commands of ``invaspread``: embed, index (and ``--add``), search, export, serve.

Each ``cmd_*`` takes the parsed arguments and returns an exit status; ``add_collection_commands`` adds their
parsers. Heavy modules are imported inside the commands, so ``invaspread --help`` stays free of torch.
"""

from __future__ import annotations

import argparse
import sys

from .config_files import overrides_from_flags
from .errors import InvaspreadError


def cmd_embed(args) -> int:
    import numpy as np

    from .outputs import check_new_path, check_out, new_file
    from .search.embed import embed_images

    out = check_out(args.out, "embed --out", folder=False)   # a folder is refused before a suffix is added
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")  # numpy would append it anyway: say where the file really is
    out = check_out(out, "embed --out", folder=False)
    check_new_path(out, "embed --out")   # before the work; publishing checks again
    source, feats, state = embed_images(args.run, args.images, args.batch_size, overrides=overrides_from_flags(args),
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

    export_run(args.run, args.format, args.out or f"model{SUFFIXES[args.format]}", overrides_from_flags(args))
    return 0


def cmd_serve(args) -> int:
    from .search.serve import serve

    if args.k < 1:
        raise InvaspreadError(f"serve -k {args.k}: expected a positive number")
    serve(args.index, args.host, args.port, args.k)
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


def add_collection_commands(sub) -> None:
    """The parsers of embed, index, search, export and serve, in the order ``--help`` lists them."""
    for add in (_add_embed, _add_index, _add_search, _add_export, _add_serve):
        add(sub)
