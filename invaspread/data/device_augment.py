"""Per-sample augmentation of a whole batch on the device (GPU, or CPU in tests).

Reproduces the released recipe's torchvision semantics for every image independently (torchvision
v2 applied to a batch tensor draws *one* set of parameters for the whole batch, which is not this):

* RandomResizedCrop(size, scale=(s, 1), ratio=(3/4, 4/3)): torchvision's 10 tries of
  (area ~ U(scale) * H * W, log-ratio ~ U(log ratio)), rounded sides, uniform integer offsets, and
  its centre-crop fallback; resampled with PIL's bilinear filter (triangle kernel, widened by the
  scale factor when shrinking, restricted to the crop box) as two batched matrix products.
* ColorJitter(b, c, s, h): factors ~ U(max(0, 1 - x), 1 + x), hue ~ U(-h, h), the four operations
  in a random order per image (torchvision's ``randperm(4)``), with torchvision's formulas:
  brightness blends with black, contrast with the mean grey level, saturation with the grey image,
  hue rotates H in HSV; each clamps to [0, 1].
* RandomGrayscale(p): luma 0.2989 R + 0.587 G + 0.114 B.
* RandomHorizontalFlip(0.5), folded into the column resampling matrix (flip commutes with the
  per-pixel colour operations and their image-wide means).
* The successors' recipes (``data/transforms.py``): the jitter applied with probability p (RandomApply),
  per-operation strengths (hue 0.1, BYOL's saturation 0.2); GaussianBlur(kernel, sigma ~ U(0.1, 2)) with
  torchvision's tensor formula (normalised exp(-x^2 / 2 sigma^2) taps, reflect padding) as two batched matrix
  products with each image's sigma; solarisation (x >= 128/255 -> 1 - x); BYOL's blur and solarisation
  probabilities differ between its two views (a batch is view-major: the first B images are view 1).
* ToTensor + Normalize.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, Optional, Sequence

import torch

from .transforms import BLUR_SIGMA, CROP_JITTER_RECIPES, SOLARIZE_THRESHOLD, blur_kernel_size, view_recipes

LUMA = (0.2989, 0.587, 0.114)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10


HSV_SECTORS = ((0, 3, 2), (1, 0, 2), (2, 0, 3), (2, 1, 0), (3, 2, 0), (0, 2, 1))


@functools.lru_cache(maxsize=64)
def _constant_on(values, device: str, dtype) -> torch.Tensor:
    return torch.tensor(values, device=device, dtype=dtype)


def _constant(values, device, dtype=torch.float32) -> torch.Tensor:
    """A small constant tensor, copied to each device once (no host-to-device copy per batch)."""
    return _constant_on(tuple(values), str(device) if device is not None else "cpu", dtype)


def _uniform(shape, low, high, generator, device):
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


def sample_crop_boxes(n: int, height: int, width: int, scale=(0.2, 1.0), ratio=RATIO,
                      generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """(n, 4) int64 boxes (top, left, h, w) distributed as ``RandomResizedCrop.get_params``."""
    area = height * width
    target_area = area * _uniform((n, CROP_TRIES), scale[0], scale[1], generator, device)
    log_ratio = _uniform((n, CROP_TRIES), math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.full((n,), -1, device=valid.device))
    pick = first.clamp_min(0)[:, None]
    w = w.gather(1, pick).squeeze(1)
    h = h.gather(1, pick).squeeze(1)
    # torch.randint(0, H - h + 1): a uniform integer offset per image
    top = torch.floor(torch.rand(n, generator=generator, device=device) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=generator, device=device) * (width - w + 1))
    # fallback: the largest centred crop whose aspect ratio lies inside ``ratio``
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    fallback = first < 0
    h = torch.where(fallback, torch.full_like(h, fh), h)
    w = torch.where(fallback, torch.full_like(w, fw), w)
    top = torch.where(fallback, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(fallback, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1).long()


def resample_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """(B, out_size, in_size) weights of PIL's bilinear resize of pixels [start, start + length).

    Output pixel o has centre c = start + (o + 0.5) * length / out_size; input pixel k gets weight
    max(0, 1 - |k + 0.5 - c| / max(scale, 1)) if k lies in the crop, normalised per row.
    """
    start, length = start.float()[:, None, None], length.float()[:, None, None]
    scale = length / out_size
    support = scale.clamp_min(1.0)
    o = torch.arange(out_size, device=start.device, dtype=torch.float32)[None, :, None]
    k = torch.arange(in_size, device=start.device, dtype=torch.float32)[None, None, :]
    centre = start + (o + 0.5) * scale
    weights = (1 - (k + 0.5 - centre).abs() / support).clamp_min(0)
    weights = weights * ((k >= start) & (k < start + length))
    return weights / weights.sum(-1, keepdim=True)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: Optional[torch.Tensor] = None):
    """Crop ``boxes`` (B, 4: top, left, h, w) out of float images (B, C, H, W), resize to size x size,
    optionally mirror rows where ``flip`` (B,) is True."""
    _, _, height, width = images.shape
    rows = resample_matrix(boxes[:, 0], boxes[:, 2], height, size)   # (B, size, H)
    cols = resample_matrix(boxes[:, 1], boxes[:, 3], width, size)    # (B, size, W)
    if flip is not None:
        cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    out = images @ cols.transpose(1, 2)[:, None]                     # (B, C, H, size)
    return rows[:, None] @ out                                       # (B, C, size, size)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, torchvision's weights."""
    return LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # sector i -> (r, g, b) picks among (v, q, p, t)
    table = torch.stack([v, q, p, t], 1)                                  # (B, 4, H, W)
    idx = _constant(HSV_SECTORS, x.device, torch.long)[i].permute(0, 3, 1, 2)  # (B, 3, H, W)
    return table.gather(1, idx)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift[:, None, None], 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1))


BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def _blend_steps(x: torch.Tensor, slots: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Apply brightness / contrast / saturation ops ``slots[:, t]`` (B, T) in turn; -1 = no op.

    All three are blends with a reference, f x + (1 - f) ref, clamped to [0, 1]: black for brightness,
    the mean grey level for contrast, the grey image for saturation. No op = factor 1."""
    for t in range(slots.shape[1]):
        op = slots[:, t]
        factor = torch.where(op < 0, 1.0, factors.gather(1, op.clamp_min(0)[:, None]).squeeze(1))[:, None, None, None]
        gray = grayscale(x)
        op = op[:, None, None, None]
        reference = torch.where(op == CONTRAST, gray.mean((2, 3), keepdim=True),
                                torch.where(op == SATURATION, gray, torch.zeros_like(gray)))
        x = (factor * x + (1 - factor) * reference).clamp(0.0, 1.0)
    return x


def color_jitter(x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """x: (B, 3, H, W) in [0, 1]; order: (B, 4) permutation of the four ops; factors: (B, 4) as
    (brightness, contrast, saturation, hue shift). Applies op order[:, t] at step t to every image.

    Every image has exactly one hue step, so the batch runs as: the blends before each image's hue
    step, one hue rotation for all, the blends after it (one HSV round trip instead of four)."""
    steps = torch.arange(3, device=x.device)[None]
    hue_at = (order == HUE).float().argmax(1, keepdim=True)                    # (B, 1)
    before = torch.where(steps < hue_at, order[:, :3], -1)
    after_index = hue_at + 1 + steps
    after = torch.where(after_index < 4, order.gather(1, after_index.clamp_max(3)), -1)
    x = _blend_steps(x, before, factors)
    x = adjust_hue(x, factors[:, HUE])
    return _blend_steps(x, after, factors)


def blur_matrix(sigma: torch.Tensor, size: int, kernel_size: int) -> torch.Tensor:
    """(B, size, size): each row o holds the Gaussian taps of image b's sigma on the pixels o - k//2 .. o + k//2,
    mirrored at the borders (torch's "reflect" padding, which torchvision's ``gaussian_blur`` uses)."""
    half = kernel_size // 2
    taps = torch.arange(-half, half + 1, device=sigma.device)
    weights = torch.exp(-0.5 * (taps.float()[None] / sigma[:, None]) ** 2)
    weights = weights / weights.sum(1, keepdim=True)                                    # (B, k)
    at = torch.arange(size, device=sigma.device)[:, None] + taps[None]                  # (size, k)
    at = torch.where(at < 0, -at, torch.where(at > size - 1, 2 * (size - 1) - at, at))
    onehot = torch.nn.functional.one_hot(at, size).to(weights.dtype)                    # (size, k, size)
    return torch.einsum("bk,oki->boi", weights, onehot)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur square images (B, C, S, S), image b with ``sigma[b]``: rows then columns (the kernel separates)."""
    m = blur_matrix(sigma, x.shape[-1], kernel_size)[:, None]                          # (B, 1, S, S)
    return m @ x @ m.transpose(-1, -2)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.solarize(img, 128)`` on [0, 1] values: invert the pixels at or above 128/255."""
    return torch.where(x >= SOLARIZE_THRESHOLD / 255.0, 1.0 - x, x)


_SHARED_FIELDS = ("crop_scale", "jitter", "jitter_p", "grayscale_p", "flip")


class DeviceAugment:
    """Draws per-image parameters and applies a crop/jitter-family recipe (``CROP_JITTER_RECIPES``) to a uint8
    batch on its device."""

    def __init__(self, size: int, aug, mean: Sequence[float], std: Sequence[float]):
        if aug.recipe not in CROP_JITTER_RECIPES:
            raise ValueError(f"on-device augmentation implements augment.recipe {CROP_JITTER_RECIPES}, "
                             f"not {aug.recipe!r}")
        self.size, self.recipes = size, view_recipes(aug)
        self.view = self.recipes[0]
        for name in _SHARED_FIELDS:   # the views may differ only in blur and solarisation (BYOL)
            if any(getattr(r, name) != getattr(self.view, name) for r in self.recipes):
                raise ValueError(f"on-device augmentation needs the same {name} in every view")
        self.kernel_size = blur_kernel_size(size)
        self.mean, self.std = tuple(mean), tuple(std)

    def _per_image(self, field: str, n: int, views: int, device) -> Optional[torch.Tensor]:
        """(n,) probability of ``field`` for each image of a view-major batch of ``views`` views; None if 0."""
        values = [getattr(self.recipes[v % len(self.recipes)], field) for v in range(views)]
        if not any(values):
            return None
        if n % views:
            raise ValueError(f"a batch of {n} images is not {views} equal views")
        return _constant(values, device).repeat_interleave(n // views)

    def sample(self, n: int, height: int, width: int, generator=None, device=None,
               views: int = 1) -> Dict[str, torch.Tensor]:
        """Parameters of n images, view-major when ``views`` > 1 (images [v B, (v + 1) B) are view v + 1)."""
        view = self.view
        if view.crop_scale:
            boxes = sample_crop_boxes(n, height, width, view.crop_scale, RATIO, generator, device)
        else:
            boxes = _constant((0, 0, height, width), device, torch.long).expand(n, 4)
        b, c, s, h = view.jitter
        factors = torch.stack([_uniform((n,), max(0.0, 1 - x), 1 + x, generator, device) for x in (b, c, s)]
                              + [_uniform((n,), -h, h, generator, device)], 1)
        params = {
            "boxes": boxes,
            "jitter_order": torch.rand((n, 4), generator=generator, device=device).argsort(1),
            "jitter_factors": factors,
            "grayscale": torch.rand(n, generator=generator, device=device) < view.grayscale_p,
            "flip": (torch.rand(n, generator=generator, device=device) < 0.5) & view.flip,
        }
        # drawn only by the recipes that have them, so that the released recipe's stream is what it always was
        if view.jitter_p < 1:
            params["jitter_applied"] = torch.rand(n, generator=generator, device=device) < view.jitter_p
        blur_p = self._per_image("blur_p", n, views, device)
        if blur_p is not None:
            params["blurred"] = torch.rand(n, generator=generator, device=device) < blur_p
            params["blur_sigma"] = _uniform((n,), *BLUR_SIGMA, generator, device)
        solarize_p = self._per_image("solarize_p", n, views, device)
        if solarize_p is not None:
            params["solarized"] = torch.rand(n, generator=generator, device=device) < solarize_p
        return params

    def apply(self, images: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        """images: (B, 3, H, W) uint8 -> (B, 3, size, size) normalised float32."""
        x = images.float() / 255.0
        x = resized_crop(x, params["boxes"], self.size, params["flip"])
        if self.view.jitters:
            jittered = color_jitter(x, params["jitter_order"], params["jitter_factors"])
            x = jittered if "jitter_applied" not in params else _where(params["jitter_applied"], jittered, x)
        if self.view.grayscale_p > 0:
            x = _where(params["grayscale"], grayscale(x).expand_as(x), x)
        if "blurred" in params:
            x = _where(params["blurred"], gaussian_blur(x, params["blur_sigma"], self.kernel_size), x)
        if "solarized" in params:
            x = _where(params["solarized"], solarize(x), x)
        mean = _constant(self.mean, x.device).view(1, 3, 1, 1)
        std = _constant(self.std, x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
                 views: int = 1) -> torch.Tensor:
        params = self.sample(images.shape[0], images.shape[2], images.shape[3], generator, images.device, views)
        return self.apply(images, params)


def _where(chosen: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a for the images where ``chosen`` (B,) is True, else b."""
    return torch.where(chosen[:, None, None, None], a, b)
