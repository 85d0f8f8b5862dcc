"""The built-in models as ``nn.Module`` factories (imports torch).

Each factory takes ``input_shape`` ((C, H, W), or (F,) for the MLP) and ``num_classes`` and
returns an ordinary module; ``supermask find`` treats them exactly like a user's own network.

* ``lenet_300_100``: the fully connected 784-300-100-10 network (LeCun et al. 1998) of
  Frankle & Carbin 2019 and Zhou et al. 2019.
* ``MLP``: the ``mlp-H1-H2...`` family, any hidden widths, tensors named ``fc1``, ``fc2``, ...
  as in lenet-300-100.
* ``conv2`` / ``conv4`` / ``conv6``: the VGG-like networks of Frankle & Carbin 2019: pairs of
  3x3 same-padded convolutions (64-64, 128-128, 256-256), each pair followed by 2x2 max
  pooling, then fully connected 256-256-classes.
* ``resnet20``: the CIFAR ResNet of He et al. 2016 (3 stages of 3 basic blocks, 16/32/64
  channels, BatchNorm, global average pooling). Where a block changes shape its shortcut is a
  1x1 convolution with BatchNorm (He et al.'s option B), so every shortcut weight is maskable.
* ``dwnet``: a small MobileNet-style network (Howard et al. 2017): a 3x3 stem, then
  depthwise-separable blocks (3x3 depthwise convolution, BatchNorm, ReLU, 1x1 pointwise
  convolution, BatchNorm, ReLU), global average pooling and a linear classifier.

Parameter names are stable: they key each tensor's generator stream, so renaming a layer
changes the model a seed stands for.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class LeNet300100(nn.Module):
    def __init__(self, n_in: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(n_in, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def lenet_300_100(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    return LeNet300100(math.prod(input_shape), num_classes)


class MLP(nn.Module):
    """Fully connected layers ``fc1``... of the given hidden widths, with ReLU between them."""

    def __init__(self, n_in: int, widths: Sequence[int], num_classes: int):
        super().__init__()
        dims = [n_in, *widths, num_classes]
        self.depth = len(dims) - 1
        for i in range(self.depth):
            self.add_module(f"fc{i + 1}", nn.Linear(dims[i], dims[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for i in range(1, self.depth):
            x = F.relu(getattr(self, f"fc{i}")(x))
        return getattr(self, f"fc{self.depth}")(x)


class ConvNet(nn.Module):
    """Pairs of 3x3 convolutions (``conv1``, ``conv2``, ...) with 2x2 max pooling, then ``fc1-3``."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int]):
        super().__init__()
        c, h, w = input_shape
        self.num_convs = 2 * len(widths)
        i = 0
        for width in widths:
            for _ in range(2):
                i += 1
                self.add_module(f"conv{i}", nn.Conv2d(c, width, 3, padding=1))
                c = width
            h, w = h // 2, w // 2
        self.fc1 = nn.Linear(c * h * w, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_convs + 1):
            x = F.relu(getattr(self, f"conv{i}")(x))
            if i % 2 == 0:
                x = F.max_pool2d(x, 2, 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def conv2(input_shape, num_classes):
    return ConvNet(input_shape, num_classes, [64])


def conv4(input_shape, num_classes):
    return ConvNet(input_shape, num_classes, [64, 128])


def conv6(input_shape, num_classes):
    return ConvNet(input_shape, num_classes, [64, 128, 256])


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, blocks: int = 3, widths=(16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c = widths[0]
        for s, width in enumerate(widths):
            layers = []
            for b in range(blocks):
                layers.append(BasicBlock(c, width, 2 if (b == 0 and s > 0) else 1))
                c = width
            self.add_module(f"layer{s + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def resnet20(input_shape, num_classes):
    return ResNet(input_shape[0], num_classes)


class SeparableBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.dw = nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.pw = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.pw(F.relu(self.bn1(self.dw(x))))))


class DWNet(nn.Module):
    #: (output channels, stride) of each depthwise-separable block
    PLAN = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        c, blocks = 32, []
        for width, stride in self.PLAN:
            blocks.append(SeparableBlock(c, width, stride))
            c = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def dwnet(input_shape, num_classes):
    return DWNet(input_shape[0], num_classes)
