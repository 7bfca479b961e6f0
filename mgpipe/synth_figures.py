"""The figures of the synthetic dataset: a small 2D kinematic model of a seated upper body
(torso, two-link arms solved by inverse kinematics, a head with face landmarks, 21-point
hands with finger curl), the subjects (proportions, colours, camera, room), the gestures as
target trajectories of the hands over idle motion, and detector-like keypoint noise.

Coordinates: body units (half the shoulder width is about 0.5, the neck is the origin, y
points down, +x is the subject's left). ``cfg`` arguments are :class:`mgpipe.synth.SynthConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np

from . import layout as L

if TYPE_CHECKING:
    from .synth import SynthConfig


# Modelled on iMiGUE categories; the first ``classes`` are used, head (most clips) first.
CLASS_NAMES = [
    "scratch_head", "touch_nose", "rub_eyes", "touch_chin", "fold_arms", "rub_hands",
    "cover_face", "touch_ear", "shrug", "adjust_hair", "lean", "idle",
    "cross_fingers", "touch_neck", "bite_nails", "touch_forehead",
]

SUBJECT_STREAM = 0x5B7EC7   # separates the subjects' random streams from the clips'


def class_names(n: int) -> list[str]:
    """The first ``n`` class names."""
    if not 1 <= n <= len(CLASS_NAMES):
        raise ValueError(f"between 1 and {len(CLASS_NAMES)} classes are defined, asked {n}")
    return CLASS_NAMES[:n]


# ---- geometry ----------------------------------------------------------------------------

def rot(v: np.ndarray, ang) -> np.ndarray:
    """Rotate vectors v [..., 2] by ``ang`` radians (broadcast over the leading axes).
    With y down, a positive angle turns clockwise on screen."""
    c, s = np.cos(ang), np.sin(ang)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def two_link_ik(shoulder: np.ndarray, target: np.ndarray, l1, l2,
                prefer=(0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Elbow and wrist [T, 2] reaching for ``target`` [T, 2] from ``shoulder`` [T, 2].

    Unreachable targets are pulled onto the reachable ring; of the two elbow solutions the
    one further along ``prefer`` [2] is taken (default down: elbows hang).
    """
    l1 = np.broadcast_to(np.asarray(l1, float), shoulder.shape[:-1])
    d = target - shoulder
    dist = np.linalg.norm(d, axis=-1)
    reach = np.clip(dist, np.abs(l1 - l2) + 1e-3, (l1 + l2) * 0.999)
    u = d / np.maximum(dist, 1e-9)[..., None]
    wrist = shoulder + u * reach[..., None]
    a = np.arccos(np.clip((l1 ** 2 + reach ** 2 - l2 ** 2) / (2 * l1 * reach), -1, 1))
    e1 = shoulder + l1[..., None] * rot(u, a)
    e2 = shoulder + l1[..., None] * rot(u, -a)
    elbow = np.where(((e1 - e2) @ np.asarray(prefer, float) >= 0)[..., None], e1, e2)
    return elbow, wrist


# Hand template in hand-length units: u along the fingers, v across towards the thumb.
_HAND_TEMPLATE = np.array([
    [0.00, 0.00],
    [0.12, 0.15], [0.25, 0.27], [0.36, 0.36], [0.46, 0.43],        # thumb
    [0.45, 0.12], [0.63, 0.14], [0.74, 0.15], [0.84, 0.16],        # index
    [0.47, 0.03], [0.69, 0.03], [0.83, 0.03], [0.95, 0.03],        # middle
    [0.45, -0.06], [0.65, -0.07], [0.77, -0.08], [0.87, -0.09],    # ring
    [0.41, -0.14], [0.55, -0.17], [0.64, -0.19], [0.72, -0.21],    # pinky
])
_CURL_MAX = np.array([1.3, 2.3, 3.0])   # cumulative flexion (rad) of a fully curled finger


