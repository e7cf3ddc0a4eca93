"""R-MAC descriptors (Tolias, Sicre, Jegou, ICLR 2016), multi-scale and PCA-whitened: what MOM mines on
(gtolias/mom ``mom_CUB.m``: R-MAC of the network's last convolutional map at 3 scales, whitened to 512-d).

Per image and scale: the last feature map (C, H, W) of the backbone; square regions at ``levels`` scales
(``rmac_regions``: level l has regions of side floor(2 min(H, W) / (l + 1)), about 40 % overlap); each region
max-pooled to a C-vector and L2-normalised. Every region vector of every scale is whitened (PCA learned on the
training set's region vectors, ``dims`` kept, each divided by the square root of its eigenvalue) and
L2-normalised again; their sum is the image's descriptor, L2-normalised.

Two passes over the images, so memory stays O(C^2) and never O(images x regions x C): ``RMAC`` first
accumulates the region vectors' mean and covariance (``fitting=True``), then describes.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> List[Tuple[int, int, int]]:
    """(top, left, side) of R-MAC's square regions on a height x width map (Tolias et al.'s ``rmac_regions``):
    level 1 is the largest square, level l has l (plus extra along the longer side) regions per row."""
    short = min(height, width)
    steps = torch.arange(2, 8, dtype=torch.float64)                              # 2..7 regions on the long side
    b = (max(height, width) - short) / (steps - 1)
    extra = int(torch.argmin(((short ** 2 - short * b) / short ** 2 - overlap).abs())) + 1
    extra_w, extra_h = (extra, 0) if height < width else ((0, extra) if height > width else (0, 0))
    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side < 1:
            break
        half = math.floor(side / 2 - 1)

        def starts(size, extra_count):
            count = level + extra_count
            step = (size - side) / (count - 1) if count > 1 else 0
            return sorted({min(max(math.floor(half + i * step) - half, 0), size - side) for i in range(count)})

        regions += [(top, left, side) for top in starts(height, extra_h) for left in starts(width, extra_w)]
    return regions


def last_feature_map(backbone: nn.Module) -> nn.Module:
    """The module whose output is the backbone's last convolutional map (before its global pooling)."""
    for name in ("stages", "layer4", "inception5b"):   # CifarResNet, torchvision ResNet, GoogLeNet
        if hasattr(backbone, name):
            return getattr(backbone, name)
    raise ValueError(f"R-MAC needs the last feature map of {type(backbone).__name__}: it has none of "
                     f"stages / layer4 / inception5b")


def region_vectors(feature_map: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, R, C): every region max-pooled and L2-normalised."""
    regions = rmac_regions(feature_map.shape[2], feature_map.shape[3], levels)
    pooled = [feature_map[:, :, t:t + s, l:l + s].amax(dim=(2, 3)) for t, l, s in regions]
    return F.normalize(torch.stack(pooled, dim=1).float(), dim=2)


class RMAC(nn.Module):
    """images -> (B, dims) multi-scale R-MAC of ``backbone`` (``fitting``: accumulate the whitening instead).

    ``scales``: input resizings (MOM: 1, 1/sqrt 2, 1/2); ``levels``: region levels (3)."""

    def __init__(self, backbone: nn.Module, dims: int = 512, scales: Sequence[float] = (1.0, 0.5 ** 0.5, 0.5),
                 levels: int = 3):
        super().__init__()
        self.backbone, self.dims, self.scales, self.levels = backbone, int(dims), tuple(scales), int(levels)
        self.fitting, self.count, self.sum, self.outer = True, 0, None, None
        self.mean = self.projection = None

    def _regions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, R over all scales, C) region vectors."""
        grabbed = []
        hook = last_feature_map(self.backbone).register_forward_hook(lambda m, i, out: grabbed.append(out))
        try:
            for scale in self.scales:
                xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
                self.backbone(xs)
        finally:
            hook.remove()
        return torch.cat([region_vectors(m, self.levels) for m in grabbed], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        regions = self._regions(x).double()                                      # (B, R, C)
        if self.fitting:
            flat = regions.flatten(0, 1)
            self.count += flat.shape[0]
            self.sum = flat.sum(0) if self.sum is None else self.sum + flat.sum(0)
            self.outer = flat.t() @ flat if self.outer is None else self.outer + flat.t() @ flat
            return torch.zeros(x.shape[0], 1, device=x.device)
        whitened = F.normalize((regions - self.mean) @ self.projection, dim=2)    # (B, R, dims)
        return F.normalize(whitened.sum(1), dim=1).float()

    def finish_fitting(self, eps: float = 1e-8) -> None:
        """PCA of the accumulated region vectors: keep ``dims`` leading axes, each scaled by 1/sqrt(eigenvalue)."""
        mean = self.sum / self.count
        covariance = self.outer / self.count - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)                # ascending
        keep = min(self.dims, covariance.shape[0])
        eigenvalues, eigenvectors = eigenvalues.flip(0)[:keep], eigenvectors.flip(1)[:, :keep]
        scale = (eigenvalues.clamp_min(0) + eps * eigenvalues[0].clamp_min(1e-30)).rsqrt()
        self.mean, self.projection, self.fitting = mean, eigenvectors * scale, False


def rmac_descriptors(train_features, backbone: nn.Module, dims: int = 512,
                     scales: Sequence[float] = (1.0, 0.5 ** 0.5, 0.5), levels: int = 3) -> torch.Tensor:
    """(N, min(dims, C)) R-MAC of the un-augmented training set: ``train_features(False, network)`` runs
    ``network`` over it in eval mode (the trainer's ``train_features``), once to fit the whitening, once to
    describe."""
    rmac = RMAC(backbone, dims, scales, levels).eval()   # the trainer restores the training mode after
    train_features(False, rmac)
    rmac.finish_fitting()
    return train_features(False, rmac)
