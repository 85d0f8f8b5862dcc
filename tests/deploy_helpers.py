"""Helpers for the deployment tests (runtime, export, deploy CLI): real Fashion-MNIST test
images read straight from the IDX files, and tickets of the named models."""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from supermask import InitSpec, models, write_ticket

from helpers import SHARED_DATA

FASHION = SHARED_DATA / "fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MODELS = ("lenet-300-100", "conv2", "conv4", "conv6")


@lru_cache(maxsize=None)
def fashion_test() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 Fashion-MNIST test images (uint8, (N, 1, 28, 28)) and labels (int64)."""
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    assert images.shape[0] == labels.shape[0] == 10_000
    return images, labels


def random_masks(arch, density: float, seed: int = 0) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {p.name: g.random(p.shape) < density for p in arch.params() if p.kind == "weight"}


def make_ticket(path: Path, model: str = "lenet-300-100", input_shape=(1, 28, 28), density: float = 0.5,
                seed: int = 7, classes=FASHION_CLASSES, preprocess=None, init: InitSpec | None = None,
                masks=None):
    """Write a ticket of a named model with random masks; return (path, Ticket)."""
    arch = models.build(model, input_shape, list(classes), preprocess)
    masks = random_masks(arch, density, seed) if masks is None else masks
    t = write_ticket(path, arch, seed, init or InitSpec(), masks=masks, criterion="random", keep=density)
    return path, t


def torch_logits(ticket, x: np.ndarray) -> np.ndarray:
    """Logits of the torch reference model of ``ticket`` for raw inputs ``x``."""
    import torch

    from supermask.models import torch_module

    net = torch_module.build(ticket.architecture, ticket.weights()).eval()
    with torch.no_grad():
        return net(torch_module.preprocess(np.array(x), ticket.architecture)).numpy()
