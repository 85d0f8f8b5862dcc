"""Iterative magnitude pruning and its controls: ``supermask find --method imp`` (imports torch).

The procedure of Frankle & Carbin 2019, "The Lottery Ticket Hypothesis":

* round 0 trains the dense network from the seeded initial weights W0 (and keeps the weights of
  iteration ``rewind``, Wk: W0 for ``rewind=0``; late resetting, Frankle et al. 2019, for k > 0);
* round r scores the weights that are still in the mask by the run's criterion (``large_final``,
  magnitude, by default; any criterion of the registry, scored between Wk and the previous
  round's final weights), keeps ``(1 - p)^r`` of every layer (the output layer
  ``(1 - p/2)^r``, or one threshold over all layers with ``selection="global"``) so each mask
  is a subset of the last, resets the kept weights to Wk and trains again with the pruned
  weights held at zero.

Each training holds out ``val_examples`` training images and reads the validation loss every
``eval_every`` steps; the row of a training reports the test accuracy at the minimum
validation loss and that iteration (the papers' early-stopping measure), and the final test
accuracy beside it.

The controls retrain round r's mask (or, for ``random-mask``, a random mask with the same layer
densities) from other starting values, after Zhou et al. 2019, "Deconstructing Lottery
Tickets": ``reinit`` (fresh random weights of another seed), ``reshuffle`` (Wk's kept values
permuted within each layer), ``signed-constant`` (sign(Wk) times the layer's init constant),
and ``freeze`` (pruned weights stay at their Wk values instead of zero, untrained). Every
round also evaluates its mask over the *untrained* W0 and its signed constants: supermask rows
that ``pack`` turns into ordinary tickets. Retrained weights never become tickets.

Every training is a stage of the run folder (``imp/rNN-<variant>.json`` marks it done, its
arrays are in the ``.npz`` beside it), with the epoch and Ctrl-C checkpoints of
:mod:`supermask.train.resume`, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .. import rng
from ..atomic import atomic_write
from ..errors import RunError
from ..prediction import predict_classes
from . import criteria as crit
from .config import INIT_VARIANTS, FindConfig
from .loop import seed_of, seeded_torch
from .masks import apply_mask, extra_key, kept_count, mask_key, masked_state, variant_init
from .resume import Checkpoint, restore, resume, run_steps, say_resumed, set_torch_rng, supervised_step
from .runs import _json, _read_json, load_npz, save_npz


#: Held-out training examples for early stopping when ``val_examples`` is not given.
DEFAULT_VAL_EXAMPLES = 5000


def layer_keeps(cfg: FindConfig, names: list[str], r: int) -> dict[str, float]:
    """Nominal density of every masked tensor after round ``r``: ``(1-p)^r``, the output layer
    (the last masked tensor) ``(1-p/2)^r`` under layerwise selection."""
    p = cfg.prune_rate
    out = {n: (1.0 - p) ** r for n in names}
    if cfg.selection == "layerwise":
        out[names[-1]] = (1.0 - p / 2.0) ** r
    return out


def prune(cfg: FindConfig, scores: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray],
          r: int) -> dict[str, np.ndarray]:
    """Round ``r``'s mask: the best-scoring weights among those ``previous`` kept, as many as
    the schedule says (the same counts as :func:`supermask.train.masks.kept_count`)."""
    names = list(scores)
    live = {n: np.where(previous[n], np.asarray(scores[n], np.float64), -np.inf) for n in names}
    if cfg.selection == "layerwise":
        keeps = layer_keeps(cfg, names, r)
        return {n: crit.top_k(live[n], min(kept_count(keeps[n], live[n].size), int(previous[n].sum())))
                for n in names}
    flat = np.concatenate([live[n].reshape(-1) for n in names])
    total = min(kept_count((1.0 - cfg.prune_rate) ** r, flat.size), int(sum(previous[n].sum() for n in names)))
    chosen = crit.top_k(flat, total)
    out, a = {}, 0
    for n in names:
        out[n] = chosen[a:a + live[n].size].reshape(live[n].shape)
        a += live[n].size
    return out


def random_mask_like(mask: Mapping[str, np.ndarray], seed: int, r: int) -> dict[str, np.ndarray]:
    """A random mask with the same number of kept weights in every tensor as ``mask``."""
    return {n: crit.top_k(crit.random_scores(m.shape, seed, f"imp-random-mask/{r}/{n}"), int(m.sum()))
            for n, m in mask.items()}


def reshuffled(w: np.ndarray, mask: np.ndarray, seed: int, key: str) -> np.ndarray:
    """``w`` with its kept values permuted among the kept positions (seeded)."""
    out = np.array(w, dtype=np.float32)
    idx = np.flatnonzero(mask.reshape(-1))
    order = np.argsort(rng.raw_words(seed, key, idx.size), kind="stable")
    flat = out.reshape(-1)
    flat[idx] = flat[idx[order]]
    return out


@dataclass
class _Data:
    x: object
    y: object
    xv: object
    yv: object
    xt: object
    yt: np.ndarray


def split_validation(seed: int, n: int, val: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices): a seeded choice of ``val`` of ``n`` examples."""
    order = np.argsort(rng.raw_words(seed, "imp-validation", n), kind="stable")
    return np.sort(order[val:]), np.sort(order[:val])


