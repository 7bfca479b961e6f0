"""Fuse/CMPL plots and DVC plot rows."""
from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from mgpipe.report import (cmpl_rounds_png, confusion_counts, confusion_matrix_png,
                           confusion_rows, per_class_f1, per_class_f1_png, per_class_f1_rows)


def fake(c, n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, c, n))
    return y, pred


def check_png(path, min_side=300):
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side
    assert img[..., :3].std() > 0.01  # not a blank canvas
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temporary left behind
    return img


@pytest.mark.parametrize("c", [10, 32])
def test_confusion_matrix_png(tmp_path, c):
    y, pred = fake(c)
    names = [f"class_{i}_long_name" for i in range(c)]
    path = tmp_path / "plots" / "confusion.png"
    confusion_matrix_png(y, pred, names, path, title="fused")
    img = check_png(path)
    assert img.shape[1] < 4000


def test_confusion_counts_and_rows_skip_unknown():
    y = np.array([0, 1, 1, 2, -1])
    pred = np.array([0, 1, 2, 2, 0])
    np.testing.assert_array_equal(confusion_counts(y, pred, 3),
                                  [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    rows = confusion_rows(y, pred, ["a", "b", "c"])
    assert len(rows) == 4
    assert rows[2] == {"actual": "b", "predicted": "c"}
    json.dumps(rows)
    with pytest.raises(ValueError):
        confusion_rows(np.array([0]), np.array([3]), ["a", "b", "c"])


def test_per_class_f1_and_rows():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    f1 = per_class_f1(y, pred, 3)
    np.testing.assert_allclose(f1[:2], [2 / 3, 0.8])
    assert np.isnan(f1[2])  # class 2 absent from the scored clips
    rows = per_class_f1_rows({"stcnn": f1, "fused": np.array([1.0, 0.5, 0.0])},
                             ["a", "b", "c"], support=np.array([5, 40, 1]))
    assert [r["class"] for r in rows] == ["b", "a", "c"]  # by training support
    assert rows[0] == {"class": "b", "support": 40, "stcnn": pytest.approx(0.8), "fused": 0.5}
    assert rows[2]["stcnn"] is None
    json.dumps(rows)


def test_per_class_f1_png(tmp_path):
    c = 32
    rng = np.random.default_rng(0)
    support = np.round(200 * 0.85 ** np.arange(c)).astype(int)
    f1 = {b: rng.random(c) for b in ["stcnn", "posec3d", "r2plus1d", "swin3d", "fused"]}
    f1["stcnn"][5] = np.nan
    path = tmp_path / "per_class_f1.png"
    per_class_f1_png(f1, [f"cls{i}" for i in range(c)], support, path)
    check_png(path)
    with pytest.raises(ValueError, match="shape"):
        per_class_f1_png({"a": np.zeros(3)}, ["x", "y"], np.array([1, 2]), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_cmpl_rounds_png(tmp_path):
    rounds = [{"round": r, "branches": {b: {"f1_before": 0.4 + 0.05 * r, "f1_after": 0.45 + 0.05 * r,
                                            "precision": 0.7 + 0.05 * r, "kept": 20 + 5 * r}
                                        for b in ["stcnn", "posec3d"]}}
              for r in (1, 2)]
    rounds[1]["branches"]["posec3d"]["precision"] = None
    path = tmp_path / "cmpl.png"
    cmpl_rounds_png(rounds, path)
    check_png(path)
