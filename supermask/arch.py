"""Architecture descriptions: the one description of a network that drives the torch module
(training), the ONNX graph (deployment) and the ticket header. Torch-free.

A description is plain data (JSON-compatible) built from an allow-list of layer types with
bounded sizes, so a ticket from a stranger can describe a network but never run code.
``Architecture.from_dict`` validates everything, including that consecutive layers fit
together, before anything is allocated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .errors import ArchitectureError

MAX_LAYERS = 256
MAX_DIM = 1 << 20  # any single size: channels, features, spatial extent
MAX_TENSOR_ELEMENTS = (1 << 31) - 1
MAX_CLASSES = 100_000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

LAYER_TYPES = ("linear", "conv2d", "relu", "maxpool2d", "flatten")


def _int(d: dict, key: str, lo: int = 1, hi: int = MAX_DIM, default: int | None = None) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ArchitectureError(f"layer field {key!r} must be an integer, got {v!r:.60}")
    if not lo <= v <= hi:
        raise ArchitectureError(f"layer field {key!r} = {v} is outside [{lo}, {hi}]")
    return v


def _bool(d: dict, key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ArchitectureError(f"layer field {key!r} must be true or false, got {v!r:.60}")
    return v


@dataclass(frozen=True)
class Param:
    """One parameter tensor of the network, identified by name."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "weight" or "bias"
    fan_in: int
    fan_out: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layer:
    """One layer. ``type`` is one of :data:`LAYER_TYPES`; ``attrs`` hold its sizes."""

    type: str
    name: str | None = None
    attrs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"type": self.type}
        if self.name is not None:
            d["name"] = self.name
        d.update(self.attrs)
        return d

    @classmethod
    def from_dict(cls, d: object) -> "Layer":
        if not isinstance(d, dict):
            raise ArchitectureError(f"a layer must be an object, got {type(d).__name__}")
        t = d.get("type")
        if t not in LAYER_TYPES:
            raise ArchitectureError(f"unknown layer type {t!r:.40}; allowed: {', '.join(LAYER_TYPES)}")
        allowed = {
            "linear": {"in", "out", "bias"},
            "conv2d": {"in", "out", "kernel", "padding", "stride", "bias"},
            "maxpool2d": {"kernel", "stride"},
            "relu": set(),
            "flatten": set(),
        }[t]
        extra = set(d) - allowed - {"type", "name"}
        if extra:
            raise ArchitectureError(f"{t} layer has unknown fields: {', '.join(sorted(map(str, extra)))}")
        name = d.get("name")
        if t in ("linear", "conv2d"):
            if not isinstance(name, str) or not _NAME.match(name):
                raise ArchitectureError(f"{t} layer needs a name of letters, digits and '_' (got {name!r:.40})")
        elif name is not None:
            raise ArchitectureError(f"{t} layers take no name")
        if t == "linear":
            attrs = {"in": _int(d, "in"), "out": _int(d, "out"), "bias": _bool(d, "bias", True)}
        elif t == "conv2d":
            attrs = {
                "in": _int(d, "in"),
                "out": _int(d, "out"),
                "kernel": _int(d, "kernel", hi=64),
                "padding": _int(d, "padding", lo=0, hi=64, default=0),
                "stride": _int(d, "stride", hi=64, default=1),
                "bias": _bool(d, "bias", True),
            }
        elif t == "maxpool2d":
            k = _int(d, "kernel", hi=64)
            attrs = {"kernel": k, "stride": _int(d, "stride", hi=64, default=k)}
        else:
            attrs = {}
        return cls(t, name, attrs)


