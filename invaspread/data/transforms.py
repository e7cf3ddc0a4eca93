"""Per-view augmentation (CPU, PIL, torchvision) and the evaluation transform.

"released" recipe, from the authors' code (paper Section 4.1, "default parameters"):
RandomResizedCrop(size, scale=(0.2, 1)) -> ColorJitter(0.4, 0.4, 0.4, 0.4) -> RandomGrayscale(0.2)
-> RandomHorizontalFlip -> ToTensor -> Normalize. Each ``augment.*`` switch removes one operation,
as in the ablation of Table 7.

"finegrained" recipe (Section 4.2): resize to 256x256, random 227x227 crop, horizontal flip;
evaluation takes the single centre crop.

"resized_crop" recipe (gtolias/mom's ``py/train.py``, the MOM rows): RandomResizedCrop(size, scale=
(crop_scale_min, 1)) of the original image and a horizontal flip; evaluation resizes the shorter side to
``resize`` (aspect kept) and takes the centre crop.
"""

from __future__ import annotations

from torchvision import transforms as T

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


def train_transform(aug, image_size: int, mean, std, resize=None):
    ops = []
    if aug.recipe == "finegrained":
        if resize:
            ops.append(T.Resize((resize, resize)))
        ops.append(T.RandomCrop(image_size) if aug.crop else T.CenterCrop(image_size))
    elif aug.recipe == "resized_crop":
        ops.append(T.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0)) if aug.crop
                   else T.Compose([T.Resize(resize or image_size), T.CenterCrop(image_size)]))
    else:
        if aug.crop:
            ops.append(T.RandomResizedCrop(image_size, scale=(aug.crop_scale_min, 1.0)))
        else:
            ops.append(T.Resize((image_size, image_size)))
        if aug.color_jitter > 0:
            j = aug.color_jitter
            ops.append(T.ColorJitter(j, j, j, j))
        if aug.grayscale_p > 0:
            ops.append(T.RandomGrayscale(p=aug.grayscale_p))
    if aug.flip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


def eval_transform(aug, image_size: int, mean, std, resize=None):
    """Deterministic: (resize + centre crop for the fine-grained recipes), ToTensor, Normalize."""
    ops = []
    if aug.recipe == "finegrained":
        if resize:
            ops.append(T.Resize((resize, resize)))
        ops.append(T.CenterCrop(image_size))
    elif aug.recipe == "resized_crop":
        ops += [T.Resize(resize or image_size), T.CenterCrop(image_size)]   # the shorter side to resize
    else:
        ops.append(T.Resize((image_size, image_size)))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def run_eval_transform(cfg):
    """``eval_transform`` of a whole config: its recipe, image size, normalisation and pre-resize."""
    return eval_transform(cfg.augment, cfg.data.image_size, *normalisation(cfg.data), cfg.data.resize)
