"""``invaspread export RUN --format onnx|torchscript --out FILE``: the evaluation network as a file that runs
without this package.

The exported network takes RGB images as floats in [0, 1], shaped (batch, 3, S, S) for any batch size, and
returns what ``embed`` writes: (batch, d) L2-normalised features (the embedding, or the pooled features where
the run evaluates those). The evaluation transform's normalisation (mean, std) is inside; its geometric steps
(resize, centre crop), which a deployment does with its own image library, are written beside the file in
``FILE.json`` with the rest of what a user needs: input and output names and shapes, the run and its epoch.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import torch

from .errors import InvaspreadError

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT, OUTPUT = "images", "embeddings"


class NormalizedEmbedding(torch.nn.Module):
    """images in [0, 1] (N, 3, S, S) -> (N, d) L2-normalised features: Normalize, then ``network``."""

    def __init__(self, network: torch.nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.network((images - self.mean) / self.std).float(), dim=1)


def geometric_steps(transform) -> list:
    """The evaluation transform's steps before ToTensor + Normalize, as plain data (``FILE.json``)."""
    from .data.eval_transform import CenterCrop, Resize

    steps = []
    for op in transform.ops:
        if isinstance(op, Resize):
            steps.append({"op": "resize", "bilinear": True, **({"shorter_side": op.size} if isinstance(op.size, int)
                                                                 else {"height": op.size[0], "width": op.size[1]})})
        elif isinstance(op, CenterCrop):
            steps.append({"op": "center_crop", "size": op.size, "pad_with": "black, when the image is smaller"})
    return steps


def export_run(run, fmt: str, out, overrides: Sequence[str] = (), log: Callable[[str], None] = print) -> dict:
    """Write the run's evaluation network to ``out`` (``fmt``: onnx or torchscript) and its description to
    ``out + '.json'``; returns the description. Neither file may exist (nothing is replaced)."""
    from .data.eval_transform import run_eval_transform
    from .data.transforms import normalisation
    from .engine.checkpoint import load_run
    from .engine.features import PooledFeatures
    from .methods import evaluation_features
    from .outputs import check_new_path, check_out, new_file

    if fmt not in FORMATS:
        raise InvaspreadError(f"export --format {fmt}: expected one of {', '.join(FORMATS)}")
    out = check_out(out, "export --out", folder=False)
    sidecar = out.with_name(out.name + ".json")
    for path in (out, sidecar):
        check_new_path(path, "export --out")
    cfg, state, model, _ = load_run(run, [*overrides, "train.device=cpu"])
    features = evaluation_features(cfg)
    network = NormalizedEmbedding(PooledFeatures(model) if features == "pooled" else model,
                                  *normalisation(cfg.data)).float().eval()
    size = cfg.data.image_size
    example = torch.rand(2, 3, size, size)
    with torch.no_grad():
        dim = network(example).shape[1]
    description = {"format": fmt, "input": {"name": INPUT, "shape": ["batch", 3, size, size], "dtype": "float32",
                                            "values": "RGB in [0, 1] (pixel / 255), channels first"},
                   "preprocess": geometric_steps(run_eval_transform(cfg)),
                   "normalisation_inside": {"mean": list(normalisation(cfg.data)[0]),
                                            "std": list(normalisation(cfg.data)[1])},
                   "output": {"name": OUTPUT, "shape": ["batch", dim], "l2_normalised": True, "features": features},
                   "run": str(run), "epoch": int(state["epoch"]), "method": cfg.method.name}
    with new_file(out, "export --out") as fh:
        _write(network, example, fmt, fh)
    with new_file(sidecar, "export --out") as fh:
        fh.write((json.dumps(description, indent=1) + "\n").encode())
    log(f"{run} (epoch {state['epoch']}, {features} features, {dim}-d) -> {out} ({fmt}; images (batch, 3, {size}, "
        f"{size}) in [0, 1], normalisation inside) and {sidecar.name} (how to prepare the images)")
    return description


def _write(network: torch.nn.Module, example: torch.Tensor, fmt: str, fh) -> None:
    if fmt == "torchscript":
        import warnings

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch.jit's deprecation: the format is what was asked
            torch.jit.save(torch.jit.trace(network, example), fh)
        return
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None:   # torch.onnx's exporter needs it: said here, not deep inside
        raise InvaspreadError("export --format onnx needs the onnx exporter's packages: pip install "
                              "'invaspread[export]' (onnx, onnxscript; onnxruntime to run the file)")
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(network, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    fh.write(program.model_proto.SerializeToString())