def hand_local(curl: np.ndarray) -> np.ndarray:
    """Hand points [..., 21, 2] in (u, v) hand-length units for ``curl`` [..., 5] in [0, 1].

    Flexion folds a finger towards the camera, so in 2D each segment shortens by cos of its
    cumulative flexion (a fist brings the tips back over the palm). The thumb swings
    towards the index knuckle instead.
    """
    curl = np.asarray(curl, float)
    out = np.broadcast_to(_HAND_TEMPLATE, curl.shape[:-1] + (21, 2)).copy()
    for f in range(1, 5):
        base = 1 + 4 * f
        seg = np.diff(_HAND_TEMPLATE[base:base + 4], axis=0)                    # [3, 2]
        shrink = np.cos(curl[..., f, None] * _CURL_MAX)                          # [..., 3]
        out[..., base + 1:base + 4, :] = (_HAND_TEMPLATE[base]
                                          + np.cumsum(seg * shrink[..., None], axis=-2))
    seg = np.diff(_HAND_TEMPLATE[1:5], axis=0)
    turn = -curl[..., 0, None] * np.array([0.35, 0.75, 1.1])
    out[..., 2:5, :] = _HAND_TEMPLATE[1] + np.cumsum(rot(seg, turn), axis=-2)
    return out


def hand_points(wrist: np.ndarray, angle: np.ndarray, curl: np.ndarray, vscale: np.ndarray,
                length: float, thumb_sign: float) -> np.ndarray:
    """Hand keypoints [T, 21, 2] from the wrist [T, 2], finger direction ``angle`` [T] (rad),
    ``curl`` [T, 5], ``vscale`` [T] (cos of the forearm roll: +1 palm to camera, -1 back of
    the hand) and the hand length (units)."""
    loc = hand_local(curl)
    u = np.stack([np.cos(angle), np.sin(angle)], -1)[:, None]      # [T, 1, 2]
    v = rot(u, np.pi / 2)
    return wrist[:, None] + length * (loc[..., :1] * u
                                      + (thumb_sign * vscale[:, None, None]) * loc[..., 1:] * v)


def smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _smooth_noise(rng, t, amp, fmin=0.15, fmax=0.8, n=3) -> np.ndarray:
    """A smooth random signal [T] (sum of sinusoids), roughly within +-amp."""
    f = rng.uniform(fmin, fmax, n)
    ph = rng.uniform(0, 2 * np.pi, n)
    return amp * np.sin(2 * np.pi * f[:, None] * t + ph[:, None]).sum(0) / np.sqrt(n)


# ---- subjects ----------------------------------------------------------------------------

_SKIN = np.array([(196, 218, 242), (160, 196, 230), (130, 172, 214), (98, 140, 190),
                  (70, 105, 150), (50, 75, 110)], float)       # BGR, light to dark
_HAIR = np.array([(20, 20, 25), (30, 45, 70), (40, 80, 130), (110, 160, 200), (150, 150, 155)],
                 float)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """BGR float [3] from OpenCV HSV (h in [0, 180), s and v in [0, 1])."""
    px = np.uint8([[[int(h) % 180, int(s * 255), int(v * 255)]]])
    return cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0].astype(float)


