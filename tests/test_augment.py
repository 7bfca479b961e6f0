"""Keypoint-space augmentation, heatmaps drawn per batch, flip test-time augmentation and
params profiles (issue #11's real-data training profile)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mgpipe import layout
from mgpipe.augment import (AUGMENT_DEFAULTS, KeypointAug, apply_keypoint_aug,
                            augment_config, draw_keypoint_aug)
from mgpipe.data import ClipDataset, draw_heatmaps, normalize_joints, sample_indices
from mgpipe.heatmaps import render_clip
from mgpipe.models import build_model
from mgpipe.train import predict


def _skeleton(t: int = 20, seed: int = 0) -> np.ndarray:
    """A moving 68-keypoint skeleton [T, 68, 3] in pixels; the right hand unseen."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(100, 300, (68, 2))
    drift = np.linspace(0, 30, t)[:, None, None] * rng.normal(size=(1, 68, 2))
    kp = np.concatenate([base + drift, np.ones((t, 68, 1))], -1).astype(np.float32)
    kp[:, layout.RIGHT_HAND:] = 0
    return kp


def _identity(joints: int = 68) -> KeypointAug:
    return KeypointAug(np.eye(2, dtype=np.float32), np.zeros(2, np.float32), False,
                       np.ones(joints, bool))


def test_rotation_by_hand():
    kp = np.zeros((1, 68, 3), np.float32)
    kp[0, 0] = (2.0, 1.0, 1.0)          # (1, 0) from the centre (1, 1)
    aug = _identity()
    aug.matrix = np.array([[0, -1], [1, 0]], np.float32)  # +90 degrees
    out = apply_keypoint_aug(kp, aug, centre=(1.0, 1.0), unit=1.0)
    np.testing.assert_allclose(out[0, 0], (1.0, 2.0, 1.0), atol=1e-6)
    assert (out[0, 1:] == 0).all()      # unseen stays (0, 0, 0), not moved to the centre


def test_shift_is_in_units_and_dropout_hides_joints():
    kp = _skeleton(4)
    aug = _identity()
    aug.shift = np.array([0.5, -0.25], np.float32)
    aug.keep[11] = False
    out = apply_keypoint_aug(kp, aug, centre=(0, 0), unit=8.0)
    seen = kp[..., 2] > 0
    seen[:, 11] = False
    np.testing.assert_allclose(out[..., :2][seen], (kp[..., :2] + [4.0, -2.0])[seen], rtol=1e-6)
    assert (out[:, 11] == 0).all()


def test_flip_mirrors_and_swaps_sides():
    kp = _skeleton(3)
    aug = _identity()
    aug.flip = True
    out = apply_keypoint_aug(kp, aug, centre=(10.0, 0.0), unit=1.0)
    # the old left shoulder (11) is now the right shoulder (12), mirrored about x = 10
    np.testing.assert_allclose(out[:, 12, 0], 20 - kp[:, 11, 0], rtol=1e-6)
    np.testing.assert_allclose(out[:, 12, 1], kp[:, 11, 1])
    # the unseen right hand became the unseen left hand
    assert (out[:, layout.LEFT_HAND:layout.RIGHT_HAND] == 0).all()
    assert (out[:, layout.RIGHT_HAND:, 2] == 1).all()


def test_draw_is_seeded_and_identity_without_rng():
    cfg = augment_config({"rotate": 20, "shear": 0.1, "joint_dropout": 0.2})
    a = draw_keypoint_aug(np.random.default_rng([1, 2, 3]), cfg)
    b = draw_keypoint_aug(np.random.default_rng([1, 2, 3]), cfg)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_array_equal(a.keep, b.keep)
    assert 0 < (~a.keep).sum() < 68
    ident = draw_keypoint_aug(None, cfg)
    assert np.array_equal(ident.matrix, np.eye(2)) and not ident.flip and ident.keep.all()
    with pytest.raises(ValueError, match="unknown key"):
        augment_config({"rotation": 10})
    assert augment_config(None) is None
    assert augment_config({})["scale"] == AUGMENT_DEFAULTS["scale"]


def test_rendered_heatmaps_at_evaluation_equal_the_stage_volume():
    kp = _skeleton(37, seed=3)
    cfg = dict(mode="joint", sigma=0.8, size=[32, 24], frames=16, margin=0.1)
    stored, _ = render_clip(kp, (640, 480), size=(32, 24), sigma=0.8, mode="joint", frames=16,
                            margin=0.1)
    np.testing.assert_array_equal(draw_heatmaps(kp, cfg, None, None), stored)
    limb = dict(cfg, mode="limb")
    stored, _ = render_clip(kp, (640, 480), size=(32, 24), sigma=0.8, mode="limb", frames=16,
                            margin=0.1)
    np.testing.assert_array_equal(draw_heatmaps(kp, limb, None, None), stored)


