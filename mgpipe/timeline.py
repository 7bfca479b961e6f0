"""Untrimmed video: sliding windows, per-frame class scores, detected segments, their
evaluation against ground truth, and the timeline picture (``mgpipe predict --window``).

Everything here is in frames of the video (int, 0-based, intervals half-open
[start, end)); :func:`to_frames` converts seconds. Shapes:

    window_starts(n_frames, window, stride)          -> int64 [W]
    frame_scores(probs [W, C], starts [W], window, n_frames) -> float64 [n_frames, C]
    detect(scores [T, C], ...)                        -> list[Segment]
    evaluate(detections, ground_truth, iou=0.5)       -> Score (precision, recall, F1)

Pure numpy, so each step can be checked by hand (tests/test_timeline.py); matplotlib is
imported only by :func:`draw_timeline`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


def to_frames(seconds: float, fps: float) -> int:
    """``seconds`` of video at ``fps`` as a whole number of frames, at least 1."""
    return max(1, int(round(float(seconds) * float(fps))))


# ---- windows -> per-frame scores --------------------------------------------------------

def window_starts(n_frames: int, window: int, stride: int) -> np.ndarray:
    """First frames of the sliding windows over a video of ``n_frames`` frames: 0, stride,
    2 stride, ... while the window fits, then one more window ending at the last frame if
    the regular ones stop short of it, so every frame is covered. A video no longer than
    one window is one window (starting at 0, as long as the video). int64 [W], ascending.

    >>> window_starts(10, 4, 3).tolist()   # [0,4) [3,7) [6,10)
    [0, 3, 6]
    >>> window_starts(11, 4, 3).tolist()   # ... and [7,11) for the last frame
    [0, 3, 6, 7]
    """
    if n_frames < 1 or window < 1 or stride < 1:
        raise ValueError(f"n_frames, window and stride must be >= 1, got {n_frames}, "
                         f"{window}, {stride}")
    if n_frames <= window:
        return np.zeros(1, np.int64)
    starts = np.arange(0, n_frames - window + 1, stride, dtype=np.int64)
    if starts[-1] + window < n_frames:
        starts = np.append(starts, n_frames - window)
    return starts


def frame_scores(probs: np.ndarray, starts: Sequence[int], window: int,
                 n_frames: int) -> np.ndarray:
    """Per-frame class scores float64 [n_frames, C]: each frame gets the mean of the
    probabilities [W, C] of the windows that hold it (window w holds frames
    [starts[w], min(starts[w] + window, n_frames))). A window whose row is NaN (not
    predicted) is left out; a frame that no predicted window holds is NaN."""
    probs = np.asarray(probs, np.float64)
    starts = np.asarray(starts, np.int64)
    if probs.ndim != 2 or len(probs) != len(starts):
        raise ValueError(f"probs [W, C] for W = {len(starts)} windows, got shape {probs.shape}")
    ok = ~np.isnan(probs).any(1)
    # difference arrays: +p at a window's start, -p one past its end; cumsum gives the sums
    acc = np.zeros((n_frames + 1, probs.shape[1]))
    cnt = np.zeros(n_frames + 1)
    lo = np.clip(starts[ok], 0, n_frames)
    hi = np.clip(starts[ok] + window, 0, n_frames)
    np.add.at(acc, lo, probs[ok])
    np.add.at(acc, hi, -probs[ok])
    np.add.at(cnt, lo, 1)
    np.add.at(cnt, hi, -1)
    total, count = np.cumsum(acc, 0)[:-1], np.cumsum(cnt)[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count[:, None]
    out[count < 0.5] = np.nan
    return out


# ---- per-frame scores -> segments ----------------------------------------------------------

@dataclass(frozen=True)
class Segment:
    """A detected (or ground-truth) micro-gesture: class ``label``, frames [start, end),
    ``score`` (mean per-frame probability of the label over the segment; 1 for ground
    truth)."""
    label: str
    start: int
    end: int
    score: float = 1.0

    @property
    def frames(self) -> int:
        return self.end - self.start


def frame_labels(scores: np.ndarray, threshold: float, background: Iterable[int] = ()
                 ) -> np.ndarray:
    """Per-frame class index int64 [T], -1 for background: a frame whose most probable class
    has probability < ``threshold``, is a ``background`` class (e.g. ``idle``) or has no
    score (NaN)."""
    scores = np.asarray(scores, np.float64)
    filled = np.nan_to_num(scores, nan=-1.0)
    top = filled.argmax(1)
    best = filled.max(1)
    labels = np.where(best >= threshold, top, -1)
    bg = np.asarray(sorted(set(background)), np.int64)
    if bg.size:
        labels[np.isin(labels, bg)] = -1
    return labels


def runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs of equal values in ``labels`` [T]: (value, start, end) with end exclusive.

    >>> runs(np.array([-1, 2, 2, -1, -1, 0]))
    [(-1, 0, 1), (2, 1, 3), (-1, 3, 5), (0, 5, 6)]
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return []
    cut = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    bounds = np.concatenate([[0], cut, [labels.size]])
    return [(int(labels[a]), int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def detect(scores: np.ndarray, classes: Sequence[str], threshold: float = 0.5,
           background: Iterable[str] = (), merge_gap: int = 0, min_frames: int = 1,
           ) -> list[Segment]:
    """Segments from per-frame scores [T, C] (:func:`frame_scores`): frames labelled by
    :func:`frame_labels`, runs of one foreground class become segments; two segments of the
    same class with only background between them, at most ``merge_gap`` frames, become one
    (overlapping detections of one gesture that dipped below the threshold); then segments
    shorter than ``min_frames`` are dropped. Score: the mean probability of the segment's
    class over its frames. In time order."""
    index = {c: i for i, c in enumerate(classes)}
    labels = frame_labels(scores, threshold, [index[b] for b in background if b in index])
    merged: list[list[int]] = []  # [label, start, end]
    for lab, a, b in runs(labels):
        if lab < 0:
            continue
        if merged and merged[-1][0] == lab and a - merged[-1][2] <= merge_gap:
            merged[-1][2] = b
        else:
            merged.append([lab, a, b])
    scores = np.asarray(scores, np.float64)
    out = []
    for lab, a, b in merged:
        if b - a >= min_frames:
            out.append(Segment(classes[lab], a, b, float(np.nanmean(scores[a:b, lab]))))
    return out


# ---- evaluation ------------------------------------------------------------------------------

def temporal_iou(a: tuple[int, int] | Segment, b: tuple[int, int] | Segment) -> float:
    """Intersection over union of two intervals [start, end) (frames or seconds).

    >>> temporal_iou((0, 10), (5, 15))   # 5 / 15
    0.3333333333333333
    """
    a0, a1 = (a.start, a.end) if isinstance(a, Segment) else a
    b0, b1 = (b.start, b.end) if isinstance(b, Segment) else b
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = (a1 - a0) + (b1 - b0) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Score:
    """Detection counts and rates at one tIoU: a true positive is a detection matched to a
    ground-truth segment of its class (each matched at most once)."""
    tp: int
    fp: int
    fn: int
    iou: float
    matches: list  # (detection index, ground-truth index, tIoU)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "iou": self.iou,
                "precision": self.precision, "recall": self.recall, "f1": self.f1}

    def __add__(self, other: "Score") -> "Score":  # pool videos
        return Score(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.iou,
                     self.matches + other.matches)


def evaluate(detections: Sequence[Segment], ground_truth: Sequence[Segment],
             iou: float = 0.5, class_aware: bool = True) -> Score:
    """Greedy matching, detections in order of decreasing score (ties: earlier first): each
    takes the unmatched ground-truth segment (of its class, with ``class_aware``) of highest
    tIoU, if that tIoU >= ``iou``. Unmatched detections are false positives, unmatched ground
    truth false negatives (the usual temporal-detection protocol at one threshold)."""
    order = sorted(range(len(detections)), key=lambda i: (-detections[i].score,
                                                          detections[i].start))
    taken = [False] * len(ground_truth)
    matches = []
    for i in order:
        d = detections[i]
        best, best_iou = -1, iou
        for j, g in enumerate(ground_truth):
            if taken[j] or (class_aware and g.label != d.label):
                continue
            v = temporal_iou(d, g)
            if v >= best_iou and (best < 0 or v > best_iou):
                best, best_iou = j, v
        if best >= 0:
            taken[best] = True
            matches.append((i, best, best_iou))
    tp = len(matches)
    return Score(tp, len(detections) - tp, len(ground_truth) - tp, iou, matches)


# ---- tables ----------------------------------------------------------------------------------

TIMELINE_COLUMNS = ["clip", "label", "start_s", "end_s", "start_frame", "end_frame", "score"]


def timeline_rows(clip: str, segments: Sequence[Segment], fps: float, offset: int = 0
                  ) -> list[dict]:
    """timeline.csv rows: clip, label, start_s, end_s (seconds, 3 decimals), start_frame,
    end_frame (frames of the video, end exclusive; ``offset`` = the first frame scanned),
    score (5 decimals)."""
    return [{"clip": clip, "label": s.label,
             "start_s": round((s.start + offset) / fps, 3),
             "end_s": round((s.end + offset) / fps, 3),
             "start_frame": s.start + offset, "end_frame": s.end + offset,
             "score": round(s.score, 5)} for s in segments]


def segments_from_table(rows: Iterable[dict], offset: int = 0) -> list[Segment]:
    """Segments from rows with label, start_frame, end_frame (exclusive), score (optional)."""
    return [Segment(str(r["label"]), int(r["start_frame"]) - offset,
                    int(r["end_frame"]) - offset, float(r.get("score", 1.0)))
            for r in rows]


# ---- the picture -----------------------------------------------------------------------------

def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def draw_timeline(path, scores: np.ndarray, classes: Sequence[str], fps: float,
                  detections: Sequence[Segment], threshold: float,
                  thumbs: Sequence[tuple[int, np.ndarray]] = (),
                  ground_truth: Sequence[Segment] | None = None,
                  background: Iterable[str] = (), title: str = "",
                  offset: int = 0) -> None:
    """PNG at ``path``: on top a strip of video thumbnails (``thumbs``: (frame, RGB uint8
    [h, w, 3]) pairs, frames relative to the first scanned one), below it each class's
    per-frame probability (``scores`` [T, C]) over time in seconds with the ``threshold``
    line, then the detected segments as bars in their class's colour with their label,
    and the ground truth likewise when given. Background classes are drawn grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.asarray(scores, np.float64)
    T = len(scores)
    t = (np.arange(T) + offset) / fps
    colours = _colours(len(classes))
    bg = set(background)
    index = {c: i for i, c in enumerate(classes)}
    lanes = 1 + (ground_truth is not None)
    heights = ([1.1] if len(thumbs) else []) + [2.2, 0.35 * lanes]
    fig, axes = plt.subplots(len(heights), 1, figsize=(11, sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights}, sharex=False)
    axes = list(np.atleast_1d(axes))
    t_end = (T + offset) / fps
    t0 = offset / fps
    if len(thumbs):
        ax = axes.pop(0)
        for f, img in thumbs:
            h, w = img.shape[:2]
            span = (t_end - t0) / max(len(thumbs), 1)
            x = (f + offset) / fps
            ax.imshow(img, extent=(x - span / 2, x + span / 2, 0, 1), aspect="auto")
        ax.set_xlim(t0, t_end)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_title(title, fontsize=10, loc="left")
    ax = axes[0]
    shown = [i for i in range(len(classes))
             if np.nanmax(np.nan_to_num(scores[:, i], nan=0)) >= min(0.15, threshold)]
    for i in range(len(classes)):
        grey = classes[i] in bg
        ax.plot(t, scores[:, i], lw=1.0 if i in shown else 0.5,
                color="0.6" if grey else colours[i], ls="--" if grey else "-",
                label=classes[i] if i in shown else None, alpha=1 if i in shown else 0.4)
    ax.axhline(threshold, color="k", lw=0.8, ls=":")
    ax.text(t_end, threshold, f" threshold {threshold:g}", va="center", fontsize=7)
    ax.set_xlim(t0, t_end)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fused probability", fontsize=8)
    ax.tick_params(labelsize=7, labelbottom=False)
    if not len(thumbs) and title:
        ax.set_title(title, fontsize=10, loc="left")
    ax.legend(fontsize=6, ncol=min(len(shown), 6) or 1, loc="upper left", framealpha=0.8)
    ax = axes[1]
    rows = [("detected", detections)] + ([("truth", ground_truth)] if ground_truth is not None
                                         else [])
    for k, (name, segs) in enumerate(rows):
        y = len(rows) - 1 - k
        for s in segs:
            c = "0.6" if s.label in bg else colours[index.get(s.label, 0)]
            a, b = (s.start + offset) / fps, (s.end + offset) / fps
            ax.broken_barh([(a, b - a)], (y + 0.1, 0.8), color=c)
            ax.text((a + b) / 2, y + 0.5, s.label, ha="center", va="center", fontsize=5.5,
                    clip_on=True)
    ax.set_yticks([len(rows) - 1 - k + 0.5 for k in range(len(rows))],
                  [name for name, _ in rows], fontsize=8)
    ax.set_ylim(0, len(rows))
    ax.set_xlim(t0, t_end)
    ax.set_xlabel("time (s)", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout(h_pad=0.3)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def score_json(score: Score) -> dict:
    """``Score.as_dict`` with rates rounded to 4 decimals (for results files)."""
    return {k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else v)
            for k, v in score.as_dict().items()}


__all__ = ["Segment", "Score", "TIMELINE_COLUMNS", "detect", "draw_timeline", "evaluate",
           "frame_labels", "frame_scores", "runs", "score_json", "segments_from_table",
           "temporal_iou", "timeline_rows", "to_frames", "window_starts"]
