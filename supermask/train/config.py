"""The configuration of a find run (torch-free): :class:`FindConfig` is the single source of
defaults, validation, help text constants and run identity (the hashes that name a run).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Mapping, Sequence

from .. import datasets, rng
from ..errors import SupermaskError
from . import criteria as crit

#: Adam learning rates of Frankle & Carbin 2019 / Zhou et al. 2019 for the built-in models;
#: any other model trains densely with :data:`DEFAULT_DENSE_LR`.
DEFAULT_LR = {"lenet-300-100": 1.2e-3, "conv2": 2e-4, "conv4": 3e-4, "conv6": 3e-4}
DEFAULT_DENSE_LR = 1e-3
DEFAULT_KEEPS = (0.5, 0.3, 0.2, 0.1, 0.05)
DEFAULT_EPOCHS = 20
#: Training examples used to compute BatchNorm statistics for each final mask.
DEFAULT_BN_EXAMPLES = 5000
METHODS = ("criteria", "edge-popup", "bernoulli", "imp")
LEARNED_METHODS = ("edge-popup", "bernoulli")
#: Learned methods that learn their density too: one mask per run, no ``keep``.
DENSITY_LEARNED = ("bernoulli",)
#: What happens to biases and normalization affine parameters (docs/models.md):
#: ``fixed`` (zero biases, unit scales) or ``trained`` and stored in the ticket ("+BN").
AFFINE = ("fixed", "trained")
#: Defaults of the methods (see docs/learned.md for where they come from).
METHOD_DEFAULTS = {
    "criteria": {"init": "kaiming_uniform", "batch_size": 60},
    "edge-popup": {"init": "signed_kaiming_constant", "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                   "weight_decay": 1e-4},
    "bernoulli": {"init": "signed_kaiming_constant", "batch_size": 128, "lr": 0.1, "weight_decay": 0.0,
                  "rescale": True},
    "imp": {"init": "kaiming_uniform", "batch_size": 60},
}
#: Iterative magnitude pruning (docs/lottery.md): the retrained line and its controls.
IMP_VARIANTS = ("original", "reinit", "random-mask", "reshuffle", "signed-constant", "freeze")
IMP_CONTROLS = IMP_VARIANTS[1:]
DEFAULT_PRUNE_RATE = 0.2
DEFAULT_IMP_CRITERION = "large_final"
DEFAULT_IMP_ROUNDS = 10
#: Fields that only some methods use (None elsewhere).
_METHOD_FIELDS = {"momentum": ("edge-popup",), "weight_decay": ("edge-popup", "bernoulli"),
                  "rescale": ("bernoulli",)}
#: Fields of --method imp only (None or empty elsewhere).
_IMP_FIELDS = ("rounds", "prune_rate", "rewind", "controls", "val_examples", "eval_every")
INIT_VARIANTS = ("original", "signed-constant")
DEVICES = ("auto", "cpu", "cuda")
#: The label prefix of a model or data set given to the library as an object: such a run
#: cannot rebuild its model from the config (``pack`` then needs the model passed in).
OBJECT_PREFIX = "object:"
# Fields that change what training produces; the rest only change the evaluation. ``epochs``
# is None whenever ``iterations`` is set, so it never splits identical training runs.
_TRAIN_FIELDS = ("model", "dataset", "seed", "init", "gain_sq", "lr", "batch_size", "epochs", "iterations",
                 "train_limit", "method", "momentum", "weight_decay", "rescale", "affine", "include", "exclude",
                 "scale", "mean", "std", "model_digest", "data_digest", "rounds", "prune_rate", "rewind",
                 "controls", "val_examples", "eval_every", "processes")
# Fields added after the first runs were made: left out of the hashes while they hold the value
# that means "not used", so the folders of earlier runs keep their identity.
_ABSENT = {"method": "criteria", "momentum": None, "weight_decay": None, "rescale": None, "affine": "fixed",
           "include": None, "exclude": [], "scale": None, "mean": None, "std": None, "model_digest": None,
           "data_digest": None, "bn_examples": None, "rounds": None, "prune_rate": None, "rewind": None,
           "controls": [], "val_examples": None, "eval_every": None, "processes": 1}


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


def is_builtin_model(model: str) -> bool:
    from .. import models

    return models.known(model)


def _check_model(model: object) -> None:
    from .. import models

    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a name or a 'module:factory' spec, got {model!r}")
    if models.known(model) or model.startswith(OBJECT_PREFIX):
        return
    if ":" not in model:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(models.names())}, or give your own "
                         f"as 'package.module:factory' or 'path/to/file.py:factory'")


def _check_dataset(dataset: object) -> None:
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset must be a name or a path, got {dataset!r}")
    if dataset in datasets.DATASETS or dataset.startswith(OBJECT_PREFIX) or datasets.is_path_dataset(dataset):
        return
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(datasets.DATASETS)}, "
                     f"or give a .npz file or an image folder")


def _patterns(v: object, what: str) -> tuple[str, ...] | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = (v,)
    out = tuple(v)
    if any(not isinstance(p, str) or not p for p in out):
        raise ValueError(f"{what} patterns must be non-empty strings, got {v!r}")
    return out


@dataclass(frozen=True)
class FindConfig:
    """Everything that defines a find run. ``None`` means the default of the method or model."""

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
    train_limit: int | None = None  # use only the first N training examples (smoke tests)
    test_limit: int | None = None  # evaluate on only the first N test examples
    method: str = "criteria"
    momentum: float | None = None  # edge-popup: SGD momentum
    weight_decay: float | None = None  # learned methods: weight decay on the scores
    rescale: bool | None = None  # bernoulli: dynamic weight rescaling
    affine: str = "fixed"  # biases and norm scales: fixed (0 / 1) or trained and stored ("+BN")
    include: tuple[str, ...] | None = None  # module-name patterns of the layers to mask (None: all)
    exclude: tuple[str, ...] = ()  # module-name patterns of layers never masked
    scale: float | None = None  # preprocessing overrides; None: the data set's own
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bn_examples: int | None = None  # None: DEFAULT_BN_EXAMPLES
    model_digest: str | None = None  # structure of a model that is not built in (set by find)
    data_digest: str | None = None  # content of data that is not built in (set by find)
    rounds: int | None = None  # imp: pruning rounds after the dense round 0
    prune_rate: float | None = None  # imp: fraction of the remaining weights pruned per round
    rewind: int | None = None  # imp: iteration whose weights retraining starts from (0: the init)
    controls: tuple[str, ...] = ()  # imp: control variants retrained beside the winning tickets
    val_examples: int | None = None  # imp: training examples held out for early stopping
    eval_every: int | None = None  # imp: iterations between validation passes
    processes: int = 1  # data-parallel processes that trained (set by find under torchrun)

    def __post_init__(self) -> None:
        _check_model(self.model)
        _check_dataset(self.dataset)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.affine not in AFFINE:
            raise ValueError(f"unknown affine mode {self.affine!r}; choose one of {', '.join(AFFINE)}")
        object.__setattr__(self, "include", _patterns(self.include, "include"))
        object.__setattr__(self, "exclude", _patterns(self.exclude, "exclude") or ())
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
        if self.method in ("criteria", "imp"):
            default_lr = DEFAULT_LR.get(self.model, DEFAULT_DENSE_LR)
        else:
            default_lr = defaults["lr"]
        lr = default_lr if self.lr is None else float(self.lr)
        if not 0 < lr < 1:
            raise ValueError(f"learning rate must be in (0, 1), got {lr:g}")
        object.__setattr__(self, "lr", lr)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        for name in ("epochs", "iterations", "train_limit", "test_limit", "bn_examples", "processes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self._check_preprocess()
        # One canonical form per training run: --iterations overrides --epochs, so epochs
        # is dropped then (and defaults to DEFAULT_EPOCHS otherwise).
        object.__setattr__(self, "epochs", None if self.iterations is not None else self.epochs or DEFAULT_EPOCHS)
        if self.selection not in crit.SELECTIONS:
            raise ValueError(f"unknown selection {self.selection!r}; choose one of {', '.join(crit.SELECTIONS)}")
        if self.method == "imp":
            self._check_imp()
        else:
            object.__setattr__(self, "controls", tuple(self.controls or ()))
            for name in _IMP_FIELDS:
                if getattr(self, name) not in (None, ()):
                    raise ValueError(f"{name.replace('_', '-')} applies to --method imp only, not {self.method}")
        if self.method == "imp":
            pass
        elif self.method == "criteria":
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
        if self.method == "imp":
            pass
        elif self.method in DENSITY_LEARNED:
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

    def _check_imp(self) -> None:
        """Canonical IMP settings: one criterion, and the schedule as (rounds, prune_rate) from
        any two of rounds, prune rate and target keep (docs/lottery.md)."""
        names = (DEFAULT_IMP_CRITERION,) if self.criteria is None else tuple(self.criteria)
        if len(names) != 1:
            raise ValueError(f"--method imp prunes with one criterion at every round, got {', '.join(names) or 'none'}")
        crit.get(names[0])
        object.__setattr__(self, "criteria", names)
        rounds, rate, keeps = self.rounds, self.prune_rate, self.keeps
        if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
            raise ValueError(f"--rounds must be a whole number of at least 1 (round 0 is the dense training), "
                             f"got {rounds!r}")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1):
            raise ValueError(f"--prune-rate must be a fraction in (0, 1) of the remaining weights, got {rate!r}")
        target = None
        if keeps:
            if len(keeps) != 1:
                raise ValueError("--method imp takes one --keep: the density of the last round")
            target = float(keeps[0])
            if not 0 < target < 1:
                raise ValueError(f"the target keep {target:g} is not below the current density 1 (the dense "
                                 f"network): there is nothing to prune")
        if rounds is not None and rate is not None and target is not None:
            raise ValueError("give two of --rounds, --prune-rate and --keep: the third follows from them")
        if target is not None and rounds is not None:
            rate = 1.0 - target ** (1.0 / rounds)
        elif target is not None:
            rate = DEFAULT_PRUNE_RATE if rate is None else float(rate)
            rounds = max(1, math.ceil(math.log(target) / math.log(1.0 - rate) - 1e-9))
        else:
            rate = DEFAULT_PRUNE_RATE if rate is None else float(rate)
            rounds = DEFAULT_IMP_ROUNDS if rounds is None else rounds
        object.__setattr__(self, "rounds", int(rounds))
        object.__setattr__(self, "prune_rate", float(rate))
        object.__setattr__(self, "keeps", ())
        rewind = 0 if self.rewind is None else self.rewind
        if isinstance(rewind, bool) or not isinstance(rewind, int) or rewind < 0:
            raise ValueError(f"--rewind must be an iteration number of at least 0, got {rewind!r}")
        if self.iterations is not None and rewind >= self.iterations:
            raise ValueError(f"--rewind {rewind} is past the training length ({self.iterations} iterations); "
                             f"rewind to an iteration before the end of training")
        object.__setattr__(self, "rewind", rewind)
        controls = tuple(self.controls or ())
        if controls == ("all",):
            controls = IMP_CONTROLS
        bad = [c for c in controls if c not in IMP_CONTROLS]
        if bad:
            raise ValueError(f"unknown control {', '.join(bad)}; choose from {', '.join(IMP_CONTROLS)} (or 'all')")
        object.__setattr__(self, "controls", tuple(c for c in IMP_CONTROLS if c in controls))
        for name in ("val_examples", "eval_every"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")

    def imp_keeps(self) -> list[float]:
        """The nominal density after each IMP round 0..rounds: (1 - prune_rate)^r."""
        return [float(f"{(1.0 - self.prune_rate) ** r:.12g}") for r in range(self.rounds + 1)]

    def _check_preprocess(self) -> None:
        if self.scale is not None:
            if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not self.scale > 0:
                raise ValueError(f"scale must be a positive number, got {self.scale!r}")
            object.__setattr__(self, "scale", float(self.scale))
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is None:
                continue
            try:
                v = tuple(float(x) for x in v)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a list of numbers, one per input channel, got {v!r}") from None
            if not v or (name == "std" and any(x <= 0 for x in v)):
                raise ValueError(f"{name} must list one {'positive ' if name == 'std' else ''}number per channel")
            object.__setattr__(self, name, v)

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

    @property
    def bn_calibration_examples(self) -> int:
        return self.bn_examples or DEFAULT_BN_EXAMPLES

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("criteria", "keeps", "exclude", "controls"):
            d[k] = list(getattr(self, k))
        for k in ("include", "mean", "std"):
            d[k] = None if getattr(self, k) is None else list(getattr(self, k))
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "FindConfig":
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown config fields: {', '.join(sorted(extra))}")
        d = dict(d)
        for k in ("criteria", "keeps", "include", "exclude", "mean", "std", "controls"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    @property
    def learned(self) -> bool:
        return self.method in LEARNED_METHODS

    def _hash(self, keys: Sequence[str]) -> str:
        d = self.to_dict()
        canon = json.dumps({k: d[k] for k in keys if k not in _ABSENT or d[k] != _ABSENT[k]}, sort_keys=True,
                           separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    @property
    def _train_fields(self) -> tuple[str, ...]:
        # IMP trains again after every pruning round: what it prunes with changes what it trains
        return _TRAIN_FIELDS + (("criteria", "selection") if self.method == "imp" else ())

    @property
    def train_hash(self) -> str:
        """Identity of the training stage (what trained weights depend on)."""
        return self._hash(self._train_fields)

    @property
    def train_config_hash(self) -> str:
        """Identity of the training config apart from the seed: runs that differ only in their
        seed share it, so reports average exactly those."""
        return self._hash([k for k in self._train_fields if k != "seed"])

    @property
    def run_hash(self) -> str:
        """Identity of the whole run (training and evaluation)."""
        return self._hash([f.name for f in fields(self)])

    def default_out(self) -> str:
        label = self.model if is_builtin_model(self.model) else _slug(self.model)
        data = self.dataset if self.dataset in datasets.DATASETS else _slug(self.dataset)
        return os.path.join("runs", f"{label}-{data}-s{self.seed}-{self.run_hash[:8]}")


def _slug(spec: str) -> str:
    """A short folder-name form of a model spec or data path (``pkg/net.py:make`` -> ``make``)."""
    tail = spec.rsplit(":", 1)[-1] if ":" in spec else os.path.basename(spec.rstrip("/\\")) or "data"
    tail = os.path.splitext(tail)[0] or tail
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in tail)[:40] or "custom"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU raises."""
    import torch

    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import RuntimeUnavailableError

        raise RuntimeUnavailableError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    return device
