"""Criteria and selection on hand-computed arrays: signs, sign flips, ties and zeros."""

from __future__ import annotations

import numpy as np
import pytest

from supermask.train import criteria as C

WI = np.array([0.5, -0.2, 0.1, -0.4, 0.3, 0.0], dtype=np.float32)
WF = np.array([0.6, 0.7, -0.05, -0.1, 0.0, 0.2], dtype=np.float32)


def test_registry_has_every_criterion_and_rejects_duplicates():
    assert set(C.CRITERIA) == {
        "large_final", "small_final", "large_init", "small_init", "large_init_large_final",
        "small_init_small_final", "magnitude_increase", "movement", "random", "large_final_same_sign",
        "large_final_diff_sign",
    }
    assert C.DEFAULT_CRITERION == "large_final_same_sign"
    with pytest.raises(ValueError, match="already registered"):
        C.register("large_final")(lambda wi, wf, **k: wf)
    with pytest.raises(ValueError, match="choose one of .*large_final_same_sign"):
        C.get("biggest")


@pytest.mark.parametrize("name, expected", [
    ("large_final", [0.6, 0.7, 0.05, 0.1, 0.0, 0.2]),
    ("small_final", [-0.6, -0.7, -0.05, -0.1, -0.0, -0.2]),
    ("large_init", [0.5, 0.2, 0.1, 0.4, 0.3, 0.0]),
    ("small_init", [-0.5, -0.2, -0.1, -0.4, -0.3, -0.0]),
    ("magnitude_increase", [0.1, 0.5, -0.05, -0.3, -0.3, 0.2]),
    ("movement", [0.1, 0.9, 0.15, 0.3, 0.3, 0.2]),
    # same sign: element 0 (+,+) and 3 (-,-); element 1 flipped, 2 flipped; zeros never count.
    ("large_final_same_sign", [0.6, 0.0, 0.0, 0.1, 0.0, 0.0]),
    ("large_final_diff_sign", [0.0, 0.7, 0.05, 0.0, 0.0, 0.0]),
])
def test_score_formulas(name, expected):
    got = C.get(name)(WI, WF)
    assert got.dtype == np.float64 and got.shape == WI.shape
    # Expected values are computed from the float32 inputs, as the functions do.
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_rank_intersection_criteria():
    wi = np.array([4.0, 3.0, 2.0, 1.0])
    wf = np.array([1.0, 4.0, 3.0, 2.0])
    # ranks |wi|: [3,2,1,0]; |wf|: [0,3,2,1] -> min [0,2,1,0]
    np.testing.assert_array_equal(C.get("large_init_large_final")(wi, wf), [0, 2, 1, 0])
    # the top 2 are exactly the intersection of the two top-2 sets plus the next best
    mask = C.top_k(C.get("large_init_large_final")(wi, wf), 2)
    np.testing.assert_array_equal(mask, [False, True, True, False])
    # small_init_small_final: ranks of -|wi|: [0,1,2,3]; -|wf|: [3,0,1,2] -> min [0,0,1,2]
    np.testing.assert_array_equal(C.get("small_init_small_final")(wi, wf), [0, 0, 1, 2])


def test_random_is_keyed_by_seed_and_name_and_ignores_values():
    a = C.get("random")(WI, WF, seed=3, name="fc1.weight")
    b = C.get("random")(WI * 7, WF - 1, seed=3, name="fc1.weight")
    c = C.get("random")(WI, WF, seed=4, name="fc1.weight")
    d = C.get("random")(WI, WF, seed=3, name="fc2.weight")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_top_k_breaks_ties_by_lower_index():
    s = np.array([1.0, 2.0, 2.0, 0.0, 2.0, 1.0])
    np.testing.assert_array_equal(C.top_k(s, 2), [False, True, True, False, False, False])
    np.testing.assert_array_equal(C.top_k(s, 4), [True, True, True, False, True, False])
    # all zeros (e.g. every weight flipped sign): the first k by index are kept
    np.testing.assert_array_equal(C.top_k(np.zeros((2, 3)), 3), [[True, True, True], [False, False, False]])
    with pytest.raises(ValueError, match="NaN"):
        C.top_k(np.array([1.0, np.nan]), 1)


def test_same_sign_prunes_flipped_before_small_same_sign():
    # the flipped weight has the largest final magnitude but goes first
    wi = np.array([1.0, -1.0, 1.0, 1.0])
    wf = np.array([0.01, 5.0, 0.2, 0.3])
    mask = C.top_k(C.get("large_final_same_sign")(wi, wf), 3)
    np.testing.assert_array_equal(mask, [True, False, True, True])
    mask = C.top_k(C.get("large_final")(wi, wf), 3)
    np.testing.assert_array_equal(mask, [False, True, True, True])


def test_keep_count_and_layer_keep():
    assert C.keep_count(0.1, 1000) == 100
    assert C.keep_count(0.05, 10) == 1  # 0.5 rounds half up
    assert C.keep_count(0.01, 10) == 1  # never empty
    assert C.keep_count(1.0, 7) == 7
    assert C.layer_keep(0.2, True) == pytest.approx(0.6)  # pruned 40 % instead of 80 %
    assert C.layer_keep(0.2, False) == 0.2
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            C.keep_count(bad, 10)


def test_select_layerwise_prunes_output_at_half_rate():
    scores = {"fc1.weight": np.arange(100.0).reshape(10, 10), "fc2.weight": np.arange(10.0)}
    masks = C.select(scores, 0.2, output="fc2.weight")
    assert masks["fc1.weight"].sum() == 20 and masks["fc2.weight"].sum() == 6
    assert masks["fc1.weight"].reshape(-1)[80:].all()  # the 20 largest
    np.testing.assert_array_equal(masks["fc2.weight"], np.arange(10) >= 4)


def test_select_global_uses_one_threshold():
    scores = {"a": np.array([[5.0, 1.0], [1.0, 0.0]]), "b": np.array([4.0, 3.0, 2.0, 1.0])}
    masks = C.select(scores, 0.5, output="b", selection="global")
    # 8 elements, keep 4: 5, 4, 3, 2; the tie at 1 does not matter
    np.testing.assert_array_equal(masks["a"], [[True, False], [False, False]])
    np.testing.assert_array_equal(masks["b"], [True, True, True, False])
    # ties across tensors: the earlier tensor wins
    masks = C.select({"a": np.ones(2), "b": np.ones(2)}, 0.5, selection="global")
    np.testing.assert_array_equal(masks["a"], [True, True])
    np.testing.assert_array_equal(masks["b"], [False, False])
    with pytest.raises(ValueError, match="layerwise, global"):
        C.select(scores, 0.5, selection="neither")


def test_masks_for_matches_manual_selection():
    wi = {"w1": np.array([[1.0, -2.0], [3.0, -4.0]]), "w2": np.array([1.0, -1.0])}
    wf = {"w1": np.array([[2.0, 2.0], [-3.0, -1.0]]), "w2": np.array([0.5, -0.7])}
    m = C.masks_for("large_final_same_sign", wi, wf, 0.5, output="w2")
    # w1 scores: [2, 0, 0, 1] -> keep 2: indices 0 and 3
    np.testing.assert_array_equal(m["w1"], [[True, False], [False, True]])
    # w2 keeps 1 - 0.5/2 = 0.75 of 2 -> round(1.5) = 2
    np.testing.assert_array_equal(m["w2"], [True, True])
