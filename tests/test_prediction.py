"""The logits -> class rule shared by find (torch) and the runtime (onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest

from supermask.prediction import TIE_TOLERANCE, predict_classes


def test_plain_maximum_when_there_is_no_tie():
    z = np.array([[0.1, 2.0, -1.0], [5.0, 4.0, 4.99], [-3.0, -2.0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(predict_classes(z), [1, 0, 2])


def test_ties_within_float32_noise_go_to_the_lowest_index():
    # the same exact tie, computed by two backends with different rounding
    a = np.array([[1.1388134, -4.730563, 1.4172268, -2.1205199, 1.4172254, -5.421994]], dtype=np.float32)
    b = np.array([[1.1388133, -4.7305646, 1.4172248, -2.12052, 1.4172257, -5.4219923]], dtype=np.float32)
    assert a.argmax() != b.argmax()  # what a plain argmax does
    assert predict_classes(a)[0] == predict_classes(b)[0] == 2


def test_the_band_is_relative_to_the_largest_logit_magnitude():
    s = 1000.0
    inside = np.array([[s, s - 0.5 * TIE_TOLERANCE * s, -s]])
    outside = np.array([[s - 2 * TIE_TOLERANCE * s, s, -s]])
    assert predict_classes(inside)[0] == 0 and predict_classes(outside)[0] == 1
    assert predict_classes(np.zeros((2, 4))).tolist() == [0, 0]


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="shape"):
        predict_classes(np.zeros(3))