def test_rendered_heatmaps_follow_the_augmentation():
    kp = _skeleton(20, seed=4)
    cfg = dict(mode="joint", sigma=0.8, size=[32, 32], frames=8, margin=0.1)
    aug = augment_config({"flip": False, "rotate": 30, "translate": 0.1})
    a = draw_heatmaps(kp, cfg, np.random.default_rng(0), aug)
    b = draw_heatmaps(kp, cfg, np.random.default_rng(0), aug)
    c = draw_heatmaps(kp, cfg, np.random.default_rng(1), aug)
    assert a.shape == (68, 8, 32, 32) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a[layout.RIGHT_HAND:].max() == 0    # unseen joints draw nothing


def test_augmented_joints_at_evaluation_equal_the_default_path():
    kp = _skeleton(30)
    arrays = {"c": kp}
    plain = ClipDataset("joints", arrays, ["c"], [0], frames=16)
    keyspace = ClipDataset("joints", arrays, ["c"], [0], frames=16, augment={"rotate": 15})
    np.testing.assert_array_equal(plain[0][0].numpy(), keyspace[0][0].numpy())
    trained = ClipDataset("joints", arrays, ["c"], [0], train=True, frames=16,
                          augment={"rotate": 15, "flip": False})
    x, aug, _, _ = trained[0]
    assert aug.tolist() == [0, 1, 0, 1, 0, 0]  # the batch-level step does nothing more
    assert not np.allclose(x.numpy(), normalize_joints(kp)[sample_indices(30, 16, None)])
    assert trained.flip is False


def test_flip_off_means_no_mirroring_in_the_default_path():
    kp = _skeleton(10)
    ds = ClipDataset("heatmap", {"c": np.zeros((68, 4, 8, 8), np.uint8)}, ["c"], [0],
                     train=True, augment={"flip": False})
    assert all(ds.batch([0])[1][0, 0] == 0 for ds.epoch in range(20))
    assert ClipDataset("joints", {"c": kp}, ["c"], [0], train=True).flip is True


def test_test_flip_averages_a_clip_and_its_mirror():
    torch.manual_seed(0)
    kps = {f"c{i}": _skeleton(24, seed=i) for i in range(3)}
    ds = ClipDataset("joints", kps, list(kps), [0, 1, 2], frames=16)
    model = build_model("stcnn", 4, 5, embed_dim=8, channels=[8], strides=[1]).eval()
    plain = predict(model, ds, torch.device("cpu"))
    both = predict(model, ds, torch.device("cpu"), test_flip=True)
    x, aug, _, _ = ds.batch([0, 1, 2])
    aug[:, 0] = 1
    with torch.no_grad():
        mirrored = model(ds.to_input(x, aug))[0].numpy()
    np.testing.assert_allclose(both, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)


# ---- params profiles -----------------------------------------------------------------------

def test_profile_merges_into_params_and_keeps_comments(tmp_path):
    from pathlib import Path

    from mgpipe.__main__ import main
    from mgpipe.params import read_params

    root = Path(__file__).resolve().parents[1]
    params = tmp_path / "params.yaml"
    params.write_text((root / "params.yaml").read_text())
    assert main(["profile", "real-skeleton", "--params", str(params), "--dry-run"]) == 0
    assert params.read_text() == (root / "params.yaml").read_text()
    assert main(["profile", "real-skeleton", "--params", str(params)]) == 0
    text = params.read_text()
    assert "# mgpipe parameters, one block per stage" in text      # comments survive
    p = read_params(params)
    assert p["branches"]["stcnn"]["epochs"] == 60
    assert p["branches"]["stcnn"]["augment"]["rotate"] == 15
    assert p["branches"]["stcnn"]["lr"] == 0.002                   # untouched keys stay
    assert list(p["branches"]["posec3d"]["render"]["size"]) == [32, 32]
    assert p["branches"]["posec3d"]["input"] == "data/interim/keypoints.h5"
    assert p["branches"]["r2plus1d"]["epochs"] == 60               # other branches untouched
    # applying it again changes nothing
    assert main(["profile", "real-skeleton", "--params", str(params)]) == 0
    assert params.read_text() == text


def test_profile_errors_are_clear(tmp_path, capsys):
    from pathlib import Path

    from mgpipe.__main__ import main

    root = Path(__file__).resolve().parents[1]
    params = tmp_path / "params.yaml"
    params.write_text((root / "params.yaml").read_text())
    assert main(["profile", "no-such-profile", "--params", str(params)]) == 2
    assert "real-skeleton" in capsys.readouterr().err              # lists what exists
    bad = tmp_path / "bad.yaml"
    bad.write_text("branches:\n  stcnn:\n    augment: {rotation: 10}\n")
    assert main(["profile", str(bad), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "rotation" in err and "rotate" in err                   # nearest valid key
    assert params.read_text() == (root / "params.yaml").read_text()  # nothing written
