"""On-device per-sample augmentation against torchvision: same ops for fixed parameters, same sampling
distributions over many draws (fixed seeds, CPU)."""

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats

from invaspread.config import AugmentConfig
from invaspread.data.device_augment import (DeviceAugment, adjust_hue, color_jitter, grayscale, resized_crop,
                                            sample_crop_boxes)


def random_images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images so that resampling differences stay small
    base = torch.rand(n, 3, h // 4 + 1, w // 4 + 1, generator=g)
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return (img + 0.05 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


BOXES = [(0, 0, 32, 32), (3, 5, 20, 17), (10, 0, 9, 14), (0, 20, 12, 12), (5, 7, 27, 25), (31, 31, 1, 1)]


@pytest.mark.parametrize("flip", [False, True])
def test_resized_crop_matches_torchvision_tensor_op(flip):
    imgs = random_images(len(BOXES), 32, 32)
    boxes = torch.tensor(BOXES)
    flips = torch.full((len(BOXES),), flip)
    ours = resized_crop(imgs, boxes, 32, flips)
    for b, (i, j, h, w) in enumerate(BOXES):
        ref = TF.resized_crop(imgs[b], i, j, h, w, [32, 32], antialias=True)
        if flip:
            ref = TF.hflip(ref)
        torch.testing.assert_close(ours[b], ref, atol=2e-5, rtol=0)


def test_resized_crop_downscaling_matches_torchvision_antialias():
    imgs = random_images(3, 96, 96, seed=1)
    boxes = torch.tensor([(0, 0, 96, 96), (10, 4, 70, 80), (30, 30, 40, 33)])
    ours = resized_crop(imgs, boxes, 24)
    for b, (i, j, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(imgs[b], i, j, h, w, [24, 24], antialias=True)
        torch.testing.assert_close(ours[b], ref, atol=1e-4, rtol=0)


def test_resized_crop_close_to_pil_pipeline_on_uint8():
    imgs = (random_images(len(BOXES), 32, 32, seed=2) * 255).round().to(torch.uint8)
    ours = resized_crop(imgs.float() / 255, torch.tensor(BOXES), 32)
    for b, (i, j, h, w) in enumerate(BOXES):
        pil = Image.fromarray(imgs[b].permute(1, 2, 0).numpy())
        ref = TF.to_tensor(TF.resized_crop(pil, i, j, h, w, [32, 32], interpolation=T.InterpolationMode.BILINEAR))
        # PIL rounds to 8 bits between its two separable passes
        assert (ours[b] - ref).abs().max().item() <= 2.5 / 255


TV_OPS = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)])
def test_color_jitter_matches_torchvision_functional_ops(order):
    imgs = random_images(5, 16, 16, seed=3)
    g = torch.Generator().manual_seed(4)
    factors = torch.stack([torch.rand(5, generator=g) * 0.8 + 0.6 for _ in range(3)]
                          + [torch.rand(5, generator=g) * 0.8 - 0.4], 1)
    ours = color_jitter(imgs, torch.tensor(order).expand(5, 4), factors)
    for b in range(5):
        ref = imgs[b]
        for op in order:
            ref = TV_OPS[op](ref, factors[b, op].item())
        torch.testing.assert_close(ours[b], ref, atol=1e-5, rtol=0)


def test_each_image_gets_its_own_operation_order():
    imgs = random_images(24, 8, 8, seed=5)
    perms = torch.tensor(list(itertools.permutations(range(4))))
    factors = torch.tensor([[1.3, 0.7, 1.4, 0.3]]).expand(24, 4)
    ours = color_jitter(imgs, perms, factors)
    for b in range(24):
        ref = imgs[b]
        for op in perms[b].tolist():
            ref = TV_OPS[op](ref, factors[b, op].item())
        torch.testing.assert_close(ours[b], ref, atol=1e-5, rtol=0)


def test_hue_and_grayscale_match_torchvision():
    imgs = random_images(4, 12, 12, seed=6)
    shifts = torch.tensor([-0.4, -0.1, 0.25, 0.5])
    for b in range(4):
        torch.testing.assert_close(adjust_hue(imgs[b:b + 1], shifts[b:b + 1])[0],
                                   TF.adjust_hue(imgs[b], shifts[b].item()), atol=1e-5, rtol=0)
    torch.testing.assert_close(grayscale(imgs), TF.rgb_to_grayscale(imgs), atol=1e-6, rtol=0)


def torchvision_boxes(n, h, w, scale, seed):
    torch.manual_seed(seed)
    img = torch.zeros(3, h, w)
    return np.array([T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)])


