"""Cross-modal pseudo-labelling (CMPL, SPEC section 7): which unlabelled test clips a branch
retrains on, and with which label.

:func:`select_pseudo_labels` takes no label argument at all, so the hidden test labels can not
reach the selection; only :func:`pseudo_label_report` (called by the report code) sees them.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mgpipe.fusion import fuse
from mgpipe.metrics import predicted_classes


def select_pseudo_labels(branch_probs: Mapping[str, np.ndarray], target: str,
                         source: str = "others", threshold: float = 0.9, min_agree: int = 2,
                         max_per_class: int | None = None, class_fraction: float | None = None,
                         train_counts: np.ndarray | None = None,
                         weights: Mapping[str, float] | None = None,
                         candidates: np.ndarray | None = None,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-labels for branch ``target`` from calibrated test probabilities [N, C] per branch.

    - Source: the fused probability (mean, or ``weights`` renormalised over the branches used)
      of the branches other than ``target`` (``source="others"``) or of all branches
      (``"all"``). With ``"others"`` and ``target`` the only branch, the source falls back to
      ``target`` itself (plain self-training).
    - Keep clip i when the source's max probability >= ``threshold`` and at least
      ``min_agree`` branches, counted among ALL branches including ``target``, have that class
      as their argmax. Counting the target too keeps the vote on the same footing for every
      target and lets a 2-branch setup ask for full agreement. ``min_agree`` above the number
      of branches is clamped to it; <= 1 only requires the threshold.
    - Per class c keep the most confident: at most ``max_per_class``, and at most
      ceil(``class_fraction`` * ``train_counts[c]``) (0 for a class with no training clips),
      so head classes do not swamp the pseudo-set; both caps apply when both are given.
    - A NaN row is a clip that branch has no prediction for (it skipped the clip): it is left
      out of that branch's fusion and votes. ``candidates`` [N] bool: the clips ``target``
      can train on (it has their input); others are never selected, and do not use up a cap.

    Returns (indices [M] int64 into the N clips, labels [M] int64, confidence [M] float64),
    ordered by confidence descending, ties by index.
    """
    if target not in branch_probs:
        raise ValueError(f"target branch {target!r} not among {list(branch_probs)}")
    if source not in ("others", "all"):
        raise ValueError(f"source must be 'others' or 'all', not {source!r}")
    if class_fraction is not None and train_counts is None:
        raise ValueError("class_fraction needs train_counts")
    names = list(branch_probs)
    shapes = {b: np.shape(branch_probs[b]) for b in names}
    if len(set(shapes.values())) != 1 or len(shapes[target]) != 2:
        raise ValueError(f"all branches need probabilities of one shape [N, C]; got {shapes}")
    used = [b for b in names if b != target] if source == "others" else names
    used = used or [target]
    fused = fuse({b: branch_probs[b] for b in used},
                 None if weights is None else {b: weights[b] for b in used if b in weights})
    n, c = fused.shape
    conf = fused.max(1)
    cls = predicted_classes(fused)
    votes = sum(((predicted_classes(branch_probs[b]) == cls) & (cls >= 0)).astype(np.int64)
                for b in names)
    ok = (conf >= threshold) & (votes >= min(min_agree, len(names)))  # NaN conf: never
    if candidates is not None:
        ok &= np.asarray(candidates, dtype=bool)
    keep = np.flatnonzero(ok)
    keep = keep[np.lexsort((keep, -conf[keep]))]  # confidence descending, ties by index

    cap = np.full(c, n, dtype=np.int64)
    if max_per_class is not None:
        cap = np.minimum(cap, int(max_per_class))
    if class_fraction is not None:
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
