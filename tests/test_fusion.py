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


# ---- the chance gate (fuse.chance_gate) ------------------------------------------------------

def gate_set():
    """60 val clips of 6 classes (10 each); two good branches (80% and 75% right, every
    mistake a fixed other class) and one with random logits."""
    y = np.repeat(np.arange(6), 10)
    pred = y.copy()
    pred[::5] = (pred[::5] + 1) % 6           # 12 of 60 wrong: macro-F1 0.80
    pred2 = y.copy()
    pred2[1::4] = (pred2[1::4] + 2) % 6       # 15 of 60 wrong: macro-F1 0.75
    probs = {"good": softmax(3 * np.eye(6)[pred]), "good2": softmax(3 * np.eye(6)[pred2]),
             "noise": softmax(np.random.default_rng(0).standard_normal((60, 6)))}
    return probs, y


def test_chance_test_gates_the_random_branch_only():
    from mgpipe.fusion import chance_test
    from mgpipe.metrics import chance_macro_f1

    probs, y = gate_set()
    t = chance_test(probs, y)
    assert t["good"]["macro_f1"] == pytest.approx(0.8) and t["good2"]["macro_f1"] == pytest.approx(0.75)
    # no shuffle of 2000 comes near: the smallest p-value 2000 shuffles can give
    assert t["good"]["p_value"] == t["good2"]["p_value"] == pytest.approx(1 / 2001)
    assert not t["good"]["gated"] and not t["good2"]["gated"]
    assert t["noise"]["gated"] and t["noise"]["p_value"] >= 0.05
    assert t["noise"]["macro_f1"] <= t["noise"]["chance_p95"]
    assert all(v["clips"] == 60 for v in t.values())
    # deterministic (fixed seed), and the same numbers as the train stage's report
    assert chance_test(probs, y) == t
    same = chance_macro_f1(probs["noise"].argmax(1), y)
    assert (t["noise"]["p_value"], t["noise"]["chance_p95"]) == (same["p_value"], same["chance_p95"])


def test_chance_test_by_hand():
    from mgpipe.fusion import chance_test

    # 4 clips, labels [0, 0, 1, 1], predicted perfectly: a shuffle is also perfect with
    # probability 1 / C(4, 2) = 1/6, so p ~ 0.17: perfect, but too few clips to tell
    t = chance_test({"p": np.eye(2)[[0, 0, 1, 1]]}, np.array([0, 0, 1, 1]))["p"]
    assert t["macro_f1"] == 1.0 and t["gated"] and 0.14 < t["p_value"] < 0.20
    # 12 clips: 1 / C(12, 6) = 1/924, p ~ (1 + 2000/924) / 2001 ~ 0.0016: not gated
    y = np.array([0] * 6 + [1] * 6)
    t = chance_test({"p": np.eye(2)[y]}, y)["p"]
    assert not t["gated"] and t["p_value"] < 0.005
    # only the clips the branch predicts (NaN rows: skipped) and whose label is known count
    p = np.eye(2)[np.r_[y, y]]
    p[12:] = np.nan
    labels = np.r_[y, np.full(12, -1)]
    assert chance_test({"p": p}, labels)["p"] == t
    assert chance_test({"p": p[12:]}, y)["p"] == {"macro_f1": None, "chance_p95": None,
                                                  "p_value": None, "clips": 0, "gated": False}


def test_gate_weights_by_hand():
    from mgpipe.fusion import gate_weights

    assert gate_weights({"a": 1, "b": 1, "c": 2}, {"c"}) == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert gate_weights({"a": 1, "b": 3}, []) == {"a": 0.25, "b": 0.75}
    with pytest.raises(ValueError, match="leaves no fusion weight"):
        gate_weights({"a": 0, "b": 1}, {"b"})


