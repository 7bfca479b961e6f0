"""Cross-modal pseudo-label selection (SPEC section 7) on hand-made probabilities."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from mgpipe.pseudo import (fit_class_thresholds, pseudo_label_report, select_pseudo_labels,
                           source_probs)


def P(*rows):
    return np.array(rows, dtype=np.float64)


def test_threshold_and_order():
    probs = {"a": P([0.9, 0.1], [0.8, 0.2], [0.2, 0.8]),
             "b": P([0.95, 0.05], [0.85, 0.15], [0.05, 0.95])}
    idx, lab, conf = select_pseudo_labels(probs, "a", threshold=0.9)
    assert idx.tolist() == [0, 2]          # tie at 0.95: lower index first
    assert lab.tolist() == [0, 1]
    np.testing.assert_allclose(conf, [0.95, 0.95])
    assert idx.dtype == np.int64 and lab.dtype == np.int64 and conf.dtype == np.float64
    idx, lab, conf = select_pseudo_labels(probs, "a", threshold=0.8)
    assert idx.tolist() == [0, 2, 1]       # confidence descending
    assert select_pseudo_labels(probs, "a", threshold=0.99)[0].size == 0


def test_agreement_counts_all_branches_including_target():
    # target a disagrees with b and c on clip 0; everyone agrees on clip 1;
    # on clip 2 only c agrees with the (b, c) fusion
    probs = {"a": P([0.1, 0.9], [0.9, 0.1], [0.1, 0.9]),
             "b": P([0.95, 0.05], [0.95, 0.05], [0.55, 0.45]),
             "c": P([0.95, 0.05], [0.95, 0.05], [0.05, 0.95])}
    # source (b + c)/2: clip 2 -> class 1 at 0.7
    sel = lambda k: select_pseudo_labels(probs, "a", threshold=0.65, min_agree=k)[0].tolist()
    assert sel(1) == [0, 1, 2]
    assert sel(2) == [0, 1, 2]   # clip 2: a and c vote class 1
    assert sel(3) == [1]         # only clip 1 has all three
    assert sel(10) == sel(3)     # clamped to the number of branches
    probs["a"][2] = [0.9, 0.1]   # now only c agrees on clip 2
    assert select_pseudo_labels(probs, "a", threshold=0.65, min_agree=2)[0].tolist() == [0, 1]


def test_source_others_vs_all():
    # the target is sure of class 1; the other two lean towards class 0
    probs = {"a": P([0.01, 0.99]), "b": P([0.6, 0.4]), "c": P([0.6, 0.4])}
    i, lab, conf = select_pseudo_labels(probs, "a", source="others", threshold=0.5, min_agree=1)
    assert lab.tolist() == [0] and conf[0] == pytest.approx(0.6)
    i, lab, conf = select_pseudo_labels(probs, "a", source="all", threshold=0.5, min_agree=1)
    assert lab.tolist() == [1] and conf[0] == pytest.approx(1.79 / 3)
    # target b: others = a, c -> class 1 at 0.695
    assert select_pseudo_labels(probs, "b", threshold=0.5, min_agree=1)[1].tolist() == [1]


def test_weights_and_single_branch_fallback():
    probs = {"a": P([0.5, 0.5]), "b": P([0.9, 0.1]), "c": P([0.3, 0.7])}
    _, lab, conf = select_pseudo_labels(probs, "a", threshold=0.0, min_agree=1,
                                        weights={"a": 100.0, "b": 3.0, "c": 1.0})
    assert lab.tolist() == [0] and conf[0] == pytest.approx(0.75 * 0.9 + 0.25 * 0.3)
    only = {"a": P([0.95, 0.05], [0.6, 0.4])}
    idx, lab, conf = select_pseudo_labels(only, "a", source="others", threshold=0.9, min_agree=2)
    assert idx.tolist() == [0] and lab.tolist() == [0] and conf[0] == pytest.approx(0.95)


def test_caps_per_class():
    conf0 = [0.91, 0.99, 0.95, 0.97, 0.93, 0.92]
    rows = [[c, 1 - c] for c in conf0] + [[0.05, 0.95], [0.02, 0.98]]
    probs = {"a": P(*rows), "b": P(*rows)}
    sel = lambda **kw: select_pseudo_labels(probs, "a", threshold=0.9, **kw)
    assert len(sel()[0]) == 8
    idx, lab, _ = sel(max_per_class=2)
    assert sorted(idx.tolist()) == [1, 3, 6, 7]  # the two most confident of class 0
    # ceil(0.1 * 30) = 3 (not 4 from float noise), ceil(0.1 * 5) = 1
    idx, lab, _ = sel(class_fraction=0.1, train_counts=np.array([30, 5]))
    assert idx.tolist() == [1, 7, 3, 2]
    idx, lab, _ = sel(max_per_class=2, class_fraction=0.1, train_counts=np.array([30, 5]))
    assert idx.tolist() == [1, 7, 3]
    assert sel(class_fraction=0.5, train_counts=np.array([0, 4]))[0].tolist() == [7, 6]
    with pytest.raises(ValueError, match="train_counts"):
        sel(class_fraction=0.1)
    with pytest.raises(ValueError, match="shape"):
        sel(class_fraction=0.1, train_counts=np.array([1, 2, 3]))


def test_bad_arguments():
    probs = {"a": P([0.9, 0.1]), "b": P([0.9, 0.1])}
    with pytest.raises(ValueError, match="target"):
        select_pseudo_labels(probs, "zz")
    with pytest.raises(ValueError, match="source"):
        select_pseudo_labels(probs, "a", source="mine")
    with pytest.raises(ValueError, match="shape"):
        select_pseudo_labels({"a": P([0.9, 0.1]), "b": P([0.9, 0.1], [0.1, 0.9])}, "a")


def test_report_by_hand():
    r = pseudo_label_report(np.array([0, 1, 2, 4]), np.array([0, 0, 1, 2]),
                            np.array([0, 1, -1, 9, 2]), num_classes=3)
    assert r == {"kept": 4, "per_class_kept": [2, 1, 1], "known": 3, "correct": 2,
                 "precision": pytest.approx(2 / 3),
                 "per_class_precision": [0.5, None, 1.0]}
    empty = pseudo_label_report(np.zeros(0, int), np.zeros(0, int), np.array([0, 1]), 2)
    assert empty["kept"] == 0 and empty["precision"] is None
    assert empty["per_class_precision"] == [None, None]


def test_selection_never_sees_labels():
    params = inspect.signature(select_pseudo_labels).parameters
    assert not any("label" in p or "hidden" in p or p == "y" for p in params)
    rng = np.random.default_rng(0)
    probs = {b: rng.dirichlet(np.ones(4) * 0.2, 50) for b in "abc"}
    hidden = rng.integers(0, 4, 50)
    first = select_pseudo_labels(probs, "a", threshold=0.6, min_agree=1)
    report = pseudo_label_report(*first[:2], hidden, 4)
    assert report["kept"] > 0
    other_hidden = (hidden + 1) % 4
    second = select_pseudo_labels(probs, "a", threshold=0.6, min_agree=1)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    assert pseudo_label_report(*second[:2], other_hidden, 4) != report


def test_skipped_clips_neither_vote_nor_get_selected():
    """NaN rows: the branch has no prediction for the clip (an earlier stage skipped it)."""
    nan = [np.nan, np.nan]
    probs = {"a": np.array([[0.9, 0.1], nan, [0.95, 0.05]]),
             "b": np.array([[0.9, 0.1], [0.1, 0.9], nan]),
             "c": np.array([nan, [0.2, 0.8], [0.9, 0.1]])}
    # target c from a + b: clip 0 both agree; clip 1 only b; clip 2 only a
    idx, lab, _ = select_pseudo_labels(probs, "c", "others", threshold=0.5, min_agree=1)
    assert sorted(idx.tolist()) == [0, 1, 2] and lab[np.argsort(idx)].tolist() == [0, 1, 0]
    # c has no input for clip 0: it cannot train on it
    idx, _, _ = select_pseudo_labels(probs, "c", "others", threshold=0.5, min_agree=1,
                                     candidates=np.array([False, True, True]))
    assert sorted(idx.tolist()) == [1, 2]
    # min_agree counts only branches that predict the clip
    idx, _, _ = select_pseudo_labels(probs, "c", "others", threshold=0.5, min_agree=2)
    assert sorted(idx.tolist()) == [0, 1, 2]
    idx, _, _ = select_pseudo_labels(probs, "c", "others", threshold=0.5, min_agree=3)
    assert idx.tolist() == []


# ---- cmpl.threshold: fit (per-class thresholds fitted on validation) -----------------------

def test_fit_class_thresholds_by_hand():
    # class 0: conf 0.95 right, 0.9 right, 0.85 wrong, 0.8 right (4 clips)
    # class 1: conf 0.99 wrong, 0.7 right (2 clips); class 2: no clip
    # left out: an unknown label (would be a wrong 0.99 of class 0) and a NaN confidence
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.99, 0.7, 0.99, np.nan])
    pred = np.array([0, 0, 0, 0, 1, 1, 0, -1])
    labels = np.array([0, 0, 1, 0, 0, 1, -1, 0])
    fit = lambda target, support: fit_class_thresholds(conf, pred, labels, 3, target, support)
    # class 0 at 0.75: precision 1/1, 2/2, 2/3 (no), 3/4 = 0.75 (yes) -> the lowest is 0.8,
    # even though t = 0.85 misses the target. Pooled, sorted 0.99 w, 0.95, 0.9, 0.85 w, 0.8,
    # 0.7: 0/1, 1/2, 2/3, 2/4, 3/5, 4/6, never 0.75 -> inf for classes 1 and 2 (< 3 clips)
    np.testing.assert_array_equal(fit(0.75, 3), [0.8, np.inf, np.inf])
    # at 0.6 the pooled precisions 2/3 (0.9), 3/5 (0.8), 4/6 (0.7) pass: the lowest is 0.7
    np.testing.assert_array_equal(fit(0.6, 3), [0.8, 0.7, 0.7])
    # min_support 5: class 0's 4 clips are too few, every class takes the pooled threshold
    np.testing.assert_array_equal(fit(0.6, 5), [0.7, 0.7, 0.7])
    # at 0.9 class 0 stops at 0.9 (2/2); at 1.0 too
    assert fit(0.9, 3)[0] == 0.9 and fit(1.0, 3)[0] == 0.9
    # min_support 1: class 1 fits on its own clips: 0/1 at 0.99, 1/2 at 0.7
    np.testing.assert_array_equal(fit(0.5, 1), [0.8, 0.7, 0.7])
    np.testing.assert_array_equal(fit(0.75, 1), [0.8, np.inf, np.inf])


def test_fit_class_thresholds_ties_and_empty():
    # a tie at 0.9 (one right, one wrong) is taken whole: 1/2, then 2/3 at 0.8
    t = fit_class_thresholds(np.array([0.9, 0.9, 0.8]), np.array([0, 0, 0]),
                             np.array([0, 1, 0]), 2, 0.9, 1)
    np.testing.assert_array_equal(t, [np.inf, np.inf])
    t = fit_class_thresholds(np.array([0.9, 0.9, 0.8]), np.array([0, 0, 0]),
                             np.array([0, 1, 0]), 2, 0.6, 1)
    assert t[0] == 0.8   # 2/3 >= 0.6; class 1 has no clip: pooled, the same set
    # 9 right of 10 is exactly 0.9 (no float noise)
    conf = np.linspace(0.99, 0.9, 10)
    t = fit_class_thresholds(conf, np.zeros(10, int), np.r_[np.zeros(9, int), 1], 1, 0.9, 1)
    assert t[0] == conf[-1]
    empty = fit_class_thresholds(np.zeros(0), np.zeros(0, int), np.zeros(0, int), 2, 0.9, 5)
    np.testing.assert_array_equal(empty, [np.inf, np.inf])
    with pytest.raises(ValueError, match="shape"):
        fit_class_thresholds(np.zeros(2), np.zeros(3, int), np.zeros(2, int), 2)


def test_per_class_threshold_in_selection():
    probs = {"a": P([0.85, 0.15], [0.75, 0.25], [0.2, 0.8], [0.05, 0.95], [np.nan, np.nan]),
             "b": P([0.85, 0.15], [0.75, 0.25], [0.2, 0.8], [0.05, 0.95], [np.nan, np.nan])}
    # source for "a" = b alone; the NaN clip has no class, so no threshold applies to it
    sel = lambda t: select_pseudo_labels(probs, "a", threshold=np.array(t), min_agree=1)[0]
    assert sel([0.8, 0.9]).tolist() == [3, 0]
    assert sel([0.7, np.inf]).tolist() == [0, 1]            # inf: no pseudo-label of class 1
    assert sel([0.0, 0.0]).tolist() == [3, 0, 2, 1]
    assert sel(0.8).tolist() == sel([0.8, 0.8]).tolist() == [3, 0, 2]
    with pytest.raises(ValueError, match="per-class threshold"):
        sel([0.5, 0.5, 0.5])


def test_source_probs_is_the_selection_source():
    probs = {"a": P([0.5, 0.5]), "b": P([0.9, 0.1]), "c": P([0.3, 0.7])}
    w = {"a": 100.0, "b": 3.0, "c": 1.0}
    np.testing.assert_allclose(source_probs(probs, "a", "others", w), [[0.75, 0.25]])
    np.testing.assert_allclose(source_probs(probs, "a", "all"), [[17 / 30, 13 / 30]])
    _, _, conf = select_pseudo_labels(probs, "a", threshold=0.0, min_agree=1, weights=w)
    assert conf[0] == pytest.approx(0.75)


# ---- cmpl.selection: balanced vs confidence --------------------------------------------------

def _row(k: int, p: float, c: int = 4) -> list[float]:
    r = [(1 - p) / (c - 1)] * c
    r[k] = p
    return r


# class 0: clips 0-6, class 1: 7-8, class 2: 9-11, class 3: clip 12 (below the threshold)
_CLASSES = [(0, [0.91, 0.99, 0.95, 0.97, 0.93, 0.92, 0.6]), (1, [0.8, 0.7]),
            (2, [0.9, 0.85, 0.75]), (3, [0.4])]
_ROWS = [_row(k, p) for k, ps in _CLASSES for p in ps]
# confidence order: 1 (0.99), 3, 2, 4, 5, 0, 9 (0.9), 10, 7 (0.8), 11, 8 (0.7), 6 (0.6)


def _select(**kw):
    probs = {"a": P(*_ROWS), "b": P(*_ROWS)}
    return select_pseudo_labels(probs, "a", threshold=0.5, **kw)


def test_balanced_quota_by_hand():
    # passing: class 0 seven, class 1 two (the rarest with any), class 2 three, class 3 none
    sel = lambda **kw: _select(selection="balanced", **kw)[0].tolist()
    assert sel(quota=2.0) == [1, 3, 2, 4, 9, 10, 7, 11, 8]     # cap ceil(2 * 2) = 4
    assert sel(quota=1.0) == [1, 3, 9, 10, 7, 8]               # cap 2
    assert sel(quota=1.3) == [1, 3, 2, 9, 10, 7, 11, 8]        # cap ceil(2.6) = 3
    assert sel(quota=1.5) == sel(quota=1.3)                    # ceil(3.0) = 3, not 4
    assert sel(quota=2.0, max_per_class=3) == sel(quota=1.3)   # max_per_class still applies
    assert sel(quota=100.0) == [1, 3, 2, 4, 5, 0, 9, 10, 7, 11, 8, 6]
    # clip 8 not a candidate: class 1 has one passing clip -> cap ceil(2 * 1) = 2
    cand = np.ones(len(_ROWS), bool)
    cand[8] = False
    assert sel(quota=2.0, candidates=cand) == [1, 3, 9, 10, 7]
    # class_fraction is the confidence selection's cap: ignored here (and needs no counts)
    assert sel(quota=2.0, class_fraction=0.1) == sel(quota=2.0)
    # nothing passes: nothing selected
    probs = {"a": P(*_ROWS), "b": P(*_ROWS)}
    assert select_pseudo_labels(probs, "a", threshold=0.999, selection="balanced")[0].size == 0
    with pytest.raises(ValueError, match="selection"):
        _select(selection="fair")


def test_confidence_selection_is_the_old_rule():
    counts = np.array([4, 10, 2, 0])
    # caps ceil(0.5 * counts) = [2, 5, 1, 0]
    idx, lab, _ = _select(selection="confidence", class_fraction=0.5, train_counts=counts)
    assert idx.tolist() == [1, 3, 9, 7, 8] and lab.tolist() == [0, 0, 2, 1, 1]
    default = _select(class_fraction=0.5, train_counts=counts)  # the function's default
    for x, y in zip(default, _select(selection="confidence", class_fraction=0.5,
                                     train_counts=counts)):
        np.testing.assert_array_equal(x, y)
    assert _select(selection="confidence")[0].tolist() == [1, 3, 2, 4, 5, 0, 9, 10, 7, 11, 8, 6]
    assert _select(selection="confidence", max_per_class=1)[0].tolist() == [1, 9, 7]


def test_no_selection_function_takes_test_labels():
    for f in (select_pseudo_labels, source_probs):
        params = inspect.signature(f).parameters
        assert not any("label" in p or "hidden" in p or p == "y" for p in params), f
    # only the threshold fit sees labels, and they are named as validation labels
    assert [p for p in inspect.signature(fit_class_thresholds).parameters if "label" in p] \
        == ["val_labels"]
