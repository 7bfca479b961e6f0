"""Temperature scaling and late fusion (SPEC section 8), on hand-checked small cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mgpipe.fusion import (calibrated_probs, fit_temperature, fit_weights, fuse, nll,
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
