"""mgpipe.timeline: windows, per-frame scores, segments and their evaluation, on cases small
enough to check by hand."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

from mgpipe import timeline as tl
from mgpipe.timeline import Segment, detect, evaluate, frame_scores, temporal_iou, window_starts


def test_doctests():
    assert doctest.testmod(tl).failed == 0


def test_window_starts_cover_every_frame():
    assert window_starts(10, 4, 2).tolist() == [0, 2, 4, 6]          # last window [6, 10)
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert window_starts(11, 4, 3).tolist() == [0, 3, 6, 7]          # one more to reach 10
    assert window_starts(3, 4, 2).tolist() == [0]                    # shorter than a window
    assert window_starts(4, 4, 9).tolist() == [0]
    assert window_starts(9, 4, 10).tolist() == [0, 5]                # stride > window: no gap
    for n, w, s in [(100, 16, 5), (37, 8, 8), (50, 50, 1)]:
        st = window_starts(n, w, s)
        covered = np.zeros(n, bool)
        for a in st:
            covered[a:a + w] = True
        assert covered.all() and st[-1] + w == max(n, w) and (np.diff(st) > 0).all()
    with pytest.raises(ValueError, match=">= 1"):
        window_starts(10, 0, 1)


def test_frame_scores_average_the_windows_that_hold_each_frame():
    # windows [0,4) [2,6) over 6 frames, 2 classes
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    s = frame_scores(probs, [0, 2], 4, 6)
    np.testing.assert_allclose(s[:, 0], [1, 1, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(s[:, 1], [0, 0, 0.5, 0.5, 1, 1])
    # a NaN window (not predicted) is left out; a frame no window holds is NaN
    s = frame_scores(np.array([[0.2, 0.8], [np.nan, np.nan]]), [0, 2], 4, 7)
    np.testing.assert_allclose(s[:4, 1], 0.8)
    assert np.isnan(s[4:]).all()
    with pytest.raises(ValueError, match="windows"):
        frame_scores(np.zeros((3, 2)), [0, 1], 4, 6)


def test_detect_threshold_background_merge_and_min_length():
    classes = ["a", "b", "idle"]
    #          frame:  0    1    2    3    4    5    6    7    8    9
    top = np.array([2, 0, 0, 0, 0, 0, 1, 1, 0, 0])
    p = np.array([.9, .8, .7, .3, .8, .9, .6, .6, .9, .4])
    scores = np.full((10, 3), 0.0)
    scores[np.arange(10), top] = p
    # threshold 0.5: idle at 0 is background, 3 and 9 below the threshold
    segs = detect(scores, classes, 0.5, background=["idle"])
    assert [(s.label, s.start, s.end) for s in segs] == [("a", 1, 3), ("a", 4, 6), ("b", 6, 8),
                                                         ("a", 8, 9)]
    assert segs[0].score == pytest.approx(0.75)
    # a one-frame background gap between two "a" runs is merged; "a" after "b" is not
    segs = detect(scores, classes, 0.5, background=["idle"], merge_gap=1)
    assert [(s.label, s.start, s.end) for s in segs] == [("a", 1, 6), ("b", 6, 8), ("a", 8, 9)]
    assert segs[0].score == pytest.approx((.8 + .7 + .3 + .8 + .9) / 5)  # gap frames count
    # min length 2 drops the last one-frame "a"
    segs = detect(scores, classes, 0.5, background=["idle"], merge_gap=1, min_frames=2)
    assert [s.label for s in segs] == ["a", "b"]
    # without a background class, idle is a gesture like the others
    assert detect(scores, classes, 0.5)[0] == Segment("idle", 0, 1, 0.9)
    # a high threshold: nothing
    assert detect(scores, classes, 0.95) == []


def test_temporal_iou():
    assert temporal_iou((0, 10), (0, 10)) == 1.0
    assert temporal_iou((0, 10), (10, 20)) == 0.0
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou(Segment("a", 0, 4), Segment("b", 1, 3)) == 0.5
    assert temporal_iou((3, 3), (3, 3)) == 0.0


def test_evaluate_greedy_matching_at_iou_half():
    gt = [Segment("a", 0, 10), Segment("b", 20, 30), Segment("a", 40, 50)]
    det = [Segment("a", 1, 11, 0.9),     # tIoU 9/11 with gt 0: TP
           Segment("a", 0, 9, 0.8),      # gt 0 already taken: FP (a duplicate)
           Segment("a", 20, 30, 0.95),   # right place, wrong class: FP
           Segment("a", 45, 60, 0.7)]    # tIoU 5/20 = 0.25 with gt 2: FP
    s = evaluate(det, gt, 0.5)
    assert (s.tp, s.fp, s.fn) == (1, 3, 2)
    assert s.matches == [(0, 0, pytest.approx(9 / 11))]
    assert s.precision == 0.25 and s.recall == pytest.approx(1 / 3)
    assert s.f1 == pytest.approx(2 * 0.25 * (1 / 3) / (0.25 + 1 / 3))
    # the higher-scoring duplicate wins the ground truth
    s = evaluate([Segment("a", 0, 9, 0.99), Segment("a", 1, 11, 0.5)], gt[:1])
    assert s.matches == [(0, 0, 0.9)] and (s.tp, s.fp) == (1, 1)
    # class-agnostic: the wrong-class detection now matches
    assert evaluate(det, gt, 0.5, class_aware=False).tp == 2
    # pooled over videos; empty cases
    total = evaluate(det, gt) + evaluate([], [Segment("c", 0, 5)])
    assert (total.tp, total.fp, total.fn) == (1, 3, 3)
    empty = evaluate([], [])
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)


def test_a_window_classifier_gives_back_the_segments():
    """End to end on the pure functions: windows that see >= half of a gesture say its
    class, others idle; the detected segments then match the truth at tIoU >= 0.5."""
    classes = ["a", "b", "idle"]
    truth = [Segment("a", 30, 70), Segment("b", 120, 160)]
    n, w, stride = 200, 40, 10
    starts = window_starts(n, w, stride)
    probs = np.zeros((len(starts), 3))
    for k, s0 in enumerate(starts):
        over = [(temporal_iou((s0, s0 + w), g) >= 0.5, g.label) for g in truth]
        lab = next((lab for hit, lab in over if hit), "idle")
        probs[k, classes.index(lab)] = 0.9
        probs[k, [i for i in range(3) if classes[i] != lab]] = 0.05
    segs = detect(frame_scores(probs, starts, w, n), classes, 0.5, ["idle"], merge_gap=5)
    assert [s.label for s in segs] == ["a", "b"]
    score = evaluate(segs, truth)
    assert (score.tp, score.fp, score.fn) == (2, 0, 0)


def test_timeline_rows_in_seconds_and_frames_and_the_picture(tmp_path):
    rows = tl.timeline_rows("v", [Segment("a", 25, 50, 0.123456)], fps=25.0, offset=10)
    assert rows == [{"clip": "v", "label": "a", "start_s": 1.4, "end_s": 2.4,
                     "start_frame": 35, "end_frame": 60, "score": 0.12346}]
    assert tl.segments_from_table(rows, offset=10) == [Segment("a", 25, 50, 0.12346)]
    assert tl.to_frames(1.6, 25) == 40 and tl.to_frames(0.001, 25) == 1
    scores = np.tile([0.7, 0.2, 0.1], (50, 1))
    thumbs = [(f, np.full((12, 16, 3), 100, np.uint8)) for f in (5, 25, 45)]
    tl.draw_timeline(tmp_path / "t.png", scores, ["a", "b", "idle"], 25.0,
                     [Segment("a", 0, 50, 0.7)], 0.5, thumbs,
                     ground_truth=[Segment("a", 5, 40)], background=["idle"], title="v")
    assert (tmp_path / "t.png").stat().st_size > 1000
    tl.draw_timeline(tmp_path / "n.png", scores, ["a", "b", "idle"], 25.0, [], 0.5)
    assert (tmp_path / "n.png").is_file()
