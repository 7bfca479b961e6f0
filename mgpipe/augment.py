"""Keypoint-space augmentation: random affine maps, mirroring and joint dropout applied to a
clip's keypoints before the joints are normalised or the heatmaps are drawn (as pyskl does),
so a rotated skeleton gets sharp, correctly drawn Gaussians rather than a resampled image.

Parameters (``branches.<b>.augment``; every key optional, see ``AUGMENT_DEFAULTS``):
    flip           mirror x with left/right relabelled, with probability 0.5. Turn it off
                   when a class depends on the side (UTD-MHAD's swipe_left / swipe_right).
    scale          [lo, hi]: isotropic scale factor, uniform.
    rotate         degrees: rotation uniform in [-rotate, rotate].
    shear          shear factors uniform in [-shear, shear] on x and y.
    translate      shift uniform in [-translate, translate], in units of the clip's extent
                   (the half side of its skeleton box for joints, the grid size for heatmaps).
    joint_dropout  probability that a joint is dropped (unseen, score 0) for the whole clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mgpipe import layout

AUGMENT_DEFAULTS = dict(flip=True, scale=[0.9, 1.1], rotate=0.0, shear=0.0, translate=0.05,
                        joint_dropout=0.0)


@dataclass
class KeypointAug:
    """One clip's draw: x' = matrix @ (x - centre) + centre + shift * unit, then mirrored."""
    matrix: np.ndarray   # [2, 2]
    shift: np.ndarray    # [2], in units of the clip's extent
    flip: bool
    keep: np.ndarray     # [J] bool, joints kept (False = dropped)


def augment_config(cfg: dict | None) -> dict | None:
    """``branches.<b>.augment`` with defaults filled in; None stays None (no keypoint-space
    augmentation: the branch's default image/joint augmentation applies)."""
    if cfg is None:
        return None
    unknown = set(cfg) - set(AUGMENT_DEFAULTS)
    if unknown:
        raise ValueError(f"augment: unknown key(s) {sorted(unknown)}; use {list(AUGMENT_DEFAULTS)}")
    return {**AUGMENT_DEFAULTS, **cfg}


def draw_keypoint_aug(rng: np.random.Generator | None, cfg: dict,
                      joints: int = layout.NUM_KEYPOINTS) -> KeypointAug:
    """Random augmentation of one clip (identity when ``rng`` is None: evaluation)."""
    if rng is None:
        return KeypointAug(np.eye(2, dtype=np.float32), np.zeros(2, np.float32), False,
                           np.ones(joints, bool))
    lo, hi = cfg["scale"]
    s = rng.uniform(lo, hi)
    a = np.deg2rad(rng.uniform(-cfg["rotate"], cfg["rotate"]))
    shx, shy = rng.uniform(-cfg["shear"], cfg["shear"], 2)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shear = np.array([[1.0, shx], [shy, 1.0]])
    shift = rng.uniform(-cfg["translate"], cfg["translate"], 2)
    flip = bool(cfg["flip"]) and rng.random() < 0.5
    keep = rng.random(joints) >= cfg["joint_dropout"]
    return KeypointAug((s * rot @ shear).astype(np.float32), shift.astype(np.float32), flip, keep)


def apply_keypoint_aug(kp: np.ndarray, aug: KeypointAug, centre, unit: float,
                       mirror_x: float | None = None) -> np.ndarray:
    """Keypoints [T, 68, 3] (x, y, score) -> augmented copy; unseen joints (score <= 0) stay
    (0, 0, 0). ``centre`` (x, y) is the point the affine map keeps fixed, ``unit`` the size
    ``shift`` is measured in; a flip mirrors x about ``mirror_x`` (default the centre's x) and
    swaps left and right (``layout.flip_index``)."""
    out = np.array(kp, np.float32, copy=True)
    c = np.asarray(centre, np.float32)
    seen = (out[..., 2] > 0) & aug.keep[None, :]
    xy = (out[..., :2] - c) @ aug.matrix.T + c + aug.shift * np.float32(unit)
    if aug.flip:
        m = c[0] if mirror_x is None else np.float32(mirror_x)
        xy[..., 0] = 2 * m - xy[..., 0]
        perm = layout.flip_index()
        xy, seen, score = xy[:, perm], seen[:, perm], out[:, perm, 2]
    else:
        score = out[..., 2]
    out[..., :2] = np.where(seen[..., None], xy, 0)
    out[..., 2] = np.where(seen, score, 0)
    return out
