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


def make_ticket3(path: Path, model: str = "lenet-300-100", input_shape=(1, 28, 28), density: float = 0.5,
                 seed: int = 7, classes=FASHION_CLASSES, preprocess=None, init: InitSpec | None = None):
    """Write a format-version-3 ticket (the network's ONNX graph travels inside: what ``pack``
    writes) of a built-in model with random masks over its weights and zero biases; return
    (path, Ticket). Needs torch and onnx, as packing does."""
    from supermask.arch import Preprocess
    from supermask.export.torch_graph import export_graph
    from supermask.ticket import decode_ticket
    from supermask.ticket3 import encode_v3
    from supermask.train.masks import masked_state
    from supermask.train.subject import Subject

    init = init or InitSpec()
    c = input_shape[0]
    preprocess = preprocess or Preprocess(1.0 / 255.0, (0.0,) * c, (1.0,) * c)
    subject = Subject.from_module(models.create(model, input_shape, len(classes)))
    assert {p.fate for p in subject.plans.values()} == {"masked", "bias"}, "models without BatchNorm only"
    g = np.random.default_rng(seed)
    masks = {n: g.random(subject.plans[n].shape) < density for n in subject.masked}
    zeros = {n: np.zeros(subject.plans[n].shape, np.float32) for n in subject.names("bias")}
    tensors = masked_state(subject.initial_weights(seed, init), masks, zeros)
    graph = export_graph(subject.module, tensors, input_shape, preprocess)
    roles = {n: "masked" if n in masks else "zero" for n in tensors}
    data = encode_v3(graph, seed=seed, init=init, roles=roles, classes=tuple(classes), masks=masks,
                     criterion="random", keep=density, metadata={"model": model})
    path.write_bytes(data)
    return path, decode_ticket(data)


def torch_logits(ticket, x: np.ndarray, preprocess=None) -> np.ndarray:
    """Logits of the torch reference model of ``ticket`` for raw inputs ``x``.

    A version-1/2 ticket describes its network (``ticket.architecture``) and its preprocessing.
    A version-3 ticket (what ``pack`` writes) carries an ONNX graph instead: the reference is the
    built-in ``nn.Module`` it names (``supermask.models.create``) run with the ticket's tensors,
    after ``preprocess`` (the run's, from its model.json; it must be given).
    """
    import torch

    if ticket.architecture is not None:
        from supermask.models import torch_module

        net = torch_module.build(ticket.architecture, ticket.weights()).eval()
        with torch.no_grad():
            return net(torch_module.preprocess(np.array(x), ticket.architecture)).numpy()
    from supermask import models
    from supermask.train.data import preprocess_tensor
    from supermask.train.subject import forward, state_to_torch

    if preprocess is None:
        raise ValueError("a version-3 ticket needs the run's preprocessing for its torch reference")
    net = models.create(ticket.model_name, ticket.input_shape, len(ticket.classes)).eval()
    with torch.no_grad():
        return forward(net, state_to_torch(ticket.weights(), "cpu"), preprocess_tensor(np.array(x), preprocess)).numpy()


def run_preprocess(run: Path):
    """The :class:`~supermask.arch.Preprocess` a find run used (from its model.json)."""
    from supermask.arch import Preprocess
    from supermask.train.runs import load_run

    p = load_run(run)[1]["preprocess"]
    return Preprocess(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in p.items()})
