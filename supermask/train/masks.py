"""From scores to masks, and from masks to the tensors of a masked network. Torch-free.

The arithmetic here is the arithmetic of :meth:`supermask.ticket.Ticket.weights`, so a run's
evaluation and the ticket packed from it agree bit for bit.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .. import rng
from ..ticket3 import weight_fans as fans  # noqa: F401  (the one fan rule, format.md 7.2)
from . import criteria as crit
from .config import INIT_VARIANTS, LEARNED_METHODS, FindConfig


def kept_count(keep: float, n: int) -> int:
    """How many of ``n`` weights a layer keeps at fraction ``keep``: ``round(keep * n)``, at least 1."""
    return max(1, min(n, int(math.floor(keep * n + 0.5))))


def final_mask(method: str, scores: np.ndarray, keep: float | None) -> np.ndarray:
    """The deterministic mask of trained ``scores``.

    edge-popup: the ``kept_count(keep, n)`` largest ``|score|``; among equal magnitudes the
    lower flat (C-order) index wins. bernoulli: ``score > 0``.
    """
    if method == "edge-popup":
        flat = np.abs(scores.reshape(-1).astype(np.float64))
        k = kept_count(keep, flat.size)
        order = np.argsort(-flat, kind="stable")
        m = np.zeros(flat.size, dtype=bool)
        m[order[:k]] = True
        return m.reshape(scores.shape)
    if method == "bernoulli":
        return scores > 0
    raise ValueError(f"unknown learned method {method!r}; choose one of {', '.join(LEARNED_METHODS)}")


def multiplier(mask: np.ndarray) -> float:
    """The dynamic rescaling factor of a mask, ``n / kept`` rounded once to float32 (1 when empty)."""
    kept = int(np.count_nonzero(mask))
    return float(np.float32(mask.size / kept)) if kept else 1.0


def scaled_masked(w: np.ndarray, mask: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """``(w * mask) * factor`` in float32 with pruned weights exactly +0.0: the arithmetic of
    :meth:`supermask.ticket.Ticket.weights`, so a run and its ticket agree bit for bit."""
    out = np.multiply(w, mask, dtype=np.float32)
    if factor != 1.0:
        out *= np.float32(factor)
    out += np.float32(0.0)  # -0.0 -> +0.0
    return out


def mask_key(criterion: str, keep: float, tensor: str) -> str:
    return f"{criterion}/{keep!r}/{tensor}"


def extra_key(criterion: str, keep: float, init: str, tensor: str) -> str:
    """Key of a stored tensor (BatchNorm statistics, trained affine values) of one results row."""
    return f"{criterion}/{keep!r}/{init}/{tensor}"


def apply_mask(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``w * mask`` as a new float32 array with pruned weights exactly +0.0."""
    out = np.multiply(w, mask, dtype=np.float32)
    out += np.float32(0.0)  # -0.0 -> +0.0
    return out


def variant_init(cfg: FindConfig, variant: str) -> rng.InitSpec:
    """The init spec of an evaluation variant: the run's own, or its signed constant."""
    if variant not in INIT_VARIANTS:
        raise ValueError(f"unknown init variant {variant!r}; choose one of {', '.join(INIT_VARIANTS)}")
    return cfg.init_spec if variant == "original" else cfg.init_spec.signed_constant()


def compute_masks(cfg: FindConfig, masked: Sequence[str], w_init: Mapping[str, np.ndarray],
                  w_final: Mapping[str, np.ndarray], criterion: str, keep: float) -> dict[str, np.ndarray]:
    """The supermask for (criterion, keep) over the ``masked`` tensors (the last is the output layer)."""
    return crit.masks_for(criterion, {n: w_init[n] for n in masked}, {n: w_final[n] for n in masked}, keep,
                          seed=cfg.seed, output=masked[-1], selection=cfg.selection)


def learned_multipliers(cfg: FindConfig, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-tensor weight multipliers of a learned run's final masks: ``n / kept`` for Bernoulli
    masks with dynamic rescaling, none otherwise. Derived from the masks alone."""
    if cfg.method == "bernoulli" and cfg.rescale:
        return {n: multiplier(m) for n, m in masks.items()}
    return {}


def masked_state(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                 others: Mapping[str, np.ndarray], factors: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a masked network: the masked (and rescaled) weights, the unmasked
    regenerated weights, and ``others`` (biases, norm parameters, statistics) as given."""
    out = dict(others)
    for n, w in weights.items():
        out[n] = scaled_masked(w, masks[n], (factors or {}).get(n, 1.0)) if n in masks else w
    return out
