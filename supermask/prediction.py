"""The one rule that turns logits into a predicted class, shared by ``find`` (torch) and the
runtime (onnxruntime). Torch-free.

Two backends agree on float32 logits only to a few units in the last place, so a plain
argmax decides near-ties by rounding noise. With signed-constant weights such ties are
exact: every logit is an integer multiple of one constant (the product of the layer scales
and the input scale), and two classes often get the same integer. The rule: the predicted
class is the lowest class index whose logit is within ``TIE_TOLERANCE`` times the row's
largest logit magnitude of the maximum. Ties are then decided the same way on every backend;
true gaps are far larger than the band (see ``docs/deploy.md``).
"""

from __future__ import annotations

import numpy as np

TIE_TOLERANCE = 1e-5


def predict_classes(logits: np.ndarray) -> np.ndarray:
    """Class indices (N,) int64 of logits (N, C) under the tie rule of this module."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits must have shape (N, classes), got {z.shape}")
    top = z.max(axis=1, keepdims=True)
    band = TIE_TOLERANCE * np.abs(z).max(axis=1, keepdims=True)
    return np.argmax(z >= top - band, axis=1).astype(np.int64)
