"""Feature banks: embed a whole image source with an explicit evaluation transform, in eval mode."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from ..data.bundle import EvalDataset, images_as_tensor, usable_workers


class PooledFeatures(torch.nn.Module):
    """An ``EmbeddingNet`` read at its backbone: image -> L2-normalised pooled features (``eval.features=pooled``,
    the layer SimCLR, MoCo and BYOL evaluate)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.network.pooled(x).float(), dim=1)


class DeviceForward(torch.nn.Module):
    """``network`` computed as the run computes on its device (``engine.precision``): inputs in its memory
    format, under its autocast; float32 out."""

    def __init__(self, network: torch.nn.Module, autocast_dtype: Optional[torch.dtype],
                 memory_format: torch.memory_format):
        super().__init__()
        self.network, self.autocast_dtype, self.memory_format = network, autocast_dtype, memory_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                            enabled=self.autocast_dtype is not None):
            return self.network(x).float()


def evaluation_network(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """What evaluation, ``embed``, ``index`` and ``search`` run: ``model`` itself (its L2-normalised embedding),
    or its pooled features when ``eval.features`` (or, with ``auto``, the run's method) says so; in the precision
    and memory format the run computes in on the model's device (``engine.precision.forward_settings``)."""
    from ..methods import evaluation_features
    from .precision import forward_settings

    autocast_dtype, memory_format = forward_settings(cfg, next(model.parameters()).device)
    if memory_format == torch.channels_last:
        model.to(memory_format=memory_format)   # in place, as training converts it (the weights' values stay)
    if evaluation_features(cfg) == "pooled":
        return DeviceForward(PooledFeatures(model), autocast_dtype, memory_format).eval()
    wrapped = DeviceForward(model, autocast_dtype, memory_format)
    wrapped.training = model.training   # the wrapper reports the model's mode (``_embed_batches`` restores it)
    return wrapped


@torch.no_grad()
def _embed_batches(model, batches, device, pooled: bool, autocast_dtype, channels_last: bool = False):
    """Run ``model`` (or its pooled backbone) in eval mode over an iterable of float input batches;
    returns the concatenated float32 outputs on ``device`` and restores the model's mode."""
    was_training = model.training
    model.eval()
    out = []
    for x in batches:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            out.append((model.pooled(x) if pooled else model(x)).float())
    model.train(was_training)
    return torch.cat(out)


def embed_uint8(model, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                batch_size: int = 512, device=None, channels_last: bool = False,
                autocast_dtype: Optional[torch.dtype] = None, pooled: bool = False, progress: bool = False) -> torch.Tensor:
    """Embed (N, 3, H, W) uint8 images with the ToTensor + Normalize evaluation transform, batched
    on ``device`` without any per-image Python work. Returns (N, d) float32 on ``device``."""
    device = torch.device(device or next(model.parameters()).device)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    from tqdm.auto import tqdm

    starts = tqdm(range(0, images.shape[0], batch_size), desc="features", disable=not progress, leave=False)
    batches = (images[s:s + batch_size].to(device, non_blocking=True).float().div_(255).sub_(mean_t).div_(std_t)
               for s in starts)
    return _embed_batches(model, batches, device, pooled, autocast_dtype, channels_last)


def extract_features(model, source, transform: Callable, batch_size: int = 256, device=None,
                     num_workers: int = 0, pooled: bool = False, progress: bool = False,
                     autocast_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Embed every image of ``source`` (ArrayImages or FileImages) after ``transform`` (PIL -> tensor)."""
    from tqdm.auto import tqdm

    device = torch.device(device or next(model.parameters()).device)
    loader = DataLoader(EvalDataset(source, transform), batch_size=batch_size, shuffle=False,
                        num_workers=usable_workers(num_workers), pin_memory=device.type == "cuda")
    batches = (x for x, _ in tqdm(loader, desc="features", disable=not progress, leave=False))
    return _embed_batches(model, batches, device, pooled, autocast_dtype)


def source_features(model, source, data_cfg, augment_cfg, mean, std, batch_size=512, device=None,
                    pooled=False, progress=False, channels_last=False, autocast_dtype=None) -> torch.Tensor:
    """Embed a source with the configured evaluation transform, taking the batched uint8 path when the
    transform is only ToTensor + Normalize (in-memory images already at ``image_size``)."""
    from ..data.eval_transform import eval_transform
    from ..data.transforms import CROP_JITTER_RECIPES

    size = data_cfg.image_size
    images = getattr(source, "images", None)
    if (images is not None and augment_cfg.recipe in CROP_JITTER_RECIPES and images.shape[1] == size
            and images.shape[2] == size):
        return embed_uint8(model, images_as_tensor(source), mean, std, batch_size, device, channels_last,
                           autocast_dtype, pooled, progress)
    transform = eval_transform(augment_cfg, size, mean, std, data_cfg.resize)
    workers = 0 if images is not None else data_cfg.num_workers
    return extract_features(model, source, transform, batch_size, device, workers, pooled, progress, autocast_dtype)
