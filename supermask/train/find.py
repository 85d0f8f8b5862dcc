"""``find``: take a network and data, train or learn, score, select and evaluate supermasks.

The flow reads top to bottom: model + data (:mod:`.data`), the plan of every tensor
(:mod:`.subject`), dense training (:mod:`.loop`) or learned scores (:mod:`.learned`), masks
(:mod:`.criteria`, :mod:`.masks`), evaluation of the masked untrained network (with BatchNorm
statistics computed for each mask), and the run folder (:mod:`.runs`). Packing a ticket is
:mod:`.pack`. Torch is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import datasets
from ..arch import Preprocess
from ..atomic import atomic_write
from ..errors import DatasetError, RunError, SupermaskError
from ..lock import claim_folder
from . import data as D
from .config import INIT_VARIANTS, OBJECT_PREFIX, FindConfig, is_builtin_model, resolve_device
from .masks import (compute_masks, extra_key, final_mask, learned_multipliers, mask_key, masked_state,
                    variant_init)
from .meter import Progress
from .runs import RUN_FORMAT, _check_config, _json, _read_json, is_complete, load_npz, save_npz

log = logging.getLogger(__name__)


class _Inputs:
    """What a run works on: the network's plan, the data and its preprocessing."""

    def __init__(self, cfg: FindConfig, subject, test_set: datasets.Dataset, train_set, preprocess: Preprocess,
                 train_loader):
        self.cfg, self.subject, self.test_set, self.preprocess = cfg, subject, test_set, preprocess
        self._train, self._load_train = train_set, train_loader
        self.fixed = subject.fixed_values()  # before any training changes the module's own tensors

    @property
    def train_set(self) -> datasets.Dataset:
        if self._train is None:
            self._train = self._load_train()
        return self._train


def prepare(cfg: FindConfig, *, model=None, train_data=None, test_data=None, classes=None,
            data_dir: str | None = None, download: bool = False) -> tuple[FindConfig, _Inputs]:
    """Load the data and build the network's plan; return the config completed with the
    digests of a model or data that is not built in."""
    from .subject import Subject

    name = cfg.dataset
    if train_data is None:
        test_set = datasets.load(name, "test", data_dir, download)
        load_train = lambda: datasets.load(name, "train", data_dir, download)  # noqa: E731
        train_set = None
    else:
        train_set = D.as_dataset(train_data, "train", name=name, classes=classes)
        if test_data is None:
            raise DatasetError("give test data too: supermasks are measured on held-out examples")
        test_set = D.as_dataset(test_data, "test", name=name, classes=classes or train_set.classes)
        load_train = None
    if train_set is None and name not in datasets.DATASETS:
        train_set = load_train()  # user data: its digest names the run, so read it now
    if train_set is not None:
        if train_set.input_shape != test_set.input_shape:
            raise DatasetError(f"train inputs have shape {train_set.input_shape} but test inputs "
                               f"{test_set.input_shape}")
        if len(test_set.classes) > len(train_set.classes):
            raise DatasetError(f"test labels reach class {len(test_set.classes) - 1}, but the training data has "
                               f"only {len(train_set.classes)} classes; pass classes=[...] naming all of them")
        test_set = replace(test_set, classes=train_set.classes)
    preprocess = D.resolve_preprocess(test_set, cfg.scale, cfg.mean, cfg.std)
    if model is None:
        if cfg.model.startswith(OBJECT_PREFIX):
            raise RunError(f"the run's model {cfg.model!r} was given as an object; pass it again (model=...)")
        model = D.load_model(cfg.model, test_set.input_shape, len(test_set.classes))
    else:
        import copy

        model = copy.deepcopy(model)  # training and .to(device) must not change the caller's module
    subject = Subject.from_module(model, include=cfg.include, exclude=cfg.exclude, affine=cfg.affine)
    preflight(subject, test_set, preprocess)
    if not is_builtin_model(cfg.model):
        cfg = replace(cfg, model_digest=subject.digest())
    if name not in datasets.DATASETS:
        cfg = replace(cfg, data_digest=D.data_digest(train_set, test_set))
    return cfg, _Inputs(cfg, subject, test_set, train_set, preprocess, load_train)


