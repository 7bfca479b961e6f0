"""Classification metrics used everywhere (training, CMPL reports, fusion)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Fraction of clips whose label is among the k highest scores [N, C]."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """macro_f1 (the headline; averaged over the classes present in ``labels``), micro_f1
    (= top-1 accuracy for single-label clips) and top5, from scores [N, C] and labels [N]."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return {"macro_f1": float("nan"), "micro_f1": float("nan"), "top5": float("nan")}
    pred = scores.argmax(1)
    return {
        "macro_f1": float(f1_score(labels, pred, labels=np.unique(labels), average="macro",
                                   zero_division=0)),
        "micro_f1": float((pred == labels).mean()),
        "top5": topk_accuracy(scores, labels, 5),
    }
