"""The evaluation transform (``data.eval_transform``, written without torchvision so that ``search`` starts
quickly) against torchvision's own ``Resize`` / ``CenterCrop`` / ``ToTensor`` / ``Normalize``: bit for bit, on
random images of many shapes, for every recipe's evaluation pipeline."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from invaspread.config import AugmentConfig
from invaspread.data.eval_transform import CenterCrop, eval_transform

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def torchvision_eval(recipe: str, size: int, resize):
    """What the evaluation transform was before: torchvision's operations."""
    if recipe == "finegrained":
        ops = ([T.Resize((resize, resize))] if resize else []) + [T.CenterCrop(size)]
    elif recipe == "resized_crop":
        ops = [T.Resize(resize or size), T.CenterCrop(size)]
    else:
        ops = [T.Resize((size, size))]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(MEAN, STD)])


@pytest.mark.parametrize("recipe, size, resize", [("released", 32, None), ("simclr", 24, None), ("byol", 40, None),
                                                  ("finegrained", 27, 33), ("finegrained", 20, None),
                                                  ("resized_crop", 21, 30), ("resized_crop", 25, None)])
@pytest.mark.parametrize("shape", [(32, 32), (45, 31), (31, 45), (64, 50), (33, 34), (40, 40)])
def test_the_evaluation_transform_is_torchvisions_bit_for_bit(recipe, size, resize, shape):
    rng = np.random.default_rng(sum(shape) + size)
    image = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    ours = eval_transform(AugmentConfig(recipe=recipe), size, MEAN, STD, resize)
    expected = torchvision_eval(recipe, size, resize)(image)
    got = pickle.loads(pickle.dumps(ours))(image)   # what a DataLoader worker runs
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_a_grey_image_gets_one_channel_as_torchvision_gives_it():
    image = Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6), mode="L")
    got = eval_transform(AugmentConfig(), 4, (0.5,), (0.25,))(image)
    assert torch.equal(got, T.Compose([T.Resize((4, 4)), T.ToTensor(), T.Normalize((0.5,), (0.25,))])(image))


@pytest.mark.parametrize("crop, shape", [(9, (6, 8)), (9, (9, 4)), (10, (3, 3)), (7, (12, 5))])
def test_a_crop_larger_than_the_image_pads_it_with_black_as_torchvision_does(crop, shape):
    image = Image.fromarray(np.random.default_rng(crop).integers(1, 256, (*shape, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(CenterCrop(crop)(image)), np.asarray(T.CenterCrop(crop)(image)))
