"""The built-in models (``supermask.models``). This module is torch-free: it names the
models; :func:`create` builds one as an ``nn.Module`` (:mod:`supermask.models.zoo`, torch), and
every built-in model goes through the same path as a user's own network.

:func:`build` returns the older layer-list description (:class:`~supermask.arch.Architecture`)
of the first four models, which version 1 and 2 tickets carry; it is kept so those tickets
still read, run and export.

lenet-300-100 is the fully connected 784-300-100-10 network of LeCun et al. 1998 as used by
Frankle & Carbin 2019 and Zhou et al. 2019; conv2/conv4/conv6 are the VGG-like networks of
Frankle & Carbin 2019: pairs of 3x3 same-padded convolutions (64-64, 128-128, 256-256), each
pair followed by 2x2 max-pooling, then fully connected 256-256-classes.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

from ..arch import Architecture, Layer, Preprocess


def _linear(name: str, n_in: int, n_out: int) -> Layer:
    return Layer("linear", name, {"in": n_in, "out": n_out, "bias": True})


def _conv(name: str, c_in: int, c_out: int) -> Layer:
    return Layer("conv2d", name, {"in": c_in, "out": c_out, "kernel": 3, "padding": 1, "stride": 1, "bias": True})


def _relu() -> Layer:
    return Layer("relu")


def _mlp(dims: Sequence[int], prefix: str = "fc") -> list[Layer]:
    layers: list[Layer] = []
    for i in range(len(dims) - 1):
        layers.append(_linear(f"{prefix}{i + 1}", dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(_relu())
    return layers


def lenet_300_100(input_shape: Sequence[int], num_classes: int) -> list[Layer]:
    n_in = 1
    for v in input_shape:
        n_in *= v
    return [Layer("flatten")] + _mlp([n_in, 300, 100, num_classes])


def _convnet(pairs: Sequence[int]):
    def build(input_shape: Sequence[int], num_classes: int) -> list[Layer]:
        c, h, w = input_shape
        layers: list[Layer] = []
        i = 0
        for width in pairs:
            for _ in range(2):
                i += 1
                layers += [_conv(f"conv{i}", c, width), _relu()]
                c = width
            layers.append(Layer("maxpool2d", None, {"kernel": 2, "stride": 2}))
            h, w = h // 2, w // 2
        return layers + [Layer("flatten")] + _mlp([c * h * w, 256, 256, num_classes])

    return build


#: Built-in model name -> factory name in :mod:`supermask.models.zoo`; each factory takes
#: ``input_shape`` and ``num_classes`` and returns an ``nn.Module``.
REGISTRY: dict[str, str] = {}
#: Layer-list descriptions of the models that version 1 and 2 tickets can hold.
ARCHITECTURES: dict[str, Callable[[Sequence[int], int], list[Layer]]] = {}


def register(name: str, factory: str, builder: Callable[[Sequence[int], int], list[Layer]] | None = None) -> None:
    if name in REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    REGISTRY[name] = factory
    if builder is not None:
        ARCHITECTURES[name] = builder


register("lenet-300-100", "lenet_300_100", lenet_300_100)
register("conv2", "conv2", _convnet([64]))
register("conv4", "conv4", _convnet([64, 128]))
register("conv6", "conv6", _convnet([64, 128, 256]))
register("resnet20", "resnet20")
register("dwnet", "dwnet")


#: The fully connected family named by its hidden widths: ``mlp-300-100`` has lenet-300-100's
#: shape and tensor names, ``mlp-64`` one hidden layer of 64. Widths make the grid that
#: ``find --budget`` searches (docs/frontier.md).
MLP_FAMILY = "mlp-H1[-H2...]"
_MLP = re.compile(r"mlp((?:-[1-9][0-9]{0,4}){1,8})")
MAX_MLP_WIDTH = 65536


def mlp_widths(name: str) -> tuple[int, ...] | None:
    """The hidden widths of an ``mlp-...`` name, or None when ``name`` is not one."""
    m = _MLP.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        return None
    widths = tuple(int(v) for v in m.group(1)[1:].split("-"))
    return widths if max(widths) <= MAX_MLP_WIDTH else None


def mlp_name(widths: Sequence[int]) -> str:
    return "mlp-" + "-".join(str(int(w)) for w in widths)


def known(name: str) -> bool:
    """Whether ``name`` is a built-in model: a registered one or a member of the mlp family."""
    return name in REGISTRY or mlp_widths(name) is not None


def names() -> list[str]:
    """The built-in models for help texts: the registered ones and the mlp family."""
    return [*REGISTRY, MLP_FAMILY]


def create(name: str, input_shape: Sequence[int], num_classes: int):
    """The built-in model ``name`` as an ``nn.Module`` (imports torch)."""
    if not known(name):
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    from . import zoo

    widths = mlp_widths(name)
    if widths is not None:
        return zoo.MLP(math.prod(input_shape), widths, int(num_classes))
    return getattr(zoo, REGISTRY[name])(input_shape=tuple(input_shape), num_classes=int(num_classes))


def build(name: str, input_shape: Sequence[int], classes: Sequence[str],
          preprocess: Preprocess | None = None) -> Architecture:
    """The layer-list description of model ``name`` for inputs of ``input_shape`` (C, H, W)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"model {name!r} has no layer-list description; choose one of {', '.join(ARCHITECTURES)}")
    layers = ARCHITECTURES[name](tuple(input_shape), len(classes))
    return Architecture(name, tuple(input_shape), tuple(layers), tuple(classes),
                        preprocess or Preprocess(1.0 / 255.0, (0.0,) * input_shape[0], (1.0,) * input_shape[0]))
