"""The successors' augmentation recipes (augment.recipe = simclr / mocov2 / byol): the PIL path against each
authors' listing written out with torchvision, the on-device path's new operations against torchvision's, and
the device path's draws and whole-pipeline statistics against the PIL path, view by view."""

import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import stats

from invaspread.config import AugmentConfig, ConfigError, load_config
from invaspread.data.bundle import ViewsDataset
from invaspread.data.device_augment import DeviceAugment, gaussian_blur, solarize
from invaspread.data.transforms import train_transforms
from invaspread.methods.base import epoch_seed
from test_device_augment import random_images

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def authors_listing(recipe, view, size=32):
    """Each recipe as its authors list it, in torchvision (kernel 3 = 10% of 32 px, rounded to odd)."""
    jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2 if recipe == "byol" else 0.4, 0.1)], p=0.8)
    tail = [T.ToTensor(), T.Normalize(MEAN, STD)]
    if recipe == "simclr":   # SimCLR appendix B.9 (CIFAR-10: colour strength 0.5, no blur)
        return T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), jitter,
                          T.RandomGrayscale(p=0.2)] + tail)
    if recipe == "mocov2":   # main_moco.py --aug-plus
        return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0)), jitter, T.RandomGrayscale(p=0.2),
                          T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5), T.RandomHorizontalFlip()]
                         + tail)
    blur = T.GaussianBlur(3, sigma=(0.1, 2.0))   # BYOL Table 6: blur 1.0 / 0.1, solarisation 0 / 0.2
    ops = [T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), jitter, T.RandomGrayscale(p=0.2)]
    ops += [blur] if view == 0 else [T.RandomApply([blur], p=0.1), T.RandomSolarize(128, p=0.2)]
    return T.Compose(ops + tail)


def random_uint8(n, size=32, seed=0):
    return (random_images(n, size, size, seed) * 255).round().to(torch.uint8)


def pil(images):
    return [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]


@pytest.mark.parametrize("recipe", ["simclr", "mocov2", "byol"])
def test_pil_views_are_the_authors_listing(recipe):
    ours = train_transforms(AugmentConfig(recipe=recipe), 32, MEAN, STD)
    assert len(ours) == (2 if recipe == "byol" else 1)
    images = pil(random_uint8(6))
    for view in range(2):
        reference = authors_listing(recipe, view)
        for seed in range(4):
            torch.manual_seed(seed)
            a = torch.stack([ours[view % len(ours)](im) for im in images])
            torch.manual_seed(seed)
            b = torch.stack([reference(im) for im in images])
            assert torch.equal(a, b), (recipe, view, seed)


def test_released_recipe_has_one_view_and_no_new_operations():
    (only,) = train_transforms(AugmentConfig(), 32, MEAN, STD)
    kinds = [type(t).__name__ for t in only.transforms]
    assert kinds == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "RandomHorizontalFlip", "ToTensor",
                     "Normalize"]


def test_switches_remove_operations_from_a_successors_recipe():
    aug = AugmentConfig(recipe="byol", crop=False, color_jitter=0.0, grayscale_p=0.0, flip=False)
    first, second = train_transforms(aug, 32, MEAN, STD)
    assert [type(t).__name__ for t in second.transforms] == ["Resize", "RandomApply", "RandomSolarize", "ToTensor",
                                                            "Normalize"]
    assert [type(t).__name__ for t in first.transforms] == ["Resize", "GaussianBlur", "ToTensor", "Normalize"]


def test_a_successors_recipe_refuses_a_strength_it_would_not_use():
    with pytest.raises(ConfigError, match="augment.crop_scale_min=0.08: augment.recipe=simclr"):
        load_config(None, ["augment.recipe=simclr", "augment.crop_scale_min=0.08"])
    with pytest.raises(ConfigError, match="augment.color_jitter=0.5"):
        load_config(None, ["augment.recipe=byol", "augment.color_jitter=0.5"])
    assert load_config(None, ["augment.recipe=mocov2", "augment.grayscale_p=0"]).augment.grayscale_p == 0


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
@pytest.mark.parametrize("kernel", [3, 5])
def test_device_blur_is_torchvisions_gaussian_blur(sigma, kernel):
    x = random_uint8(3, 16, seed=1).float() / 255
    ours = gaussian_blur(x, torch.full((3,), sigma), kernel)
    for b in range(3):
        torch.testing.assert_close(ours[b], TF.gaussian_blur(x[b], [kernel, kernel], [sigma, sigma]),
                                   atol=1e-5, rtol=0)


def test_device_blur_uses_each_images_own_sigma():
    x = random_uint8(4, 12, seed=2).float() / 255
    sigmas = torch.tensor([0.1, 0.5, 1.2, 2.0])
    ours = gaussian_blur(x, sigmas, 3)
    for b, s in enumerate(sigmas.tolist()):
        torch.testing.assert_close(ours[b], TF.gaussian_blur(x[b], [3, 3], [s, s]), atol=1e-5, rtol=0)


