"""Models and data as ``find`` takes them (imports torch lazily).

* :func:`load_model`: a built-in name, ``package.module:factory`` or ``path/to/file.py:factory``
  -> ``nn.Module``. The factory gets ``num_classes=`` and ``input_shape=`` when its signature
  accepts them.
* :func:`as_dataset`: a named data set, a ``.npz`` file, an image folder, numpy arrays
  ``(x, y)``, a torch ``Dataset`` or a ``DataLoader`` -> :class:`supermask.datasets.Dataset`
  (everything in memory as numpy; a torch dataset is read once).
* :func:`to_tensors`: a data set -> preprocessed float32 inputs and int64 labels on a device.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import datasets
from ..arch import Preprocess

from ..errors import DatasetError, ModelError


def load_model(spec: str, input_shape: Sequence[int], num_classes: int):
    """Build the model named by ``spec`` (see the module docstring); errors are :class:`ModelError`."""
    from torch import nn

    from .. import models

    if models.known(spec):
        return models.create(spec, input_shape, num_classes)
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ModelError(f"--model {spec!r}: give a built-in name ({', '.join(models.names())}) or "
                         f"'package.module:factory' or 'path/to/file.py:factory'")
    module = _import(where, spec)
    factory = getattr(module, attr, None)
    if factory is None:
        raise ModelError(f"--model {spec!r}: {where} has no attribute {attr!r}")
    if not callable(factory):
        raise ModelError(f"--model {spec!r}: {attr} is a {type(factory).__name__}, not a callable that returns "
                         f"an nn.Module")
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    any_kw = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("num_classes", int(num_classes)), ("input_shape", tuple(int(d) for d in input_shape))):
        if key in params or any_kw:
            kwargs[key] = value
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's code: report it, whatever it raised
        raise ModelError(f"--model {spec!r}: the factory raised {type(e).__name__}: {str(e)[:300]}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {spec!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _import(where: str, spec: str):
    is_file = where.endswith(".py") or os.sep in where or "/" in where
    try:
        if is_file:
            path = Path(where)
            if not path.is_file():
                raise ModelError(f"--model {spec!r}: no such file {where}")
            name = "supermask_user_model_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            if name in sys.modules:
                return sys.modules[name]
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise ModelError(f"--model {spec!r}: cannot load {where} as Python code")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
        return importlib.import_module(where)
    except ModelError:
        raise
    except Exception as e:  # SyntaxError, ImportError, anything the user's module raises
        raise ModelError(f"--model {spec!r}: importing {where} failed with {type(e).__name__}: "
                         f"{str(e)[:300]}") from e


# ------------------------------------------------------------------------------- data


def as_dataset(data: Any, split: str, *, name: str = "arrays", classes: Sequence[str] | None = None,
               data_dir: str | None = None, download: bool = False) -> datasets.Dataset:
    """Any supported form of one split (see the module docstring) as an in-memory data set."""
    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        return datasets.load(os.fspath(data), split, data_dir=data_dir, download=download)
    if isinstance(data, tuple) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
    else:
        x, y = _from_torch(data, split)
    return datasets.from_arrays(x, y, split=split, name=name, classes=classes)


def _from_torch(data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import torch
        from torch.utils.data import DataLoader, Dataset
    except ImportError:  # pragma: no cover - training always has torch
        raise DatasetError("a torch Dataset or DataLoader needs torch installed") from None
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=512, shuffle=False)
    if not isinstance(data, DataLoader):
        raise DatasetError(f"{split} data must be a data set name or path, numpy arrays (x, y), a torch Dataset "
                           f"or a DataLoader; got {type(data).__name__}")
    xs, ys = [], []
    for i, item in enumerate(data):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise DatasetError(f"{split} data: batch {i} is not an (inputs, labels) pair")
        xs.append(torch.as_tensor(item[0]).detach().cpu().numpy())
        ys.append(torch.as_tensor(item[1]).detach().cpu().numpy())
    if not xs:
        raise DatasetError(f"{split} data is empty")
    return np.concatenate(xs), np.concatenate(ys)


def data_digest(*sets: datasets.Dataset) -> str:
    """16 hex digits naming the contents of data sets (inputs, labels and class names)."""
    h = hashlib.sha256()
    for ds in sets:
        h.update(str((ds.images.dtype.str, ds.images.shape, ds.classes)).encode())
        h.update(np.ascontiguousarray(ds.images).tobytes())
        h.update(np.ascontiguousarray(ds.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def resolve_preprocess(ds: datasets.Dataset, scale: float | None, mean: Sequence[float] | None,
                       std: Sequence[float] | None) -> Preprocess:
    """The data set's preprocessing with any of scale, mean and std overridden."""
    base = ds.preprocess
    channels = len(base.mean)
    for what, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) not in (1, channels):
            raise DatasetError(f"--{what} needs one value per input channel ({channels}) or a single value, "
                               f"got {len(v)}")
    mean_t = tuple(float(m) for m in mean) * (channels if mean is not None and len(mean) == 1 else 1) \
        if mean is not None else base.mean
    std_t = tuple(float(s) for s in std) * (channels if std is not None and len(std) == 1 else 1) \
        if std is not None else base.std
    return Preprocess(base.scale if scale is None else float(scale), mean_t, std_t)


def preprocess_tensor(x, p: Preprocess):
    """``(x * scale - mean[c]) / std[c]`` in float32, the same operations as the exported graph."""
    import torch

    x = torch.as_tensor(x)
    if x.dtype != torch.float32:  # (a no-op cast would be traced into the exported graph)
        x = x.to(torch.float32)
    shape = (1, len(p.mean)) + (1,) * (x.dim() - 2)
    x = x * p.scale
    if any(m != 0.0 for m in p.mean):
        x = x - torch.tensor(p.mean, dtype=torch.float32, device=x.device).reshape(shape)
    if any(s != 1.0 for s in p.std):
        x = x / torch.tensor(p.std, dtype=torch.float32, device=x.device).reshape(shape)
    return x


def to_tensors(ds: datasets.Dataset, p: Preprocess, device: str, limit: int | None = None):
    """(preprocessed float32 inputs, int64 labels) of the first ``limit`` examples, on ``device``."""
    import torch

    n = len(ds) if limit is None else min(limit, len(ds))
    x = torch.from_numpy(np.array(ds.images[:n])).to(device)  # a writable copy
    y = torch.from_numpy(np.array(ds.labels[:n], dtype=np.int64)).to(device)
    return preprocess_tensor(x, p), y
