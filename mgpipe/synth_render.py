"""Rendering of the synthetic dataset: a posed figure drawn with OpenCV (anti-aliased,
sub-pixel) onto its subject's textured background, frame by frame, plus the detector's view
of its keypoints. ``render_clip`` makes one labelled clip; ``render_idle`` an unlabelled
stretch of idle motion (the gaps between gestures in the iMiGUE layout).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from . import layout as L
from .synth_figures import Subject, _pose, class_names, detector_noise

if TYPE_CHECKING:
    from .synth import SynthConfig


@dataclass
class Clip:
    frames: np.ndarray       # uint8 [T, H, W, 3] BGR
    keypoints: np.ndarray    # float32 [T, 68, 3] with detector noise
    clean: np.ndarray        # float32 [T, 68, 2] model keypoints (pixels, may leave the frame)
    background: np.ndarray   # uint8 [H, W, 3] the clip's empty scene (before per-frame noise)
    onset: int               # first and last frame of the gesture (inclusive)
    offset: int


def _render(cfg: SynthConfig, sub: Subject, px: np.ndarray, extras: dict, scale: float,
            background: np.ndarray, rng) -> np.ndarray:
    """Draw the figure for every frame: uint8 [T, H, W, 3]."""
    T = px.shape[0]
    SH = 4                                  # cv2 sub-pixel bits
    one = float(1 << SH)

    def P(p):
        x, y = p.tolist()
        return int(x * one + 0.5), int(y * one + 0.5)

    def poly(p):
        return np.rint(np.asarray(p) * one).astype(np.int32)

    fixed = np.rint(px * one).astype(np.int32)     # all keypoints in cv2 fixed point
    chains = [slice(0, 5), slice(5, 9), slice(9, 13), slice(13, 17), slice(17, 21)]

    skin = tuple(sub.skin)
    skin_dark = tuple(sub.skin * 0.7)
    shirt = tuple(sub.shirt)
    shirt_dark = tuple(sub.shirt * 0.55)
    sleeve = tuple(sub.shirt * 0.92)
    hair = tuple(sub.hair)
    aa = cv2.LINE_AA
    t_ua, t_fa = max(2, int(0.19 * scale)), max(2, int(0.15 * scale))
    t_f = max(1, int(round(0.04 * scale)))
    rx, ry = sub.rx * scale, sub.ry * scale
    noise = np.rint(rng.normal(0, 2.0, (4,) + background.shape)).astype(np.int16)
    frames = np.empty((T,) + background.shape, np.uint8)
    for f in range(T):
        img = background.copy()
        k = px[f]
        hc, th = extras["head"][f], np.degrees(extras["theta"][f])
        neck = k[L.NECK]
        up = (hc - neck) / max(np.linalg.norm(hc - neck), 1e-6)   # neck to head direction
        side = np.array([-up[1], up[0]])                           # towards the subject's left
        if sub.hair_style == "long":
            cv2.ellipse(img, P(hc - up * 0.15 * ry), (int(rx * 1.15 * one), int(ry * 1.2 * one)),
                        th, 0, 360, hair, -1, aa, SH)
        # neck, torso with round shoulders, collar
        nw = 0.35 * rx
        chin = hc - up * ry * 0.8
        cv2.fillConvexPoly(img, poly([neck + side * nw, neck - side * nw, chin - side * nw,
                                      chin + side * nw]), skin, aa, SH)
        ls, rs, lh, rh = k[11], k[12], k[23], k[24]
        sw = 0.1 * scale
        waist_l, waist_r = ls + (lh - ls) * 0.55, rs + (rh - rs) * 0.55
        torso = [neck + side * nw * 1.3 + up * sw * 0.5, ls + up * sw * 0.75 - side * sw * 0.3,
                 ls + side * sw * 0.8, waist_l + side * sw * 0.3, lh + side * sw * 0.4,
                 rh - side * sw * 0.4, waist_r - side * sw * 0.3, rs - side * sw * 0.8,
                 rs + up * sw * 0.75 + side * sw * 0.3, neck - side * nw * 1.3 + up * sw * 0.5]
        cv2.fillPoly(img, [poly(torso)], shirt, aa, SH)
        for p_ in (ls, rs):
            cv2.circle(img, P(p_), int(sw * 0.85 * one), shirt, -1, aa, SH)
        cv2.fillConvexPoly(img, poly([neck + side * nw * 1.2 + up * sw * 0.4,
                                      neck - side * nw * 1.2 + up * sw * 0.4,
                                      neck - up * sw * 0.9]), skin, aa, SH)
        # head: ears, face, hair, features
        for e_i in (7, 8):
            cv2.ellipse(img, P(k[e_i]), (int(0.17 * rx * one), int(0.3 * ry * one)), th, 0, 360,
                        skin_dark, -1, aa, SH)
        cv2.ellipse(img, P(hc), (int(rx * one), int(ry * one)), th, 0, 360, skin, -1, aa, SH)
        cv2.ellipse(img, P(hc), (int(rx * one), int(ry * one)), th, 0, 360, skin_dark, 1, aa, SH)
        if sub.hair_style != "none":
            cv2.ellipse(img, P(hc + up * 0.25 * ry), (int(rx * 1.06 * one), int(ry * 0.83 * one)),
                        th, 180, 360, hair, -1, aa, SH)
        eye_r = max(1, int(round(0.11 * rx)))
        for e_i in (2, 5):
            cv2.circle(img, P(k[e_i]), int(eye_r * one), (30, 25, 25), -1, aa, SH)
        for a, b in ((1, 3), (4, 6)):
            cv2.line(img, P(k[a] + up * 0.2 * ry), P(k[b] + up * 0.25 * ry), hair, 1, aa, SH)
        cv2.line(img, P((k[1] + k[4]) / 2 - up * 0.05 * ry), P(k[0]), skin_dark, 1, aa, SH)
        cv2.line(img, P(k[9]), P(k[10]), (60, 60, 150), 1, aa, SH)
        # arms and hands, the acting one last so it lies on top
        for s in extras["arm_order"]:
            o = 0 if s == 1 else 1
            sh_, el, wr = k[11 + o], k[13 + o], k[15 + o]
            fa = skin if sub.short_sleeves else sleeve
            fa_dark = skin_dark if sub.short_sleeves else shirt_dark
            for a, b, width, col, dark in ((sh_, el, t_ua, sleeve, shirt_dark),
                                           (el, wr, t_fa, fa, fa_dark)):
                cv2.line(img, P(a), P(b), dark, width + 2, aa, SH)   # outline over the torso
                cv2.line(img, P(a), P(b), col, width, aa, SH)
            cv2.circle(img, P(el), int(t_ua * 0.45 * one), sleeve, -1, aa, SH)
            b = L.LEFT_HAND if s == 1 else L.RIGHT_HAND
            h = fixed[f, b:b + 21]
            palm = h[[0, 1, 2, 5, 9, 13, 17]]
            cv2.fillPoly(img, [palm], skin, aa, SH)
            cv2.polylines(img, [palm], True, skin_dark, 1, aa, SH)
            fingers = [h[c] for c in chains]
            cv2.polylines(img, fingers, False, skin_dark, t_f + 1, aa, SH)
            cv2.polylines(img, fingers, False, skin, t_f, aa, SH)
        img = cv2.GaussianBlur(img, (3, 3), 0.6)
        frames[f] = np.clip(img.astype(np.int16) + noise[f % 4], 0, 255)
    return frames


def render_clip(cfg: SynthConfig, sub: Subject, label: int, index: int) -> Clip:
    """Pose, render and detect clip ``index`` of class ``label`` for subject ``sub``."""
    rng = np.random.default_rng([cfg.seed, index])
    name = class_names(cfg.classes)[label]
    pts, extras, first, last = _pose(cfg, sub, name, rng)
    # per-clip camera: small change of framing between clips of one subject
    scale = sub.scale * rng.uniform(0.96, 1.04)
    origin = sub.origin + rng.normal(0, 2.0, 2)
    px = origin + scale * pts
    extras = dict(extras, head=origin + scale * extras["head"])
    gain = rng.uniform(0.85, 1.15)
    bg = np.clip(sub.background * gain + rng.uniform(-10, 10), 0, 255).astype(np.uint8)
    frames = _render(cfg, sub, px, extras, scale, bg, rng)
    kp = detector_noise(px, rng, cfg.width, cfg.height, sub.kp_noise, sub.hand * scale)
    return Clip(frames, kp, px.astype(np.float32), bg, first, last)


IDLE_STREAM = 0x1D1E5   # separates the idle stretches' random streams from the clips'


def render_idle(cfg: SynthConfig, sub: Subject, frames: int, key: tuple[int, ...]) -> Clip:
    """``frames`` frames of idle motion of subject ``sub`` (breathing, sway, head wobble,
    free hands wandering), seen by the subject's own camera: the unlabelled stretches between
    gestures in a long video. ``key`` (e.g. (video, gap)) picks the random stream, so a
    stretch depends only on (seed, key). onset/offset are -1 (no gesture)."""
    rng = np.random.default_rng([cfg.seed, IDLE_STREAM, *key])
    n = max(int(frames), 2)                         # the pose model needs 2 frames
    pts, extras, _, _ = _pose(replace(cfg, frames=n), sub, "idle", rng)
    px = sub.origin + sub.scale * pts
    extras = dict(extras, head=sub.origin + sub.scale * extras["head"])
    bg = np.clip(sub.background, 0, 255).astype(np.uint8)
    out = _render(cfg, sub, px, extras, sub.scale, bg, rng)
    kp = detector_noise(px, rng, cfg.width, cfg.height, sub.kp_noise, sub.hand * sub.scale)
    return Clip(out[:frames], kp[:frames], px[:frames].astype(np.float32), bg, -1, -1)