def test_device_solarisation_is_pils_at_128():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    reference = TF.to_tensor(TF.solarize(pil(x)[0], 128))
    torch.testing.assert_close(solarize(x.float() / 255)[0], reference, atol=1e-6, rtol=0)


def test_device_draws_follow_each_views_probabilities():
    n = 2 * 12000
    dev = DeviceAugment(32, AugmentConfig(recipe="byol"), MEAN, STD)
    p = dev.sample(n, 32, 32, generator=torch.Generator().manual_seed(3), views=2)
    half = n // 2
    for key, rates in (("blurred", (1.0, 0.1)), ("solarized", (0.0, 0.2)), ("jitter_applied", (0.8, 0.8)),
                       ("grayscale", (0.2, 0.2)), ("flip", (0.5, 0.5))):
        for view, rate in enumerate(rates):
            observed = p[key][view * half:(view + 1) * half].float().mean().item()
            assert abs(observed - rate) <= 4 * math.sqrt(rate * (1 - rate) / half) + 1e-9, (key, view, observed)
    f = p["jitter_factors"].numpy()
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):   # BYOL: saturation 0.2
        assert stats.kstest(f[:, col], stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3, col
    assert stats.kstest(p["blur_sigma"].numpy(), stats.uniform(0.1, 1.9).cdf).pvalue > 1e-3
    assert (p["boxes"][:, 2] * p["boxes"][:, 3] < 0.2 * 1024).float().mean() > 0.05   # scale 0.08-1, not 0.2-1


def test_released_device_draws_are_what_they_were():
    """The released recipe draws nothing new: its stream (and so every saved run) is unchanged."""
    dev = DeviceAugment(32, AugmentConfig(), MEAN, STD)
    p = dev.sample(8, 32, 32, generator=torch.Generator().manual_seed(0), views=2)
    assert set(p) == {"boxes", "jitter_order", "jitter_factors", "grayscale", "flip"}


def summary(x):
    """Per-channel mean and std, grey fraction, solarised-looking fraction and sharpness of normalised views."""
    x = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    grey = ((x[:, 0] - x[:, 1]).abs().amax((1, 2)) < 2 / 255).float().mean()
    sharpness = (x[..., 1:] - x[..., :-1]).abs().mean()
    return x.mean((0, 2, 3)), x.std((0, 2, 3)), grey, sharpness


@pytest.mark.parametrize("recipe", ["simclr", "mocov2", "byol"])
def test_device_pipeline_statistics_match_the_pil_pipeline_per_view(recipe):
    images = random_uint8(64, seed=9)
    reps = 12
    aug = AugmentConfig(recipe=recipe)
    dev = DeviceAugment(32, aug, MEAN, STD)
    g = torch.Generator().manual_seed(0)
    ours = torch.cat([dev(images.repeat(2, 1, 1, 1), g, views=2).view(2, 64, 3, 32, 32) for _ in range(reps)], 1)
    dataset = ViewsDataset(type("Source", (), {"image": lambda self, i: pil(images[i:i + 1])[0],
                                                "__len__": lambda self: 64})(),
                           train_transforms(aug, 32, MEAN, STD), views=2)
    torch.manual_seed(0)
    items = [dataset[i][0] for _ in range(reps) for i in range(64)]
    for view in range(2):
        m1, s1, g1, sharp1 = summary(ours[view])
        m2, s2, g2, sharp2 = summary(torch.stack([views[view] for views in items]))
        torch.testing.assert_close(m1, m2, atol=0.02, rtol=0)
        torch.testing.assert_close(s1, s2, atol=0.02, rtol=0)
        assert abs(g1 - g2) < 0.05, (view, g1, g2)
        assert abs(sharp1 - sharp2) < 0.1 * sharp2, (view, sharp1, sharp2)
    if recipe == "byol":   # view 1 is always blurred (a 3-tap kernel at 32 px): smoother than view 2
        assert summary(ours[0])[3] < 0.95 * summary(ours[1])[3]


def test_on_device_batches_take_a_successors_recipe_per_view():
    from invaspread.engine.batches import DeviceBatches

    class Source:
        images = random_uint8(8, seed=4).permute(0, 2, 3, 1).numpy()

        def __len__(self):
            return 8

    cfg = load_config(None, ["augment.recipe=byol", "data.image_size=32"])
    batches = DeviceBatches(Source(), cfg.data, cfg.augment, MEAN, STD, 4, torch.device("cpu"))
    views, index = next(iter(batches.epoch(seed=0, epoch=0, views=2)))
    assert views.shape == (2, 4, 3, 32, 32) and index.shape == (4,)
    # the same draws as one view-major call with two views (one view's probabilities would draw differently)
    generator = torch.Generator().manual_seed(epoch_seed(0, 0))
    expected = DeviceAugment(32, cfg.augment, MEAN, STD)(batches.images[index.repeat(2)], generator, views=2)
    assert torch.equal(views, expected.view(2, 4, 3, 32, 32))