def train_stage(subject, start: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray] | None,
                frozen: Mapping[str, np.ndarray] | None, data: _Data, *, cfg: FindConfig, total: int,
                eval_every: int, device: str, checkpoint: Path, fingerprint: str, label: str, progress: bool,
                rewind_at: int | None = None) -> tuple[dict, dict, dict | None]:
    """Train every tensor from ``start`` with the pruned weights of ``masks`` held at zero (or,
    with ``frozen``, at those values). Returns (early-stopped state of every tensor, summary,
    the state at iteration ``rewind_at`` when asked)."""
    import torch
    from torch.nn import functional as F

    from .meter import TrainMeter
    from .subject import load_state

    net = subject.module.to(device)
    load_state(net, start)
    params = dict(net.named_parameters())
    names = list(subject.plans)
    mt = {n: torch.as_tensor(m, device=device) for n, m in (masks or {}).items()}
    ft = {n: torch.as_tensor(np.asarray(v, np.float32), device=device) for n, v in (frozen or {}).items()}

    def constrain() -> None:
        with torch.no_grad():
            for n, m in mt.items():
                p = params[n]
                if n in ft:
                    p.copy_(torch.where(m, p, ft[n]))
                else:
                    p.mul_(m)

    def state_now() -> dict:
        t = {**dict(net.named_parameters()), **dict(net.named_buffers())}
        return {n: t[n].detach().cpu().clone() for n in names}

    constrain()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed_of(cfg.seed, "shuffle"))
    best = {"iteration": 0, "val_loss": math.inf, "correct": -1, "state": None}
    evals: list[list[float]] = []
    rewind = {"state": state_now() if rewind_at == 0 else None}
    ck = Checkpoint(checkpoint, fingerprint, total, torch.device(device).type)

    def apply(saved):
        net.load_state_dict(saved["model"])
        out = restore(saved, opt, gen)
        b = saved["best"]
        best.update(iteration=int(b[0]), val_loss=float(b[1]), correct=int(b[2]),
                    state=dict(saved["best_state"]) or None)
        evals[:] = [list(e) for e in saved["evals"]]
        rewind["state"] = dict(saved["rewind"]) or rewind["state"]
        return out

    def reset():
        nonlocal opt
        load_state(net, start)
        constrain()
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        gen.manual_seed(seed_of(cfg.seed, "shuffle"))
        best.update(iteration=0, val_loss=math.inf, correct=-1, state=None)
        evals.clear()

    resumed = resume(ck, apply, reset)
    meter = TrainMeter(total, label, progress, device, resumed.history, window=resumed.meter)
    say_resumed(label, resumed.start, total, ck.path)

    def evaluate(done: int) -> None:
        net.eval()
        with torch.no_grad():
            vl = sum(float(F.cross_entropy(net(data.xv[a:a + 2000]), data.yv[a:a + 2000], reduction="sum"))
                     for a in range(0, data.xv.shape[0], 2000)) / data.xv.shape[0]
            pred = np.concatenate([predict_classes(net(data.xt[a:a + 2000]).float().cpu().numpy())
                                   for a in range(0, data.xt.shape[0], 2000)])
        net.train()
        correct = int(np.count_nonzero(pred == data.yt))
        evals.append([done, vl, correct])
        if vl < best["val_loss"]:
            best.update(iteration=done, val_loss=vl, correct=correct, state=state_now())

    def step(it, xb, yb):
        supervised_step(net, opt, meter, it, xb, yb, after=constrain)
        done = it + 1
        if rewind_at is not None and done == rewind_at:
            rewind["state"] = state_now()
        if done % eval_every == 0 or done == total:
            evaluate(done)

    def snapshot() -> dict:
        return {"model": net.state_dict(), "best": [best["iteration"], best["val_loss"], best["correct"]],
                "best_state": best["state"] or {}, "evals": evals, "rewind": rewind["state"] or {}}

    net.train()
    t0 = time.perf_counter()
    with seeded_torch(cfg.seed, device):
        set_torch_rng(resumed, device)
        seconds = run_steps(x=data.x, y=data.y, batch_size=min(cfg.batch_size, data.x.shape[0]), total=total,
                            start=resumed.start, device=device, shuffle_gen=gen, step=step, snapshot=snapshot,
                            meter=meter, opt=opt, checkpoint=ck, seconds=resumed.seconds, label=label)
    meter.close()
    tests = data.xt.shape[0]
    final = {n: v.numpy().astype(np.float32) for n, v in state_now().items()}
    summary = {
        "iterations": total, "resumed_at": resumed.start or None, "seconds": seconds,
        "iterations_per_second": (total - resumed.start) / max(time.perf_counter() - t0, 1e-9),
        "early_stop_iteration": best["iteration"], "val_loss": best["val_loss"],
        "correct": best["correct"], "total": tests, "accuracy": best["correct"] / tests,
        "final_accuracy": evals[-1][2] / tests if evals else None,
        "evals": [{"iteration": int(e[0]), "val_loss": float(e[1]), "test_accuracy": e[2] / tests} for e in evals],
        "history": resumed.history,
    }
    best_state = {n: v.numpy().astype(np.float32) for n, v in (best["state"] or state_now()).items()}
    rw = None if rewind["state"] is None else {n: v.numpy().astype(np.float32) for n, v in rewind["state"].items()}
    return {"best": best_state, "final": final}, summary, rw


