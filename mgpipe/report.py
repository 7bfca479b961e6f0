"""Plots and DVC plot data for the fuse and CMPL stages.

Figures are drawn on the Agg canvas without pyplot (no global figure state, safe in worker
processes and without a display) and written atomically. Clips whose label is negative
(-1 = unknown) are left out of confusion matrices and per-class F1.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter
from sklearn.metrics import f1_score

from mgpipe.io import atomic_path

NO_PREDICTION = "(no prediction)"  # a test clip no branch could see; it counts as wrong


def _known(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Clips with a known label; a prediction of -1 means none (the clip counts as wrong)."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in shape")
    keep = labels >= 0
    labels, preds = labels[keep], preds[keep]
    if (labels >= num_classes).any() or (preds < -1).any() or (preds >= num_classes).any():
        raise ValueError(f"labels/preds outside 0..{num_classes - 1} (-1: no prediction)")
    return labels, preds


def confusion_counts(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [C, C], rows = actual, columns = predicted; clips with no prediction (-1) are
    not in the matrix (``confusion_matrix_png`` gives their number)."""
    labels, preds = _known(labels, preds, num_classes)
    labels, preds = labels[preds >= 0], preds[preds >= 0]
    return np.bincount(labels * num_classes + preds,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """F1 per class [C]; NaN for classes absent from ``labels`` (nothing to score)."""
    labels, preds = _known(labels, preds, num_classes)
    f1 = f1_score(labels, preds, labels=np.arange(num_classes), average=None, zero_division=0)
    f1 = f1.astype(np.float64)
    f1[np.bincount(labels, minlength=num_classes) == 0] = np.nan
    return f1


def _save(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")


def confusion_matrix_png(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str],
                         path: str | Path, title: str = "Confusion matrix") -> None:
    """Row-normalised confusion matrix (actual x predicted) with the counts in the cells."""
    c = len(class_names)
    counts = confusion_counts(labels, preds, c)
    rows = counts.sum(1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = max(5.0, 0.42 * c + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of actual class")
    font = max(6.0, min(10.0, 140.0 / c))
    for i, j in zip(*np.nonzero(counts)):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font,
                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(np.arange(c), labels=list(class_names), rotation=60, ha="right",
                  rotation_mode="anchor", fontsize=font + 1)
    ax.set_yticks(np.arange(c), labels=[f"{n} ({r})" for n, r in zip(class_names, rows[:, 0])],
                  fontsize=font + 1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual (clips)")
    none = int((np.asarray(preds)[np.asarray(labels) >= 0] < 0).sum())
    total = int(counts.sum()) + none
    ax.set_title(f"{title}\n{total} clips, accuracy {np.trace(counts) / max(1, total):.3f}"
                 + (f" ({none} with no prediction, counted wrong)" if none else ""))
    _save(fig, path)


def per_class_f1_png(f1_by_branch: Mapping[str, np.ndarray], class_names: Sequence[str],
                     support: np.ndarray, path: str | Path,
                     title: str = "Per-class F1 (classes by training support)") -> None:
    """Grouped bars of per-class F1 [C] for each branch (and fused), classes sorted by training
    ``support`` [C] descending so the long tail reads left to right; support in the tick
    labels and as a grey step line (log scale) on a second axis. NaN F1 (class absent from
    the scored clips) leaves an empty slot."""
    c = len(class_names)
    support = np.asarray(support)
    order = np.argsort(-support, kind="stable")
    names = list(f1_by_branch)
    fig = Figure(figsize=(max(7.0, 0.12 * c * max(1, len(names)) + 3.0), 4.8))
    ax = fig.add_subplot()
    x = np.arange(c)
    width = 0.8 / max(1, len(names))
    for k, b in enumerate(names):
        f1 = np.asarray(f1_by_branch[b], dtype=np.float64)
        if f1.shape != (c,):
            raise ValueError(f"F1 of {b!r} has shape {f1.shape}, expected ({c},)")
        ax.bar(x + (k - (len(names) - 1) / 2) * width, np.nan_to_num(f1[order], nan=0.0),
               width, label=b, hatch="//" if b == "fused" else None,
               edgecolor="black" if b == "fused" else None, linewidth=0.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_xticks(x, labels=[f"{class_names[i]} (n={int(support[i])})" for i in order],
                  rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.6, c - 0.4)
    ax.grid(axis="y", alpha=0.3)
    twin = ax.twinx()
    twin.step(x, np.maximum(support[order], 0.5), where="mid", color="grey", alpha=0.6,
              label="train clips")
    twin.set_yscale("log")
    twin.yaxis.set_major_formatter(ScalarFormatter())
    twin.yaxis.set_minor_formatter(NullFormatter())
    twin.set_ylabel("train clips (log)", color="grey")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, ncol=min(len(names), 6),
              frameon=False)
    ax.set_title(title, pad=24)
    _save(fig, path)


def confusion_rows(labels: np.ndarray, preds: np.ndarray,
                   class_names: Sequence[str]) -> list[dict]:
    """One {actual, predicted} record (class names) per clip with a known label: the input of
    DVC's confusion templates (``x: predicted, y: actual``)."""
    labels, preds = _known(labels, preds, len(class_names))
    return [{"actual": class_names[a], "predicted": class_names[p] if p >= 0 else NO_PREDICTION}
            for a, p in zip(labels.tolist(), preds.tolist())]


def per_class_f1_rows(f1_by_branch: Mapping[str, np.ndarray], class_names: Sequence[str],
                      support: np.ndarray) -> list[dict]:
    """One record per class, sorted by training support descending: {class, support, <branch>:
    F1 for each branch}; NaN F1 becomes None (JSON null). Plot in DVC with ``x: class`` and
    the branch names as ``y``."""
    support = np.asarray(support)
    rows = []
    for i in np.argsort(-support, kind="stable"):
        row = {"class": class_names[i], "support": int(support[i])}
        for b, f1 in f1_by_branch.items():
            v = float(np.asarray(f1, dtype=np.float64)[i])
            row[b] = None if math.isnan(v) else v
        rows.append(row)
    return rows


def cmpl_rounds_png(rounds: Sequence[Mapping], path: str | Path) -> None:
    """CMPL per round and branch: test macro-F1 before (dashed) and after (solid) retraining,
    and the pseudo-label precision. ``rounds``: one dict per round,
    ``{"round": r (default 1, 2, ...), "branches": {b: {"f1_before", "f1_after", "precision",
    "kept" (optional)}}}``; a missing or None value is left as a gap."""
    def get(d: Mapping, key: str) -> float:
        v = d.get(key)
        return float("nan") if v is None else float(v)

    xs = [int(r.get("round", i + 1)) for i, r in enumerate(rounds)]
    branches = list(dict.fromkeys(b for r in rounds for b in r.get("branches", {})))
    fig = Figure(figsize=(11, 4.2))
    ax_f1, ax_p = fig.subplots(1, 2)
    colours = [f"C{k % 10}" for k in range(len(branches))]
    for b, col in zip(branches, colours):
        per = [r.get("branches", {}).get(b, {}) for r in rounds]
        ax_f1.plot(xs, [get(p, "f1_before") for p in per], "o--", color=col, alpha=0.6)
        ax_f1.plot(xs, [get(p, "f1_after") for p in per], "o-", color=col, label=b)
        ax_p.plot(xs, [get(p, "precision") for p in per], "s-", color=col, label=b)
        for x, p in zip(xs, per):
            if p.get("kept") is not None and not math.isnan(get(p, "precision")):
                ax_p.annotate(str(int(p["kept"])), (x, get(p, "precision")), fontsize=7,
                              textcoords="offset points", xytext=(4, 4), color=col)
    for ax, label in ((ax_f1, "test macro-F1 (dashed: before, solid: after)"),
                      (ax_p, "pseudo-label precision (numbers: clips kept)")):
        ax.set_xlabel("CMPL round")
        ax.set_ylabel(label)
        ax.set_xticks(xs)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        if branches:
            ax.legend(fontsize=8)
    fig.suptitle("Cross-modal pseudo-labelling")
    _save(fig, path)
