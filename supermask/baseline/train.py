"""Train the baselines, write their files and measure them from those files.

One float MLP ``inputs-H-classes`` per (width, seed) is trained and kept; every method starts
from it. The accuracy of a row is the accuracy of its written file, decoded by the numpy
reader of :mod:`supermask.baseline.artifact`, so bytes and accuracy belong to the same file.

Folder layout (everything is written atomically; a killed run resumes where it stopped)::

    OUT/config.json                           the settings rows depend on
    OUT/float/h{H}-s{seed}.npz                 the trained float net
    OUT/artifacts/{method}-h{H}-s{seed}.smbl   the file a device loads
    OUT/rows/{method}-h{H}-s{seed}.json        its row, written after the file
    OUT/results.json                          all rows, rewritten at the end
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from .. import datasets
from ..atomic import atomic_write
from ..errors import RunError
from ..lock import claim_folder
from ..train.meter import Progress
from . import artifact

METHODS = ("float", "int8-ptq", "int4-ptq", "int4-qat", "ternary-qat", "deep-compression")
FINETUNED = ("int4-qat", "ternary-qat", "deep-compression")
DEFAULT_WIDTHS = (8, 16, 32, 64, 128, 256, 512)
BATCH = 128
LR, FINETUNE_LR = 1e-3, 1e-3
DC_DENSITIES = (0.1, 0.3)
#: deep-compression prunes gradually over this share of its fine-tune epochs, then keeps the mask
DC_RAMP = 0.6
QMAX = {"int8": 127, "int4": 7}  # symmetric code ranges -QMAX..QMAX
DC_CLUSTERS, KMEANS_ITERS = 16, 30


def mlp(inputs: int, width: int, classes: int):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, classes))


def linears(model) -> list:
    import torch.nn as nn

    return [m for m in model if isinstance(m, nn.Linear)]


def train(model, x, y, *, epochs: int, lr: float, seed: int, label: str, progress: bool, before_epoch=None) -> None:
    """Adam with a per-step cosine schedule to 0, batch 128, a seeded shuffle every epoch;
    ``before_epoch(epoch)`` runs before each epoch when given."""
    import torch
    import torch.nn.functional as F

    n = len(x)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(n / BATCH), eta_min=0.0)
    rng = np.random.default_rng(seed)
    bar = Progress(epochs, label, enabled=progress, unit="epoch")
    model.train()
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        perm = torch.from_numpy(rng.permutation(n))
        total = 0.0
        for i in range(0, n, BATCH):
            idx = perm[i:i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        bar.update(epoch + 1, loss=total / n)
    bar.close()
    model.eval()


def fake_quant_int4():
    """Per-channel symmetric int4 fake quantization with a moving-average min-max observer."""
    import torch
    from torch.ao.quantization import FakeQuantize, MovingAveragePerChannelMinMaxObserver

    return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-QMAX["int4"],
                        quant_max=QMAX["int4"], dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)


def ternarize(w):
    """TWN per output row: codes in {-1, 0, 1} (|w| > 0.7 mean|w|) and scale alpha (mean kept |w|)."""
    a = w.abs()
    keep = a > 0.7 * a.mean(dim=1, keepdim=True)
    alpha = (a * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
    return (w.sign() * keep).to(w.dtype), alpha


def _ternary_module():
    import torch.nn as nn

    class Ternary(nn.Module):
        """Forward alpha * codes; the gradient goes straight through to the latent weights."""

        def forward(self, w):
            codes, alpha = ternarize(w.detach())
            return codes * alpha[:, None] + (w - w.detach())  # exactly the ternary values

    return Ternary()


def kmeans_1d(values: np.ndarray, k: int = DC_CLUSTERS, iters: int = KMEANS_ITERS):
    """Lloyd's 1-D k-means, centroids initialised evenly between min and max:
    (float32 codebook, uint8 index per value)."""
    if values.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.uint8)
    v = values.astype(np.float64)
    c = np.linspace(v.min(), v.max(), k)
    for _ in range(iters):
        idx = np.argmin(np.abs(v[:, None] - c[None, :]), axis=1)
        counts = np.bincount(idx, minlength=k)
        sums = np.bincount(idx, weights=v, minlength=k)
        c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    c = c.astype(np.float32)
    return c, np.argmin(np.abs(values[:, None] - c[None, :]), axis=1).astype(np.uint8)


def per_channel_codes(w, scale, zero_point, qmax: int):
    """(torch fake-quantized weight, int8 codes) of ``w`` with per-row ``scale``."""
    import torch

    wq = torch.fake_quantize_per_channel_affine(w, scale.float(), zero_point.int(), 0, -qmax, qmax)
    return wq, torch.round(wq / scale.float()[:, None]).to(torch.int8)


def quantize(method: str, model, x=None, y=None, *, finetune_epochs: int = 10, finetune_lr: float = FINETUNE_LR,
             dc_density: float = DC_DENSITIES[0], seed: int = 0, label: str = "", progress: bool = False):
    """Make baseline ``method`` from a trained float ``model`` (changed in place): fine-tune it if
    the method does, then return (artifact tensors, the float32 weights torch computes with)."""
    import torch
    from torch.ao.quantization.observer import PerChannelMinMaxObserver
    from torch.nn.utils import parametrize, prune

    fcs = linears(model)
    tune = dict(epochs=finetune_epochs, lr=finetune_lr, seed=seed + 1_000_003, label=label, progress=progress)
    if method in ("int4-qat", "ternary-qat"):
        for fc in fcs:
            parametrize.register_parametrization(fc, "weight", fake_quant_int4() if method == "int4-qat"
                                                 else _ternary_module())
        torch.manual_seed(seed)
        train(model, x, y, **tune)
        if method == "int4-qat":
            for fc in fcs:
                fc.parametrizations.weight[0].disable_observer()
    elif method == "deep-compression":
        ramp = max(1, round(DC_RAMP * finetune_epochs))

        def prune_step(epoch: int) -> None:  # Zhu & Gupta 2017: density falls on a cubic to dc_density
            if epoch < ramp:
                target = dc_density + (1 - dc_density) * (1 - (epoch + 1) / ramp) ** 3
                for fc in fcs:  # l1_unstructured on a pruned weight prunes among the weights still kept
                    kept = int(fc.weight_mask.sum()) if hasattr(fc, "weight_mask") else fc.weight.numel()
                    prune.l1_unstructured(fc, "weight", amount=max(0, kept - round(target * fc.weight.numel())))

        torch.manual_seed(seed)
        train(model, x, y, **tune, before_epoch=prune_step)
    tensors, weights = [], []
    with torch.no_grad():
        for fc in fcs:
            bias = fc.bias.detach().clone()
            if method == "float":
                w = fc.weight.detach().clone()
                t = {"coding": "float32", "weight": w.numpy()}
            elif method in ("int8-ptq", "int4-ptq"):
                qmax = QMAX[method[:4]]
                obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                               quant_min=-qmax, quant_max=qmax)
                obs(fc.weight)
                scale, zp = obs.calculate_qparams()
                w, codes = per_channel_codes(fc.weight.detach(), scale, zp, qmax)
                t = {"coding": method[:4], "codes": codes.numpy(), "scale": scale.float().numpy()}
            elif method == "int4-qat":
                fq = fc.parametrizations.weight[0]
                w = fc.weight.detach().clone()  # the fake-quantized weight the network trained with
                _, codes = per_channel_codes(fc.parametrizations.weight.original, fq.scale, fq.zero_point,
                                             QMAX["int4"])
                t = {"coding": "int4", "codes": codes.numpy(), "scale": fq.scale.float().numpy()}
            elif method == "ternary-qat":
                w = fc.weight.detach().clone()
                codes, alpha = ternarize(fc.parametrizations.weight.original)
                t = {"coding": "ternary", "codes": codes.to(torch.int8).numpy(), "scale": alpha.numpy()}
            elif method == "deep-compression":
                mask = fc.weight_mask.bool().numpy()
                prune.remove(fc, "weight")
                codebook, idx = kmeans_1d(fc.weight.detach().numpy()[mask])
                shared = np.zeros(mask.shape, np.float32)
                shared[mask] = codebook[idx]
                w = torch.from_numpy(shared)
                fc.weight.copy_(w)
                t = {"coding": "dc", "mask": mask, "indices": idx, "codebook": codebook}
            else:
                raise RunError(f"unknown baseline method {method!r}; choose from {', '.join(METHODS)}")
            tensors.append({**t, "bias": bias.numpy()})
            weights.append((w, bias))
    return tensors, weights


def torch_correct(weights, x, y) -> int:
    """Correct predictions of the MLP with these (W, b) pairs, computed by torch."""
    import torch

    with torch.no_grad():
        for i, (w, b) in enumerate(weights):
            x = torch.nn.functional.linear(x, w, b)
            if i < len(weights) - 1:
                x = torch.relu(x)
        return int((x.argmax(1) == y).sum())


def _save_state(path: Path, model) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.detach().numpy() for k, v in model.state_dict().items()})
    atomic_write(path, buf.getvalue())


def _load_state(path: Path, model) -> None:
    import torch

    with np.load(path) as z:
        model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})


def _check_config(out: Path, config: dict) -> None:
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in config.items() if old.get(k) != v]
        if diff:
            raise RunError(f"{out} holds baselines made with other settings ({'; '.join(diff)}); "
                           f"use another output folder or the same settings")
    else:
        atomic_write(path, json.dumps(config, indent=2) + "\n")


def _check_args(widths, methods, seeds, epochs, finetune_epochs, finetune_lr, dc_densities) -> None:
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise RunError(f"unknown baseline method(s) {', '.join(bad) or '(none given)'}; "
                       f"choose from {', '.join(METHODS)}")
    if not widths or any(w < 1 for w in widths):
        raise RunError("widths must be positive integers")
    if not seeds or any(s < 0 for s in seeds):
        raise RunError("seeds must be non-negative integers")
    if epochs < 1 or finetune_epochs < 1:
        raise RunError("epochs and finetune epochs must be at least 1")
    if not finetune_lr > 0:
        raise RunError(f"the fine-tune learning rate must be positive, got {finetune_lr}")
    if not dc_densities or any(not 0 < d <= 1 for d in dc_densities):
        raise RunError(f"deep-compression densities must be in (0, 1], got {list(dc_densities)}")


def run_baselines(dataset: str, *, widths, methods, seeds, out, epochs: int = 20, finetune_epochs: int = 10,
                  finetune_lr: float = FINETUNE_LR,
                  dc_densities=DC_DENSITIES, data_dir=None, download: bool = False, threads: int = 1,
                  progress: bool = True) -> list[dict]:
    """Train, write and measure every (seed, width, method), seed by seed; return the rows.
    Rows already in ``out`` are kept, and float nets already trained are reused."""
    import torch

    from ..train.data import to_tensors

    _check_args(widths, methods, seeds, epochs, finetune_epochs, finetune_lr, dc_densities)
    torch.set_num_threads(threads)
    train_ds = datasets.load(dataset, "train", data_dir=data_dir, download=download)
    test_ds = datasets.load(dataset, "test", data_dir=data_dir, download=download)
    x, y = to_tensors(train_ds, train_ds.preprocess, "cpu")
    x = x.reshape(len(x), -1)
    classes = len(train_ds.classes)
    header = {"input_shape": list(test_ds.input_shape), "preprocess": test_ds.preprocess.to_dict(),
              "classes": list(test_ds.classes)}
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    rows = []
    with claim_folder(out, "baseline folder", RunError) as out:
        _check_config(out, {"dataset": dataset, "epochs": epochs, "finetune_epochs": finetune_epochs,
                            "finetune_lr": finetune_lr, "dc_schedule": f"cubic over {DC_RAMP:g} of the epochs"})
        for sub in ("float", "artifacts", "rows"):
            (out / sub).mkdir(exist_ok=True)
        for seed in seeds:
            for width in widths:
                state = out / "float" / f"h{width}-s{seed}.npz"
                jobs = [(m, d) for m in methods for d in (dc_densities if m == "deep-compression" else (None,))]
                for method, density in jobs:
                    name = f"{method}{'' if density is None else f'-d{density:g}'}-h{width}-s{seed}"
                    row_path = out / "rows" / f"{name}.json"
                    if row_path.exists():
                        rows.append(json.loads(row_path.read_text()))
                        continue
                    torch.manual_seed(seed)
                    model = mlp(x.shape[1], width, classes)
                    if state.exists():
                        _load_state(state, model)
                    else:
                        train(model, x, y, epochs=epochs, lr=LR, seed=seed, label=f"float h{width} s{seed}",
                              progress=progress)
                        _save_state(state, model)
                    tensors, _ = quantize(method, model, x, y, finetune_epochs=finetune_epochs,
                                          finetune_lr=finetune_lr, dc_density=density, seed=seed,
                                          label=f"{name} fine-tune", progress=progress)
                    path = out / "artifacts" / f"{name}.smbl"
                    size = artifact.write(path, {"method": method, **header}, tensors)
                    correct, total = artifact.evaluate(path, test_ds)
                    row = {"method": method, "width": width, "seed": seed, "dataset": dataset, "bytes": size,
                           "accuracy": correct / total, "correct": correct, "total": total,
                           "params": sum(p.numel() for p in model.parameters()),
                           "epochs": epochs + (finetune_epochs if method in FINETUNED else 0),
                           "artifact": str(path.relative_to(out)), **({} if density is None else {"density": density})}
                    atomic_write(row_path, json.dumps(row, indent=2) + "\n")
                    say(f"{name}: {size} bytes, accuracy {100 * correct / total:.2f} %")
                    rows.append(row)
        everything = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
        everything.sort(key=lambda r: (r["seed"], r["width"], METHODS.index(r["method"]), r.get("density", 0)))
        atomic_write(out / "results.json", json.dumps(everything, indent=2) + "\n")
    return rows
