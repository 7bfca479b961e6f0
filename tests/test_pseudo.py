"""Cross-modal pseudo-label selection (SPEC section 7) on hand-made probabilities."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from mgpipe.pseudo import pseudo_label_report, select_pseudo_labels


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