def _background(rng, h: int, w: int, c1: np.ndarray, c2: np.ndarray, kind: str) -> np.ndarray:
    """A textured background float32 [h, w, 3] blending two colours by a noise/gradient/stripe
    field, plus fixed fine grain."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, np.pi)
    proj = xx * np.cos(a) + yy * np.sin(a)
    if kind == "noise":
        grid = rng.random((rng.integers(3, 6), rng.integers(4, 8))).astype(np.float32)
        v = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == "gradient":
        v = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    else:
        v = 0.5 + 0.5 * np.sin(2 * np.pi * proj / rng.uniform(0.08, 0.2) / w)
    v = np.clip(v, 0, 1)[..., None]
    img = c1 * (1 - v) + c2 * v + rng.normal(0, 3.0, (h, w, 3))
    return img.astype(np.float32)


@dataclass
class Subject:
    """One person and their room. Lengths in body units, colours BGR floats."""
    shifted: bool
    sw: float          # half shoulder width
    l1: float          # upper arm
    l2: float          # forearm
    hand: float        # wrist to middle fingertip
    rx: float          # head half-width
    ry: float          # head half-height
    neck: float        # neck point to chin
    torso: float       # neck to hips
    hip_w: float       # half hip width
    scale: float       # pixels per unit
    origin: np.ndarray  # pixel position of the neck [2]
    dominant: int      # side of the dominant hand: +1 left, -1 right
    speed: float
    amp: float
    kp_noise: float    # detector jitter multiplier
    rest: np.ndarray   # rest wrist positions [2 (left, right), 2]
    skin: np.ndarray
    shirt: np.ndarray
    hair: np.ndarray
    hair_style: str    # short | long | none
    short_sleeves: bool
    background: np.ndarray   # float32 [H, W, 3]


def make_subject(cfg: SynthConfig, s: int, shifted: bool) -> Subject:
    """Subject ``s``; ``shifted`` subjects (the test domain) are larger in the frame, offset
    sideways and lower, warm-coloured, faster, subtler and more often left-handed."""
    rng = np.random.default_rng([cfg.seed, SUBJECT_STREAM, s])
    w, h = cfg.width, cfg.height
    sw = rng.uniform(0.45, 0.55)
    rx = rng.uniform(0.2, 0.25)
    if shifted:
        scale = h * rng.uniform(0.42, 0.48)
        origin = np.array([w * (0.5 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.11)),
                           h * rng.uniform(0.43, 0.49)])
        bg_v = rng.uniform(0.5, 0.85)
        bg1 = _hsv(rng.uniform(8, 35), rng.uniform(0.2, 0.5), bg_v)
        shirt = _hsv(rng.choice([rng.uniform(0, 22), rng.uniform(145, 180)]),
                     rng.uniform(0.45, 0.9), max(0.18, bg_v - rng.uniform(0.3, 0.45)))
        kind = rng.choice(["noise", "gradient", "stripes"], p=[0.3, 0.1, 0.6])
        speed, amp = rng.uniform(1.2, 1.5), rng.uniform(0.6, 0.9)
        dominant = int(rng.choice([1, -1]))
        kp_noise = rng.uniform(1.1, 1.5)
    else:
        scale = h * rng.uniform(0.36, 0.42)
        origin = np.array([w * (0.5 + rng.uniform(-0.06, 0.06)), h * rng.uniform(0.42, 0.49)])
        bg_v = rng.uniform(0.55, 0.9)
        bg1 = _hsv(rng.uniform(80, 130), rng.uniform(0.08, 0.35), bg_v)
        # a shirt darker than the wall, so the figure stands out
        shirt = _hsv(rng.uniform(85, 130), rng.uniform(0.25, 0.8),
                     max(0.18, bg_v - rng.uniform(0.25, 0.45)))
        kind = rng.choice(["noise", "gradient", "stripes"], p=[0.45, 0.45, 0.1])
        speed, amp = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
        dominant = -1 if rng.random() < 0.85 else 1
        kp_noise = rng.uniform(0.8, 1.2)
    bg2 = np.clip(bg1 * rng.uniform(0.6, 1.3) + rng.normal(0, 12, 3), 0, 255)
    skin = np.clip(_SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 8, 3), 0, 255)
    rest_x, rest_y = rng.uniform(0.2, 0.4), rng.uniform(0.95, 1.1)
    return Subject(
        shifted=shifted, sw=sw, l1=rng.uniform(0.58, 0.66), l2=rng.uniform(0.52, 0.58),
        hand=rng.uniform(0.2, 0.24), rx=rx, ry=rx * rng.uniform(1.2, 1.35),
        neck=rng.uniform(0.12, 0.2), torso=rng.uniform(1.2, 1.4),
        hip_w=sw * rng.uniform(0.7, 0.85), scale=scale, origin=origin, dominant=dominant,
        speed=speed, amp=amp, kp_noise=kp_noise,
        rest=np.array([[rest_x, rest_y], [-rest_x, rest_y]]) + rng.normal(0, 0.03, (2, 2)),
        skin=skin, shirt=shirt,
        hair=np.clip(_HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 6, 3), 0, 255),
        hair_style=str(rng.choice(["short", "long", "none"], p=[0.6, 0.3, 0.1])),
        short_sleeves=bool(rng.random() < 0.3),
        background=_background(rng, h, w, bg1, bg2, str(kind)),
    )


# ---- gestures ----------------------------------------------------------------------------

_IDX_TIP, _MID_TIP, _PALM, _WRIST = 8, 12, -1, 0
_REST_CURL = np.array([0.3, 0.45, 0.5, 0.55, 0.6])

# Whole-body parts of gestures, scaled by the envelope: shoulder lift and torso lean (units,
# rad; times amplitude), lean towards the camera (zoom), head drop (units), head roll
# towards the acting hand (rad).
_BODY = {
    "shrug": dict(lift=0.14, head_dy=0.04),
    "lean": dict(lean=0.1, zoom=0.05),
    "cover_face": dict(head_dy=0.03),
    "touch_ear": dict(tilt=0.07),
    "bite_nails": dict(head_dy=0.02),
}


@dataclass
class _Ctx:
    """What a hand gesture sees: time t [T] (s) and the posed body (units)."""
    t: np.ndarray
    side: int            # the acting hand for one-handed gestures: +1 left, -1 right
    speed: float
    amp: float
    head: np.ndarray     # head centre [T, 2]
    theta: np.ndarray    # head roll [T]
    body: Callable       # (x, y) in torso coordinates -> [T, 2]
    rest: dict           # side -> rest wrist [T, 2]
    rx: float
    ry: float
    jitter: np.ndarray   # per-clip target offset [2] in head radii
    phase: float

    def osc(self, hz: float, shift: float = 0.0) -> np.ndarray:
        return np.sin(2 * np.pi * hz * self.speed * self.t + self.phase + shift)

    def head_pt(self, x, y) -> np.ndarray:
        """A point on the head [T, 2]; x, y in head radii, +x the subject's left."""
        x = np.asarray(x, float) + self.jitter[0]
        y = np.asarray(y, float) + self.jitter[1]
        off = np.stack(np.broadcast_arrays(x * self.rx, y * self.ry), -1)
        return self.head + rot(off, self.theta)


