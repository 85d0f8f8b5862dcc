"""The run folder: its files, their identity checks, and reading a finished run. Torch-free.

A run directory holds (see ``docs/training.md``)::

    config.json        the canonical config and its hashes
    model.json         the network's plan (tensor names, shapes and fates), input and classes
    weights.npz        criteria runs: every tensor after dense training (np.savez, no pickle)
    scores/            learned runs: per keep, the learned scores (and trained "+BN" values)
    train.json         training summary; its presence marks the training stage finished
    masks.npz          packed masks, key "<criterion>/<keep>/<tensor>" (np.packbits, little)
    extras.npz         per results row, the tensors a ticket stores as values (BatchNorm
                       statistics, trained biases and norm parameters), key
                       "<criterion>/<keep>/<init>/<tensor>"
    results.json       one row per (criterion, keep, init variant) plus the dense row

Every file is written atomically, weights before the file that marks the stage finished,
so an interrupted run never leaves a half-written file and re-running resumes. An evaluation
deletes ``results.json`` before it rewrites ``config.json``, so a ``results.json`` that exists
was written by the same evaluation as ``masks.npz`` and the ``config.json`` beside it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..atomic import atomic_open
from ..errors import RunError
from .config import FindConfig
from .masks import mask_key

RUN_FORMAT = 2
_FILES = ["config.json", "model.json", "train.json", "weights.npz", "results.json", "masks.npz", "extras.npz"]


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; anything else (unreadable, not JSON, not an object) is a RunError."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}") from e
    if not isinstance(obj, dict):
        raise RunError(f"{path} is malformed: expected a JSON object, found {type(obj).__name__}; "
                       f"delete it and re-run supermask find")
    return obj


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez to ``path`` atomically (no pickled objects: plain numeric arrays only)."""
    for k, a in arrays.items():
        if a.dtype == object:
            raise TypeError(f"refusing to save object array {k!r}")
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read an npz written by :func:`save_npz`, with pickles disabled."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path}: {e}") from e


def _check_config(out: Path, cfg: FindConfig) -> set[str]:
    """Refuse a folder that holds another training run; return the train hashes its weights may carry.

    The identity is the config, not the hash string: a folder whose config.json was written
    under an older hash rule (for example before ``epochs`` was dropped when ``iterations``
    is set) is the same run when its config gives this ``train_hash`` today.
    """
    path = out / "config.json"
    if not path.exists():
        return {cfg.train_hash}
    old = _read_json(path)
    stored = old.get("train_hash")
    if stored == cfg.train_hash:
        return {cfg.train_hash}
    try:
        same = FindConfig.from_dict(old["config"]).train_hash == cfg.train_hash
    except (AttributeError, KeyError, TypeError, ValueError):
        same = False
    if not same:
        raise RunError(
            f"{out} already holds a different run (training config {stored}, this one "
            f"{cfg.train_hash}); pick another --out or delete that folder"
        )
    return {cfg.train_hash, stored}


def is_complete(out: str | os.PathLike, cfg: FindConfig) -> bool:
    """Whether ``out`` holds the finished run of ``cfg`` in this version's layout (its results,
    masks, stored tensors, model description and config). A run finished by an older version
    is not complete: ``find`` evaluates it again (reusing its training) into the new layout."""
    out = Path(out)
    try:
        res, conf = _read_json(out / "results.json"), _read_json(out / "config.json")
    except RunError:
        return False
    return (res.get("run_hash") == conf.get("run_hash") == cfg.run_hash and res.get("format") == RUN_FORMAT
            and all((out / n).is_file() for n in ("masks.npz", "extras.npz", "model.json")))


#: Keys and types every results row must have (``load_run`` checks them).
ROW_FIELDS = {"criterion": str, "keep": (int, float), "init": str, "accuracy": (int, float), "correct": int,
              "total": int}


def _check_rows(path: Path, results: Mapping) -> None:
    rows = results.get("rows")
    if not isinstance(rows, list) or not rows:
        raise RunError(f"{path} is malformed: 'rows' must be a non-empty list; re-run supermask find")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise RunError(f"{path} is malformed: row {i} is not an object; re-run supermask find")
        for k, t in ROW_FIELDS.items():
            if k not in r or isinstance(r[k], bool) or not isinstance(r[k], t):
                raise RunError(f"{path} is malformed: row {i} has no valid {k!r}; re-run supermask find")


