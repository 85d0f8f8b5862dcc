"""Training throughput of `supermask find` against a minimal hand-written PyTorch loop.

    python benchmarks/bench_training.py --data-dir ../shared/data --model lenet-300-100 \\
        --iterations 2000 --repeats 5 --threads 1

Both train the same network (the built-in model as an ``nn.Module``) on the same data set
(whole training set held as one tensor on the device, batch 60, Adam at the same learning
rate) for the same number of steps, alternating run by run so that machine load hits both
alike. "find" is the dense training stage of ``supermask find``: the data on the device, the
generator's initial tensors, then :func:`supermask.train.loop.train_dense`. Reported: median
seconds and iterations per second of each, and their ratio (find / hand loop).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from supermask.atomic import atomic_write  # noqa: E402


def hand_loop(model: str, ds, images, labels, iterations: int, lr: float, batch: int, device: str) -> float:
    """The baseline: nothing but the training step. Returns seconds."""
    import torch
    from torch.nn import functional as F

    from supermask import models
    from supermask.train.data import preprocess_tensor

    t0 = time.perf_counter()
    x = preprocess_tensor(torch.from_numpy(images).to(device), ds.preprocess)
    y = torch.from_numpy(labels).to(device)
    net = models.create(model, ds.input_shape, len(ds.classes)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = x.shape[0]
    per_epoch = n // batch
    g = torch.Generator().manual_seed(0)
    for it in range(iterations):
        b = it % per_epoch
        if b == 0:
            perm = torch.randperm(n, generator=g).to(device)
        idx = perm[b * batch:(b + 1) * batch]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def find_loop(cfg, subject, ds, device: str) -> None:
    """The dense training stage of ``supermask find`` (as in supermask.train.find), no files."""
    from supermask.train.data import to_tensors
    from supermask.train.loop import train_dense

    x, y = to_tensors(ds, ds.preprocess, device, cfg.train_limit)
    state0 = subject.initial_state(cfg.seed, cfg.init_spec)
    train_dense(subject, state0, x, y, seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size,
                iterations=cfg.iterations, epochs=cfg.epochs, device=device, progress=False)


@click.command()
@click.option("--model", default="lenet-300-100", show_default=True)
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--iterations", type=int, default=2000, show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--json-out", default=None, help="Also write the numbers as JSON here.")
def main(model, dataset, data_dir, iterations, repeats, threads, device, json_out):
    import numpy as np
    import torch

    from supermask import datasets, models
    from supermask.train.config import FindConfig, resolve_device
    from supermask.train.subject import Subject

    torch.set_num_threads(threads)
    device = resolve_device(device)
    ds = datasets.load(dataset, "train", data_dir)
    subject = Subject.from_module(models.create(model, ds.input_shape, len(ds.classes)))
    cfg = FindConfig(model, dataset, iterations=iterations)
    images, labels = np.array(ds.images), np.array(ds.labels)
    ours, base = [], []
    # one warm-up of each, then alternate
    find_loop(cfg, subject, ds, device)
    hand_loop(model, ds, images, labels, iterations, cfg.lr, cfg.batch_size, device)
    for _ in range(repeats):
        t = time.perf_counter()
        find_loop(cfg, subject, ds, device)
        if device == "cuda":
            torch.cuda.synchronize()
        ours.append(time.perf_counter() - t)
        base.append(hand_loop(model, ds, images, labels, iterations, cfg.lr, cfg.batch_size, device))
    mo, mb = statistics.median(ours), statistics.median(base)
    res = {
        "model": model, "dataset": dataset, "iterations": iterations, "repeats": repeats, "threads": threads,
        "device": device, "machine": machine(), "torch": torch.__version__,
        "find_seconds_median": mo, "hand_loop_seconds_median": mb,
        "find_it_per_s": iterations / mo, "hand_loop_it_per_s": iterations / mb, "ratio": mo / mb,
        "find_seconds": ours, "hand_loop_seconds": base,
    }
    click.echo(f"{model} on {dataset}, {iterations} steps x {repeats}, {device}, {threads} thread(s)")
    click.echo(f"supermask find loop  median {mo:.2f} s  ({iterations / mo:,.0f} it/s)")
    click.echo(f"hand-written loop    median {mb:.2f} s  ({iterations / mb:,.0f} it/s)")
    click.echo(f"ratio find / hand    {mo / mb:.3f}  (target <= 1.25)")
    if json_out:
        atomic_write(json_out, json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
