"""Class weights, orthonormal anchors, OSE and the total loss on hand-checked cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mgpipe.losses import class_weights, orthonormal_anchors, ose_loss, total_loss


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32),
                               torch.as_tensor(b, dtype=torch.float32))


def test_class_weights_sqrt():
    # n^-1/2 = [1, 1/2, 1/4], mean 7/12 -> [12/7, 6/7, 3/7]
    w = class_weights([1, 4, 16], "sqrt")
    assert w.dtype == torch.float32 and w.shape == (3,)
    close(w, [12 / 7, 6 / 7, 3 / 7])
    close(w.mean(), 1.0)


def test_class_weights_inverse_and_none():
    # 1/n = [1, 1/4, 1/16], mean 21/48 -> [48/21, 12/21, 3/21]
    close(class_weights([1, 4, 16], "inverse"), [48 / 21, 12 / 21, 3 / 21])
    close(class_weights([1, 4, 16], "none"), [1, 1, 1])
    close(class_weights(torch.tensor([5, 5]), "sqrt"), [1, 1])


def test_class_weights_empty_class_gets_zero():
    w = class_weights([4, 0, 16], "sqrt")  # present: [1/2, 1/4] -> mean 3/8
    close(w, [4 / 3, 0, 2 / 3])
    with pytest.raises(ValueError, match="mode"):
        class_weights([1, 2], "log")
    with pytest.raises(ValueError):
        class_weights([0, 0], "sqrt")


def test_anchors_orthonormal_and_seeded():
    a = orthonormal_anchors(5, 8, seed=3)
    assert a.shape == (5, 8) and a.dtype == torch.float32
    torch.testing.assert_close(a @ a.T, torch.eye(5), atol=1e-6, rtol=0)
    assert torch.equal(a, orthonormal_anchors(5, 8, seed=3))
    assert not torch.allclose(a, orthonormal_anchors(5, 8, seed=4))
    square = orthonormal_anchors(4, 4, seed=0)
    torch.testing.assert_close(square @ square.T, torch.eye(4), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="dim"):
        orthonormal_anchors(10, 8, seed=0)


def test_ose_values():
    anchors = torch.eye(3, 4)  # anchor c = e_c
    labels = torch.tensor([1])
    close(ose_loss(torch.tensor([[0.0, 5.0, 0.0, 0.0]]), labels, anchors), 0.0)   # parallel
    close(ose_loss(torch.tensor([[2.0, 0.0, 0.0, 1.0]]), labels, anchors), 1.0)   # orthogonal
    close(ose_loss(torch.tensor([[0.0, -0.1, 0.0, 0.0]]), labels, anchors), 2.0)  # opposite
    # 45 degrees: 1 - 1/sqrt(2), for any scale; the batch mean of 0 and 2 is 1
    e = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    close(ose_loss(e, labels, anchors), 1 - 1 / math.sqrt(2))
    close(ose_loss(1000 * e, labels, anchors), 1 - 1 / math.sqrt(2))
    close(ose_loss(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]), torch.tensor([0, 0]),
                   anchors), 1.0)


def test_total_loss_weighted_ce_and_parts():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0]],
                          requires_grad=True)
    labels = torch.tensor([0, 2, 2])
    weights = class_weights([1, 4, 16], "sqrt")
    # by hand: weighted mean of -log softmax at the target, weights [12/7, 3/7, 3/7]
    nll = -torch.log_softmax(logits.detach(), 1)[torch.arange(3), labels]
    w = weights[labels]
    expected_ce = (w * nll).sum() / w.sum()
    anchors = orthonormal_anchors(3, 4, seed=0)
    emb = anchors[labels].clone()
    emb[1] = -emb[1]  # OSE parts 0, 2, 0 -> 2/3

    loss = total_loss(logits, emb, labels, weights, anchors, ose_weight=0.5)
    close(loss.ce, expected_ce)
    close(loss.ce, F.cross_entropy(logits, labels, weight=weights))
    close(loss.ose, 2 / 3)
    close(loss.total, expected_ce + 0.5 * 2 / 3)
    loss.total.backward()
    assert logits.grad is not None

    unweighted = total_loss(logits, emb, labels, None, None, ose_weight=0.0)
    close(unweighted.total, F.cross_entropy(logits, labels))
    close(unweighted.ose, 0.0)
    with pytest.raises(ValueError, match="anchors"):
        total_loss(logits, emb, labels, None, None, ose_weight=1.0)