def _hand(target, eff, bend, curl, vscale, fore=0.0, elbow_out=False) -> dict:
    """Spec of one hand: the hand point ``eff`` (an index into the 21, or _PALM for the palm
    centre) reaches ``target`` [T, 2]; ``bend`` turns the fingers from the forearm's line
    towards the midline (rad, for a raised hand); ``curl`` [5] or [T, 5]; ``vscale`` as in
    ``hand_points``; ``fore`` foreshortens the upper arm, which points at the camera when
    the hand is raised to the face; ``elbow_out`` raises the elbow sideways (hand on top of
    the head) instead of letting it hang."""
    return dict(target=target, eff=eff, bend=bend, curl=curl, vscale=vscale, fore=fore,
                elbow_out=elbow_out)


def _wiggle(base, amount, o) -> np.ndarray:
    """Finger curl [T, 5] oscillating by ``amount`` [5] times the signal ``o`` [T]."""
    return np.clip(np.asarray(base, float) + np.asarray(amount, float) * o[:, None], 0, 1)


def _scratch_head(c):
    o = c.osc(3.5)
    tgt = c.head_pt(c.side * (0.45 + 0.1 * c.amp * o), -0.95 + 0.05 * c.amp * c.osc(3.5, 1.6))
    curl = _wiggle([0.35, 0.4, 0.45, 0.5, 0.55], [0, 0.3, 0.3, 0.3, 0.25], o)
    return {c.side: _hand(tgt, _IDX_TIP, 0.5, curl, -0.6, 0.1, True)}


