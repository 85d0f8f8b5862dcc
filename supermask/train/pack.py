"""``pack``: one supermask of a finished run -> a version-3 ticket that carries its graph.

The network is rebuilt from the run's config (or passed in), its weight-free ONNX graph is
exported with every ticket tensor as a placeholder, and the graph is checked in onnxruntime
against the masked torch model before the ticket is written (atomically).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..arch import Preprocess
from ..errors import ModelError, RunError
from . import criteria as crit
from .config import DENSITY_LEARNED, LEARNED_METHODS, OBJECT_PREFIX
from .masks import extra_key, learned_multipliers, masked_state, variant_init
from .runs import best_row, load_npz, load_run, ranked_rows, run_masks

log = logging.getLogger(__name__)

#: Ticket role of each fate when nothing is trained ("fixed" biases and norm parameters).
_FIXED_ROLES = {"bias": "zero", "norm_bias": "zero", "norm_weight": "one"}


def _resolve(cfg, results, criterion, keep, init, run):
    """The row to pack: the most accurate one matching what was asked (see :func:`best_row`)."""
    if cfg.learned:
        if criterion not in (None, cfg.method):
            raise RunError(f"{run} learned its masks with --method {cfg.method}; it has no {criterion!r} masks "
                           f"(pack it with --criterion {cfg.method}, or pack a `--method criteria` run)")
        criterion = cfg.method
        if init == "signed-constant" and not cfg.init_for(keep).distribution == "signed_constant":
            raise RunError(f"{run} learned its masks over {cfg.init_for(keep).scheme} weights and evaluated only "
                           f"those: a learned mask goes with the weights it was learned over. --init signed-constant "
                           f"is for criteria runs (which evaluate both); learn over signed constants with "
                           f"`supermask find --method {cfg.method} --init signed_kaiming_constant`")
        init = "original"  # over signed-constant weights, their signed constants are the same weights
        if keep is not None and cfg.method in DENSITY_LEARNED and best_row(results, criterion, keep, init) is None:
            raise RunError(f"{run} learned its density with --method {cfg.method} and holds one mask "
                           f"(keep {results['rows'][0]['keep']:.6g}); leave out --keep")
    elif criterion is not None:
        if criterion in LEARNED_METHODS:
            raise RunError(f"{run} is a criteria run; learn {criterion} masks with `supermask find --method "
                           f"{criterion}`")
        crit.get(criterion)
    row = best_row(results, criterion, keep, init)
    if row is None:
        have = sorted({r["keep"] for r in results["rows"] if r["criterion"] != "dense"
                       and criterion in (None, r["criterion"]) and init in (None, r["init"])}, reverse=True)
        how = (f"`supermask find --method {cfg.method} --keep ...`" if cfg.learned
               else "`supermask find --criteria ... --keep ...`")
        asked = ", ".join(x for x in (criterion and f"criterion {criterion!r}", init and f"init {init!r}",
                                      keep is not None and f"keep {keep:g}") if x)
        raise RunError(f"{run} has no results for {asked}; it has keep {', '.join(f'{k:g}' for k in have) or 'none'}"
                       f" (evaluate others with {how})")
    return row["criterion"], row, row["init"]


def pack(run: str | os.PathLike, out: str | os.PathLike, *, criterion: str | None = None, keep: float | None = None,
         init: str | None = None, codec: str = "auto", model=None, return_validation: bool = False,
         round: int | None = None, max_bytes: int | None = None):
    """Write the ticket of one supermask of a finished run; return the parsed :class:`Ticket`
    (and the graph's :class:`~supermask.export.torch_graph.Validation` with ``return_validation``).

    ``criterion``, ``keep`` and ``init`` (``original`` or ``signed-constant``) narrow the choice;
    of the rows that match, the one with the best test accuracy in ``results.json`` is packed
    (ties: the sparser mask). With none given that is the run's best supermask over every
    criterion, keep and init variant it evaluated. ``max_bytes`` packs instead the most accurate
    matching supermask whose ticket file is at most that many bytes (:class:`RunError` when none
    is). ``model`` is the run's network when it was given to the library as an object; otherwise
    the run's config rebuilds it.
    """
    from ..atomic import atomic_write

    cfg, info, results = load_run(run)
    if round is not None:
        if cfg.method != "imp":
            raise RunError(f"{run} is a --method {cfg.method} run; --round selects a round of a --method imp run")
        if not 1 <= round <= cfg.rounds:
            raise RunError(f"{run} has rounds 1 to {cfg.rounds} (round 0 is the dense network, not a supermask); "
                           f"got --round {round}")
        if keep is not None:
            raise RunError("give --round or --keep, not both: each round has its own keep")
        keep = cfg.imp_keeps()[round]
    _, best, _ = _resolve(cfg, results, criterion, keep, init, run)  # also checks what was asked
    if max_bytes is None:
        candidates = [best]
    else:
        if max_bytes < 1:
            raise RunError(f"--max-bytes must be a positive number of bytes, got {max_bytes}")
        candidates = ranked_rows(results, best["criterion"] if cfg.learned else criterion, keep,
                                 "original" if cfg.learned else init)
    row, data, ticket, check = fitting(run, cfg, info, candidates, max_bytes, codec, model)
    if max_bytes is not None:
        log.info("packed %s keep %.6g (%s), accuracy %.2f %% in the run: the most accurate of %d evaluated "
                 "supermasks that fits in %s bytes (%s bytes)", row["criterion"], row["keep"], row["init"],
                 100 * row["accuracy"], len(candidates), f"{max_bytes:,}", f"{len(data):,}")
    atomic_write(out, data)
    return (ticket, check) if return_validation else ticket


def fitting(run, cfg, info, candidates: list[dict], max_bytes: int | None, codec: str, model):
    """(row, ticket bytes, decoded ticket, graph validation) of the first of ``candidates`` whose
    ticket is at most ``max_bytes`` long (None: the first); a RunError naming the smallest
    ticket when none fits."""
    smallest = None
    for row in candidates:
        data, ticket, check = _build(run, cfg, info, row, codec, model)
        if max_bytes is None or len(data) <= max_bytes:
            return row, data, ticket, check
        if smallest is None or len(data) < smallest[0]:
            smallest = (len(data), row)
    size, row = smallest
    raise RunError(f"no supermask of {run} fits in {max_bytes:,} bytes: the smallest of the {len(candidates)} "
                   f"evaluated ({row['criterion']} keep {row['keep']:.6g}, {row['init']}) packs to {size:,} "
                   f"bytes. Allow more bytes, or evaluate lower keeps (`supermask find ... --keep`)")


def ticket_tensors(subject, seed: int, spec, masks: dict, stored: dict, factors: dict) -> tuple[dict, dict]:
    """(name -> ticket role, name -> tensor the ticket regenerates) of ``subject``: masked and
    regenerated tensors come from the seed, ``stored`` values are kept as they are, and the
    other biases and norm parameters are fixed (zero, or one for norm scales)."""
    roles: dict[str, str] = {}
    for n, p in subject.plans.items():
        roles[n] = (p.fate if p.fate in ("masked", "regenerated") else "stored" if n in stored
                    else _FIXED_ROLES[p.fate])
    weights = subject.initial_weights(seed, spec)
    constants = {n: (np.ones if r == "one" else np.zeros)(subject.plans[n].shape, np.float32)
                 for n, r in roles.items() if r in ("zero", "one")}
    return roles, masked_state(weights, masks, {**constants, **stored}, factors)


def _build(run, cfg, info, row: dict, codec: str, model):
    """(ticket bytes, decoded ticket, graph validation) of one results row of a run."""
    from ..export.torch_graph import export_graph, validate, validation_inputs
    from ..ticket import decode_ticket
    from ..ticket3 import encode_v3, placeholder_names
    from .data import load_model
    from .subject import Subject

    criterion, init = row["criterion"], row["init"]
    keep = row["keep"]  # the run's own value, not the one typed (0.1 for 0.1000000000001)
    spec = (cfg.init_for(keep if cfg.method == "edge-popup" else None) if cfg.learned
            else variant_init(cfg, init))
    if model is None:
        if cfg.model.startswith(OBJECT_PREFIX):
            raise RunError(f"{run}: the model was given to supermask.find as an object; pass it to pack too "
                           f"(supermask.pack(run, out, model=...))")
        model = load_model(cfg.model, info["input_shape"], len(info["classes"]))
    else:
        import copy

        model = copy.deepcopy(model)  # the export puts it in eval mode on the CPU
    subject = Subject.from_module(model, include=cfg.include, exclude=cfg.exclude, affine=cfg.affine)
    if subject.digest() != info["digest"]:
        raise ModelError(f"{run}: the model now has other tensors than when the run was made (digest "
                         f"{subject.digest()} vs {info['digest']}); pack with the same model code")
    masks = run_masks(run, criterion, keep, info)
    factors = learned_multipliers(cfg, masks)
    extras_all = load_npz(Path(run) / "extras.npz")
    prefix = extra_key(criterion, keep, init, "")
    stored = {k[len(prefix):]: v for k, v in extras_all.items() if k.startswith(prefix)}
    missing = [n for n, p in subject.plans.items() if n not in stored and p.fate not in ("masked", "regenerated")
               and (p.fate not in _FIXED_ROLES or n in subject.trained_extras)]
    if missing:
        raise RunError(f"{run}/extras.npz has no value of {missing[0]!r} for {criterion} keep {keep}; re-run find")
    roles, tensors = ticket_tensors(subject, cfg.seed, spec, masks, stored, factors)
    preprocess = Preprocess(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in info["preprocess"].items()})
    graph = export_graph(subject.module, tensors, info["input_shape"], preprocess)
    used = placeholder_names(graph)
    unused = [n for n in roles if n not in used]
    if unused:
        log.info("left out of the ticket (the graph does not use them): %s", ", ".join(unused))
    lo, hi = info.get("input_range", [0.0, 255.0])
    x = validation_inputs(info["input_shape"], info["input_dtype"], lo, hi)
    check = validate(graph, subject.module, tensors, preprocess, x)
    meta = {
        **({"method": cfg.method} if cfg.method != "criteria" else {}),
        # an IMP round's mask over the untrained initial weights; its retrained weights are not in it
        **({"round": row["round"], "untrained": True} if cfg.method == "imp" else {}),
        "dataset": cfg.dataset[-200:],
        "model": cfg.model[-200:],
        "accuracy": row["accuracy"],
        "test_examples": row["total"],
    }
    if init != "original":
        meta["init_variant"] = init
    if cfg.affine != "fixed":
        meta["affine"] = cfg.affine
    if cfg.processes > 1:  # trained data-parallel (torchrun); absent means one process
        meta["processes"] = cfg.processes
    # the raw training inputs' range (absent in older runs): the runtime warns about inputs far outside it
    rng = info.get("train_input_range")
    if isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, (int, float)) and np.isfinite(v) for v in rng):
        meta["input_min"], meta["input_max"] = (int(v) if float(v).is_integer() else float(v) for v in rng)
    data = encode_v3(graph, seed=cfg.seed, init=spec, roles={n: roles[n] for n in used}, classes=info["classes"],
                     masks={n: m for n, m in masks.items() if n in used},
                     stored={n: v for n, v in stored.items() if n in used},
                     multipliers={n: f for n, f in factors.items() if n in used}, codec=codec, criterion=criterion,
                     keep=keep, metadata=meta)
    ticket = decode_ticket(data)
    regenerated = ticket.weights()
    for n in used:  # the ticket regenerates exactly the tensors the run evaluated
        if not np.array_equal(regenerated[n], tensors[n]):
            raise RunError(f"internal error: tensor {n!r} of the ticket differs from the run's; not written")
    return data, ticket, check


def export_retrained(run: str | os.PathLike, out: str | os.PathLike, *, round: int, variant: str = "original",
                     fmt: str = "dense", model=None) -> dict:
    """Write the *retrained* network of one round of an IMP run as a self-contained ONNX file.

    These are trained weights (the early-stopped state of that round's training, round 0 being
    the dense network), so they go to ONNX and never into a ticket: a ticket holds only what the
    seed regenerates. The graph is checked in onnxruntime against the torch model first.
    Returns what was written (path, bytes, round, variant, accuracy).
    """
    from ..atomic import atomic_write
    from ..export import fill_graph
    from ..export.torch_graph import export_graph, validate, validation_inputs
    from .config import IMP_VARIANTS
    from .data import load_model
    from .subject import Subject

    cfg, info, results = load_run(run)
    if cfg.method != "imp":
        raise RunError(f"{run} is a --method {cfg.method} run: it has no retrained rounds (pack a ticket from it "
                       f"with `supermask pack`)")
    if not 0 <= round <= cfg.rounds:
        raise RunError(f"{run} has rounds 0 to {cfg.rounds}; got --round {round}")
    if variant not in IMP_VARIANTS or (round == 0 and variant != "original") or (
            variant != "original" and variant not in cfg.controls):
        have = ["original", *cfg.controls] if round else ["original"]
        raise RunError(f"{run} has no {variant!r} training at round {round}; it has {', '.join(have)}")
    arrays = load_npz(Path(run) / "imp" / f"r{round:02d}-{variant}.npz")
    weights = {k[len("best/"):]: v for k, v in arrays.items() if k.startswith("best/")}
    if model is None:
        if cfg.model.startswith(OBJECT_PREFIX):
            raise RunError(f"{run}: the model was given to supermask.find as an object; pass it here too")
        model = load_model(cfg.model, info["input_shape"], len(info["classes"]))
    subject = Subject.from_module(model, include=cfg.include, exclude=cfg.exclude, affine=cfg.affine)
    if subject.digest() != info["digest"]:
        raise ModelError(f"{run}: the model now has other tensors than when the run was made; export with the "
                         f"same model code")
    preprocess = Preprocess(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in info["preprocess"].items()})
    graph = export_graph(subject.module, weights, info["input_shape"], preprocess)
    lo, hi = info.get("input_range", [0.0, 255.0])
    check = validate(graph, subject.module, weights, preprocess,
                     validation_inputs(info["input_shape"], info["input_dtype"], lo, hi))
    row = next((r for r in results["rows"] if r.get("round") == round and r.get("retrained")
                and (r["criterion"] == "dense" or r.get("variant") == variant)), None)
    meta = {"supermask.retrained": f"imp round {round}, {variant}: trained weights, not a seed-regenerable ticket",
            "supermask.run_hash": cfg.run_hash}
    onnx_model = fill_graph(graph, weights, fmt, meta, info["classes"])
    data = onnx_model.SerializeToString()
    atomic_write(out, data)
    return {"path": str(out), "file_bytes": len(data), "round": round, "variant": variant, "format": fmt,
            "accuracy": None if row is None else row["accuracy"], "max_abs_diff": check.max_abs_diff}
