"""Cross-modal pseudo-labelling (CMPL, SPEC section 7): which unlabelled test clips a branch
retrains on, and with which label.

:func:`select_pseudo_labels` takes no label argument at all, so the hidden test labels can not
reach the selection; only :func:`pseudo_label_report` (called by the report code) sees them.
:func:`fit_class_thresholds` fits per-class confidence thresholds on the VALIDATION clips'
labels, which are not hidden; the selection gets only the thresholds.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mgpipe.fusion import fuse
from mgpipe.metrics import predicted_classes


def source_probs(branch_probs: Mapping[str, np.ndarray], target: str, source: str = "others",
                 weights: Mapping[str, float] | None = None) -> np.ndarray:
    """The source prediction [N, C] that labels branch ``target``'s clips: the fusion (mean,
    or ``weights`` renormalised over the branches used) of the branches other than ``target``
    (``source="others"``; ``target`` itself when it is the only branch) or of all branches
    (``"all"``), from calibrated probabilities [N, C] per branch (NaN rows: no prediction).
    The same function serves the test clips and, for :func:`fit_class_thresholds`, the
    validation clips."""
    if target not in branch_probs:
        raise ValueError(f"target branch {target!r} not among {list(branch_probs)}")
    if source not in ("others", "all"):
        raise ValueError(f"source must be 'others' or 'all', not {source!r}")
    names = list(branch_probs)
    shapes = {b: np.shape(branch_probs[b]) for b in names}
    if len(set(shapes.values())) != 1 or len(shapes[target]) != 2:
        raise ValueError(f"all branches need probabilities of one shape [N, C]; got {shapes}")
    used = [b for b in names if b != target] if source == "others" else names
    used = used or [target]
    return fuse({b: branch_probs[b] for b in used},
                None if weights is None else {b: weights[b] for b in used if b in weights})


def _lowest_threshold(conf: np.ndarray, correct: np.ndarray, target_precision: float) -> float:
    """Lowest t among ``conf`` [n] with precision (mean of ``correct`` [n] bool) of
    {conf >= t} >= ``target_precision``; inf when none (or n = 0)."""
    if len(conf) == 0:
        return float("inf")
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    hits = np.cumsum(correct)
    count = np.arange(1, len(conf) + 1)
    last = np.r_[conf[1:] != conf[:-1], True]  # {conf >= t} takes whole groups of ties
    # the epsilon keeps 9 / 10 >= 0.9 true despite float noise
    ok = last & (hits >= target_precision * count - 1e-9)
    return float(conf[np.flatnonzero(ok)[-1]]) if ok.any() else float("inf")


def fit_class_thresholds(val_conf: np.ndarray, val_pred: np.ndarray, val_labels: np.ndarray,
                         num_classes: int, target_precision: float = 0.9, min_support: int = 5
                         ) -> np.ndarray:
    """Per-class confidence thresholds [C] fitted on validation clips so that the source's
    pseudo-labels reach ``target_precision`` there (``cmpl.threshold: fit``).

    val_conf [N]: the source's max calibrated probability, val_pred [N]: its argmax (-1 = no
    prediction), val_labels [N]: the true val labels (-1 = unknown); clips with no
    prediction, a NaN confidence or an unknown label are left out. For a set S of clips,
    t(S) = the lowest confidence t of a clip in S such that the precision of
    {i in S : conf_i >= t} (ties at t included) is >= ``target_precision``; inf when no t
    reaches it. Class c gets t({pred == c}) when at least ``min_support`` clips are
    predicted c, else the pooled t(all clips, any predicted class), which may be inf too.
    A threshold of inf selects nothing (a confidence is at most 1). Agreement
    (``min_agree``) is not applied here, so the precision of the final selection is if
    anything higher.
    """
    conf = np.asarray(val_conf, dtype=np.float64)
    pred = np.asarray(val_pred, dtype=np.int64)
    labels = np.asarray(val_labels, dtype=np.int64)
    if not (conf.shape == pred.shape == labels.shape and conf.ndim == 1):
        raise ValueError(f"val_conf, val_pred and val_labels need one shape [N]; got "
                         f"{conf.shape}, {pred.shape}, {labels.shape}")
    use = (pred >= 0) & (labels >= 0) & ~np.isnan(conf)
    conf, pred, correct = conf[use], pred[use], pred[use] == labels[use]
    pooled = _lowest_threshold(conf, correct, target_precision)
    out = np.full(num_classes, pooled)
    for c in range(num_classes):
        mine = pred == c
        if mine.sum() >= min_support:
            out[c] = _lowest_threshold(conf[mine], correct[mine], target_precision)
    return out


def select_pseudo_labels(branch_probs: Mapping[str, np.ndarray], target: str,
                         source: str = "others", threshold: float | np.ndarray = 0.9,
                         min_agree: int = 2, max_per_class: int | None = None,
                         class_fraction: float | None = None,
                         train_counts: np.ndarray | None = None,
                         weights: Mapping[str, float] | None = None,
                         candidates: np.ndarray | None = None,
                         selection: str = "confidence", quota: float = 2.0,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-labels for branch ``target`` from calibrated test probabilities [N, C] per branch.

    - Source: :func:`source_probs` (the fusion of the branches other than ``target``, or of
      all, with ``weights``).
    - Keep clip i when the source's max probability >= ``threshold`` (a number, or per class
      [C] for the source's predicted class, e.g. from :func:`fit_class_thresholds`; inf =
      never) and at least ``min_agree`` branches, counted among ALL branches including
      ``target``, have that class as their argmax. Counting the target too keeps the vote on
      the same footing for every target and lets a 2-branch setup ask for full agreement.
      ``min_agree`` above the number of branches is clamped to it; <= 1 only requires the
      threshold.
    - Per class c keep the most confident, at most ``max_per_class`` and, by ``selection``:
      ``"confidence"``: at most ceil(``class_fraction`` * ``train_counts[c]``) (0 for a
      class with no training clips) when ``class_fraction`` is given;
      ``"balanced"``: at most ceil(``quota`` * n_rarest), n_rarest = the number of kept clips
      of the rarest class with at least one (``class_fraction`` is ignored), so a head class
      holds at most ``quota`` times the rarest selected class.
    - A NaN row is a clip that branch has no prediction for (it skipped the clip): it is left
      out of that branch's fusion and votes. ``candidates`` [N] bool: the clips ``target``
      can train on (it has their input); others are never selected, and neither use up a
      cap nor count towards n_rarest.

    Returns (indices [M] int64 into the N clips, labels [M] int64, confidence [M] float64),
    ordered by confidence descending, ties by index.
    """
    if selection not in ("confidence", "balanced"):
        raise ValueError(f"selection must be 'confidence' or 'balanced', not {selection!r}")
    if selection == "confidence" and class_fraction is not None and train_counts is None:
        raise ValueError("class_fraction needs train_counts")
    fused = source_probs(branch_probs, target, source, weights)
    names = list(branch_probs)
    n, c = fused.shape
    conf = fused.max(1)
    cls = predicted_classes(fused)
    votes = sum(((predicted_classes(branch_probs[b]) == cls) & (cls >= 0)).astype(np.int64)
                for b in names)
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim == 1:
        if thr.shape != (c,):
            raise ValueError(f"per-class threshold needs shape ({c},), got {thr.shape}")
        thr = np.where(cls >= 0, thr[np.maximum(cls, 0)], np.inf)
    elif thr.ndim != 0:
        raise ValueError(f"threshold must be a number or per class [C], got shape {thr.shape}")
    ok = (conf >= thr) & (votes >= min(min_agree, len(names)))  # NaN conf: never
    if candidates is not None:
        ok &= np.asarray(candidates, dtype=bool)
    keep = np.flatnonzero(ok)
    keep = keep[np.lexsort((keep, -conf[keep]))]  # confidence descending, ties by index

    cap = np.full(c, n, dtype=np.int64)
    if max_per_class is not None:
        cap = np.minimum(cap, int(max_per_class))
    if selection == "balanced":
        passing = np.bincount(cls[keep], minlength=c)
        if passing.any():
            rarest = passing[passing > 0].min()
            cap = np.minimum(cap, int(np.ceil(quota * rarest - 1e-9)))
    elif class_fraction is not None:
        counts = np.asarray(train_counts, dtype=np.float64)
        if counts.shape != (c,):
            raise ValueError(f"train_counts needs shape ({c},), got {counts.shape}")
        # the epsilon stops 0.1 * 30 = 3.0000000000000004 from rounding up to 4
        cap = np.minimum(cap, np.ceil(class_fraction * counts - 1e-9).astype(np.int64))
    # rank of each kept clip within its class, in the confidence order above
    rank = np.zeros(len(keep), dtype=np.int64)
    seen = np.zeros(c, dtype=np.int64)
    for j, k in enumerate(cls[keep]):
        rank[j] = seen[k]
        seen[k] += 1
    keep = keep[rank < cap[cls[keep]]]
    return keep.astype(np.int64), cls[keep].astype(np.int64), conf[keep].astype(np.float64)


