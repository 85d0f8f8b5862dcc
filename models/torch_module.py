"""The torch module built from an architecture description (imports torch).

Parameter names equal the ticket's tensor names (``fc1.weight``, ``conv3.bias``...), so
weights move between the torch model, the ticket and the ONNX graph by name. The module
expects *preprocessed* input; :func:`preprocess` applies the description's preprocessing to
raw pixel values, exactly as the exported ONNX graph does.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..arch import Architecture
from ..rng import InitSpec


class Net(nn.Module):
    """A feed-forward network that follows an :class:`Architecture` layer by layer."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self._ops: list[tuple[str, str | None, dict]] = []
        for layer in arch.layers:
            a = layer.attrs
            if layer.type == "linear":
                self.add_module(layer.name, nn.Linear(a["in"], a["out"], bias=a["bias"]))
            elif layer.type == "conv2d":
                self.add_module(layer.name, nn.Conv2d(a["in"], a["out"], a["kernel"], stride=a["stride"],
                                                      padding=a["padding"], bias=a["bias"]))
            self._ops.append((layer.type, layer.name, a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for kind, name, a in self._ops:
            if kind in ("linear", "conv2d"):
                x = getattr(self, name)(x)
            elif kind == "relu":
                x = F.relu(x)
            elif kind == "maxpool2d":
                x = F.max_pool2d(x, a["kernel"], a["stride"])
            elif kind == "flatten":
                x = torch.flatten(x, 1)
        return x


def preprocess(x: torch.Tensor | np.ndarray, arch: Architecture) -> torch.Tensor:
    """Raw inputs (N, *input_shape), any real dtype -> preprocessed float32 tensor (the same
    operations as every exported graph: :func:`supermask.train.data.preprocess_tensor`)."""
    from ..train.data import preprocess_tensor

    return preprocess_tensor(x, arch.preprocess)


def build(arch: Architecture, weights: Mapping[str, np.ndarray] | None = None) -> Net:
    """A :class:`Net` for ``arch``, optionally loaded with float32 ``weights`` by name."""
    net = Net(arch)
    if weights is not None:
        load_weights(net, weights)
    return net


def load_weights(net: nn.Module, weights: Mapping[str, np.ndarray]) -> None:
    """Copy numpy arrays into the module's parameters by name (all must be present)."""
    params = dict(net.named_parameters())
    missing = set(params) - set(weights)
    if missing:
        raise KeyError(f"no weights for {sorted(missing)}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.as_tensor(np.asarray(weights[name], dtype=np.float32)).to(p.device))


def init_weights(arch: Architecture, seed: int, init: InitSpec) -> dict[str, np.ndarray]:
    """The initial weights the ticket regenerates: weights from the generator, biases zero."""
    from ..rng import generate

    out = {}
    for p in arch.params():
        if p.kind == "bias":
            out[p.name] = np.zeros(p.shape, dtype=np.float32)
        else:
            out[p.name] = generate(seed, p.name, p.shape, init.distribution, init.scale(p.fan_in, p.fan_out))
    return out