@pytest.mark.parametrize("h,w,scale", [(32, 32, (0.2, 1.0)), (96, 96, (0.08, 1.0)), (20, 60, (0.5, 1.0))])
def test_crop_sampling_distribution_matches_torchvision(h, w, scale):
    n = 6000
    ours = sample_crop_boxes(n, h, w, scale, generator=torch.Generator().manual_seed(0)).numpy()
    ref = torchvision_boxes(n, h, w, scale, seed=1)
    for name, f in [("area", lambda b: b[:, 2] * b[:, 3] / (h * w)), ("aspect", lambda b: b[:, 3] / b[:, 2]),
                    ("top", lambda b: b[:, 0] / np.maximum(h - b[:, 2], 1)),
                    ("left", lambda b: b[:, 1] / np.maximum(w - b[:, 3], 1))]:
        p = stats.ks_2samp(f(ours), f(ref)).pvalue
        assert p > 1e-3, f"{name}: KS p={p:.2g}"
    assert (ours[:, 2] <= h).all() and (ours[:, 3] <= w).all()
    assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    # the centre-crop fallback fires equally often (it is frequent for the 20x60 image)
    full_ours = np.mean((ours[:, 2] == h) & (ours[:, 0] == 0))
    full_ref = np.mean((ref[:, 2] == h) & (ref[:, 0] == 0))
    assert abs(full_ours - full_ref) < 4 * math.sqrt(max(full_ref, 1e-3) / n) + 1e-3


def released_aug(**kw):
    return AugmentConfig(**kw)


def test_jitter_orders_factors_grayscale_and_flip_rates():
    n = 24000
    aug = DeviceAugment(32, released_aug(), (0.5,) * 3, (0.25,) * 3)
    p = aug.sample(n, 32, 32, generator=torch.Generator().manual_seed(7))
    # each of the 24 orders equally likely, as torch.randperm(4)
    codes = (p["jitter_order"] * torch.tensor([64, 16, 4, 1])).sum(1).numpy()
    counts = np.bincount(codes)
    counts = counts[counts > 0]
    assert len(counts) == 24
    assert stats.chisquare(counts).pvalue > 1e-3
    f = p["jitter_factors"].numpy()
    for col, (lo, hi) in enumerate([(0.6, 1.4)] * 3 + [(-0.4, 0.4)]):
        assert stats.kstest(f[:, col], stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    for key, rate in (("grayscale", 0.2), ("flip", 0.5)):
        observed = p[key].float().mean().item()
        assert abs(observed - rate) < 4 * math.sqrt(rate * (1 - rate) / n), key


def test_switches_remove_operations():
    aug = DeviceAugment(32, released_aug(crop=False, color_jitter=0.0, grayscale_p=0.0, flip=False), (0, 0, 0), (1, 1, 1))
    imgs = (random_images(4, 32, 32, seed=8) * 255).round().to(torch.uint8)
    out = aug(imgs, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, imgs.float() / 255, atol=1e-6, rtol=0)


def test_full_pipeline_statistics_match_cpu_torchvision_pipeline():
    """Per-channel mean/std and grey fraction of augmented views: device path vs PIL/torchvision path."""
    from invaspread.data.transforms import train_transform

    aug_cfg = released_aug()
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    imgs = (random_images(64, 32, 32, seed=9) * 255).round().to(torch.uint8)
    reps = 20
    dev = DeviceAugment(32, aug_cfg, mean, std)
    g = torch.Generator().manual_seed(0)
    ours = torch.cat([dev(imgs, g) for _ in range(reps)])
    cpu_t = train_transform(aug_cfg, 32, mean, std)
    torch.manual_seed(0)
    pils = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in imgs]
    ref = torch.stack([cpu_t(p) for _ in range(reps) for p in pils])

    def summary(x):
        x = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        grey = ((x[:, 0] - x[:, 1]).abs().amax((1, 2)) < 2 / 255).float().mean()
        return x.mean((0, 2, 3)), x.std((0, 2, 3)), grey

    (m1, s1, g1), (m2, s2, g2) = summary(ours), summary(ref)
    torch.testing.assert_close(m1, m2, atol=0.02, rtol=0)
    torch.testing.assert_close(s1, s2, atol=0.02, rtol=0)
    assert abs(g1 - g2) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("recipe", ["released", "byol"])
def test_cuda_augmentation_matches_cpu_for_the_same_parameters(recipe):
    aug = DeviceAugment(32, released_aug(recipe=recipe), (0.5,) * 3, (0.25,) * 3)
    imgs = (random_images(64, 32, 32, seed=10) * 255).round().to(torch.uint8)
    params = aug.sample(64, 32, 32, generator=torch.Generator().manual_seed(0), views=2)
    cpu = aug.apply(imgs, params)
    gpu = aug.apply(imgs.cuda(), {k: v.cuda() for k, v in params.items()})
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