def _pack_masks(masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"mask/{n}": np.packbits(m.reshape(-1), bitorder="little") for n, m in masks.items()}


def _unpack_masks(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    return {n: np.unpackbits(arrays[f"mask/{n}"], count=math.prod(s), bitorder="little").astype(bool).reshape(s)
            for n, s in shapes.items()}


def plan(cfg: FindConfig, n_all: int) -> tuple[int, int, int]:
    """(validation examples, training iterations, iterations between validation passes) of an
    IMP run over ``n_all`` training examples; raises :class:`RunError` for settings that cannot
    run (checked before anything is written)."""
    n_val = cfg.val_examples or min(DEFAULT_VAL_EXAMPLES, max(1, n_all // 10))
    if n_val >= n_all:
        raise RunError(f"--val-examples {n_val} leaves no training examples of {n_all}; hold out fewer")
    n_train = n_all - n_val
    total = cfg.iterations or cfg.epochs * (n_train // min(cfg.batch_size, n_train))
    if cfg.rewind >= total:
        raise RunError(f"--rewind {cfg.rewind} is past the training length ({total:,} iterations); rewind to an "
                       f"iteration before the end of training")
    return n_val, total, cfg.eval_every or max(1, min(100, total // 20))


def run_imp(cfg: FindConfig, inputs, out: Path, device: str, progress: bool, evaluator) -> tuple[list, dict, dict]:
    """All rounds and controls of an IMP run into ``out`` (resuming finished stages); returns
    (results rows, masks.npz arrays, extras.npz arrays) as :func:`supermask.train.find` writes them."""
    from .data import to_tensors

    subject = inputs.subject
    masked = subject.masked
    shapes = {n: subject.plans[n].shape for n in masked}
    folder = out / "imp"
    folder.mkdir(exist_ok=True)
    x_all, y_all = to_tensors(inputs.train_set, inputs.preprocess, device, cfg.train_limit)
    n_all = int(x_all.shape[0])
    n_val, total, eval_every = plan(cfg, n_all)
    tr, va = split_validation(cfg.seed, n_all, n_val)
    import torch

    tr_t, va_t = torch.as_tensor(tr, device=device), torch.as_tensor(va, device=device)
    data = _Data(x_all[tr_t], y_all[tr_t], x_all[va_t], y_all[va_t], evaluator.x, evaluator.y)
    del x_all, y_all
    keeps = cfg.imp_keeps()
    criterion = cfg.criteria[0]
    w0 = subject.initial_state(cfg.seed, cfg.init_spec)
    stages: dict[str, dict] = {}

    def stage(r: int, variant: str, start, masks, frozen=None, rewind_at=None):
        tag = f"r{r:02d}-{variant}"
        done = folder / f"{tag}.json"
        if done.exists() and _read_json(done).get("train_hash") == cfg.train_hash:
            stages[tag] = _read_json(done)
            return load_npz(folder / f"{tag}.npz"), stages[tag]
        arrays, summary, rw = train_stage(
            subject, start, masks, frozen, data, cfg=cfg, total=total, eval_every=eval_every, device=device,
            checkpoint=folder / f"{tag}.ckpt", fingerprint=f"{cfg.train_hash}/{tag}",
            label=f"imp round {r}/{cfg.rounds} {variant}", progress=progress, rewind_at=rewind_at)
        out_arrays = {**{f"best/{n}": v for n, v in arrays["best"].items()},
                      **{f"final/{n}": arrays["final"][n] for n in masked}, **_pack_masks(masks or {})}
        if rw is not None:
            out_arrays.update({f"rewind/{n}": v for n, v in rw.items()})
        save_npz(folder / f"{tag}.npz", out_arrays)  # before the .json that marks the stage done
        summary.update(train_hash=cfg.train_hash, round=r, variant=variant)
        atomic_write(done, _json(summary))
        (folder / f"{tag}.ckpt").unlink(missing_ok=True)
        stages[tag] = summary
        return out_arrays, summary

    def strip(arrays, prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    a0, s0 = stage(0, "original", w0, None, rewind_at=cfg.rewind)
    wk = strip(a0, "rewind/")
    if set(wk) != set(subject.plans):
        raise RunError(f"{folder}/r00-original.npz lacks the rewind weights; delete it and run again")
    save_npz(out / "weights.npz", strip(a0, "best/"))  # the dense network (the report's reference)
    rows = [{"criterion": "dense", "keep": 1.0, "init": "trained", "round": 0, "retrained": True,
             "accuracy": s0["accuracy"], "correct": s0["correct"], "total": s0["total"],
             "early_stop_iteration": s0["early_stop_iteration"], "final_accuracy": s0["final_accuracy"],
             "density": 1.0, "layer_densities": {n: 1.0 for n in masked}}]
    final_prev = strip(a0, "final/")
    mask_prev = {n: np.ones(s, bool) for n, s in shapes.items()}
    sc_spec = cfg.init_spec.signed_constant()
    sc = subject.initial_weights(cfg.seed, sc_spec)
    reinit_seed = int(rng.raw_words(cfg.seed, "imp-reinit", 1)[0])
    inits = {v: subject.initial_weights(cfg.seed, variant_init(cfg, v)) for v in INIT_VARIANTS}
    others = {n: v for n, v in inputs.fixed.items()}
    mask_arrays, extras = {}, {}
    size = sum(math.prod(s) for s in shapes.values())

    def row(r, variant, masks, s, retrained=True):
        kept = sum(int(m.sum()) for m in masks.values())
        return {"criterion": criterion, "keep": keeps[r], "init": f"retrained-{variant}" if retrained else variant,
                **({"variant": variant} if retrained else {}), "round": r, "retrained": retrained,
                "accuracy": s["accuracy"], "correct": s["correct"], "total": s["total"],
                **({"early_stop_iteration": s["early_stop_iteration"], "final_accuracy": s["final_accuracy"]}
                   if retrained else {}),
                "density": kept / size, "layer_densities": {n: int(m.sum()) / m.size for n, m in masks.items()}}

    def with_masked(state, masks, values=None):
        return {**state, **{n: apply_mask((values or state)[n], masks[n]) for n in masks}}

    for r in range(1, cfg.rounds + 1):
        scores = {n: crit.get(criterion)(wk[n], final_prev[n], seed=cfg.seed, name=n) for n in masked}
        mask = prune(cfg, scores, mask_prev, r)
        a, s = stage(r, "original", with_masked(wk, mask), mask)
        rows.append(row(r, "original", mask, s))
        for v in cfg.controls:
            m, frozen = mask, None
            if v == "reinit":
                start = with_masked(subject.initial_state(reinit_seed, cfg.init_spec), mask)
            elif v == "random-mask":
                m = random_mask_like(mask, cfg.seed, r)
                start = with_masked(wk, m)
            elif v == "reshuffle":
                start = with_masked(wk, mask, {n: reshuffled(wk[n], mask[n], cfg.seed, f"imp-reshuffle/{r}/{n}")
                                               for n in masked})
            elif v == "signed-constant":
                start = with_masked(wk, mask, {n: np.where(wk[n] < 0, -np.abs(sc[n]), np.abs(sc[n]))
                                               for n in masked})
            else:  # freeze: pruned weights keep their rewind values and are never trained
                start, frozen = dict(wk), {n: wk[n] for n in masked}
            _, sv = stage(r, v, start, m, frozen)
            rows.append(row(r, v, m, sv))
        # the round's mask over the untrained initial weights: a supermask, packable as a ticket
        for n, mm in mask.items():
            mask_arrays[mask_key(criterion, keeps[r], n)] = np.packbits(mm.reshape(-1), bitorder="little")
        for v in INIT_VARIANTS:
            correct, stored = evaluator(masked_state(inits[v], mask, others))
            extras.update({extra_key(criterion, keeps[r], v, n): x for n, x in stored.items()})
            rows.append(row(r, v, mask, {"accuracy": correct / evaluator.total, "correct": correct,
                                         "total": evaluator.total}, retrained=False))
        final_prev, mask_prev = strip(a, "final/"), mask
    atomic_write(out / "train.json", _json({"method": "imp", "train_hash": cfg.train_hash, "stages": stages}))
    return rows, mask_arrays, extras
