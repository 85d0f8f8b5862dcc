"""Mask criteria and mask selection. Torch-free (numpy only).

A *criterion* is a pure function ``score(w_init, w_final) -> scores`` (float64, same shape;
higher = more worth keeping), registered by name in :data:`CRITERIA`. Selection is separate:
:func:`select` keeps the top ``keep`` fraction of each layer (the output layer at half the
pruning rate, as in Zhou et al. 2019) or of all layers at once, with a deterministic
tie-break: among equal scores the element with the lower flat (C-order) index is kept first
(layer order first, for the global rule).

Formulas (``wi`` = initial weight, ``wf`` = final weight, ``|.|`` = absolute value):

=========================  ======================================================
large_final                ``|wf|``
small_final                ``-|wf|``
large_init                 ``|wi|``
small_init                 ``-|wi|``
large_init_large_final     ``min(rank |wi|, rank |wf|)``: the top-k by this are the
                           intersection of the two top sets at the largest threshold
                           that leaves k elements
small_init_small_final     ``min(rank -|wi|, rank -|wf|)``
magnitude_increase         ``|wf| - |wi|``
movement                   ``|wf - wi|``
random                     64-bit words of the project's generator, keyed by the
                           seed and the tensor name (see :func:`random_scores`)
large_final_same_sign      ``|wf|`` where ``sign(wi) == sign(wf)`` (both non-zero),
                           else 0: sign-flipped weights go first
large_final_diff_sign      ``|wf|`` where the signs differ (both non-zero), else 0
=========================  ======================================================

``rank`` is the ordinal position (0 = smallest) in a stable ascending sort, so rank-based
criteria inherit the same index tie-break.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from .. import rng

SELECTIONS = ("layerwise", "global")
DEFAULT_CRITERION = "large_final_same_sign"


class Criterion(Protocol):
    def __call__(self, w_init: np.ndarray, w_final: np.ndarray, *, seed: int = 0, name: str = "") -> np.ndarray:
        ...


CRITERIA: dict[str, Criterion] = {}


def register(name: str) -> Callable[[Criterion], Criterion]:
    """Decorator: add a score function to :data:`CRITERIA` (duplicate names raise)."""

    def deco(fn: Criterion) -> Criterion:
        if name in CRITERIA:
            raise ValueError(f"criterion {name!r} is already registered")
        CRITERIA[name] = fn
        return fn

    return deco


def get(name: str) -> Criterion:
    """The score function called ``name``; unknown names list the valid ones."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}") from None


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _rank(a: np.ndarray) -> np.ndarray:
    """Ordinal rank of every element (0 = smallest; ties by lower index first)."""
    flat = a.reshape(-1)
    order = np.argsort(flat, kind="stable")
    r = np.empty(flat.size, dtype=np.float64)
    r[order] = np.arange(flat.size, dtype=np.float64)
    return r.reshape(a.shape)


@register("large_final")
def large_final(w_init, w_final, *, seed=0, name=""):
    return np.abs(_f64(w_final))


@register("small_final")
def small_final(w_init, w_final, *, seed=0, name=""):
    return -np.abs(_f64(w_final))


@register("large_init")
def large_init(w_init, w_final, *, seed=0, name=""):
    return np.abs(_f64(w_init))


@register("small_init")
def small_init(w_init, w_final, *, seed=0, name=""):
    return -np.abs(_f64(w_init))


@register("large_init_large_final")
def large_init_large_final(w_init, w_final, *, seed=0, name=""):
    return np.minimum(_rank(np.abs(_f64(w_init))), _rank(np.abs(_f64(w_final))))


@register("small_init_small_final")
def small_init_small_final(w_init, w_final, *, seed=0, name=""):
    return np.minimum(_rank(-np.abs(_f64(w_init))), _rank(-np.abs(_f64(w_final))))


@register("magnitude_increase")
def magnitude_increase(w_init, w_final, *, seed=0, name=""):
    return np.abs(_f64(w_final)) - np.abs(_f64(w_init))


@register("movement")
def movement(w_init, w_final, *, seed=0, name=""):
    return np.abs(_f64(w_final) - _f64(w_init))


def random_scores(shape: Sequence[int], seed: int, name: str) -> np.ndarray:
    """Uniform random scores from the project's generator, keyed by (seed, ``random:`` + name)."""
    n = math.prod(shape)
    return rng.raw_words(seed, "random:" + name, n).astype(np.float64).reshape(tuple(shape))


@register("random")
def random_(w_init, w_final, *, seed=0, name=""):
    return random_scores(np.shape(w_init), seed, name)


@register("large_final_same_sign")
def large_final_same_sign(w_init, w_final, *, seed=0, name=""):
    wi, wf = _f64(w_init), _f64(w_final)
    return np.where(np.sign(wi) * np.sign(wf) > 0, np.abs(wf), 0.0)


@register("large_final_diff_sign")
def large_final_diff_sign(w_init, w_final, *, seed=0, name=""):
    wi, wf = _f64(w_init), _f64(w_final)
    return np.where(np.sign(wi) * np.sign(wf) < 0, np.abs(wf), 0.0)


# ------------------------------------------------------------------------------- selection


def keep_count(keep: float, n: int) -> int:
    """How many of ``n`` elements a fraction ``keep`` keeps: round half up, at least 1."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    return min(n, max(1, math.floor(keep * n + 0.5)))


def layer_keep(keep: float, is_output: bool) -> float:
    """The keep fraction of one layer: the output layer is pruned at half the rate."""
    return 1.0 - (1.0 - keep) / 2.0 if is_output else keep


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the ``k`` highest scores; ties go to the lower flat index."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.isnan(flat).any():
        raise ValueError("scores contain NaN")
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(np.shape(scores))


def select(scores: Mapping[str, np.ndarray], keep: float, *, output: str | None = None,
           selection: str = "layerwise") -> dict[str, np.ndarray]:
    """Masks (bool, by tensor name) keeping the top ``keep`` fraction of ``scores``.

    ``layerwise``: each tensor keeps :func:`keep_count` of its elements, the ``output``
    tensor at half the pruning rate. ``global``: one threshold over all tensors in the
    order given (the output layer is not treated specially).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    if selection == "layerwise":
        return {name: top_k(s, keep_count(layer_keep(keep, name == output), np.size(s)))
                for name, s in scores.items()}
    names = list(scores)
    flat = np.concatenate([np.asarray(scores[n], dtype=np.float64).reshape(-1) for n in names])
    mask = top_k(flat, keep_count(keep, flat.size))
    out, start = {}, 0
    for n in names:
        size = np.size(scores[n])
        out[n] = mask[start:start + size].reshape(np.shape(scores[n]))
        start += size
    return out


def masks_for(criterion: str, w_init: Mapping[str, np.ndarray], w_final: Mapping[str, np.ndarray], keep: float,
              *, seed: int = 0, output: str | None = None, selection: str = "layerwise") -> dict[str, np.ndarray]:
    """Score every tensor of ``w_init`` with ``criterion`` and select (see :func:`select`)."""
    fn = get(criterion)
    scores = {n: fn(w_init[n], w_final[n], seed=seed, name=n) for n in w_init}
    return select(scores, keep, output=output, selection=selection)
