"""Temperature scaling and late fusion (SPEC section 8), on hand-checked small cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mgpipe.fusion import (aligned, calibrated_probs, fit_temperature, fit_weights, fuse, nll,
                           simplex_grid, softmax)
from mgpipe.metrics import classification_metrics


def calibrated_set(n=4000, c=5, scale=2.0, seed=0):
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = scale * rng.standard_normal((n, c))
    p = softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
    return z, y


def test_softmax_is_stable_and_matches_hand():
    p = softmax(np.array([[1000.0, 1000.0 + math.log(3)], [0.0, 0.0]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]])
    np.testing.assert_allclose(softmax(np.zeros((2, 3)), axis=0), np.full((2, 3), 0.5))


def test_nll_by_hand():
    assert nll(np.array([[0.0, 0.0]]), np.array([0])) == pytest.approx(math.log(2))
    # T = 2 halves the logits: p = softmax([2, 0]) for label 0
    assert nll(np.array([[4.0, 0.0]]), np.array([0]), 2.0) == pytest.approx(math.log(1 + math.exp(-2)))
    assert math.isnan(nll(np.zeros((0, 3)), np.zeros(0, dtype=int)))


def test_fit_temperature_undoes_overconfidence():
    z, y = calibrated_set()
    hot = 10.0 * z
    t = fit_temperature(hot, y)
    assert t == pytest.approx(10.0, rel=0.1)
    assert nll(hot, y, t) < nll(hot, y)
    np.testing.assert_allclose(calibrated_probs(hot, t), softmax(hot / t))


def test_fit_temperature_near_one_when_calibrated_and_deterministic():
    z, y = calibrated_set(seed=1)
    t = fit_temperature(z, y)
    assert t == pytest.approx(1.0, rel=0.1)
    assert fit_temperature(z, y) == t


def test_fit_temperature_edge_cases():
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, dtype=int)) == 1.0
    # perfectly separated: sharper is always better, so T goes to the lower bound
    z = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert fit_temperature(z, np.array([0, 1]), bounds=(0.1, 10.0)) == pytest.approx(0.1, rel=1e-3)


def test_fuse_by_hand_and_weights_normalised():
    p = {"a": np.array([[0.2, 0.8]]), "b": np.array([[0.6, 0.4]])}
    np.testing.assert_allclose(fuse(p, {"a": 3, "b": 1}), [[0.3, 0.7]])
    np.testing.assert_allclose(fuse(p, {"a": 0.75, "b": 0.25}), [[0.3, 0.7]])
    np.testing.assert_allclose(fuse(p), [[0.4, 0.6]])
    np.testing.assert_allclose(fuse(p, {"a": 5, "b": 5, "unused": 1}), [[0.4, 0.6]])


def test_fuse_rejects_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        fuse({"a": np.zeros((2, 3)), "b": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="one shape"):
        fuse({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="missing"):
        fuse({"a": np.zeros((2, 3)), "b": np.zeros((2, 3))}, {"a": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        fuse({"a": np.zeros((2, 3))}, {"a": -1.0})
    with pytest.raises(ValueError):
        fuse({})


def test_simplex_grid():
    g = simplex_grid(4, 0.1)
    assert g.shape == (286, 4)
    np.testing.assert_allclose(g.sum(1), 1.0)
    assert len({tuple(r) for r in np.round(g, 6)}) == 286
    np.testing.assert_allclose(simplex_grid(2, 0.5), [[0, 1], [0.5, 0.5], [1, 0]])


def test_fit_weights_ignores_noise_branch():
    rng = np.random.default_rng(0)
    n, c = 300, 6
    y = np.arange(n) % c
    good = np.full((n, c), 0.3 / (c - 1))
    pred = np.where(rng.random(n) < 0.85, y, rng.integers(0, c, n))
    good[np.arange(n), pred] = 0.7
    good /= good.sum(1, keepdims=True)
    noise = rng.dirichlet(np.ones(c) * 0.3, n)
    w = fit_weights({"noise": noise, "good": good}, y)
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["good"] > 0.5 > w["noise"]
    fused = fuse({"noise": noise, "good": good}, w)
    assert (classification_metrics(fused, y)["macro_f1"]
            >= classification_metrics(good, y)["macro_f1"])
    assert fit_weights({"noise": noise, "good": good}, y) == w  # deterministic


def test_fit_weights_fallbacks():
    p = {"a": np.full((3, 2), 0.5), "b": np.full((3, 2), 0.5)}
    assert fit_weights(p, np.zeros(0, dtype=int)) == {"a": 0.5, "b": 0.5}
    assert fit_weights({"a": p["a"]}, np.array([0, 1, 0])) == {"a": 1.0}
    # identical branches tie on F1 and NLL: the point closest to equal weights wins
    assert fit_weights(p, np.array([0, 1, 0])) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="max_points"):
        fit_weights({f"b{i}": p["a"] for i in range(8)}, np.array([0, 1, 0]), grid_step=0.01)


# ---- clips a branch skipped (NaN rows) -------------------------------------------------------

def test_fuse_averages_over_the_branches_that_have_the_clip():
    a = np.array([[0.9, 0.1], [0.2, 0.8], [np.nan, np.nan]])
    b = np.array([[0.5, 0.5], [np.nan, np.nan], [np.nan, np.nan]])
    out = fuse({"a": a, "b": b}, {"a": 3.0, "b": 1.0})
    np.testing.assert_allclose(out[0], [0.8, 0.2])         # 0.75 * a + 0.25 * b
    np.testing.assert_allclose(out[1], [0.2, 0.8])         # only a has it: a's own row
    assert np.isnan(out[2]).all()                          # no branch has it
    full = {"a": a[:1], "b": b[:1]}                        # nothing missing: unchanged maths
    assert np.array_equal(fuse(full), np.tensordot([0.5, 0.5], np.stack([a[:1], b[:1]]), axes=1))


def test_aligned_puts_rows_under_the_wanted_ids():
    out = aligned(np.array(["x", "z"]), np.array([[1.0, 2.0], [3.0, 4.0]]), ["z", "y", "x"])
    assert out.tolist()[0] == [3.0, 4.0] and out.tolist()[2] == [1.0, 2.0]
    assert np.isnan(out[1]).all()


def test_a_clip_with_no_prediction_counts_as_wrong():
    labels = np.array([0, 1, 1, 0])
    scores = np.array([[0.9, 0.1], [0.1, 0.9], [np.nan, np.nan], [0.8, 0.2]])
    m = classification_metrics(scores, labels)
    assert m["micro_f1"] == 0.75 and m["top5"] == 0.75  # top-5 of 2 classes: all but the NaN row
    # as if the clip were predicted as a class that is never right
    assert m["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_evaluate_round_scores_every_manifest_clip(tmp_path):
    """A test clip one branch skipped is fused from the other; one no branch has is wrong."""
    from mgpipe.evaluate import evaluate_round

    val_ids, test_ids = ["v0", "v1", "v2", "v3"], ["t0", "t1", "t2"]
    val_labels, test_labels = np.array([0, 1, 0, 1]), np.array([0, 1, 1])
    good = np.array([[4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [-4.0, 4.0]])
    logits = {"a": {"val_ids": np.array(val_ids), "val_logits": good,
                    "test_ids": np.array(["t0", "t1"]), "test_logits": good[:2]},
              "b": {"val_ids": np.array(val_ids[:3]), "val_logits": good[:3],
                    "test_ids": np.array(["t0"]), "test_logits": good[:1]}}
    res = evaluate_round(logits, val_ids, val_labels, test_ids, test_labels)
    assert res["test"]["fused"]["micro_f1"] == pytest.approx(2 / 3, abs=1e-4)
    assert res["test"]["fused"]["unpredicted"] == 1
    assert res["test"]["b"]["unpredicted"] == 2 and res["test"]["b"]["micro_f1"] == pytest.approx(1 / 3, abs=1e-4)
    assert res["val"]["b"]["unpredicted"] == 1
    assert np.isnan(res["fused_test_probs"][2]).all()
