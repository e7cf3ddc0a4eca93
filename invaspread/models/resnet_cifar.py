"""ResNet for 32x32 inputs as in the paper's released code (after Wu et al. 2018).

3x3 stride-1 stem, no max-pool, four stages of basic blocks (64-128-256-512 channels at
``width=64``), global average pooling. ``width`` scales every stage, for quick CPU runs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Backbone only: (B, 3, H, W) -> (B, 8 * width) pooled features.

    ``pool_window=None`` averages the whole last feature map. An integer reproduces the released
    code's ``avg_pool2d(out, pool_window)``: 4 on CIFAR's 4x4 map is the same thing, 7 on STL-10's
    12x12 map averages only its top-left 7x7 corner.
    """

    def __init__(self, blocks_per_stage=(2, 2, 2, 2), width: int = 64, pool_window=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, in_channels = [], width
        for i, n_blocks in enumerate(blocks_per_stage):
            channels = width * 2 ** i
            for b in range(n_blocks):
                stages.append(BasicBlock(in_channels, channels, stride=2 if (i > 0 and b == 0) else 1))
                in_channels = channels
        self.stages = nn.Sequential(*stages)
        self.pool_window = pool_window
        self.out_features = in_channels

    def forward(self, x):
        out = self.stages(self.stem(x))
        if self.pool_window is None:
            return out.mean((2, 3))
        w = self.pool_window
        if not all(w <= side < 2 * w for side in out.shape[2:]):
            raise ValueError(f"model.pool_window={w} cannot pool the {tuple(out.shape[2:])} last feature map of "
                             f"{tuple(x.shape[2:])} inputs to 1x1 (needs window <= side < 2 x window)")
        return F.avg_pool2d(out, w).flatten(1)