def pseudo_label_report(indices: np.ndarray, labels: np.ndarray, hidden_labels: np.ndarray,
                        num_classes: int) -> dict:
    """Quality of a pseudo-set against the hidden test labels (report code only).

    ``indices`` [M] into the test clips, ``labels`` [M] the pseudo-labels, ``hidden_labels``
    [N] the true test labels with -1 = unknown. Returns JSON-ready {kept, per_class_kept [C],
    known (kept clips with a known label), correct, precision, per_class_precision [C]};
    a precision is None where no kept clip has a known label."""
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    truth = np.asarray(hidden_labels, dtype=np.int64)[indices]
    known = truth >= 0
    right = known & (truth == labels)
    per_known = np.bincount(labels[known], minlength=num_classes)
    per_right = np.bincount(labels[right], minlength=num_classes)

    def ratio(a: int, b: int) -> float | None:
        return float(a / b) if b else None

    return {
        "kept": int(len(indices)),
        "per_class_kept": np.bincount(labels, minlength=num_classes).astype(int).tolist(),
        "known": int(known.sum()),
        "correct": int(right.sum()),
        "precision": ratio(int(right.sum()), int(known.sum())),
        "per_class_precision": [ratio(int(r), int(k)) for r, k in zip(per_right, per_known)],
    }