@dataclass(frozen=True)
class Preprocess:
    """Input preprocessing the runtime applies: ``(x * scale - mean[c]) / std[c]``."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: object, channels: int) -> "Preprocess":
        if not isinstance(d, dict) or set(d) != {"scale", "mean", "std"}:
            raise ArchitectureError("preprocess must be an object with 'scale', 'mean' and 'std'")

        def num(v: object, what: str) -> float:
            try:
                ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(float(v))
            except OverflowError:
                ok = False
            if not ok:
                raise ArchitectureError(f"preprocess {what} must be a finite number, got {v!r:.40}")
            return float(v)

        mean, std = d["mean"], d["std"]
        for key, v in (("mean", mean), ("std", std)):
            if not isinstance(v, list) or len(v) != channels:
                raise ArchitectureError(f"preprocess {key} must list one number per input channel ({channels})")
        std_t = tuple(num(v, "std") for v in std)
        if any(s <= 0 for s in std_t):
            raise ArchitectureError("preprocess std values must be positive")
        return cls(num(d["scale"], "scale"), tuple(num(v, "mean") for v in mean), std_t)


@dataclass(frozen=True)
class Architecture:
    """A feed-forward network: input shape (C, H, W), preprocessing, layers, class names."""

    name: str
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    classes: tuple[str, ...]
    preprocess: Preprocess = Preprocess()

    def __post_init__(self) -> None:
        self.params()  # validates the layer chain

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def params(self) -> list[Param]:
        """Every parameter tensor in layer order, with the fans used by the init rules."""
        if not self.layers or len(self.layers) > MAX_LAYERS:
            raise ArchitectureError(f"an architecture needs 1 to {MAX_LAYERS} layers, got {len(self.layers)}")
        shape = tuple(self.input_shape)
        out: list[Param] = []
        seen: set[str] = set()
        for i, layer in enumerate(self.layers):
            a, where = layer.attrs, f"layer {i} ({layer.type})"
            if layer.name is not None:
                if layer.name in seen:
                    raise ArchitectureError(f"{where}: duplicate layer name {layer.name!r}")
                seen.add(layer.name)
            if layer.type == "flatten":
                shape = (math.prod(shape),)
            elif layer.type == "relu":
                pass
            elif layer.type == "linear":
                if shape != (a["in"],):
                    raise ArchitectureError(f"{where} expects input ({a['in']},) but gets {shape}")
                out.append(Param(f"{layer.name}.weight", (a["out"], a["in"]), "weight", a["in"], a["out"]))
                if a["bias"]:
                    out.append(Param(f"{layer.name}.bias", (a["out"],), "bias", a["in"], a["out"]))
                shape = (a["out"],)
            elif layer.type == "conv2d":
                if len(shape) != 3 or shape[0] != a["in"]:
                    raise ArchitectureError(f"{where} expects {a['in']} input channels but gets shape {shape}")
                k, p, s = a["kernel"], a["padding"], a["stride"]
                h = (shape[1] + 2 * p - k) // s + 1
                w = (shape[2] + 2 * p - k) // s + 1
                if h < 1 or w < 1:
                    raise ArchitectureError(f"{where}: kernel {k} does not fit input {shape}")
                rf = k * k
                out.append(Param(f"{layer.name}.weight", (a["out"], a["in"], k, k), "weight", a["in"] * rf, a["out"] * rf))
                if a["bias"]:
                    out.append(Param(f"{layer.name}.bias", (a["out"],), "bias", a["in"] * rf, a["out"] * rf))
                shape = (a["out"], h, w)
            elif layer.type == "maxpool2d":
                if len(shape) != 3:
                    raise ArchitectureError(f"{where} needs a (C, H, W) input, gets {shape}")
                k, s = a["kernel"], a["stride"]
                h, w = (shape[1] - k) // s + 1, (shape[2] - k) // s + 1
                if h < 1 or w < 1:
                    raise ArchitectureError(f"{where}: pool {k} does not fit input {shape}")
                shape = (shape[0], h, w)
            if math.prod(shape) > MAX_TENSOR_ELEMENTS:
                raise ArchitectureError(f"{where}: activation of {math.prod(shape)} elements is too large")
        if shape != (self.num_classes,):
            raise ArchitectureError(f"the network ends in shape {shape} but there are {self.num_classes} classes")
        for p in out:
            if p.size > MAX_TENSOR_ELEMENTS:
                raise ArchitectureError(f"tensor {p.name} has {p.size} elements; the limit is {MAX_TENSOR_ELEMENTS}")
        return out

    def param(self, name: str) -> Param:
        for p in self.params():
            if p.name == name:
                return p
        raise KeyError(name)

    def weight_params(self) -> list[Param]:
        """The weight tensors (the ones a supermask masks), in network order; no biases."""
        return [p for p in self.params() if p.kind == "weight"]

    @property
    def num_weights(self) -> int:
        return sum(p.size for p in self.weight_params())

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "preprocess": self.preprocess.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, d: object) -> "Architecture":
        if not isinstance(d, dict):
            raise ArchitectureError("architecture must be an object")
        need = {"name", "input_shape", "preprocess", "layers", "classes"}
        if set(d) != need:
            raise ArchitectureError(f"architecture must have exactly the fields {sorted(need)}, got {sorted(map(str, d))}")
        name = d["name"]
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise ArchitectureError("architecture name must be a string of 1 to 128 characters")
        shape = d["input_shape"]
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 3
                or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIM for v in shape)):
            raise ArchitectureError(f"input_shape must be 1 to 3 positive integers, got {shape!r:.80}")
        classes = d["classes"]
        if (not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES
                or any(not isinstance(c, str) or len(c) > 200 for c in classes)):
            raise ArchitectureError("classes must be a list of 1 to 100000 strings")
        layers = d["layers"]
        if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
            raise ArchitectureError(f"layers must be a list of 1 to {MAX_LAYERS} layers")
        channels = shape[0] if len(shape) == 3 else 1
        return cls(
            name=name,
            input_shape=tuple(shape),
            layers=tuple(Layer.from_dict(x) for x in layers),
            classes=tuple(classes),
            preprocess=Preprocess.from_dict(d["preprocess"], channels),
        )
