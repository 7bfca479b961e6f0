"""Bad numbers and reruns: a NaN keypoint never reaches a model, a loss that goes non-finite
stops training with a clear error, and identical training writes identical bytes (so DVC
keeps downstream stages cached)."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch

from mgpipe.data import normalize_joints
from mgpipe.io import save_torch_atomic
from mgpipe.layout import clean_keypoints
from mgpipe.train import train_branch
from test_train import TINY, toy_data

QUICK = {**TINY, "epochs": 2}


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_clean_keypoints_zeroes_non_finite_keypoints():
    kp = np.ones((2, 68, 3), np.float32)
    kp[0, 3, 0] = np.nan
    kp[1, 5, 2] = np.inf
    kp[1, 6, 2] = -0.5
    out, n = clean_keypoints(kp)
    assert n == 3 and np.isfinite(out).all()
    assert (out[0, 3] == 0).all() and (out[1, 5] == 0).all() and (out[1, 6] == 0).all()
    assert (out[0, 4] == 1).all() and np.isnan(kp[0, 3, 0])  # the input is left alone


def test_normalize_joints_treats_a_nan_joint_as_unseen():
    kp = np.zeros((4, 68, 3), np.float32)
    kp[..., :2], kp[..., 2] = np.arange(68)[None, :, None], 1.0
    clean = normalize_joints(kp)
    kp[2, 10, 0] = np.nan  # a detector glitch with a good score
    out = normalize_joints(kp)
    assert np.isfinite(out).all() and (out[2, 10] == 0).all()
    assert np.array_equal(np.delete(out.reshape(-1, 3), 2 * 68 + 10, 0),
                          np.delete(clean.reshape(-1, 3), 2 * 68 + 10, 0))


def test_one_nan_keypoint_does_not_poison_training(tmp_path):
    """Before: `loss nan`, exit 0, NaN weights and all-NaN test logits."""
    data = toy_data()
    data.arrays[data.train_ids[0]][5, 30, 0] = np.nan
    m = train_branch("stcnn", data, QUICK, tmp_path, progress=False)
    assert np.isfinite(m["loss"])
    state = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    z = np.load(tmp_path / "logits.npz")
    assert np.isfinite(z["val_logits"]).all() and np.isfinite(z["test_logits"]).all()


def test_a_non_finite_loss_stops_training_with_a_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match=r"stcnn epoch 1: training loss is .*not finite.*branches\.stcnn\.lr"):
        train_branch("stcnn", toy_data(), {**QUICK, "lr": 1e30, "warmup_epochs": 0}, tmp_path,
                     progress=False)
    assert not (tmp_path / "best.pt").exists()


def test_identical_training_writes_identical_bytes(tmp_path):
    """Checkpoints used to hold the random temporary file name they were written under (and
    the epoch's wall time)."""
    train_branch("stcnn", toy_data(), QUICK, tmp_path / "a", progress=False)
    time.sleep(2.1)  # a zip timestamp (2-second resolution) would show
    train_branch("stcnn", toy_data(), QUICK, tmp_path / "b", progress=False)
    for name in ("best.pt", "last.pt", "logits.npz"):
        assert _sha(tmp_path / "a" / name) == _sha(tmp_path / "b" / name), name


def test_atomic_savers_are_byte_stable(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    save_torch_atomic(obj, tmp_path / "x.pt")
    save_torch_atomic(obj, tmp_path / "y.pt")
    assert (tmp_path / "x.pt").read_bytes() == (tmp_path / "y.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["w"], obj["w"])
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