def load_run(run: str | os.PathLike) -> tuple[FindConfig, dict, dict]:
    """(config, model description (``model.json``), results) of a finished run directory.

    The results must come from the config beside them: a run killed during a new evaluation
    (or a folder assembled by hand) is refused rather than packed with the wrong masks.
    """
    run = Path(run)
    need = list(_FILES)
    if (run / "scores").is_dir():  # a learned run keeps scores, not trained weights
        need.remove("weights.npz")
    if (run / "architecture.json").exists() and not (run / "model.json").exists():
        raise RunError(f"{run} was made by an older supermask (it has architecture.json, not model.json); "
                       f"re-run `supermask find --out {run}` to finish it with this version")
    missing = [n for n in need if not (run / n).exists()]
    if missing:
        raise RunError(f"{run} is not a finished find run (missing {', '.join(missing)}); run `supermask find` "
                       f"with --out {run} first")
    conf = _read_json(run / "config.json")
    try:
        cfg = FindConfig.from_dict(conf["config"])
        info = _read_json(run / "model.json")
        _check_info(info)
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{run}/config.json or model.json is malformed: {e}; re-run supermask find") from e
    results = _read_json(run / "results.json")
    if results.get("run_hash") is None or results.get("run_hash") != conf.get("run_hash"):
        raise RunError(f"{run}: run is incomplete or from another config (results.json has run hash "
                       f"{results.get('run_hash')}, config.json {conf.get('run_hash')}); re-run supermask find "
                       f"--out {run}")
    _check_rows(run / "results.json", results)
    return cfg, info, results


def _same_keep(a: float, b: float) -> bool:
    """Keeps are equal when they agree to the 6 significant digits pack and find print (so a
    learned density shown as 0.513108 selects 0.5131077...)."""
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-12) or f"{a:.6g}" == f"{b:.6g}"


def ranked_rows(results: Mapping, criterion: str | None = None, keep: float | None = None,
                init: str | None = None) -> list[dict]:
    """The supermask rows of a run matching the given criterion, keep and init variant (None:
    any), most accurate first. Ties go to the sparser mask, then to the default criterion and
    the original init. Dense rows and retrained rows (of an IMP run) are never among them: only
    supermasks over the untrained initial weights become tickets."""
    from .criteria import DEFAULT_CRITERION

    rows = [r for r in results.get("rows", []) if r["criterion"] != "dense" and not r.get("retrained")
            and (criterion is None or r["criterion"] == criterion) and (init is None or r["init"] == init)
            and (keep is None or _same_keep(r["keep"], keep))]
    return sorted(rows, key=lambda r: (r["correct"], -r["keep"], r["criterion"] == DEFAULT_CRITERION,
                                       r["init"] == "original"), reverse=True)


def best_row(results: Mapping, criterion: str | None = None, keep: float | None = None,
             init: str | None = None) -> dict | None:
    """The first of :func:`ranked_rows`, or None."""
    rows = ranked_rows(results, criterion, keep, init)
    return rows[0] if rows else None


def pick_row(results: Mapping, criterion: str, keep: float | None, init: str) -> dict | None:
    """The results row for (criterion, keep, init); ``keep=None`` picks the most accurate keep."""
    return best_row(results, criterion, keep, init)


def _check_info(info: dict) -> None:
    for key, kind in (("tensors", list), ("classes", list), ("input_shape", list), ("preprocess", dict),
                      ("digest", str), ("input_dtype", str)):
        if not isinstance(info.get(key), kind):
            raise ValueError(f"model.json has no valid {key!r}")


def tensor_shapes(info: Mapping, *fates: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the run's tensors with one of ``fates`` (all when none is given), in order."""
    return {t["name"]: tuple(t["shape"]) for t in info["tensors"] if not fates or t["fate"] in fates}


def run_masks(run: str | os.PathLike, criterion: str, keep: float, info: Mapping) -> dict[str, np.ndarray]:
    """The run's stored supermask for (criterion, keep)."""
    run = Path(run)
    stored = load_npz(run / "masks.npz")
    shapes = tensor_shapes(info, "masked")
    keys = {n: mask_key(criterion, keep, n) for n in shapes}
    if all(k in stored for k in keys.values()):
        return {n: np.unpackbits(stored[k], count=math.prod(shapes[n]), bitorder="little").astype(bool)
                .reshape(shapes[n]) for n, k in keys.items()}
    have = sorted({float(k.split("/")[1]) for k in stored if k.startswith(f"{criterion}/")}, reverse=True)
    raise RunError(f"{run} has no {criterion} mask for keep {keep}; it has keep "
                   f"{', '.join(str(v) for v in have) or 'none'}")
