"""``supermask find`` and ``supermask pack``: train once, score, select and evaluate supermasks,
then pack one of them into a ticket. Imports torch (lazily, inside the functions that train or
evaluate), so the rest of the package stays importable without it.

One :class:`FindConfig` is the single source of defaults and run identity. A run directory
holds (see ``docs/training.md``)::

    config.json        the canonical config and its hashes
    architecture.json  the architecture description (with the data set's preprocessing)
    weights.npz        final trained weights by tensor name (np.savez, no pickle)
    train.json         training summary; its presence marks the training stage finished
    masks.npz          packed masks, key "<criterion>/<keep>/<tensor>" (np.packbits, little)
    results.json       one row per (criterion, keep, init variant) plus the dense row

Every file is written atomically, weights before the file that marks the stage finished,
so an interrupted run never leaves a half-written file and re-running resumes. An evaluation
deletes ``results.json`` before it rewrites ``config.json``, so a ``results.json`` that exists
was written by the same evaluation as ``masks.npz`` and the ``config.json`` beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import criteria as crit
from . import datasets, learn, rng
from .arch import Architecture
from .atomic import atomic_open, atomic_write
from .errors import RunError, SupermaskError
from .lock import claim_folder
from .prediction import predict_classes

log = logging.getLogger(__name__)

RUN_FORMAT = 1
#: Adam learning rates of Frankle & Carbin 2019 / Zhou et al. 2019.
DEFAULT_LR = {"lenet-300-100": 1.2e-3, "conv2": 2e-4, "conv4": 3e-4, "conv6": 3e-4}
DEFAULT_KEEPS = (0.5, 0.3, 0.2, 0.1, 0.05)
DEFAULT_EPOCHS = 20
METHODS = learn.METHODS
#: Defaults of the learned methods (see docs/learned.md for where they come from).
METHOD_DEFAULTS = {
    "criteria": {"init": "kaiming_uniform", "batch_size": 60},
    "edge-popup": {"init": "signed_kaiming_constant", "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                   "weight_decay": 1e-4},
    "bernoulli": {"init": "signed_kaiming_constant", "batch_size": 128, "lr": 0.1, "weight_decay": 0.0,
                  "rescale": True},
}
#: Fields that only some methods use (None elsewhere).
_METHOD_FIELDS = {"momentum": ("edge-popup",), "weight_decay": ("edge-popup", "bernoulli"),
                  "rescale": ("bernoulli",)}
INIT_VARIANTS = ("original", "signed-constant")
DEVICES = ("auto", "cpu", "cuda")
# Fields that change what training produces; the rest only change the evaluation. ``epochs``
# is None whenever ``iterations`` is set, so it never splits identical training runs.
_TRAIN_FIELDS = ("model", "dataset", "seed", "init", "gain_sq", "lr", "batch_size", "epochs", "iterations",
                 "train_limit", "method", "momentum", "weight_decay", "rescale")
# Fields added after the first runs were made: left out of the hashes while they hold the value
# that means "not used", so the folders of earlier criteria runs keep their identity.
_ABSENT = {"method": "criteria", "momentum": None, "weight_decay": None, "rescale": None}


def _floats(v: Sequence[float], what: str) -> tuple[float, ...]:
    out = tuple(float(x) for x in v)
    if not out:
        raise ValueError(f"{what} must not be empty")
    for x in out:
        if not 0 < x <= 1:
            raise ValueError(f"every {what} value must be a fraction in (0, 1], got {x:g}")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} has duplicate values")
    return out


@dataclass(frozen=True)
class FindConfig:
    """Everything that defines a find run. ``lr=None`` means the model's default."""

    model: str
    dataset: str
    seed: int = 0
    init: str | None = None  # None: the method's default
    gain_sq: float | None = None  # None: 2, or 2 / keep for edge-popup (scaled init)
    lr: float | None = None
    batch_size: int | None = None
    epochs: int | None = DEFAULT_EPOCHS  # None: the default; always None when iterations is set
    iterations: int | None = None  # overrides epochs when set
    criteria: tuple[str, ...] | None = None  # criteria method only; None: all of them
    keeps: tuple[float, ...] | None = None  # None: DEFAULT_KEEPS; the bernoulli method has none
    selection: str = "layerwise"
    train_limit: int | None = None  # use only the first N training images (smoke tests)
    test_limit: int | None = None  # evaluate on only the first N test images
    method: str = "criteria"
    momentum: float | None = None  # edge-popup: SGD momentum
    weight_decay: float | None = None  # learned methods: weight decay on the scores
    rescale: bool | None = None  # bernoulli: dynamic weight rescaling

    def __post_init__(self) -> None:
        from . import models

        if self.model not in models.REGISTRY:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(models.REGISTRY)}")
        if self.dataset not in datasets.DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(datasets.DATASETS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        defaults = METHOD_DEFAULTS[self.method]
        for name, users in _METHOD_FIELDS.items():
            v = getattr(self, name)
            if self.method not in users:
                if v is not None:
                    raise ValueError(f"{name} applies to --method {' or '.join(users)} only, not {self.method}")
                continue
            v = defaults[name] if v is None else v
            if name == "rescale":
                if not isinstance(v, bool):
                    raise ValueError(f"rescale must be true or false, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
            else:
                v = float(v)
            object.__setattr__(self, name, v)
        object.__setattr__(self, "init", defaults["init"] if self.init is None else self.init)
        object.__setattr__(self, "batch_size", defaults["batch_size"] if self.batch_size is None else self.batch_size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        if self.gain_sq is None and self.method != "edge-popup":
            object.__setattr__(self, "gain_sq", 2.0)
        try:
            spec = rng.InitSpec(self.init, 2.0 if self.gain_sq is None else self.gain_sq)
        except SupermaskError as e:
            raise ValueError(str(e)) from None
        if not spec.exact:
            raise ValueError(f"init {self.init!r} is not bit-exact across machines; use a uniform or "
                             f"signed-constant scheme ({', '.join(s for s in rng.SCHEMES if 'normal' not in s)})")
        if self.gain_sq is not None:
            object.__setattr__(self, "gain_sq", spec.gain_sq)
        default_lr = DEFAULT_LR[self.model] if self.method == "criteria" else defaults["lr"]
        lr = default_lr if self.lr is None else float(self.lr)
        if not 0 < lr < 1:
            raise ValueError(f"learning rate must be in (0, 1), got {lr:g}")
        object.__setattr__(self, "lr", lr)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        for name in ("epochs", "iterations", "train_limit", "test_limit"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        # One canonical form per training run: --iterations overrides --epochs, so epochs
        # is dropped then (and defaults to DEFAULT_EPOCHS otherwise).
        object.__setattr__(self, "epochs", None if self.iterations is not None else self.epochs or DEFAULT_EPOCHS)
        if self.selection not in crit.SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; choose one of {', '.join(crit.SELECTIONS)}")
        if self.method == "criteria":
            names = tuple(crit.CRITERIA) if self.criteria is None else tuple(self.criteria)
            if not names:
                raise ValueError("give at least one criterion")
            for c in names:
                crit.get(c)
            if len(set(names)) != len(names):
                raise ValueError("criteria has duplicate names")
            object.__setattr__(self, "criteria", names)
        else:
            if self.criteria:
                raise ValueError(f"criteria apply to --method criteria only; --method {self.method} learns its masks")
            if self.selection != "layerwise":
                raise ValueError(f"--method {self.method} selects per layer; --selection {self.selection} "
                                 f"applies to --method criteria only")
            object.__setattr__(self, "criteria", ())
        if self.method in learn.DENSITY_LEARNED:
            if self.keeps:
                raise ValueError("--method bernoulli learns how much to keep; --keep does not apply to it")
            object.__setattr__(self, "keeps", ())
        else:
            object.__setattr__(self, "keeps", _floats(DEFAULT_KEEPS if self.keeps is None else self.keeps, "keep"))
            if self.method == "edge-popup" and self.gain_sq is None:
                for k in self.keeps:  # the scaled init, gain^2 = 2 / keep, has to be a valid init
                    try:
                        self.init_for(k)
                    except SupermaskError:
                        raise ValueError(f"keep {k:g} is too small for the scaled init (gain^2 = 2 / keep = "
                                         f"{2 / k:g}); give a larger keep, or fix the init with --gain-sq") from None

    @property
    def init_spec(self) -> rng.InitSpec:
        """The init of the run (of keep 1, for an edge-popup run with the scaled default)."""
        return self.init_for(None)

    def init_for(self, keep: float | None) -> rng.InitSpec:
        """The init the masks of ``keep`` go with. By default edge-popup scales the variance
        by 1/keep (gain² = 2 / keep; Ramanujan et al. 2020), so the masked layers start with
        the variance of a dense Kaiming layer."""
        if self.gain_sq is None:
            return rng.InitSpec(self.init, 2.0 / (keep or 1.0))
        return rng.InitSpec(self.init, self.gain_sq)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["criteria"], d["keeps"] = list(self.criteria), list(self.keeps)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "FindConfig":
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown config fields: {', '.join(sorted(extra))}")
        d = dict(d)
        for k in ("criteria", "keeps"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    @property
    def learned(self) -> bool:
        return self.method != "criteria"

    def _hash(self, keys: Sequence[str]) -> str:
        d = self.to_dict()
        canon = json.dumps({k: d[k] for k in keys if k not in _ABSENT or d[k] != _ABSENT[k]}, sort_keys=True,
                           separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    @property
    def train_hash(self) -> str:
        """Identity of the training stage (what trained weights depend on)."""
        return self._hash(_TRAIN_FIELDS)

    @property
    def train_config_hash(self) -> str:
        """Identity of the training config apart from the seed: runs that differ only in their
        seed share it, so reports average exactly those."""
        return self._hash([k for k in _TRAIN_FIELDS if k != "seed"])

    @property
    def run_hash(self) -> str:
        """Identity of the whole run (training and evaluation)."""
        return self._hash([f.name for f in fields(self)])

    def default_out(self) -> str:
        return os.path.join("runs", f"{self.model}-{self.dataset}-s{self.seed}-{self.run_hash[:8]}")


# ------------------------------------------------------------------------------- helpers


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


def mask_key(criterion: str, keep: float, tensor: str) -> str:
    return f"{criterion}/{keep!r}/{tensor}"


def apply_mask(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``w * mask`` as a new float32 array with pruned weights exactly +0.0.

    The same arithmetic as :meth:`supermask.ticket.Ticket.weights`, so a run's evaluation and
    its ticket agree bit for bit.
    """
    out = np.multiply(w, mask, dtype=np.float32)
    out += np.float32(0.0)  # -0.0 -> +0.0
    return out


def resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import RuntimeUnavailableError

        raise RuntimeUnavailableError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    return device


class Progress:
    """A one-line progress bar on stderr (a log line every 10 % when stderr is not a terminal)."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, done: int, **stats: float) -> None:
        if not self.enabled:
            return
        frac = done / self.total if self.total else 1.0
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        rate_s = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"  # slow loops (conv on a CPU) need the digits
        extra = "  ".join(f"{k} {v:.4f}" for k, v in stats.items())
        if self.tty:
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r{self.label} [{bar:<30}] {done}/{self.total} {extra}  {rate_s} it/s")
            self.stream.flush()
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            self.stream.write(f"{self.label} {done}/{self.total} ({100 * frac:.0f} %) {extra}  {rate_s} it/s\n")

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")


class TrainMeter:
    """Running loss and accuracy of a training loop, for the progress bar and the history.

    The sums stay on the device; one sync every ``every`` steps (and at the end) keeps a
    loop as fast as a bare one.
    """

    def __init__(self, total: int, label: str, progress: bool, device: str, history: list[dict],
                 every: int = 200):
        import torch

        self.total, self.every, self.history = total, every, history
        self.bar = Progress(total, label, progress)
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.steps = self.seen = 0

    def step(self, it: int, loss, out, labels) -> None:
        self.loss += loss.detach()
        self.correct += (out.detach().argmax(1) == labels).sum()
        self.steps += 1
        self.seen += labels.shape[0]
        if (it + 1) % self.every == 0 or it + 1 == self.total:
            lv, acc = self.loss.item() / self.steps, self.correct.item() / self.seen
            self.history.append({"iteration": it + 1, "loss": lv, "train_accuracy": acc})
            self.bar.update(it + 1, loss=lv, acc=acc)
            self.loss.zero_()
            self.correct.zero_()
            self.steps = self.seen = 0

    def state(self) -> list:
        """The partial window (for a checkpoint): loss sum, correct count, steps, examples."""
        return [self.loss.detach().cpu().clone(), self.correct.detach().cpu().clone(), self.steps, self.seen]

    def load_state(self, st: list) -> None:
        self.loss.copy_(st[0])
        self.correct.copy_(st[1])
        self.steps, self.seen = int(st[2]), int(st[3])

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------------------- torch parts


def _to_device(ds: datasets.Dataset, arch: Architecture, device: str, limit: int | None):
    import torch

    from .models import torch_module as tm

    n = len(ds) if limit is None else min(limit, len(ds))
    x = torch.from_numpy(np.array(ds.images[:n])).to(device)  # a writable copy
    y = torch.from_numpy(np.array(ds.labels[:n])).to(device)
    return tm.preprocess(x, arch), y


def predict(net, x, batch: int = 2000) -> np.ndarray:
    """Predictions (int64) of ``net`` on preprocessed inputs ``x``: the runtime's rule
    (:func:`supermask.prediction.predict_classes`), so torch and onnxruntime agree on ties."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            out.append(net(x[i:i + batch]).float().cpu().numpy())
    return predict_classes(np.concatenate(out))


def initial_weights(arch: Architecture, seed: int, init: rng.InitSpec) -> dict[str, np.ndarray]:
    """Initial weights (project generator) and zero biases, by tensor name, as numpy float32."""
    from .models.torch_module import init_weights

    return init_weights(arch, seed, init)


def train(cfg: FindConfig, arch: Architecture, train_set: datasets.Dataset, device: str,
          progress: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Train the dense network from the generator's initial weights; return (final weights, summary)."""
    import torch
    from torch.nn import functional as F

    from .models import torch_module as tm

    x, y = _to_device(train_set, arch, device, cfg.train_limit)
    n = x.shape[0]
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs  # whole batches only, so every step sees batch_size examples
    total = cfg.iterations or cfg.epochs * per_epoch
    net = tm.build(arch, initial_weights(arch, cfg.seed, cfg.init_spec)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    # The shuffling generator is explicit and seeded from (seed, "shuffle"): no global state.
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(rng.raw_words(cfg.seed, "shuffle", 1)[0] >> np.uint64(1)))
    history: list[dict] = []
    meter = TrainMeter(total, "train", progress, device, history)
    t0 = time.perf_counter()
    net.train()
    perm = None
    for it in range(total):
        b = it % per_epoch
        if b == 0:
            perm = torch.randperm(n, generator=gen).to(device)
        idx = perm[b * bs:(b + 1) * bs]
        xb, yb = x[idx], y[idx]
        out = net(xb)
        loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        meter.step(it, loss, out, yb)
    meter.close()
    seconds = time.perf_counter() - t0
    weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    summary = {
        "iterations": total,
        "epochs": total / per_epoch,
        "train_examples": n,
        "device": device,
        "seconds": seconds,
        "iterations_per_second": total / seconds if seconds else None,
        "history": history,
    }
    return weights, summary


def accuracy(arch: Architecture, weights: Mapping[str, np.ndarray], x, y_np: np.ndarray, device: str) -> tuple[int, np.ndarray]:
    """(number correct, predictions) of the network with ``weights`` on preprocessed ``x``."""
    from .models import torch_module as tm

    net = tm.build(arch, weights).to(device).eval()
    pred = predict(net, x)
    return int(np.count_nonzero(pred == y_np)), pred


def variant_init(cfg: FindConfig, variant: str) -> rng.InitSpec:
    """The init spec of an evaluation variant: the run's own, or its signed constant."""
    if variant not in INIT_VARIANTS:
        raise ValueError(f"unknown init variant {variant!r}; choose one of {', '.join(INIT_VARIANTS)}")
    return cfg.init_spec if variant == "original" else cfg.init_spec.signed_constant()


def masked(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``weights`` with every masked tensor multiplied by its mask; biases set to zero."""
    out = {}
    for name, w in weights.items():
        if name in masks:
            out[name] = apply_mask(w, masks[name])
        else:
            out[name] = np.zeros_like(w) if name.endswith(".bias") else w
    return out


def compute_masks(cfg: FindConfig, arch: Architecture, w_init: Mapping[str, np.ndarray],
                  w_final: Mapping[str, np.ndarray], criterion: str, keep: float) -> dict[str, np.ndarray]:
    """The supermask for (criterion, keep) over every weight tensor (biases are never masked)."""
    names = [p.name for p in arch.weight_params()]
    return crit.masks_for(criterion, {n: w_init[n] for n in names}, {n: w_final[n] for n in names}, keep,
                          seed=cfg.seed, output=names[-1], selection=cfg.selection)


# ------------------------------------------------------------------------------- the run


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
    """Whether ``out`` holds the finished run of ``cfg`` (its results, masks and config)."""
    out = Path(out)
    try:
        res, conf = _read_json(out / "results.json"), _read_json(out / "config.json")
    except RunError:
        return False
    return res.get("run_hash") == conf.get("run_hash") == cfg.run_hash and (out / "masks.npz").is_file()


def find(cfg: FindConfig, out: str | os.PathLike, *, data_dir: str | None = None, download: bool = False,
         device: str = "auto", progress: bool = True, threads: int | None = None) -> dict:
    """Run (or resume) a find run into ``out``; return the parsed ``results.json``.

    ``threads`` sets torch's CPU thread count for this process (None leaves it alone). On a
    busy machine one thread is often much faster than several for the small models.
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    with claim_folder(out, "run folder", RunError) as out:
        return _find_locked(cfg, out, data_dir, download, device, progress)


def _find_locked(cfg: FindConfig, out: Path, data_dir: str | None, download: bool, device: str,
                 progress: bool) -> dict:
    from . import models

    train_hashes = _check_config(out, cfg)
    results_path = out / "results.json"
    if is_complete(out, cfg):
        log.info("%s is complete; nothing to do", out)
        return _read_json(results_path)
    dev = resolve_device(device)
    test_set = datasets.load(cfg.dataset, "test", data_dir, download)
    arch = models.build(cfg.model, test_set.input_shape, test_set.classes, test_set.preprocess)
    # results.json goes first: then it never sits beside a config.json or masks.npz of
    # another evaluation when this one is killed (see the module docstring).
    results_path.unlink(missing_ok=True)
    atomic_write(out / "config.json", _json({
        "format": RUN_FORMAT, "config": cfg.to_dict(), "train_hash": cfg.train_hash, "run_hash": cfg.run_hash,
    }))
    atomic_write(out / "architecture.json", _json(arch.to_dict()))

    if cfg.learned:
        return _learn_and_evaluate(cfg, out, arch, test_set, dev, data_dir, download, progress)

    train_json = out / "train.json"
    if train_json.exists() and _read_json(train_json).get("train_hash") in train_hashes:
        log.info("reusing trained weights in %s", out)
        w_final = load_npz(out / "weights.npz")
        summary = _read_json(train_json)
        if summary["train_hash"] != cfg.train_hash:  # written under an older hash rule
            summary["train_hash"] = cfg.train_hash
            atomic_write(train_json, _json(summary))
    else:
        train_set = datasets.load(cfg.dataset, "train", data_dir, download)
        w_final, summary = train(cfg, arch, train_set, dev, progress)
        save_npz(out / "weights.npz", w_final)  # before train.json, which marks the stage done
        summary["train_hash"] = cfg.train_hash
        atomic_write(train_json, _json(summary))

    rows, mask_arrays = evaluate(cfg, arch, w_final, test_set, dev, progress)
    save_npz(out / "masks.npz", mask_arrays)
    res = {
        "format": RUN_FORMAT,
        "run_hash": cfg.run_hash,
        "config": cfg.to_dict(),
        "test_examples": rows[0]["total"],
        "rows": rows,
    }
    atomic_write(results_path, _json(res))
    return res


def evaluate(cfg: FindConfig, arch: Architecture, w_final: Mapping[str, np.ndarray], test_set: datasets.Dataset,
             device: str, progress: bool = True) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Result rows (dense + every criterion x keep x init variant) and the packed masks."""
    x, y = _to_device(test_set, arch, device, cfg.test_limit)
    y_np = y.cpu().numpy()
    total = int(y_np.shape[0])
    base = {"model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "selection": cfg.selection}
    rows = []
    correct, _ = accuracy(arch, w_final, x, y_np, device)
    rows.append({**base, "criterion": "dense", "keep": 1.0, "init": "trained", "accuracy": correct / total,
                 "correct": correct, "total": total, "density": 1.0,
                 "layer_densities": {p.name: 1.0 for p in arch.weight_params()}})
    inits = {v: initial_weights(arch, cfg.seed, variant_init(cfg, v)) for v in INIT_VARIANTS}
    mask_arrays: dict[str, np.ndarray] = {}
    jobs = [(c, k) for c in cfg.criteria for k in cfg.keeps]
    bar = Progress(len(jobs), "evaluate", progress)
    for j, (c, k) in enumerate(jobs):
        masks = compute_masks(cfg, arch, inits["original"], w_final, c, k)
        kept = sum(int(m.sum()) for m in masks.values())
        size = sum(m.size for m in masks.values())
        dens = {n: int(m.sum()) / m.size for n, m in masks.items()}
        for n, m in masks.items():
            mask_arrays[mask_key(c, k, n)] = np.packbits(m.reshape(-1), bitorder="little")
        for v in INIT_VARIANTS:
            correct, _ = accuracy(arch, masked(inits[v], masks), x, y_np, device)
            rows.append({**base, "criterion": c, "keep": k, "init": v, "accuracy": correct / total,
                         "correct": correct, "total": total, "density": kept / size, "layer_densities": dens})
        bar.update(j + 1)
    bar.close()
    return rows, mask_arrays


# ------------------------------------------------------------------------------- learned masks


def stage_name(cfg: FindConfig, keep: float | None) -> str:
    """File stem of one learned training in ``OUT/scores/``: ``keep-<keep>`` or the method name."""
    return cfg.method if keep is None else f"keep-{keep!r}"


def _learn_and_evaluate(cfg: FindConfig, out: Path, arch: Architecture, test_set: datasets.Dataset, device: str,
                        data_dir: str | None, download: bool, progress: bool) -> dict:
    """Train scores for each keep (one stage each, resumable from per-epoch checkpoints), then
    evaluate every final mask on the untrained network."""
    folder = out / "scores"
    folder.mkdir(exist_ok=True)
    stages: dict[str, dict] = {}
    scores: dict[str, dict[str, np.ndarray]] = {}
    keeps: list[float | None] = list(cfg.keeps) or [None]
    data = None
    for keep in keeps:
        tag = stage_name(cfg, keep)
        done = folder / f"{tag}.json"
        if done.exists() and _read_json(done).get("train_hash") == cfg.train_hash:
            scores[tag], stages[tag] = load_npz(folder / f"{tag}.npz"), _read_json(done)
            continue
        if data is None:
            data = _to_device(datasets.load(cfg.dataset, "train", data_dir, download), arch, device, cfg.train_limit)
        w_init = initial_weights(arch, cfg.seed, cfg.init_for(keep))
        s, summary = learn.train_scores(
            cfg.method, arch, w_init, *data, seed=cfg.seed, keep=keep, lr=cfg.lr, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, iterations=cfg.iterations, epochs=cfg.epochs,
            rescale=bool(cfg.rescale), device=device, checkpoint=folder / f"{tag}.ckpt", progress=progress,
            label=f"{cfg.method} {tag}", fingerprint=f"{cfg.train_hash}/{tag}")
        save_npz(folder / f"{tag}.npz", s)  # before the .json that marks the stage done
        summary["train_hash"] = cfg.train_hash
        atomic_write(done, _json(summary))
        (folder / f"{tag}.ckpt").unlink(missing_ok=True)
        scores[tag], stages[tag] = s, summary
    atomic_write(out / "train.json", _json({"method": cfg.method, "train_hash": cfg.train_hash, "stages": stages}))

    x, y = _to_device(test_set, arch, device, cfg.test_limit)
    y_np = y.cpu().numpy()
    total = int(y_np.shape[0])
    base = {"model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed, "selection": cfg.selection,
            "method": cfg.method}
    rows, mask_arrays = [], {}
    for keep in keeps:
        tag = stage_name(cfg, keep)
        w_init = initial_weights(arch, cfg.seed, cfg.init_for(keep))
        masks = {n: learn.final_mask(cfg.method, s, keep) for n, s in scores[tag].items()}
        factors = learned_multipliers(cfg, masks)
        kept = sum(int(m.sum()) for m in masks.values())
        size = sum(m.size for m in masks.values())
        row_keep = keep if keep is not None else kept / size
        for n, m in masks.items():
            mask_arrays[mask_key(cfg.method, row_keep, n)] = np.packbits(m.reshape(-1), bitorder="little")
        weights = {n: learn.scaled_masked(w, masks[n], factors.get(n, 1.0)) if n in masks else np.zeros_like(w)
                   for n, w in w_init.items()}
        correct, _ = accuracy(arch, weights, x, y_np, device)
        row = {**base, "criterion": cfg.method, "keep": row_keep, "init": "original", "accuracy": correct / total,
               "gain_sq": cfg.init_for(keep).gain_sq, "correct": correct, "total": total, "density": kept / size,
               "layer_densities": {n: int(m.sum()) / m.size for n, m in masks.items()}}
        if factors:
            row["multipliers"] = factors
        rows.append(row)
    save_npz(out / "masks.npz", mask_arrays)
    res = {"format": RUN_FORMAT, "run_hash": cfg.run_hash, "config": cfg.to_dict(), "test_examples": total,
           "rows": rows}
    atomic_write(out / "results.json", _json(res))
    return res


def learned_multipliers(cfg: FindConfig, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-tensor weight multipliers of a learned run's final masks: ``n / kept`` for Bernoulli
    masks with dynamic rescaling, none otherwise. Derived from the masks alone."""
    if cfg.method == "bernoulli" and cfg.rescale:
        return {n: learn.multiplier(m) for n, m in masks.items()}
    return {}


# ------------------------------------------------------------------------------- pack


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


def load_run(run: str | os.PathLike) -> tuple[FindConfig, Architecture, dict]:
    """(config, architecture, results) of a finished run directory.

    The results must come from the config beside them: a run killed during a new evaluation
    (or a folder assembled by hand) is refused rather than packed with the wrong masks.
    """
    run = Path(run)
    need = ["config.json", "architecture.json", "train.json", "weights.npz", "results.json", "masks.npz"]
    if (run / "scores").is_dir():  # a learned run keeps scores, not trained weights
        need.remove("weights.npz")
    missing = [n for n in need if not (run / n).exists()]
    if missing:
        raise RunError(f"{run} is not a finished find run (missing {', '.join(missing)}); run `supermask find` "
                       f"with --out {run} first")
    conf = _read_json(run / "config.json")
    try:
        cfg = FindConfig.from_dict(conf["config"])
        arch = Architecture.from_dict(_read_json(run / "architecture.json"))
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{run}/config.json or architecture.json is malformed: {e}") from e
    results = _read_json(run / "results.json")
    if results.get("run_hash") is None or results.get("run_hash") != conf.get("run_hash"):
        raise RunError(f"{run}: run is incomplete or from another config (results.json has run hash "
                       f"{results.get('run_hash')}, config.json {conf.get('run_hash')}); re-run supermask find "
                       f"--out {run}")
    _check_rows(run / "results.json", results)
    return cfg, arch, results


def pick_row(results: Mapping, criterion: str, keep: float | None, init: str) -> dict | None:
    """The results row for (criterion, keep, init); ``keep=None`` picks the most accurate keep."""
    rows = [r for r in results.get("rows", []) if r["criterion"] == criterion and r["init"] == init]
    if keep is not None:
        rows = [r for r in rows if math.isclose(r["keep"], keep, rel_tol=0, abs_tol=1e-12)]
    if not rows:
        return None
    # Most accurate; ties to the sparser mask.
    return max(rows, key=lambda r: (r["correct"], -r["keep"]))


def run_masks(run: str | os.PathLike, cfg: FindConfig, arch: Architecture, criterion: str,
              keep: float) -> dict[str, np.ndarray]:
    """The run's supermask for (criterion, keep): stored masks when present, else recomputed."""
    run = Path(run)
    names = arch.weight_params()
    stored = load_npz(run / "masks.npz")
    keys = [mask_key(criterion, keep, p.name) for p in names]
    if all(k in stored for k in keys):
        return {p.name: np.unpackbits(stored[k], count=p.size, bitorder="little").astype(bool).reshape(p.shape)
                for p, k in zip(names, keys)}
    if cfg.learned:
        have = sorted({float(k.split("/")[1]) for k in stored if k.startswith(f"{criterion}/")}, reverse=True)
        raise RunError(f"{run} has no learned {criterion} mask for keep {keep}; it has keep "
                       f"{', '.join(str(v) for v in have) or 'none'} (learn another keep with "
                       f"`supermask find --method {cfg.method} --keep ...`)")
    w_final = load_npz(run / "weights.npz")
    w_init = initial_weights(arch, cfg.seed, cfg.init_spec)
    return compute_masks(cfg, arch, w_init, w_final, criterion, keep)


def pack(run: str | os.PathLike, out: str | os.PathLike, *, criterion: str | None = None,
         keep: float | None = None, init: str = "original", codec: str = "auto"):
    """Write the ticket of one supermask of a finished run; return the parsed :class:`Ticket`.

    ``criterion=None`` means the run's learned method, or ``large_final_same_sign`` for a
    criteria run. ``keep=None`` takes the keep with the best test accuracy in
    ``results.json``. The ticket's metadata records the data set and the accuracy ``find``
    measured; a Bernoulli mask learned with rescaling carries its per-layer multipliers.
    """
    from .ticket import write_ticket

    cfg, arch, results = load_run(run)
    if cfg.learned:
        criterion = criterion or cfg.method
        if criterion != cfg.method:
            raise RunError(f"{run} learned its masks with --method {cfg.method}; it has no {criterion!r} masks "
                           f"(pack it with --criterion {cfg.method}, or pack a `--method criteria` run)")
        if init != "original":
            raise RunError(f"a learned mask goes with the weights it was learned over; --init {init} applies to "
                           f"criteria runs only")
        if keep is not None and cfg.method in learn.DENSITY_LEARNED and pick_row(results, criterion, keep,
                                                                                  init) is None:
            raise RunError(f"{run} learned its density with --method {cfg.method} and holds one mask "
                           f"(keep {results['rows'][0]['keep']!r}); leave out --keep")
    else:
        criterion = criterion or crit.DEFAULT_CRITERION
        if criterion in learn.LEARNED_METHODS:
            raise RunError(f"{run} is a criteria run; learn {criterion} masks with `supermask find --method "
                           f"{criterion}`")
        crit.get(criterion)
    row = pick_row(results, criterion, keep, init)
    if keep is None and row is None:
        raise RunError(f"{run} has no results for criterion {criterion!r} with init {init!r}; "
                       f"give --keep or evaluate that criterion with `supermask find --criteria`")
    if row is not None:
        keep = row["keep"]  # the run's own value, not the one typed (0.1 for 0.1000000000001)
    # a learned run's init may depend on the keep (scaled edge-popup init); Bernoulli has one
    spec = (cfg.init_for(keep if cfg.method == "edge-popup" else None) if cfg.learned
            else variant_init(cfg, init))
    masks = run_masks(run, cfg, arch, criterion, keep)
    meta = {
        **({"method": cfg.method} if cfg.learned else {}),
        "dataset": cfg.dataset,
        "model": cfg.model,
        "init_variant": init,
        "selection": cfg.selection,
        "train_init": cfg.init,
        "run_hash": cfg.run_hash,
        "accuracy": row["accuracy"] if row else None,
        "test_examples": row["total"] if row else None,
    }
    return write_ticket(out, arch, cfg.seed, spec, masks, codec=codec, criterion=criterion, keep=keep,
                        metadata=meta, multipliers=learned_multipliers(cfg, masks))
