"""What happens to every tensor of a network: the *plan* of a user's ``nn.Module`` (imports torch).

Masking swaps tensors, it never traces: every weight of an ``nn.Linear``, ``nn.Conv1d`` or
``nn.Conv2d`` (grouped and depthwise included) that the include/exclude patterns select is
re-initialised from the project's seeded generator and masked. Every other floating-point
tensor gets one documented fate (``docs/models.md``):

==============  ==========================================================================
fate            tensors, and what the ticket holds for them
==============  ==========================================================================
masked          selected Linear/Conv weights: regenerated from the seed, times the mask
regenerated     Linear/Conv weights left out by ``exclude``: regenerated, never masked
bias            biases of Linear/Conv layers: zero (``affine="fixed"``) or trained, stored
norm_weight     scales of BatchNorm/LayerNorm/GroupNorm/InstanceNorm: one, or trained, stored
norm_bias       shifts of those norms: zero, or trained, stored
statistic       BatchNorm running mean and variance: computed for each final mask, stored
other           any other parameter or float buffer: stored as the model holds it (parameters
                are trained with ``affine="trained"``)
==============  ==========================================================================

Integer buffers (``num_batches_tracked``) play no part in inference and are not kept.
Tensors are identified by their qualified names (``layer1.0.conv1.weight``), which also key
their generator streams.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import rng
from ..errors import ModelError
from .masks import fans

MASKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
FATES = ("masked", "regenerated", "bias", "norm_weight", "norm_bias", "statistic", "other")
#: Fates whose tensors are trained (and stored) when ``affine="trained"``.
AFFINE_FATES = ("bias", "norm_weight", "norm_bias", "other")


@dataclass(frozen=True)
class TensorPlan:
    """One floating-point tensor of the network and its fate."""

    name: str
    shape: tuple[int, ...]
    fate: str
    module: str  # class name of the module that owns it
    is_param: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def fans(self) -> tuple[int, int]:
        return fans(self.shape)


def _matches(patterns: Sequence[str], module_name: str, tensor_name: str) -> bool:
    return any(fnmatch.fnmatchcase(module_name, p) or fnmatch.fnmatchcase(tensor_name, p) for p in patterns)


class Subject:
    """A network and the plan of its tensors. Build it with :meth:`from_module`."""

    def __init__(self, module: nn.Module, plans: Sequence[TensorPlan], affine: str):
        self.module = module
        self.plans = {p.name: p for p in plans}
        self.affine = affine

    @classmethod
    def from_module(cls, module: object, *, include: Sequence[str] | None = None, exclude: Sequence[str] = (),
                    affine: str = "fixed") -> "Subject":
        if not isinstance(module, nn.Module):
            raise ModelError(f"the model must be a torch.nn.Module, got {type(module).__name__}")
        owners: dict[str, tuple[str, nn.Module]] = {}
        for mname, m in module.named_modules():
            for pname, _ in m.named_parameters(prefix=mname, recurse=False):
                owners.setdefault(pname, (mname, m))
            for bname, _ in m.named_buffers(prefix=mname, recurse=False):
                owners.setdefault(bname, (mname, m))
        plans, used_inc, used_exc = [], set(), set()
        tensors = [(n, t, True) for n, t in module.named_parameters()]
        tensors += [(n, t, False) for n, t in module.named_buffers()]
        for name, t, is_param in tensors:
            if not t.is_floating_point():
                continue  # num_batches_tracked and other counters
            mname, m = owners[name]
            attr = name.rsplit(".", 1)[-1]
            kind = type(m).__name__
            if isinstance(m, MASKABLE) and attr == "weight":
                inc = include is None or _matches(include, mname, name)
                exc = _matches(exclude, mname, name)
                used_inc |= {p for p in (include or ()) if _matches([p], mname, name)}
                used_exc |= {p for p in exclude if _matches([p], mname, name)}
                fate = "masked" if inc and not exc else "regenerated"
            elif isinstance(m, MASKABLE) and attr == "bias":
                fate = "bias"
            elif isinstance(m, NORMS) and attr in ("weight", "bias"):
                fate = "norm_weight" if attr == "weight" else "norm_bias"
            elif isinstance(m, nn.modules.batchnorm._BatchNorm) and attr in ("running_mean", "running_var"):
                fate = "statistic"
            else:
                fate = "other"
            plans.append(TensorPlan(name, tuple(int(d) for d in t.shape), fate, kind, is_param))
        unused = [p for p in (include or ()) if p not in used_inc] + [p for p in exclude if p not in used_exc]
        if unused:
            layers = [n for n, m in module.named_modules() if isinstance(m, MASKABLE)]
            raise ModelError(f"pattern {unused[0]!r} matches no Linear/Conv1d/Conv2d layer; the layers are: "
                             f"{', '.join(layers[:20])}{' ...' if len(layers) > 20 else ''}")
        if not any(p.fate == "masked" for p in plans):
            found = sorted({type(m).__name__ for _, m in module.named_modules()} - {type(module).__name__})
            raise ModelError(
                f"{type(module).__name__} has nothing to mask: supermask masks the weights of nn.Linear, nn.Conv1d "
                f"and nn.Conv2d layers" + (" and every such layer was excluded" if any(
                    p.fate == "regenerated" for p in plans) else f", and the model has none (it has: "
                                                                 f"{', '.join(found[:12]) or 'no submodules'})"))
        return cls(module, plans, affine)

    # -------------------------------------------------------------- views

    def names(self, *fates: str) -> list[str]:
        return [n for n, p in self.plans.items() if p.fate in fates]

    @property
    def masked(self) -> list[str]:
        """Masked weights in module order; the last is treated as the output layer."""
        return self.names("masked")

    @property
    def weights(self) -> list[str]:
        """Every generator-initialised weight (masked and regenerated)."""
        return self.names("masked", "regenerated")

    @property
    def trained_extras(self) -> list[str]:
        """Parameters trained beside the masks when ``affine="trained"`` (none when fixed)."""
        if self.affine != "trained":
            return []
        return [n for n, p in self.plans.items() if p.fate in AFFINE_FATES and p.is_param]

    @property
    def has_batchnorm(self) -> bool:
        return any(p.fate == "statistic" for p in self.plans.values())

    def digest(self) -> str:
        """16 hex digits naming the network: its tensors (names, shapes, fates), every submodule
        (name, class, settings such as stride or activation), and the source code of the module
        classes that are not torch's own, so a changed ``forward`` is a different network."""
        rows = [[p.name, list(p.shape), p.fate, p.module] for p in self.plans.values()]
        modules = [[n, type(m).__qualname__, m.extra_repr()] for n, m in self.module.named_modules()]
        sources = []
        for cls in sorted({type(m) for m in self.module.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
            if cls.__module__.split(".")[0] == "torch":
                continue
            try:
                sources.append(inspect.getsource(cls))
            except (OSError, TypeError):  # no source file (defined in a REPL): the structure must do
                sources.append(f"{cls.__module__}.{cls.__qualname__}")
        text = json.dumps([type(self.module).__name__, rows, modules, sources], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> list[dict]:
        return [{"name": p.name, "shape": list(p.shape), "fate": p.fate, "module": p.module}
                for p in self.plans.values()]

    # -------------------------------------------------------------- values

    def initial_weights(self, seed: int, init: rng.InitSpec) -> dict[str, np.ndarray]:
        """The generator's initial values of every masked and regenerated weight."""
        out = {}
        for n in self.weights:
            p = self.plans[n]
            fi, fo = p.fans
            out[n] = rng.generate(seed, n, p.shape, init.distribution, init.scale(fi, fo))
        return out

    def fixed_values(self) -> dict[str, np.ndarray]:
        """Values of the tensors that are not weights when nothing is trained: zero biases and
        shifts, unit scales, default statistics, and the model's own values of the rest."""
        state = {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}
        out = {}
        for n, p in self.plans.items():
            if p.fate in ("bias", "norm_bias"):
                out[n] = np.zeros(p.shape, np.float32)
            elif p.fate == "norm_weight":
                out[n] = np.ones(p.shape, np.float32)
            elif p.fate == "statistic":
                out[n] = (np.ones if n.endswith("running_var") else np.zeros)(p.shape, np.float32)
            elif p.fate == "other":
                out[n] = state[n].detach().cpu().numpy().astype(np.float32)
        return out

    def initial_state(self, seed: int, init: rng.InitSpec) -> dict[str, np.ndarray]:
        """Every tensor at the start of training: generator weights and :meth:`fixed_values`."""
        return {**self.fixed_values(), **self.initial_weights(seed, init)}


def state_to_torch(state: Mapping[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(np.array(v, dtype=np.float32)).to(device) for n, v in state.items()}


def load_state(module: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Copy ``state`` (name -> array) into the module's parameters and buffers, in place."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    with torch.no_grad():
        for n, v in state.items():
            tensors[n].copy_(torch.as_tensor(np.asarray(v, dtype=np.float32)))


def forward(module: nn.Module, tensors: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The module's output with ``tensors`` in place of its own parameters and buffers."""
    from torch.func import functional_call

    return functional_call(module, dict(tensors), (x,), strict=False)