def preflight(subject, ds: datasets.Dataset, preprocess: Preprocess) -> None:
    """Check, before any training, that the network takes the data and returns one logit per
    class, and that it exports to a graph a ticket may carry; raise :class:`ModelError` if not."""
    import torch

    from ..errors import ModelError
    from ..export.torch_graph import export_graph
    from ..ticket3 import graph_tensors
    from .subject import forward

    k = len(ds.classes)
    x = D.preprocess_tensor(torch.from_numpy(np.array(ds.images[:2])), preprocess)
    module = subject.module.eval()
    try:
        with torch.no_grad():
            out = forward(module, {}, x)
    except Exception as e:  # the user's forward: report what it raised, and what it was given
        raise ModelError(f"the model fails on inputs of shape {tuple(x.shape)} (the data's (N, "
                         f"{', '.join(map(str, ds.input_shape))}) after preprocessing): {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300] if str(e) else ''}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], k):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the model must return one logit per class, a tensor of shape (N, {k}); on "
                         f"{x.shape[0]} inputs it returned {got}")
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    tensors = {n: state[n].detach().cpu().numpy() for n in subject.plans}
    graph = export_graph(module, tensors, ds.input_shape, preprocess)  # ModelError names a failing layer
    try:
        graph_tensors(graph)
    except SupermaskError as e:
        raise ModelError(f"the model's ONNX graph cannot go in a ticket: {e}") from None


