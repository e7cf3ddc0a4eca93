"""Per-view augmentation (CPU, PIL, torchvision); the evaluation transform is ``data.eval_transform``.

"released" recipe, from the authors' code (paper Section 4.1, "default parameters"):
RandomResizedCrop(size, scale=(0.2, 1)) -> ColorJitter(0.4, 0.4, 0.4, 0.4) -> RandomGrayscale(0.2)
-> RandomHorizontalFlip -> ToTensor -> Normalize. Each ``augment.*`` switch removes one operation,
as in the ablation of Table 7.

The successors' recipes ("simclr", "mocov2", "byol"; ``SUCCESSOR_RECIPES``), in their authors' order:
RandomResizedCrop -> (RandomHorizontalFlip: SimCLR, BYOL) -> RandomApply(ColorJitter, p 0.8) -> RandomGrayscale
-> RandomApply(GaussianBlur(kernel ~10% of the side, sigma ~ U(0.1, 2)), p) -> (RandomHorizontalFlip: MoCo v2)
-> RandomSolarize(128, p) -> ToTensor -> Normalize, BYOL's blur and solarisation differing between its two views.
torchvision's GaussianBlur stands in for MoCo v2's PIL ``ImageFilter.GaussianBlur(radius=sigma)``. The switches
``crop``, ``flip``, ``color_jitter=0`` and ``grayscale_p=0`` remove an operation from these too; their strengths
are the recipe's.

"finegrained" recipe (Section 4.2): resize to 256x256, random 227x227 crop, horizontal flip;
evaluation takes the single centre crop.

"resized_crop" recipe (gtolias/mom's ``py/train.py``, the MOM rows): RandomResizedCrop(size, scale=
(crop_scale_min, 1)) of the original image and a horizontal flip; evaluation resizes the shorter side to
``resize`` (aspect kept) and takes the centre crop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # released code's values
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STL10_MEAN, STL10_STD = (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)

# data set -> (mean, std) used when data.mean / data.std are null; ImageNet's for any other
NORMALISATION = {"digits": (CIFAR10_MEAN, CIFAR10_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
                 "cifar10_unseen": (CIFAR10_MEAN, CIFAR10_STD), "stl10": (STL10_MEAN, STL10_STD)}


def normalisation(data_cfg):
    """(mean, std) for ``Normalize``: the config's, else the data set's usual values."""
    mean, std = NORMALISATION.get(data_cfg.name, (IMAGENET_MEAN, IMAGENET_STD))
    return tuple(data_cfg.mean or mean), tuple(data_cfg.std or std)


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation: what a crop/jitter-family recipe draws for each image of that view."""
    crop_scale: Optional[Tuple[float, float]]  # RandomResizedCrop scale; None = resize the whole image
    jitter: Tuple[float, float, float, float]  # ColorJitter (brightness, contrast, saturation, hue); zeros = none
    jitter_p: float  # probability the jitter is applied (RandomApply); 1 = always, as the released code
    grayscale_p: float
    flip: bool
    blur_p: float = 0.0  # GaussianBlur(kernel ~10% of the side, sigma ~ U(BLUR_SIGMA)) probability
    solarize_p: float = 0.0  # RandomSolarize(threshold 128 of 255) probability
    flip_after_crop: bool = False  # the flip right after the crop (SimCLR's, BYOL's listing), else after grey and blur

    @property
    def jitters(self) -> bool:
        return any(v > 0 for v in self.jitter)


BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128  # of 255: PIL's ImageOps.solarize inverts the pixels at or above it

