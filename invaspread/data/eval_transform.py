"""The evaluation transform: deterministic resize (and centre crop for the fine-grained recipes), then ToTensor and
Normalize, on PIL images. The same arithmetic as torchvision's ``Resize`` (PIL bilinear), ``CenterCrop``,
``ToTensor`` and ``Normalize`` (tests/test_eval_transform.py compares them bit for bit), written here so that
``embed``, ``index`` and ``search`` never import torchvision, which takes seconds to start."""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .transforms import normalisation


class Resize:
    """``size`` an int: the shorter side to ``size``, the aspect kept (the longer side truncated, as torchvision);
    (h, w): exactly that. PIL's bilinear filter; an image already at the size is returned as it is."""

    def __init__(self, size: Union[int, Tuple[int, int]]):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if isinstance(self.size, int):
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.size, int(self.size * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_h, new_w = self.size
        if (new_h, new_w) == (h, w):
            return img
        return img.resize((new_w, new_h), Image.BILINEAR)


class CenterCrop:
    """The central ``size`` x ``size`` square (the offset rounded as torchvision rounds it); an image smaller than
    the crop is first padded with black on both sides, as torchvision pads it."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if self.size > w or self.size > h:   # black margins of (size - side) // 2 before, the rest after
            padded = Image.new(img.mode, (max(w, self.size), max(h, self.size)))
            padded.paste(img, (max(self.size - w, 0) // 2, max(self.size - h, 0) // 2))
            img, (w, h) = padded, padded.size
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))


class ToNormalizedTensor:
    """PIL -> float tensor (C, H, W) in [0, 1], then (x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        array = np.array(img, np.uint8, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        x = torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.get_default_dtype()).div(255)
        mean = torch.as_tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return x.sub_(mean).div_(std)


class EvalTransform:
    """The operations in order; picklable (DataLoader workers)."""

    def __init__(self, ops):
        self.ops = list(ops)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        for op in self.ops:
            img = op(img)
        return img

    def __repr__(self) -> str:
        return "EvalTransform(" + ", ".join(f"{type(op).__name__}({vars(op)})" for op in self.ops) + ")"


def eval_transform(aug, image_size: int, mean, std, resize=None) -> EvalTransform:
    """Deterministic: (resize + centre crop for the fine-grained recipes), ToTensor, Normalize."""
    ops = []
    if aug.recipe == "finegrained":
        if resize:
            ops.append(Resize((resize, resize)))
        ops.append(CenterCrop(image_size))
    elif aug.recipe == "resized_crop":
        ops += [Resize(resize or image_size), CenterCrop(image_size)]   # the shorter side to resize
    else:
        ops.append(Resize((image_size, image_size)))
    return EvalTransform(ops + [ToNormalizedTensor(mean, std)])


def run_eval_transform(cfg) -> EvalTransform:
    """``eval_transform`` of a whole config: its recipe, image size, normalisation and pre-resize."""
    return eval_transform(cfg.augment, cfg.data.image_size, *normalisation(cfg.data), cfg.data.resize)
