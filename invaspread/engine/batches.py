"""Training batches ``(views, index)`` for one epoch, from the CPU or from device memory.

``views`` is (V, B, 3, H, W): V independent augmentations of the B instances ``index`` (B,) int64.
All V views of instance i are drawn from image i. A method that plans its epoch passes ``plan`` (L, V)
instead: the epoch is its rows in order, view v of row l drawn from image ``plan[l, v]``, and ``index``
holds row ids (see ``Method.epoch_plan``).

Both sources draw everything random in an epoch (shuffle order, augmentation) from generators
seeded by (seed, epoch), and both seed the global random stream by (seed, epoch, rank) when the
epoch's first batch is drawn (what a method draws per step without a generator: NCE's noise,
Triplet's random negatives), so a run resumed at an epoch boundary repeats exactly what an
uninterrupted run does. The epoch's permutation is ``randperm(N)`` seeded by (seed, epoch) on both
sources; under torchrun every rank takes its slice of every global batch, so K processes train on the
very instances, step by step, of one process.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError
from ..data.bundle import PlannedViewsDataset, ViewsDataset, images_as_tensor, usable_workers
from ..data.sources import DataError
from ..data.device_augment import DeviceAugment
from ..data.transforms import CROP_JITTER_RECIPES, train_transforms
from ..methods.base import epoch_seed
from ..ops.distributed import world

Batch = Tuple[torch.Tensor, torch.Tensor]


class CPUBatches:
    """PIL/torchvision augmentation in DataLoader workers (the released code's pipeline)."""

    def __init__(self, source, data_cfg, aug_cfg, mean, std, batch_size: int, device: torch.device):
        self.source = source
        self.transforms = train_transforms(aug_cfg, data_cfg.image_size, mean, std, data_cfg.resize)
        self.batch_size, self.device = batch_size, device
        self.rank, self.world = world()
        self.num_workers = usable_workers(data_cfg.num_workers)

    def __len__(self):
        return len(self.source) // self.batch_size

    def steps(self, plan: Optional[torch.Tensor] = None) -> int:
        return (len(self.source) if plan is None else plan.shape[0]) // self.batch_size

    def epoch(self, seed: int, epoch: int, views: int = 2, plan: Optional[torch.Tensor] = None) -> Iterator[Batch]:
        s = epoch_seed(seed, epoch)
        torch.manual_seed(s + self.rank)  # augmentation RNG when num_workers == 0 (each rank its own)
        if plan is not None:
            dataset = PlannedViewsDataset(self.source, self.transforms, _checked_plan(plan, views, len(self.source)))
        else:
            dataset = ViewsDataset(self.source, self.transforms, views)
        # this rank's slice of every global batch of the epoch's permutation (the same as DeviceBatches'), or
        # of the plan's rows; one process takes whole batches
        order = (torch.randperm(len(self.source), generator=torch.Generator().manual_seed(s)) if plan is None
                 else torch.arange(plan.shape[0]))
        batch_ids = [ids.tolist() for ids in _rank_slices(order, self.batch_size, self.rank, self.world)]
        loader = DataLoader(dataset, batch_sampler=batch_ids,
                            num_workers=self.num_workers, generator=torch.Generator().manual_seed(s + self.rank),
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        try:
            for view_list, idx in loader:
                yield (torch.stack([v.to(self.device, non_blocking=True) for v in view_list]),
                       idx.to(self.device, non_blocking=True))
        except DataError as err:  # re-raised from a worker with its whole traceback in the message: keep its line
            raise DataError(str(err).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None


class DeviceBatches:
    """The whole decoded training set lives on the device as uint8; a batch is an index gather plus
    per-sample augmentation on the device (``DeviceAugment``). No workers, no host copies per step."""

    def __init__(self, source, data_cfg, aug_cfg, mean, std, batch_size: int, device: torch.device):
        self.images = images_as_tensor(source).to(device).contiguous()   # (N, 3, H, W) uint8
        self.augment = DeviceAugment(data_cfg.image_size, aug_cfg, mean, std)
        self.batch_size, self.device = batch_size, device
        self.rank, self.world = world()

    def __len__(self):
        return self.images.shape[0] // self.batch_size

    def steps(self, plan: Optional[torch.Tensor] = None) -> int:
        return (self.images.shape[0] if plan is None else plan.shape[0]) // self.batch_size

    def epoch(self, seed: int, epoch: int, views: int = 2, plan: Optional[torch.Tensor] = None) -> Iterator[Batch]:
        s = epoch_seed(seed, epoch)
        torch.manual_seed(s + self.rank)  # the global stream of the epoch's steps, as CPUBatches seeds it
        gen = torch.Generator(device=self.device).manual_seed(s + self.rank)
        if plan is not None:
            plan = _checked_plan(plan, views, self.images.shape[0]).to(self.device)
            rows_of_plan = torch.arange(plan.shape[0], device=self.device)
            for rows in _rank_slices(rows_of_plan, self.batch_size, self.rank, self.world):
                out = self.augment(self.images[plan[rows].t().flatten()], gen, views)   # view-major, like below
                yield out.view(views, len(rows), *out.shape[1:]), rows
            return
        order = torch.randperm(self.images.shape[0], generator=torch.Generator().manual_seed(s)).to(self.device)
        for idx in _rank_slices(order, self.batch_size, self.rank, self.world):
            # all views in one call: one set of kernel launches for V x B images
            out = self.augment(self.images[idx.repeat(views)], gen, views)
            yield out.view(views, len(idx), *out.shape[1:]), idx


def _rank_slices(order: torch.Tensor, batch_size: int, rank: int, world_size: int) -> List[torch.Tensor]:
    """[this rank's share of global batch b (a slice of ``order``) for every full global batch b]: the one
    definition of which instances a rank trains on, for both batch sources."""
    local = batch_size // world_size
    return [order[b * batch_size + rank * local:b * batch_size + (rank + 1) * local]
            for b in range(order.shape[0] // batch_size)]


def _checked_plan(plan: torch.Tensor, views: int, num_images: int) -> torch.Tensor:
    if plan.ndim != 2 or plan.shape[1] != views or plan.dtype != torch.int64:
        raise ValueError(f"an epoch plan must be (L, {views}) int64, got {tuple(plan.shape)} {plan.dtype}")
    if plan.numel() and not (0 <= int(plan.min()) and int(plan.max()) < num_images):
        raise ValueError(f"an epoch plan names images outside 0..{num_images - 1}")
    return plan


def use_device_batches(source, aug_cfg, device: torch.device, cpu_fast_path: bool = False) -> bool:
    """augment.on_device: True forces it (error if impossible), None picks it when possible on CUDA, and on the
    CPU with ``train.cpu_fast_path`` (batched tensor operations beat PIL in workers that share the CPU's cores
    with the training step)."""
    in_memory = getattr(source, "images", None) is not None
    possible = in_memory and aug_cfg.recipe in CROP_JITTER_RECIPES
    if aug_cfg.on_device is True and not possible:
        raise ConfigError(f"augment.on_device=true needs in-memory images of one size and augment.recipe one of "
                          f"{', '.join(CROP_JITTER_RECIPES)} (not {aug_cfg.recipe})")
    if aug_cfg.on_device is None:
        return possible and (device.type == "cuda" or (device.type == "cpu" and cpu_fast_path))
    return bool(aug_cfg.on_device)


def make_batches(source, data_cfg, aug_cfg, mean, std, batch_size: int, device: torch.device,
                 cpu_fast_path: bool = False):
    """``batch_size`` is the global number of instances per step; under torchrun each rank yields its equal
    share of every global batch (same instances per step as one process; augmentation drawn per rank).
    ``cpu_fast_path`` (``train.cpu_fast_path``): on the CPU, augment in batches when possible."""
    if batch_size % world()[1]:
        raise ConfigError(f"train.batch_size={batch_size} is the global batch: it must divide evenly over the "
                          f"{world()[1]} processes")
    if len(source) < batch_size:
        raise ConfigError(f"train.batch_size={batch_size} is larger than the {len(source)} training images")
    cls = DeviceBatches if use_device_batches(source, aug_cfg, device, cpu_fast_path) else CPUBatches
    return cls(source, data_cfg, aug_cfg, mean, std, batch_size, device)