def find(cfg: FindConfig, out: str | os.PathLike, *, data_dir: str | None = None, download: bool = False,
         device: str = "auto", progress: bool = True, threads: int | None = None, model=None, train_data=None,
         test_data=None, classes=None) -> dict:
    """Run (or resume) a find run into ``out``; return the parsed ``results.json``.

    ``model``, ``train_data`` and ``test_data`` are for the library API (an ``nn.Module``,
    arrays or torch data); without them the config names them. ``threads`` sets torch's CPU
    thread count for this process (None leaves it alone).
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from . import distributed

    world = distributed.launched_world()
    if cfg.processes not in (1, world):
        raise RunError(f"the config says {cfg.processes} processes, but this run has {world}; start it with "
                       f"torchrun --nproc-per-node {cfg.processes} (docs/scaling.md)")
    if world > 1:
        if cfg.method == "imp":
            raise RunError("--method imp does not run data-parallel; run it as one process")
        cfg = replace(cfg, processes=world)
    dev = resolve_device(device)
    cfg, inputs = prepare(cfg, model=model, train_data=train_data, test_data=test_data, classes=classes,
                          data_dir=data_dir, download=download)
    if cfg.method == "imp":  # a schedule that cannot run fails before the run folder is made
        from .imp import plan

        n = len(inputs.train_set)
        plan(cfg, n if cfg.train_limit is None else min(n, cfg.train_limit))
    with distributed.joined(dev) as (group, dev), ExitStack() as stack:
        def claim():  # rank 0 alone locks and reads the run folder; the others learn what it found
            path = stack.enter_context(claim_folder(out, "run folder", RunError))
            return path, _check_config(path, cfg), is_complete(path, cfg)

        out, train_hashes, complete = distributed.from_writer(claim, "the start of the run")
        if complete:
            log.info("%s is complete; nothing to do", out)
            return distributed.from_writer(lambda: _read_json(out / "results.json"), "the start of the run")
        return _find_locked(cfg, inputs, out, train_hashes, dev, progress and group.writer, group.writer)


def model_info(cfg: FindConfig, inputs: _Inputs) -> dict:
    """``model.json``: the plan of the network and what its input and output are."""
    ds = inputs.test_set
    x = np.asarray(ds.images)
    train = np.asarray(inputs.train_set.images)
    return {
        "model": cfg.model,
        "class": type(inputs.subject.module).__name__,
        "digest": inputs.subject.digest(),
        "input_shape": list(ds.input_shape),
        "input_dtype": "uint8" if x.dtype == np.uint8 else "float32",
        "input_range": [float(x.min()), float(x.max())] if x.size else [0.0, 1.0],
        # the raw training inputs' min and max: pack records them in the ticket, and the runtime
        # warns about inputs far outside them
        "train_input_range": [float(train.min()), float(train.max())] if train.size else None,
        "preprocess": inputs.preprocess.to_dict(),
        "classes": list(ds.classes),
        "dataset": cfg.dataset,
        "tensors": inputs.subject.describe(),
    }


def _find_locked(cfg: FindConfig, inputs: _Inputs, out: Path, train_hashes: set[str], dev: str, progress: bool,
                 writer: bool) -> dict:
    """Train, select and evaluate into ``out``. Only the ``writer`` (rank 0 of a distributed run,
    or the one process) writes files; the others train beside it and check their masks."""
    from . import distributed

    results_path = out / "results.json"
    if writer:
        # results.json goes first: then it never sits beside a config.json or masks.npz of
        # another evaluation when this one is killed (see supermask.train.runs).
        results_path.unlink(missing_ok=True)
        atomic_write(out / "config.json", _json({
            "format": RUN_FORMAT, "config": cfg.to_dict(), "train_hash": cfg.train_hash, "run_hash": cfg.run_hash,
        }))
        atomic_write(out / "model.json", _json(model_info(cfg, inputs)))
        (out / "architecture.json").unlink(missing_ok=True)  # left by an older version
    if cfg.method == "imp":
        from .imp import run_imp

        base = _row_base(cfg)
        rows, masks, extras = run_imp(cfg, inputs, out, dev, progress, _Evaluator(cfg, inputs, dev))
        rows = [{**base, **r} for r in rows]
    elif cfg.learned:
        rows, masks, extras = _learn_and_evaluate(cfg, inputs, out, dev, progress, writer)
    else:
        rows, masks, extras = _train_and_evaluate(cfg, inputs, out, train_hashes, dev, progress, writer)
    res = None
    if writer:
        save_npz(out / "masks.npz", masks)
        save_npz(out / "extras.npz", extras)
        res = {"format": RUN_FORMAT, "run_hash": cfg.run_hash, "config": cfg.to_dict(),
               "test_examples": rows[0]["total"], "rows": rows}
        atomic_write(results_path, _json(res))
    return distributed.from_writer(lambda: res, "the end of the run")


class _Evaluator:
    """Accuracy of masked networks on the test set, with BatchNorm statistics computed for each."""

    def __init__(self, cfg: FindConfig, inputs: _Inputs, device: str):
        from .data import to_tensors

        self.cfg, self.inputs, self.device = cfg, inputs, device
        self.subject = inputs.subject
        self.x, y = to_tensors(inputs.test_set, inputs.preprocess, device, cfg.test_limit)
        self.y = y.cpu().numpy()
        self.total = int(self.y.shape[0])
        self._cal = None

    def calibration(self):
        if self._cal is None:
            from .data import to_tensors
            from .loop import calibration_indices

            ds = self.inputs.train_set
            idx = calibration_indices(self.cfg.seed, len(ds), self.cfg.bn_calibration_examples)
            sub = replace(ds, images=np.asarray(ds.images)[idx], labels=np.asarray(ds.labels)[idx])
            self._cal = to_tensors(sub, self.inputs.preprocess, self.device)[0]
        return self._cal

    def __call__(self, state: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        """(correct, stored tensors) of the network with ``state``; statistics are recomputed."""
        from .loop import accuracy, batchnorm_statistics

        if self.subject.has_batchnorm:
            state.update(batchnorm_statistics(self.subject, state, self.calibration(), self.device))
        correct, _ = accuracy(self.subject, state, self.x, self.y, self.device)
        stored = {n: state[n] for n in self.subject.names("statistic", "other")}
        for n in self.subject.trained_extras:
            stored[n] = state[n]
        return correct, stored


def _others(inputs: _Inputs, trained: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The non-weight tensors of a masked network: fixed values, with trained ones ("+BN") on top."""
    out = dict(inputs.fixed)
    for n in inputs.subject.trained_extras:
        if trained is not None:
            out[n] = trained[n]
    return out


def _reuse_dense(cfg: FindConfig, subject, out: Path, train_hashes: set[str]):
    """(trained tensors, summary) of a finished dense training stage in ``out``, or None."""
    train_json = out / "train.json"
    if not (train_json.exists() and _read_json(train_json).get("train_hash") in train_hashes):
        return None
    log.info("reusing trained weights in %s", out)
    w_final = load_npz(out / "weights.npz")
    missing = set(subject.plans) - set(w_final)
    if missing:
        raise RunError(f"{out}/weights.npz lacks {sorted(missing)[:5]}; delete the folder and re-run")
    summary = _read_json(train_json)
    if summary["train_hash"] != cfg.train_hash:  # written under an older hash rule
        summary["train_hash"] = cfg.train_hash
        atomic_write(train_json, _json(summary))
    return w_final, summary