def _touch_nose(c):
    tgt = c.head_pt(c.side * 0.05, 0.3 + 0.05 * c.amp * c.osc(1.5))
    return {c.side: _hand(tgt, _IDX_TIP, 0.35, [0.6, 0.05, 0.75, 0.85, 0.9], -0.5, 0.3)}


def _rub_eyes(c):
    tgt = c.head_pt(c.side * (0.35 + 0.07 * c.amp * c.osc(2.5)),
                    -0.05 + 0.07 * c.amp * c.osc(2.5, 1.6))
    return {c.side: _hand(tgt, _IDX_TIP, 0.6, [0.5, 0.15, 0.3, 0.7, 0.75], -0.6, 0.3)}


def _touch_chin(c):
    tgt = c.head_pt(c.side * 0.08, 1.02 + 0.04 * c.amp * c.osc(0.8))
    return {c.side: _hand(tgt, _IDX_TIP, 0.2, [0.3, 0.25, 0.8, 0.85, 0.9], 0.4, 0.3)}


def _fold_arms(c):
    b = 0.015 * c.osc(0.4)
    return {1: _hand(c.body(-0.24, 0.72 + b), _WRIST, 0.0, [0.6] * 5, 0.3),
            -1: _hand(c.body(0.27, 0.8 + b), _WRIST, 0.0, [0.6] * 5, 0.3)}


def _rub_hands(c):
    o = 0.05 * c.amp * c.osc(3.0)
    return {1: _hand(c.body(0.05, 0.88 + o), _PALM, 0.9, [0.15] * 5, 0.8),
            -1: _hand(c.body(-0.05, 0.88 - o), _PALM, 0.9, [0.15] * 5, 0.8)}


def _cover_face(c):
    rock = 0.04 * c.amp * c.osc(0.5)
    return {s: _hand(c.head_pt(s * 0.32, 0.1 + rock), _PALM, 0.25, [0.05] * 5, -0.9, 0.3)
            for s in (1, -1)}


def _touch_ear(c):
    tgt = c.head_pt(c.side * 1.02, 0.05 + 0.08 * c.amp * c.osc(1.2))
    return {c.side: _hand(tgt, _IDX_TIP, 0.1, [0.4, 0.3, 0.45, 0.6, 0.65], -0.5, 0.3)}


def _shrug(c):
    # wrists turn out and up a little, palms up
    return {s: _hand(c.rest[s] + np.array([s * 0.12, -0.1]) * c.amp, _WRIST, -0.6, [0.15] * 5, -0.6)
            for s in (1, -1)}


def _adjust_hair(c):
    # a slow stroke front-to-back over the side of the head (scratch_head: small and fast)
    p = -0.5 * np.cos(2 * np.pi * 0.9 * c.speed * c.t + c.phase)
    span = 0.8 * c.amp
    tgt = c.head_pt(c.side * (0.55 + span * p), -0.85 + 0.35 * span * p)
    return {c.side: _hand(tgt, _IDX_TIP, 0.7, [0.2, 0.1, 0.1, 0.15, 0.2], -0.7, 0.1, True)}


def _body_only(c):
    return {}


def _cross_fingers(c):
    return {s: _hand(c.body(s * 0.03, 0.92), _PALM, 1.0, [0.6] * 5, 0.6) for s in (1, -1)}


def _touch_neck(c):
    return {c.side: _hand(c.body(c.side * 0.04, -0.04), _MID_TIP, 0.6,
                          [0.3, 0.1, 0.2, 0.3, 0.35], -0.6)}


def _bite_nails(c):
    tgt = c.head_pt(c.side * 0.05, 0.62 + 0.02 * c.amp * c.osc(4.0))
    return {c.side: _hand(tgt, _IDX_TIP, 0.4, [0.5, 0.55, 0.8, 0.85, 0.9], 0.3, 0.3)}


