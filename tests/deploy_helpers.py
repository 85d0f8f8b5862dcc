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


FASHION_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


class MissingTestData(RuntimeError):
    """The Fashion-MNIST files the deployment tests read are not where they are expected."""


def fashion_file(name: str, folder: Path = FASHION) -> Path:
    """``folder / name``, or :class:`MissingTestData` saying where it was looked for."""
    path = folder / name
    if not path.is_file():
        what = "folder is missing" if not folder.is_dir() else f"folder has no {name}"
        raise MissingTestData(
            f"Fashion-MNIST test data not found: the {what} (looked for {path.resolve()}). The "
            f"deployment tests read {', '.join(FASHION_TEST_FILES)} from shared/data/fashion-mnist "
            f"beside the repository clone ({folder.resolve()}); put the files there.")
    return path


@lru_cache(maxsize=None)
def fashion_test() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 Fashion-MNIST test images (uint8, (N, 1, 28, 28)) and labels (int64)."""
    images_path, labels_path = (fashion_file(n) for n in FASHION_TEST_FILES)  # both checked first
    with gzip.open(images_path) as f:
        raw = f.read()
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(labels_path) as f:
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
