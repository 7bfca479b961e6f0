"""Training losses (SPEC section 6): class-weighted cross-entropy plus the orthogonal semantic
embedding (OSE) loss. Pure functions."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

WEIGHT_MODES = ("none", "sqrt", "inverse")


def class_weights(counts: Sequence[int] | np.ndarray | torch.Tensor, mode: str = "sqrt"
                  ) -> torch.Tensor:
    """Per-class cross-entropy weights [C] (float32) from training counts [C].

    none: all ones. sqrt: w_c proportional to n_c^(-1/2). inverse: w_c proportional to 1/n_c.
    Weights are normalised so their mean over the classes that have samples is 1. A class with
    no training samples gets weight 0 (it never occurs as a target, so its weight has no effect
    on the loss; 0 keeps the vector finite) and is left out of the mean.
    """
    n = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    if n.ndim != 1 or (n < 0).any():
        raise ValueError(f"counts must be a 1-D vector of non-negative numbers, got {counts!r}")
    if mode == "none":
        return torch.ones(len(n), dtype=torch.float32)
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown class weight mode {mode!r}; expected one of {WEIGHT_MODES}")
    present = n > 0
    if not present.any():
        raise ValueError("every class count is 0")
    w = torch.zeros_like(n)
    w[present] = n[present] ** (-0.5 if mode == "sqrt" else -1.0)
    w[present] /= w[present].mean()
    return w.float()


def orthonormal_anchors(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Fixed class anchors [C, D]: orthonormal rows (A @ A.T = I), from the QR decomposition of
    a Gaussian matrix drawn with ``seed``. Needs D >= C."""
    if dim < num_classes:
        raise ValueError(f"OSE needs embedding dim >= number of classes to give every class an "
                         f"orthogonal anchor, got dim={dim} < num_classes={num_classes}")
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, num_classes, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # unique QR: positive diagonal of R
    return q.T.contiguous().float()


def ose_loss(embedding: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor
             ) -> torch.Tensor:
    """mean_i (1 - cos(embedding_i, anchors[labels_i])): embedding [N, D], labels [N] int,
    anchors [C, D]. Scale-invariant; 0 when aligned, 1 orthogonal, 2 opposite."""
    target = anchors.to(embedding.device, torch.float32)[labels]
    return (1 - F.cosine_similarity(embedding.float(), target, dim=1)).mean()


class Loss(NamedTuple):
    """``total`` (backpropagate this), and its parts ``ce`` and ``ose`` for logging."""
    total: torch.Tensor
    ce: torch.Tensor
    ose: torch.Tensor


def total_loss(logits: torch.Tensor, embedding: torch.Tensor, labels: torch.Tensor,
               weights: torch.Tensor | None, anchors: torch.Tensor | None,
               ose_weight: float, ce_denom: torch.Tensor | float | None = None,
               count_denom: torch.Tensor | float | None = None) -> Loss:
    """Weighted CE + ose_weight * OSE. logits [N, C], embedding [N, D], labels [N],
    weights [C] or None (unweighted), anchors [C, D] (may be None when ose_weight is 0).

    The CE is torch's weighted mean, sum_i w_{y_i} l_i / sum_i w_{y_i}, and OSE a plain mean.
    Data-parallel training passes the denominators of the *global* batch (``ce_denom`` =
    sum of w_{y_i}, ``count_denom`` = number of clips, over all processes), so that the
    processes' losses add up to the loss of the whole batch."""
    if weights is not None:
        weights = weights.to(logits.device, torch.float32)
    per_clip = F.cross_entropy(logits.float(), labels, weight=weights, reduction="none")
    if ce_denom is None:
        ce_denom = weights[labels].sum() if weights is not None else len(labels)
    ce = per_clip.sum() / ce_denom
    if ose_weight:
        if anchors is None:
            raise ValueError("ose_weight > 0 needs anchors")
        ose = ose_loss(embedding, labels, anchors)
        if count_denom is not None:
            ose = ose * len(labels) / count_denom
    else:
        ose = torch.zeros((), device=logits.device)
    return Loss(ce + ose_weight * ose, ce, ose)
