"""A user's ``nn.Module`` -> the weight-free ONNX graph a version-3 ticket carries (imports
torch and onnx; used when packing, never on a device).

Every tensor of the network enters the traced graph as a graph *input*, not as a constant:
the module's parameters and buffers are swapped for the inputs during the trace. So no
exporter pass can fold anything into a weight (torch folds BatchNorm into the convolution
before it in eval mode when the weights are constants), and each masked weight stays a
tensor of its own that the reader fills from the seed. After the trace those inputs become
initializers with external data at the location :data:`~supermask.ticket3.PLACEHOLDER`,
and the graph is trimmed: node and intermediate names shortened, documentation and default
attributes dropped.

:func:`validate` runs the graph in onnxruntime against the torch model with the same tensors
and reports the largest difference of the logits (as optimum does for its exports).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..arch import Preprocess
from ..errors import ModelError, SupermaskError
from ..ticket3 import INPUT_NAME, OUTPUT_NAME, PLACEHOLDER, placeholder_names

OPSET = 17
#: IR version of the graphs written here: read by every onnxruntime >= 1.17.
IR_VERSION = 8
#: Attribute values that equal the ONNX defaults and can be dropped.
_DEFAULTS = {"Gemm": {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}, "Flatten": {"axis": 1},
             "Conv": {"group": 1}, "BatchNormalization": {"epsilon": 1e-5, "momentum": 0.9}}


class ExportValidationError(SupermaskError):
    """The exported graph does not compute what the torch model computes."""


def _swap(module, names: Sequence[str], tensors: Sequence) -> list:
    saved = []
    for n, t in zip(names, tensors):
        owner_name, _, attr = n.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        store = owner._parameters if attr in owner._parameters else owner._buffers
        saved.append((store, attr, store[attr]))
        store[attr] = t
    return saved


def _wrapper(module, names: Sequence[str], preprocess: Preprocess):
    import torch

    from ..train.data import preprocess_tensor

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, x, *tensors):
            saved = _swap(self.inner, names, tensors)
            try:
                return self.inner(preprocess_tensor(x, preprocess))
            finally:
                for store, attr, value in saved:
                    store[attr] = value

    return Wrapped()


def _culprit(module, example, error: Exception) -> str:
    """The innermost submodule that fails to export on its own, as 'name (Class)', or ''."""
    import torch

    captured: dict[str, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, _n=n: captured.setdefault(_n, args))
             for n, m in module.named_modules() if n]
    try:
        with torch.no_grad():
            module(example)
    except Exception:
        pass
    finally:
        for h in hooks:
            h.remove()
    for name in sorted(captured, key=lambda n: -n.count(".")):
        args = captured[name]
        if not all(isinstance(a, torch.Tensor) for a in args):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module.get_submodule(name), args, io.BytesIO(), opset_version=OPSET, dynamo=False)
        except Exception:
            return f"{name} ({type(module.get_submodule(name)).__name__})"
    return ""


def export_graph(module, tensors: Mapping[str, np.ndarray], input_shape: Sequence[int],
                 preprocess: Preprocess) -> bytes:
    """The weight-free graph of ``module`` (eval mode, preprocessing first) in which every name
    of ``tensors`` that the computation uses is a placeholder. Raises :class:`ModelError`
    naming the layer when torch cannot export the model."""
    import onnx
    import torch

    module = module.cpu().eval()
    names = list(tensors)
    args = [torch.from_numpy(np.array(tensors[n], dtype=np.float32)) for n in names]
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_wrapper(module, names, preprocess), (example, *args), buf,
                              input_names=[INPUT_NAME, *names], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}}, opset_version=OPSET,
                              do_constant_folding=False, dynamo=False)
    except Exception as e:  # torch raises many types here; the user needs the layer and the reason
        from ..train.data import preprocess_tensor

        where = _culprit(module, preprocess_tensor(example, preprocess), e)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelError(f"torch cannot export the model to ONNX" + (f": layer {where} fails" if where else "")
                         + f" ({first}). Supermask tickets need an ONNX-exportable model; replace that layer "
                           f"with standard torch operations") from None
    model = onnx.load_from_string(buf.getvalue())
    return _placeholders(model, set(names))


def _placeholders(model, names: set[str]) -> bytes:
    """Turn the tensor inputs into external placeholders and trim the graph."""
    from onnx import TensorProto, helper

    g = model.graph
    used = {i for node in g.node for i in node.input}
    inputs = [i for i in g.input if i.name not in names]
    placeholders = []
    for i in g.input:
        if i.name not in names or i.name not in used:
            continue
        t = TensorProto()
        t.name = i.name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(d.dim_value for d in i.type.tensor_type.shape.dim)
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", PLACEHOLDER
        placeholders.append(t)
    del g.input[:]
    g.input.extend(inputs)
    g.initializer.extend(placeholders)
    # Short names for everything internal: the graph stays readable and much smaller.
    keep = {INPUT_NAME, OUTPUT_NAME} | names | {t.name for t in g.initializer}
    rename: dict[str, str] = {}
    for k, node in enumerate(g.node):
        node.ClearField("name")  # proto2: an empty string would still be written
        node.ClearField("doc_string")
        for j, o in enumerate(node.output):
            if o not in keep:
                rename[o] = rename.get(o) or f"t{len(rename)}"
                node.output[j] = rename[o]
        for j, i in enumerate(node.input):
            if i in rename:
                node.input[j] = rename[i]
        defaults = _DEFAULTS.get(node.op_type, {})
        attrs = [a for a in node.attribute
                 if not (a.name in defaults and helper.get_attribute_value(a) == defaults[a.name])]
        del node.attribute[:]
        node.attribute.extend(attrs)
    del g.value_info[:]
    g.name = "supermask"
    for msg, fields in ((g, ("doc_string",)), (model, ("doc_string", "producer_name", "producer_version"))):
        for f in fields:
            msg.ClearField(f)
    model.ir_version = IR_VERSION
    del model.metadata_props[:]
    # onnx.checker would try to open the placeholders as files; the graph is vetted by
    # supermask.onnxcheck and run in onnxruntime by validate() instead.
    return model.SerializeToString()


@dataclass(frozen=True)
class Validation:
    """How closely the graph in onnxruntime matches the torch model on fixed inputs."""

    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    examples: int
    same_predictions: bool

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "max_abs_logit": self.max_abs_logit,
                "tolerance": self.tolerance, "examples": self.examples, "same_predictions": self.same_predictions}


def validation_inputs(input_shape: Sequence[int], dtype: str, lo: float, hi: float, n: int = 64) -> np.ndarray:
    """Fixed inputs for validation, from the project's generator: integers in [lo, hi] for
    uint8 data, uniform reals in [lo, hi] otherwise."""
    from .. import rng

    shape = (n, *input_shape)
    u = rng.generate(0, "validation-inputs", shape, "uniform", 1.0)  # (-1, 1)
    x = lo + (u.astype(np.float64) + 1.0) / 2.0 * (hi - lo)
    return (np.round(x) if dtype == "uint8" else x).astype(np.float32)


def validate(graph: bytes, module, tensors: Mapping[str, np.ndarray], preprocess: Preprocess, x: np.ndarray,
             *, rtol: float = 1e-4) -> Validation:
    """Run ``graph`` with ``tensors`` in onnxruntime and the torch ``module`` with the same
    tensors on raw inputs ``x``; raise :class:`ExportValidationError` when the logits differ by
    more than ``rtol`` times the largest logit magnitude (at least ``rtol``)."""
    import torch

    from ..prediction import predict_classes
    from ..runtime.model import graph_session
    from ..train.data import preprocess_tensor
    from ..train.subject import forward

    session, _, keep = graph_session(graph, {n: tensors[n] for n in placeholder_names(graph)}, "cpu")
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    module = module.cpu().eval()
    with torch.inference_mode():
        state = {n: torch.from_numpy(np.array(v, dtype=np.float32)) for n, v in tensors.items()}
        want = forward(module, state, preprocess_tensor(torch.from_numpy(x), preprocess)).float().numpy()
    del keep
    if got.shape != want.shape:
        raise ExportValidationError(f"the exported graph outputs shape {got.shape}, the torch model {want.shape}")
    scale = float(np.abs(want).max()) if want.size else 0.0
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    tol = rtol * max(1.0, scale)
    v = Validation(diff, scale, tol, int(x.shape[0]),
                   bool((predict_classes(got) == predict_classes(want)).all()))
    if not diff <= tol:
        raise ExportValidationError(
            f"the exported ONNX graph does not match the torch model: max abs difference of the logits {diff:.3g} "
            f"on {x.shape[0]} fixed inputs, above the tolerance {tol:.3g}. The model may behave differently in "
            f"tracing (data-dependent Python control flow) or use an operation onnxruntime computes differently")
    return v
