"""Classification metrics used everywhere (training, CMPL reports, fusion)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Fraction of clips whose label is among the k highest scores [N, C]."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1)[:, :k]
    hit = (top == labels[:, None]).any(1) & ~np.isnan(scores).any(1)  # no prediction: a miss
    return float(hit.mean())


def predicted_classes(scores: np.ndarray) -> np.ndarray:
    """argmax per row of scores [N, C] -> [N] int64; -1 for rows with NaN (no prediction)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(scores).any(1), -1, np.nan_to_num(scores, nan=0.0).argmax(1))


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """macro_f1 (the headline; averaged over the classes present in ``labels``), micro_f1
    (= top-1 accuracy for single-label clips) and top5, from scores [N, C] and labels [N].
    A row with NaN scores is a clip with no prediction: it counts as wrong."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return {"macro_f1": float("nan"), "micro_f1": float("nan"), "top5": float("nan")}
    pred = predicted_classes(scores)
    return {
        "macro_f1": float(f1_score(labels, pred, labels=np.unique(labels), average="macro",
                                   zero_division=0)),
        "micro_f1": float((pred == labels).mean()),
        "top5": topk_accuracy(scores, labels, 5),
    }


def chance_macro_f1(pred: np.ndarray, labels: np.ndarray, permutations: int = 2000,
                    seed: int = 0) -> dict[str, float]:
    """How far macro-F1 is above chance: the labels are shuffled against the predictions
    ``permutations`` times (a classifier with the same prediction frequencies that ignores
    its input). Returns the observed macro-F1, the null's mean and 95th percentile, and the
    one-sided permutation p-value (1 + #null >= observed) / (1 + permutations).

    pred, labels: class indices [N]; macro over the classes present in ``labels``, as in
    ``classification_metrics``.
    """
    pred, labels = np.asarray(pred, np.int64), np.asarray(labels, np.int64)
    if len(labels) == 0:
        nan = float("nan")
        return {"macro_f1": nan, "chance_mean": nan, "chance_p95": nan, "p_value": nan}
    present = np.unique(labels)
    c = int(max(pred.max(), labels.max())) + 1
    n_pred, n_true = np.bincount(pred, minlength=c), np.bincount(labels, minlength=c)
    rng = np.random.default_rng(seed)
    shuffled = np.stack([labels] + [rng.permutation(labels) for _ in range(permutations)])
    hit = shuffled == pred[None]
    rows = np.broadcast_to(np.arange(len(shuffled))[:, None], hit.shape)
    tp = np.bincount(rows[hit] * c + np.broadcast_to(pred, hit.shape)[hit],
                     minlength=len(shuffled) * c).reshape(len(shuffled), c)
    f1 = (2 * tp[:, present] / (n_pred + n_true)[present]).mean(1)  # n_true > 0 here
    observed, null = float(f1[0]), f1[1:]
    return {"macro_f1": observed, "chance_mean": float(null.mean()),
            "chance_p95": float(np.quantile(null, 0.95)),
            "p_value": float((1 + (null >= observed - 1e-12).sum()) / (1 + permutations))}