def _touch_forehead(c):
    tgt = c.head_pt(c.side * (0.1 + 0.12 * c.amp * c.osc(1.5)), -0.62)
    return {c.side: _hand(tgt, _IDX_TIP, 0.8, [0.3, 0.1, 0.15, 0.2, 0.3], -0.7, 0.3)}


# class name -> hands spec {side: _hand(...)} for a posed body
GESTURES: dict[str, Callable[[_Ctx], dict]] = {
    "scratch_head": _scratch_head, "touch_nose": _touch_nose, "rub_eyes": _rub_eyes,
    "touch_chin": _touch_chin, "fold_arms": _fold_arms, "rub_hands": _rub_hands,
    "cover_face": _cover_face, "touch_ear": _touch_ear, "shrug": _shrug,
    "adjust_hair": _adjust_hair, "lean": _body_only, "idle": _body_only,
    "cross_fingers": _cross_fingers, "touch_neck": _touch_neck, "bite_nails": _bite_nails,
    "touch_forehead": _touch_forehead,
}
assert list(GESTURES) == CLASS_NAMES


# ---- poses ------------------------------------------------------------------------------

def _angle(v: np.ndarray) -> np.ndarray:
    return np.arctan2(v[..., 1], v[..., 0])


def _envelope(rng, T: int, lo: float, hi: float,
              speed: float = 1.0) -> tuple[np.ndarray, float, float]:
    """A smooth on-hold-off envelope [T] in [0, 1] lasting a fraction in [lo, hi] of the clip
    (shorter when faster); returns it with its onset and end (frames)."""
    dur = float(np.clip(T * rng.uniform(lo, hi) / np.sqrt(speed), min(T, 3), 0.95 * T))
    onset = rng.uniform(0, T - dur)
    ramp = max(1.5, dur * rng.uniform(0.2, 0.3))
    i = np.arange(T)
    env = smoothstep(np.minimum((i - onset + 1) / ramp, (onset + dur - i) / ramp))
    return env, onset, onset + dur