# the successors' authors' recipes, per view (one entry: both views alike)
_SIMCLR = ViewRecipe((0.08, 1.0), (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, True, flip_after_crop=True)  # B.9: s = 0.5, no blur
_MOCOV2 = ViewRecipe((0.2, 1.0), (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, True, blur_p=0.5)  # main_moco.py --aug-plus
_BYOL = ViewRecipe((0.08, 1.0), (0.4, 0.4, 0.2, 0.1), 0.8, 0.2, True, flip_after_crop=True)  # BYOL Table 6
SUCCESSOR_RECIPES = {
    "simclr": (_SIMCLR,),
    "mocov2": (_MOCOV2,),
    "byol": (replace(_BYOL, blur_p=1.0), replace(_BYOL, blur_p=0.1, solarize_p=0.2)),
}
# recipes whose views are crop -> jitter -> grey -> flip (-> blur -> solarise) of the whole image: evaluated by
# resizing to image_size, and augmentable on the device (``DeviceAugment``)
CROP_JITTER_RECIPES = ("released",) + tuple(SUCCESSOR_RECIPES)
# every augment.recipe: the crop/jitter family, and the fine-grained benchmarks' crops (``train_transforms``)
AUGMENT_RECIPES = CROP_JITTER_RECIPES + ("finegrained", "resized_crop")


def view_recipes(aug) -> Tuple[ViewRecipe, ...]:
    """The per-view recipes of an ``AugmentConfig`` of the crop/jitter family (view v uses entry v % len).

    "released": the config's own strengths. A successor's recipe: its authors' values, with the Table 7 switches
    (``crop``, ``flip``, ``color_jitter=0``, ``grayscale_p=0``) removing operations."""
    if aug.recipe == "released":
        j = aug.color_jitter
        return (ViewRecipe((aug.crop_scale_min, 1.0) if aug.crop else None, (j, j, j, j), 1.0, aug.grayscale_p,
                           aug.flip),)
    if aug.recipe not in SUCCESSOR_RECIPES:
        raise ValueError(f"augment.recipe={aug.recipe!r} is not a crop/jitter recipe {CROP_JITTER_RECIPES}")
    switched = {"flip": aug.flip}
    if not aug.crop:
        switched["crop_scale"] = None
    if aug.color_jitter == 0:
        switched["jitter"] = (0.0, 0.0, 0.0, 0.0)
    if aug.grayscale_p == 0:
        switched["grayscale_p"] = 0.0
    return tuple(replace(view, **switched) for view in SUCCESSOR_RECIPES[aug.recipe])


def blur_kernel_size(image_size: int) -> int:
    """The odd Gaussian kernel of about 10% of the image side (SimCLR's and BYOL's 23 at 224), at least 3."""
    return max(3, int(0.1 * image_size) // 2 * 2 + 1)


def view_transform(view: ViewRecipe, image_size: int, mean, std):
    """One view's PIL -> tensor transform, torchvision's operations in the order its authors list them (the flip
    commutes with every other operation, so its place changes only which random numbers go where)."""
    from torchvision import transforms as T   # here, not at import: torchvision takes seconds to import

    ops = [T.RandomResizedCrop(image_size, scale=view.crop_scale) if view.crop_scale
           else T.Resize((image_size, image_size))]
    flip = [T.RandomHorizontalFlip()] if view.flip else []
    if view.flip_after_crop:
        ops += flip
    if view.jitters:
        jitter = T.ColorJitter(*view.jitter)
        ops.append(jitter if view.jitter_p >= 1 else T.RandomApply([jitter], p=view.jitter_p))
    if view.grayscale_p > 0:
        ops.append(T.RandomGrayscale(p=view.grayscale_p))
    if view.blur_p > 0:
        blur = T.GaussianBlur(blur_kernel_size(image_size), sigma=BLUR_SIGMA)
        ops.append(blur if view.blur_p >= 1 else T.RandomApply([blur], p=view.blur_p))
    if not view.flip_after_crop:
        ops += flip
    if view.solarize_p > 0:
        ops.append(T.RandomSolarize(SOLARIZE_THRESHOLD, p=view.solarize_p))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def train_transforms(aug, image_size: int, mean, std, resize=None) -> List:
    """The training transform of each view (one entry when all views are drawn alike; view v uses v % len)."""
    from torchvision import transforms as T

    if aug.recipe in CROP_JITTER_RECIPES:
        return [view_transform(view, image_size, mean, std) for view in view_recipes(aug)]
    ops = []
    if aug.recipe == "finegrained":
        if resize:
            ops.append(T.Resize((resize, resize)))
        ops.append(T.RandomCrop(image_size) if aug.crop else T.CenterCrop(image_size))
    else:   # resized_crop
        ops.append(T.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0)) if aug.crop
                   else T.Compose([T.Resize(resize or image_size), T.CenterCrop(image_size)]))
    if aug.flip:
        ops.append(T.RandomHorizontalFlip())
    return [T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])]


def train_transform(aug, image_size: int, mean, std, resize=None):
    """The first view's training transform (every view's, but for BYOL's asymmetric recipe)."""
    return train_transforms(aug, image_size, mean, std, resize)[0]