def test_fusion_weights_gate_equal_fit_and_explicit():
    from mgpipe.fusion import fusion_weights

    probs, y = gate_set()
    w, info = fusion_weights(probs, y, "equal")
    assert w == {"good": 0.5, "good2": 0.5, "noise": 0.0}
    assert info["gated"] == ["noise"] and info["note"] == "" and info["chance"]["noise"]["gated"]
    # fit: gate first, then fit over the remaining branches
    w, info = fusion_weights(probs, y, "fit")
    assert w == {**fit_weights({"good": probs["good"], "good2": probs["good2"]}, y), "noise": 0.0}
    assert info["gated"] == ["noise"]
    # an explicit map: the gated branch gets 0, the others are renormalised
    w, info = fusion_weights(probs, y, {"good": 1.0, "good2": 1.0, "noise": 2.0})
    assert w == {"good": 0.5, "good2": 0.5, "noise": 0.0} and info["gated"] == ["noise"]
    # ... unless the branches left all have weight 0 there: then nothing is gated
    w, info = fusion_weights(probs, y, {"good": 0.0, "good2": 0.0, "noise": 1.0})
    assert w == {"good": 0.0, "good2": 0.0, "noise": 1.0} and info["gated"] == []
    assert "all have weight 0" in info["note"]
    # gate off: the plain weights, no test run
    w, info = fusion_weights(probs, y, "equal", chance_gate=False)
    assert w == pytest.approx({b: 1 / 3 for b in probs}) and info == {"gated": [], "chance": {},
                                                                      "note": ""}
    with pytest.raises(ValueError, match="missing for branches"):
        fusion_weights(probs, y, {"good": 1.0})


def test_fusion_weights_every_branch_at_chance_keeps_all():
    from mgpipe.fusion import fusion_weights

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 10)
    probs = {b: softmax(rng.standard_normal((60, 6))) for b in ("x", "y")}
    w, info = fusion_weights(probs, y, "equal")
    assert all(t["gated"] for t in info["chance"].values())  # both tested at chance
    assert info["gated"] == [] and w == {"x": 0.5, "y": 0.5}
    assert "every branch (x, y) is at chance" in info["note"]


def test_fuse_with_fallback_for_clips_only_gated_branches_predict():
    from mgpipe.fusion import fuse_with_fallback

    good = np.array([[0.9, 0.1], [np.nan, np.nan], [np.nan, np.nan]])
    gated = np.array([[0.3, 0.7], [0.2, 0.8], [np.nan, np.nan]])
    probs = {"good": good, "gated": gated}
    fused, fell = fuse_with_fallback(probs, {"good": 1.0, "gated": 0.0})
    np.testing.assert_allclose(fused[0], [0.9, 0.1])       # the gated branch counts for nothing
    np.testing.assert_allclose(fused[1], [0.2, 0.8])       # only the gated branch has it: its row
    assert np.isnan(fused[2]).all()                         # no branch has it: still none
    assert fell.tolist() == [False, True, False]
    # plain fuse would leave clip 1 unpredicted (weight mass 0)
    assert np.isnan(fuse(probs, {"good": 1.0, "gated": 0.0})[1]).all()


def test_evaluate_round_records_the_gate_and_predicts_gated_only_clips():
    from mgpipe.evaluate import evaluate_round

    probs, y = gate_set()
    val_ids = [f"v{i}" for i in range(60)]
    test_ids = ["t0", "t1", "t2"]
    test_labels = np.array([0, 1, 2])
    z = {b: np.log(p) for b, p in probs.items()}
    one_hot = 5 * np.eye(6)[test_labels]
    logits = {"good": {"val_ids": np.array(val_ids), "val_logits": z["good"],
                       "test_ids": np.array(test_ids[:2]), "test_logits": one_hot[:2]},
              "good2": {"val_ids": np.array(val_ids), "val_logits": z["good2"],
                        "test_ids": np.array(test_ids[:2]), "test_logits": one_hot[:2]},
              "noise": {"val_ids": np.array(val_ids), "val_logits": z["noise"],
                        "test_ids": np.array(test_ids), "test_logits": one_hot}}
    res = evaluate_round(logits, val_ids, y, test_ids, test_labels)
    assert res["weight"] == {"good": 0.5, "good2": 0.5, "noise": 0.0}
    gate = res["gate"]
    assert gate["chance_gate"] and gate["gated"] == {"good": False, "good2": False, "noise": True}
    assert gate["chance"]["noise"]["p_value"] >= 0.05 and gate["chance"]["good"]["p_value"] < 0.001
    assert gate["fallback_clips"] == {"val": 0, "test": 1}
    # t2: only the gated branch has it; it is predicted from that branch, not counted wrong
    assert res["test"]["fused"]["unpredicted"] == 0 and res["test"]["fused"]["micro_f1"] == 1.0
    assert res["fused_test_probs"][2].argmax() == 2
    off = evaluate_round(logits, val_ids, y, test_ids, test_labels, chance_gate=False)
    assert off["weight"] == pytest.approx({b: 1 / 3 for b in logits}, abs=1e-4)
    assert not any(off["gate"]["gated"].values()) and off["gate"]["chance"] == {}
