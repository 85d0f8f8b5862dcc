"""User models for tests/test_models.py: loaded by file path (``--model FILE.py:factory``), as a
user's own code would be. The main one has a residual connection, BatchNorm, a depthwise
convolution, average pooling and a final linear layer."""

import torch
import torch.nn.functional as F
from torch import nn


class ResidualNet(nn.Module):
    def __init__(self, channels: int, num_classes: int, side: int):
        super().__init__()
        self.stem = nn.Conv2d(channels, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * (side // 2) ** 2, num_classes)

    def forward(self, x):
        y = F.relu(self.bn0(self.stem(x)))
        z = self.pointwise(F.relu(self.bn1(self.depthwise(y))))
        return self.fc(torch.flatten(self.pool(F.relu(y + z)), 1))


def make(num_classes, input_shape):
    return ResidualNet(input_shape[0], num_classes, input_shape[-1])


def make_fixed():
    """No keyword arguments: the factory decides everything (8x8 grey digits, 10 classes)."""
    return ResidualNet(1, 10, 8)


def not_a_module(num_classes):
    return {"layers": num_classes}


def raises(num_classes):
    raise RuntimeError("cannot build this network today")


class NoWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.scale = nn.Parameter(torch.ones(10))

    def forward(self, x):
        return self.pool(x).flatten(1).repeat(1, 10) * self.scale


def nothing_to_mask():
    return NoWeights()


class Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.odd = OddLayer()

    def forward(self, x):
        return self.odd(self.fc(torch.flatten(x, 1)))


class OddLayer(nn.Module):
    """Uses an operation with no ONNX translation (the modified Bessel function I0)."""

    def forward(self, x):
        return torch.special.i0(x)


def unexportable():
    return Unexportable()


class Sigmoid(ResidualNet):
    """The same tensors as ResidualNet, another computation."""

    def forward(self, x):
        y = torch.sigmoid(self.bn0(self.stem(x)))
        z = self.pointwise(torch.sigmoid(self.bn1(self.depthwise(y))))
        return self.fc(torch.flatten(self.pool(torch.sigmoid(y + z)), 1))


def make_sigmoid(num_classes, input_shape):
    return Sigmoid(input_shape[0], num_classes, input_shape[-1])


class _Wrapped(nn.Module):
    def __init__(self, inner, how):
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x):
        if self.how == "wrong_input":
            return self.inner(x.flatten(1))
        if self.how == "padded":
            return self.inner(F.pad(x, (0, 0, 0, 0)))
        z = self.inner(x)
        return {"three_d_output": lambda: z.unsqueeze(-1), "too_many_outputs": lambda: torch.cat([z, z], 1),
                "tuple_output": lambda: (z, z)}[self.how]()


def wrong_input(num_classes, input_shape):
    return _Wrapped(make(num_classes, input_shape), "wrong_input")


def three_d_output(num_classes, input_shape):
    return _Wrapped(make(num_classes, input_shape), "three_d_output")


def too_many_outputs(num_classes, input_shape):
    return _Wrapped(make(num_classes, input_shape), "too_many_outputs")


def tuple_output(num_classes, input_shape):
    return _Wrapped(make(num_classes, input_shape), "tuple_output")


def padded(num_classes, input_shape):
    return _Wrapped(make(num_classes, input_shape), "padded")


class WithDropout(ResidualNet):
    def __init__(self, *a):
        super().__init__(*a)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return super().forward(self.drop(x))


def with_dropout(num_classes, input_shape):
    return WithDropout(input_shape[0], num_classes, input_shape[-1])