def _pose(cfg: SynthConfig, sub: Subject, label: str, rng) -> tuple[np.ndarray, dict, int, int]:
    """Pose the body for a clip: keypoints [T, 68, 2] in units, drawing extras (head centre,
    head roll, arm drawing order) and the gesture's first and last frame."""
    T = cfg.frames
    t = np.arange(T) / cfg.fps
    speed = sub.speed * rng.uniform(0.9, 1.1)
    amp = sub.amp * rng.uniform(0.85, 1.15)
    side = sub.dominant if rng.random() < 0.8 else -sub.dominant
    e, start, end = _envelope(rng, T, *((0.3, 0.5) if label == "shrug" else (0.45, 0.85)), speed)
    e = e * rng.uniform(0.93, 1.0) * (label != "idle")
    first, last = int(np.ceil(start)), int(min(T - 1, np.floor(end)))
    if label == "idle":
        first, last = 0, T - 1

    # Idle motion: breathing, torso sway, head wobble (roll, yaw, nod), hand drift.
    breath = 0.008 * np.sin(2 * np.pi * rng.uniform(0.2, 0.35) * t + rng.uniform(0, 2 * np.pi))
    sway, tilt = _smooth_noise(rng, t, 0.015), _smooth_noise(rng, t, 0.03)
    yaw, nod = _smooth_noise(rng, t, 0.06), _smooth_noise(rng, t, 0.015)
    rest = {s: sub.rest[0 if s == 1 else 1]
            + np.stack([_smooth_noise(rng, t, 0.03), _smooth_noise(rng, t, 0.02)], -1)
            for s in (1, -1)}

    fx = _BODY.get(label, {})
    lean = sway + side * fx.get("lean", 0.0) * amp * e
    zoom = 1 + fx.get("zoom", 0.0) * e
    lift = breath - fx.get("lift", 0.0) * amp * e       # negative lifts the shoulders
    pivot = np.array([0.0, sub.torso])                    # the torso turns about the hips

    def body(x, y):
        p = np.stack(np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float)), -1)
        return pivot + zoom[:, None] * rot(np.broadcast_to(p, (T, 2)) - pivot, lean)

    sh = {s: body(s * sub.sw, lift) for s in (1, -1)}
    head = body(yaw * sub.rx * 0.3,
                -(sub.neck + sub.ry) + 0.5 * lift + nod + fx.get("head_dy", 0.0) * e)
    theta = lean * 1.3 + tilt + side * fx.get("tilt", 0.0) * e
    ctx = _Ctx(t=t, side=side, speed=speed, amp=amp, head=head, theta=theta, body=body,
               rest=rest, rx=sub.rx, ry=sub.ry, jitter=rng.normal(0, [0.08, 0.1]),
               phase=rng.uniform(0, 2 * np.pi))
    hands = GESTURES[label](ctx)

    pts = np.zeros((T, L.NUM_KEYPOINTS, 2))
    # Face landmarks in head radii, +x towards the subject's left; yaw moves ears less.
    face = np.array([(0, 0.28), (0.15, -0.05), (0.36, -0.06), (0.55, -0.05), (-0.15, -0.05),
                     (-0.36, -0.06), (-0.55, -0.05), (0.98, 0.05), (-0.98, 0.05),
                     (0.28, 0.58), (-0.28, 0.58)])
    shift = np.where(np.abs(face[:, 0]) > 0.9, 0.3, 1.0)[None] * (yaw * 0.25)[:, None]
    off = np.stack([(face[None, :, 0] + shift) * sub.rx,
                    np.broadcast_to(face[None, :, 1] * sub.ry, shift.shape)], -1)
    pts[:, :11] = head[:, None] + rot(off, theta[:, None])
    pts[:, 11], pts[:, 12] = sh[1], sh[-1]
    pts[:, 23], pts[:, 24] = pivot + (sub.hip_w, 0), pivot - (sub.hip_w, 0)   # seated: hips stay

    for s in (1, -1):
        spec, ee = hands.get(s), e
        if spec is None:
            spec, ee = _hand(rest[s], _WRIST, -0.4, _REST_CURL, 0.7), np.zeros(T)
            # Distractors on a free hand: wander over the torso (makes idle and the torso
            # gestures less separable), or reach far out to the side, often out of frame.
            r = rng.random()
            if r < (0.5 if label == "idle" else 0.2):
                ee = _envelope(rng, T, 0.3, 0.5)[0]
                spec = _hand(body(s * rng.uniform(-0.15, 0.3), rng.uniform(0.45, 0.8)), _WRIST,
                             -0.2, [0.4] * 5, 0.5)
            elif r < (0.5 if label == "idle" else 0.2) + 0.15:
                ee = _envelope(rng, T, 0.3, 0.6)[0]
                spec = _hand(body(s * (sub.sw + 1.4), rng.uniform(0.1, 0.6)), _WRIST, 0.0,
                             [0.1] * 5, 0.5)
        curl = np.broadcast_to(np.asarray(spec["curl"], float), (T, 5))
        thumb = -s     # palm to camera, fingers up: the thumb is on the midline side
        S = sh[s]
        # The wrist that puts the effector on the target, given the forearm's direction.
        loc = hand_local(curl)
        eff = loc[:, spec["eff"]] if spec["eff"] != _PALM else loc[:, [0, 5, 9, 13, 17]].mean(1)
        eff = eff * np.array([1.0, thumb * spec["vscale"]])
        target = spec["target"]
        prefer = (s, -0.3) if spec["elbow_out"] else (0.0, 1.0)
        wrist = target
        for _ in range(2):
            elbow, wrist_ik = two_link_ik(S, wrist, sub.l1 * (1 - spec["fore"]), sub.l2, prefer)
            u = rot(np.array([1.0, 0.0]), _angle(wrist_ik - elbow) - s * spec["bend"])
            wrist = target - sub.hand * (eff[:, :1] * u + eff[:, 1:] * rot(u, np.pi / 2))
        w = (1 - ee[:, None]) * rest[s] + ee[:, None] * wrist
        elbow, w = two_link_ik(S, w, sub.l1 * (1 - spec["fore"] * ee), sub.l2, prefer)
        bend = ee * spec["bend"] - (1 - ee) * 0.4      # at rest the fingers droop inwards
        c = (1 - ee[:, None]) * _REST_CURL + ee[:, None] * curl
        hp = hand_points(w, _angle(w - elbow) - s * bend, c, (1 - ee) * 0.7 + ee * spec["vscale"],
                         sub.hand, thumb)
        k, b = (0, L.LEFT_HAND) if s == 1 else (1, L.RIGHT_HAND)
        pts[:, b:b + 21] = hp
        pts[:, 13 + k], pts[:, 15 + k] = elbow, w
        pts[:, 17 + k], pts[:, 19 + k], pts[:, 21 + k] = hp[:, 17], hp[:, 5], hp[:, 2]
    pts[:, L.NECK] = (pts[:, 11] + pts[:, 12]) / 2
    # the acting hand is drawn last, on top; two-handed: the left arm over the right
    arm_order = [-side, side] if len(hands) == 1 else [-1, 1]
    return pts, dict(head=head, theta=theta, arm_order=arm_order), first, last