def _train_and_evaluate(cfg: FindConfig, inputs: _Inputs, out: Path, train_hashes: set[str], device: str,
                        progress: bool, writer: bool = True) -> tuple[list[dict], dict, dict]:
    from . import distributed
    from .data import to_tensors
    from .loop import train_dense

    subject = inputs.subject
    reused = distributed.from_writer(lambda: _reuse_dense(cfg, subject, out, train_hashes), "reading the run")
    if reused is not None:
        w_final, summary = reused
    else:
        x, y = to_tensors(inputs.train_set, inputs.preprocess, device, cfg.train_limit)
        state0 = subject.initial_state(cfg.seed, cfg.init_spec)
        w_final, summary = train_dense(subject, state0, x, y, seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size,
                                       iterations=cfg.iterations, epochs=cfg.epochs, device=device,
                                       progress=progress, checkpoint=out / "train.ckpt",
                                       fingerprint=cfg.train_hash)
        del x, y
        distributed.agree("trained weights", w_final)
        if writer:
            save_npz(out / "weights.npz", w_final)  # before train.json, which marks the stage done
            summary["train_hash"] = cfg.train_hash
            atomic_write(out / "train.json", _json(summary))
            (out / "train.ckpt").unlink(missing_ok=True)

    masked = subject.masked
    inits = {v: subject.initial_weights(cfg.seed, variant_init(cfg, v)) for v in INIT_VARIANTS}
    jobs = [(c, k) for c in cfg.criteria for k in cfg.keeps]
    mask_arrays, densities = {}, {}  # masks first (every rank), then the evaluation (the writer)
    for c, k in jobs:
        masks = compute_masks(cfg, masked, inits["original"], w_final, c, k)
        kept = sum(int(m.sum()) for m in masks.values())
        densities[c, k] = kept / sum(m.size for m in masks.values()), {n: int(m.sum()) / m.size
                                                                       for n, m in masks.items()}
        for n, m in masks.items():
            mask_arrays[mask_key(c, k, n)] = np.packbits(m.reshape(-1), bitorder="little")
    distributed.agree("masks", mask_arrays)
    if not writer:
        return [], mask_arrays, {}

    ev = _Evaluator(cfg, inputs, device)
    base = _row_base(cfg)
    from .loop import accuracy

    correct, _ = accuracy(subject, w_final, ev.x, ev.y, device)  # the trained network as it is
    rows = [{**base, "criterion": "dense", "keep": 1.0, "init": "trained", "accuracy": correct / ev.total,
             "correct": correct, "total": ev.total, "density": 1.0, "layer_densities": {n: 1.0 for n in masked}}]
    others = _others(inputs, w_final)
    extras = {}
    bar = Progress(len(jobs), "evaluate", progress)
    for j, (c, k) in enumerate(jobs):
        masks = {n: _unpack(mask_arrays[mask_key(c, k, n)], inits["original"][n].shape) for n in masked}
        density, dens = densities[c, k]
        for v in INIT_VARIANTS:
            correct, stored = ev(masked_state(inits[v], masks, others))
            extras.update({extra_key(c, k, v, n): a for n, a in stored.items()})
            rows.append({**base, "criterion": c, "keep": k, "init": v, "accuracy": correct / ev.total,
                         "correct": correct, "total": ev.total, "density": density, "layer_densities": dens})
        bar.update(j + 1)
    bar.close()
    return rows, mask_arrays, extras


