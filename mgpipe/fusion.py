"""Temperature-scaled late fusion (SPEC section 8).

Per branch b a temperature T_b is fitted on the validation subjects by minimising NLL; the
fused probability is sum_b w_b softmax(z_b / T_b), with the weights from params or fitted on
validation (:func:`fit_weights`). With the chance gate (:func:`fusion_weights`), a branch
whose validation macro-F1 is not above chance (permutation test) gets weight 0 first.
Pure numpy/scipy.
"""
from __future__ import annotations

import itertools
import math
from typing import Collection, Mapping, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from mgpipe.metrics import chance_macro_f1, classification_metrics, predicted_classes


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``z`` along ``axis`` (any shape)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` [N] under softmax(logits [N, C] / T);
    NaN when N = 0."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    logp = log_softmax(logits / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature T in ``bounds`` minimising the validation NLL of softmax(logits [N, C] / T)
    for ``labels`` [N]; 1.0 when there are no labels.

    NLL is convex in 1/T, hence unimodal in log T, so bounded Brent on log T finds the global
    minimum deterministically (perfectly separated data drives T to the lower bound)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    lo, hi = (math.log(b) for b in bounds)
    res = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)),
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    # bounded Brent never evaluates the bounds themselves, where a monotone NLL has its minimum
    best = min((res.x, lo, hi), key=lambda log_t: nll(logits, labels, math.exp(log_t)))
    return float(math.exp(best))


def calibrated_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits [N, C] / T) -> [N, C]."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


def _normalised_weights(names: list[str], weights: Mapping[str, float] | None) -> np.ndarray:
    if weights is None:
        return np.full(len(names), 1.0 / len(names))
    missing = [b for b in names if b not in weights]
    if missing:
        raise ValueError(f"fusion weights missing for branches {missing} (have {sorted(weights)})")
    w = np.array([float(weights[b]) for b in names])
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"fusion weights must be finite, >= 0 and not all 0: "
                         f"{dict(zip(names, w.tolist()))}")
    return w / w.sum()


def fuse(probs: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """sum_b w_b probs[b] -> [N, C] for branch probabilities [N, C] of equal shape; ``weights``
    (branch -> w >= 0) are normalised to sum 1, None = equal. Extra weight keys are ignored.

    A NaN row means the branch has no prediction for that clip (it skipped the clip): the
    clip is fused over the branches that have it, their weights renormalised; a clip that no
    branch has (or whose branches all have weight 0) stays a NaN row."""
    if not probs:
        raise ValueError("fuse needs at least one branch")
    names = list(probs)
    arrays = [np.asarray(probs[b], dtype=np.float64) for b in names]
    shapes = {b: a.shape for b, a in zip(names, arrays)}
    if any(a.ndim != 2 for a in arrays) or len(set(shapes.values())) != 1:
        raise ValueError(f"all branches need probabilities of one shape [N, C]; got {shapes}")
    return fuse_stack(_normalised_weights(names, weights), np.stack(arrays))


def fuse_stack(w: np.ndarray, stack: np.ndarray) -> np.ndarray:
    """Weights [B] (summing to 1) x probabilities [B, N, C] -> [N, C], NaN rows = missing
    (see ``fuse``). Where every branch has the clip this is exactly ``tensordot(w, stack)``."""
    present = ~np.isnan(stack).any(2)                                  # [B, N]
    if present.all():
        return np.tensordot(w, stack, axes=1)
    mass = np.tensordot(w, present.astype(np.float64), axes=1)         # [N]
    total = np.tensordot(w, np.where(present[..., None], stack, 0.0), axes=1)
    out = total / np.where(mass > 0, mass, 1.0)[:, None]
    out[mass <= 0] = np.nan
    return out


def aligned(ids: Sequence[str], values: np.ndarray, want: Sequence[str]) -> np.ndarray:
    """Rows of ``values`` [len(ids), C] reordered to the clip ids ``want`` -> [len(want), C]
    float64, NaN rows for clips missing from ``ids`` (the branch skipped them)."""
    values = np.asarray(values, dtype=np.float64)
    pos = {str(c): i for i, c in enumerate(ids)}
    out = np.full((len(want), values.shape[1] if values.ndim == 2 else 0), np.nan)
    rows = [(j, pos[str(c)]) for j, c in enumerate(want) if str(c) in pos]
    if rows:
        dst, src = map(list, zip(*rows))
        out[dst] = values[src]
    return out


def _prob_nll(probs: np.ndarray, labels: np.ndarray) -> float:
    p = np.nan_to_num(probs[np.arange(len(labels)), labels], nan=0.0)  # no prediction: p = 0
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def simplex_grid(num: int, step: float) -> np.ndarray:
    """All weight vectors [P, num] on the simplex with coordinates in multiples of ``step``
    (``1/step`` rounded to an integer n): P = C(n + num - 1, num - 1) points, e.g. 286 for
    4 branches at step 0.1, 1771 at step 0.05."""
    n = max(1, int(round(1.0 / step)))
    # stars and bars: choose num - 1 bar positions among n + num - 1 slots
    pts = []
    for bars in itertools.combinations(range(n + num - 1), num - 1):
        edges = (-1,) + bars + (n + num - 1,)
        pts.append([edges[i + 1] - edges[i] - 1 for i in range(num)])
    return np.asarray(pts, dtype=np.float64).reshape(-1, num) / n


def fit_weights(val_probs: Mapping[str, np.ndarray], labels: np.ndarray, grid_step: float = 0.1,
                max_points: int = 20000) -> dict[str, float]:
    """Fusion weights (branch -> w, summing to 1) maximising validation macro-F1 of
    :func:`fuse` over a simplex grid (:func:`simplex_grid`), given calibrated val
    probabilities [N, C] per branch and ``labels`` [N].

    Ties in macro-F1 go to the lower fused NLL, then to the point closest to equal weights, so
    the result is deterministic. Cost: P grid points x one O(N C) fusion + F1 each; P is
    C(1/step + B - 1, B - 1) (286 for 4 branches at 0.1), and a grid over ``max_points`` is
    refused (use a coarser step). No labels -> equal weights."""
    names = list(val_probs)
    labels = np.asarray(labels, dtype=np.int64)
    if not names:
        raise ValueError("fit_weights needs at least one branch")
    equal = {b: 1.0 / len(names) for b in names}
    fuse(val_probs)  # shape check
    if len(labels) == 0 or len(names) == 1:
        return equal
    n = max(1, int(round(1.0 / grid_step)))
    points = math.comb(n + len(names) - 1, len(names) - 1)
    if points > max_points:
        raise ValueError(f"weight grid of {points} points for {len(names)} branches at step "
                         f"{grid_step} exceeds max_points={max_points}; use a coarser step")
    stack = np.stack([np.asarray(val_probs[b], dtype=np.float64) for b in names])
    uniform = np.full(len(names), 1.0 / len(names))
    best_key, best_w = None, uniform
    for w in simplex_grid(len(names), 1.0 / n):
        fused = fuse_stack(w, stack)
        f1 = classification_metrics(fused, labels)["macro_f1"]
        # rounding keeps float noise from breaking exact ties between equivalent points
        key = (-round(f1, 12), round(_prob_nll(fused, labels), 12),
               round(float(np.abs(w - uniform).sum()), 12))
        if best_key is None or key < best_key:
            best_key, best_w = key, w
    return {b: float(x) for b, x in zip(names, best_w)}


# ---- the chance gate: branches validation shows at chance get weight 0 ----------------------

CHANCE_ALPHA = 0.05          # gate when the permutation p-value is >= this
CHANCE_PERMUTATIONS = 2000   # as the train stage's metrics/train/<b>.json
CHANCE_SEED = 0              # fixed: the same probabilities always give the same gate


def chance_test(val_probs: Mapping[str, np.ndarray], labels: np.ndarray,
                alpha: float = CHANCE_ALPHA, permutations: int = CHANCE_PERMUTATIONS,
                seed: int = CHANCE_SEED) -> dict[str, dict]:
    """Is each branch's validation macro-F1 above chance? Per branch, the permutation test of
    ``mgpipe.metrics.chance_macro_f1`` (the labels shuffled against the branch's predictions,
    ``permutations`` times with a fixed ``seed``) on the val clips it predicts (no NaN row)
    whose label is known (>= 0), as the train stage reports it in metrics/train/<b>.json.

    val_probs: branch -> [N, C] (any monotone scores; only the argmax is used); labels [N].
    Returns branch -> {macro_f1, chance_p95, p_value, clips, gated}: ``gated`` is True when
    p_value >= ``alpha``, i.e. (up to ties) the branch's macro-F1 is not above the 95th
    percentile of the shuffles. A branch with no such clip cannot be tested: its numbers are
    None and it is not gated."""
    labels = np.asarray(labels, dtype=np.int64)
    out = {}
    for b, p in val_probs.items():
        pred = predicted_classes(p)
        seen = (pred >= 0) & (labels >= 0)
        if not seen.any():
            out[b] = {"macro_f1": None, "chance_p95": None, "p_value": None, "clips": 0,
                      "gated": False}
            continue
        r = chance_macro_f1(pred[seen], labels[seen], permutations, seed)
        out[b] = {"macro_f1": r["macro_f1"], "chance_p95": r["chance_p95"],
                  "p_value": r["p_value"], "clips": int(seen.sum()),
                  "gated": bool(r["p_value"] >= alpha)}
    return out


def gate_weights(weights: Mapping[str, float], gated: Collection[str]) -> dict[str, float]:
    """``weights`` (branch -> w >= 0, not all 0) with the ``gated`` branches set to 0 and the
    rest renormalised to sum 1. Raises ValueError when that leaves no weight (every branch
    with w > 0 is gated); :func:`fusion_weights` then keeps them all."""
    names = list(weights)
    w = _normalised_weights(names, weights)
    kept = np.array([0.0 if b in gated else x for b, x in zip(names, w)])
    if kept.sum() <= 0:
        raise ValueError(f"gating {sorted(gated)} leaves no fusion weight: "
                         f"{dict(zip(names, w.tolist()))}")
    return {b: float(x) for b, x in zip(names, kept / kept.sum())}


def fusion_weights(val_probs: Mapping[str, np.ndarray], labels: np.ndarray,
                   weights="equal", chance_gate: bool = True, **test_kwargs
                   ) -> tuple[dict[str, float], dict]:
    """The fusion weights (branch -> w, summing to 1) for ``weights`` = "equal" (or None),
    "fit" (:func:`fit_weights` on validation) or a {branch: w} map, after the chance gate.

    With ``chance_gate``, branches whose validation macro-F1 is not above chance
    (:func:`chance_test`; ``test_kwargs`` go to it) get weight 0 first: "equal" shares the
    weight among the others, "fit" fits over the others only, a map has the gated branches'
    weights set to 0 and the rest renormalised. If that would leave no weight (every branch
    gated, or a map whose ungated branches all have weight 0), nothing is gated and
    ``note`` says so.

    val_probs: branch -> calibrated val probabilities [N, C] (NaN rows: no prediction);
    labels [N]. Returns (weights, info) with info = {"gated": [branches, in val_probs
    order], "chance": chance_test's result ({} without the gate), "note": str or ""}."""
    names = list(val_probs)
    if not names:
        raise ValueError("fusion_weights needs at least one branch")
    if not (weights in ("equal", "fit") or weights is None or isinstance(weights, Mapping)):
        raise ValueError(f"fusion weights must be equal, fit or a {{branch: w}} map, "
                         f"not {weights!r}")
    tests = chance_test(val_probs, labels, **test_kwargs) if chance_gate else {}
    gated = [b for b in names if tests.get(b, {}).get("gated")]
    note = ""
    if gated and len(gated) == len(names):
        note = (f"every branch ({', '.join(names)}) is at chance on validation; "
                f"none is gated")
        gated = []
    explicit = None
    if isinstance(weights, Mapping):
        explicit = {b: float(weights[b]) if b in weights else None for b in names}
        missing = [b for b, x in explicit.items() if x is None]
        if missing:
            raise ValueError(f"fusion weights missing for branches {missing} "
                             f"(have {sorted(weights)})")
        try:
            w = gate_weights(explicit, gated)
        except ValueError:
            note = (f"the branches not gated ({', '.join(b for b in names if b not in gated)}) "
                    f"all have weight 0 in the given weights; none is gated")
            gated = []
            w = gate_weights(explicit, gated)
    kept = [b for b in names if b not in gated]
    if weights == "fit":
        fitted = fit_weights({b: val_probs[b] for b in kept}, labels)
        w = {b: fitted.get(b, 0.0) for b in names}
    elif explicit is None:
        w = {b: 1.0 / len(kept) if b in kept else 0.0 for b in names}
    return w, {"gated": gated, "chance": tests, "note": note}


def fuse_with_fallback(probs: Mapping[str, np.ndarray], weights: Mapping[str, float],
                       fallback: Mapping[str, float] | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fuse` with ``weights``; a clip that only branches of weight 0 predict (e.g.
    gated branches, when the others skipped the clip) would be a NaN row, so it is fused
    with ``fallback`` (None = equal weights) instead, over the branches that have it.

    Returns (fused [N, C], fell_back [N] bool: the rows taken from the fallback). Rows no
    branch predicts stay NaN."""
    fused = fuse(probs, weights)
    empty = np.isnan(fused).any(1)
    fell_back = np.zeros(len(fused), dtype=bool)
    if empty.any():
        alt = fuse(probs, fallback)
        fell_back = empty & ~np.isnan(alt).any(1)
        fused[fell_back] = alt[fell_back]
    return fused, fell_back