def detector_noise(clean: np.ndarray, rng, width: int, height: int, mult: float = 1.0,
                   hand_len_px: float = 10.0) -> np.ndarray:
    """Noisy keypoints float32 [T, 68, 3] from model keypoints [T, 68, 2] (pixels).

    Gaussian jitter (about a pixel, more on hands) plus a small per-clip bias per joint;
    scores in (0.3, 1] for detected joints; random drops and whole-hand dropout bursts; face
    points covered by a hand lose score or drop; anything outside the image is missing.
    Missing joints are (0, 0, 0); the neck is re-derived from the noisy shoulders.
    """
    T, J = clean.shape[:2]
    sigma = np.full(J, 0.8)
    sigma[L.FACE] = 0.5
    sigma[L.HANDS] = 1.1
    sigma *= mult * rng.uniform(0.8, 1.2)
    bias = rng.normal(0, 0.5 * sigma[:, None], (J, 2))
    xy = clean + bias + rng.normal(0, 1, (T, J, 2)) * sigma[:, None]
    base = np.full(J, 0.9)
    base[[23, 24]] = 0.55
    base[L.HANDS] = 0.75
    base[[13, 14, 15, 16]] = 0.85
    score = np.clip(rng.uniform(0.88, 1.0) * base - np.abs(rng.normal(0, 0.12, (T, J))), 0.31, 1.0)
    p_drop = np.where(np.isin(np.arange(J), L.HANDS), 0.03, 0.01)
    p_drop[[23, 24]] = 0.08
    drop = rng.random((T, J)) < p_drop
    for base_idx in (L.LEFT_HAND, L.RIGHT_HAND):
        if rng.random() < 0.35:
            a = rng.integers(0, T)
            drop[a:a + rng.integers(1, 6), base_idx:base_idx + 21] = True
    hands = clean[:, L.HANDS]
    near = (np.linalg.norm(clean[:, L.FACE, None] - hands[:, None], axis=-1).min(-1)
            < 0.5 * hand_len_px)
    score[:, L.FACE] = np.where(near, score[:, L.FACE] * 0.6, score[:, L.FACE])
    drop[:, L.FACE] |= near & (rng.random(near.shape) < 0.5)
    score = np.maximum(score, 0.31)
    def inside(p):
        return ((p[..., 0] >= 0) & (p[..., 0] <= width - 1)
                & (p[..., 1] >= 0) & (p[..., 1] <= height - 1))

    ok = inside(xy) & inside(clean) & ~drop     # a joint out of view is never detected
    out = np.zeros((T, J, 3), np.float32)
    out[..., :2] = np.where(ok[..., None], xy, 0)
    out[..., 2] = np.where(ok, score, 0)
    L.fill_neck(out)
    return out