def _unpack(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    return np.unpackbits(packed, count=n, bitorder="little").astype(bool).reshape(shape)


def _row_base(cfg: FindConfig) -> dict[str, Any]:
    base = {"model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "selection": cfg.selection}
    if cfg.processes > 1:
        base["processes"] = cfg.processes
    if cfg.method != "criteria":
        base["method"] = cfg.method
    if cfg.affine != "fixed":
        base["affine"] = cfg.affine
    return base


def stage_name(cfg: FindConfig, keep: float | None) -> str:
    """File stem of one learned training in ``OUT/scores/``: ``keep-<keep>`` or the method name."""
    return cfg.method if keep is None else f"keep-{keep!r}"


def _done_stage(cfg: FindConfig, folder: Path, tag: str):
    """(arrays, summary) of a finished learned stage, or None."""
    done = folder / f"{tag}.json"
    if done.exists() and _read_json(done).get("train_hash") == cfg.train_hash:
        return load_npz(folder / f"{tag}.npz"), _read_json(done)
    return None


def _learn_and_evaluate(cfg: FindConfig, inputs: _Inputs, out: Path, device: str,
                        progress: bool, writer: bool = True) -> tuple[list[dict], dict, dict]:
    """Train scores for each keep (one stage each, resumable from per-epoch checkpoints), then
    evaluate every final mask on the untrained network."""
    from . import distributed
    from .data import to_tensors
    from .learned import train_scores

    subject = inputs.subject
    folder = out / "scores"
    if writer:
        folder.mkdir(exist_ok=True)
    stages: dict[str, dict] = {}
    learned: dict[str, dict[str, np.ndarray]] = {}
    keeps: list[float | None] = list(cfg.keeps) or [None]
    data = None
    for keep in keeps:
        tag = stage_name(cfg, keep)
        finished = distributed.from_writer(lambda: _done_stage(cfg, folder, tag), "reading the run")
        if finished is not None:
            learned[tag], stages[tag] = finished
            continue
        if data is None:
            data = to_tensors(inputs.train_set, inputs.preprocess, device, cfg.train_limit)
        state0 = {**inputs.fixed, **subject.initial_weights(cfg.seed, cfg.init_for(keep))}
        s, extra, summary = train_scores(
            cfg.method, subject, state0, *data, seed=cfg.seed, keep=keep, lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, iterations=cfg.iterations, epochs=cfg.epochs,
            rescale=bool(cfg.rescale), device=device, checkpoint=folder / f"{tag}.ckpt", progress=progress,
            label=f"{cfg.method} {tag}", fingerprint=f"{cfg.train_hash}/{tag}")
        arrays = {**s, **{f"trained/{n}": v for n, v in extra.items()}}
        distributed.agree(f"scores of {tag}", arrays)
        if writer:
            save_npz(folder / f"{tag}.npz", arrays)  # before the .json that marks the stage done
            summary["train_hash"] = cfg.train_hash
            atomic_write(folder / f"{tag}.json", _json(summary))
            (folder / f"{tag}.ckpt").unlink(missing_ok=True)
        learned[tag], stages[tag] = arrays, summary
    del data
    if writer:
        atomic_write(out / "train.json", _json({"method": cfg.method, "train_hash": cfg.train_hash,
                                                "stages": stages}))

    finals = {}  # masks first (every rank), then the evaluation (the writer)
    mask_arrays = {}
    for keep in keeps:
        tag = stage_name(cfg, keep)
        masks = {n: final_mask(cfg.method, learned[tag][n], keep) for n in subject.masked}
        kept = sum(int(m.sum()) for m in masks.values())
        size = sum(m.size for m in masks.values())
        row_keep = keep if keep is not None else kept / size
        for n, m in masks.items():
            mask_arrays[mask_key(cfg.method, row_keep, n)] = np.packbits(m.reshape(-1), bitorder="little")
        finals[tag] = masks, kept / size, row_keep
    distributed.agree("masks", mask_arrays)
    if not writer:
        return [], mask_arrays, {}

    ev = _Evaluator(cfg, inputs, device)
    base = _row_base(cfg)
    rows, extras = [], {}
    for keep in keeps:
        tag = stage_name(cfg, keep)
        arrays = learned[tag]
        masks, density, row_keep = finals[tag]
        factors = learned_multipliers(cfg, masks)
        trained = {n[len("trained/"):]: v for n, v in arrays.items() if n.startswith("trained/")}
        weights = subject.initial_weights(cfg.seed, cfg.init_for(keep))
        correct, stored = ev(masked_state(weights, masks, _others(inputs, trained), factors))
        extras.update({extra_key(cfg.method, row_keep, "original", n): a for n, a in stored.items()})
        row = {**base, "criterion": cfg.method, "keep": row_keep, "init": "original",
               "accuracy": correct / ev.total, "gain_sq": cfg.init_for(keep).gain_sq, "correct": correct,
               "total": ev.total, "density": density,
               "layer_densities": {n: int(m.sum()) / m.size for n, m in masks.items()}}
        if factors:
            row["multipliers"] = factors
        rows.append(row)
    return rows, mask_arrays, extras
