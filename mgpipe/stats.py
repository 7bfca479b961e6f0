"""Seed spread and paired bootstrap of macro-F1 (the ablation command's statistics).

Predictions are class indices [S, N] (S seeds, N test clips; -1 = no prediction, counted
wrong); labels [N] class indices (-1 = unknown, left out). Macro-F1 averages the per-class F1
over the classes present in the (resampled) labels, as ``mgpipe.metrics`` does.
"""
from __future__ import annotations

import numpy as np


def macro_f1_rows(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row: labels and pred both [B, N] (B resamples or seeds) -> [B]."""
    labels = np.asarray(labels, np.int64)
    pred = np.asarray(pred, np.int64)
    b, n = labels.shape
    c = num_classes
    row = np.arange(b)[:, None] * c
    true = np.bincount((row + labels).ravel(), minlength=b * c).reshape(b, c)
    pred_ok = pred >= 0
    predicted = np.bincount((row + np.where(pred_ok, pred, 0))[pred_ok], minlength=b * c).reshape(b, c)
    hit = pred == labels
    tp = np.bincount((row + labels)[hit], minlength=b * c).reshape(b, c)
    denom = true + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros((b, c)), where=denom > 0)
    present = true > 0
    return (f1 * present).sum(1) / np.maximum(present.sum(1), 1)


def seed_spread(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> dict:
    """Macro-F1 of each seed's predictions pred [S, N] on the known labels: mean, sample
    standard deviation (0 for one seed) and the values."""
    labels = np.asarray(labels, np.int64)
    pred = np.atleast_2d(np.asarray(pred, np.int64))
    known = labels >= 0
    f1 = macro_f1_rows(np.broadcast_to(labels[known], (len(pred), known.sum())),
                       pred[:, known], num_classes)
    return {"mean": float(f1.mean()), "sd": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
            "values": [float(v) for v in f1]}


def paired_bootstrap(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                     num_classes: int, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Difference of mean macro-F1 (over seeds) between settings A [Sa, N] and B [Sb, N]
    on the same test clips, with a bootstrap over clips: each resample draws N clips with
    replacement and scores every seed of both settings on it, so clip difficulty is shared
    (paired) and seed noise stays in the estimate.

    Returns {diff (on all clips), low, high (percentile interval at ``level``), p}: p is the
    two-sided bootstrap p-value 2 * min(P(d <= 0), P(d >= 0)), capped at 1 (1 when A and B
    predict the same)."""
    labels = np.asarray(labels, np.int64)
    known = np.flatnonzero(labels >= 0)
    a = np.atleast_2d(np.asarray(pred_a, np.int64))[:, known]
    b = np.atleast_2d(np.asarray(pred_b, np.int64))[:, known]
    y = labels[known]
    n = len(y)
    diff = (macro_f1_rows(np.broadcast_to(y, a.shape), a, num_classes).mean()
            - macro_f1_rows(np.broadcast_to(y, b.shape), b, num_classes).mean())
    rng = np.random.default_rng(seed)
    d = np.empty(resamples)
    chunk = 250  # resamples scored at once: bounded memory for long test sets
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        ys = y[idx]
        fa = np.stack([macro_f1_rows(ys, row[idx], num_classes) for row in a]).mean(0)
        fb = np.stack([macro_f1_rows(ys, row[idx], num_classes) for row in b]).mean(0)
        d[start:start + len(idx)] = fa - fb
    tail = (1 - level) / 2
    p = min(1.0, 2 * min(float((d <= 0).mean()), float((d >= 0).mean())))
    return {"diff": float(diff), "low": float(np.quantile(d, tail)),
            "high": float(np.quantile(d, 1 - tail)), "p": p}
