"""Saliency-guided RGB crops (SPEC section 5, crop stage).

One crop box per clip, fixed over the clip (no jitter), from the keypoints that carry a
micro-gesture (hands, face, arms), weighted by how much each one moves; expanded by a margin,
made square and kept inside the frame. Frames are sampled uniformly to ``T`` and resized.
"""
from __future__ import annotations

import cv2
import numpy as np

from mgpipe import layout
from mgpipe.sampling import uniform_indices
from mgpipe.video import DecodeStats, read_clips

SALIENT = np.array(sorted(set(layout.FACE) | set(layout.ARMS) | set(layout.HANDS)))


def motion_energy(kp: np.ndarray, min_score: float = 0.1) -> np.ndarray:
    """Per-keypoint motion energy [68]: summed frame-to-frame displacement in pixels, over
    consecutive frames where the keypoint is seen in both."""
    if len(kp) < 2:
        return np.zeros(kp.shape[1], np.float32)
    seen = kp[..., 2] > min_score
    both = seen[1:] & seen[:-1]
    step = np.linalg.norm(np.diff(kp[..., :2], axis=0), axis=-1)
    return np.where(both, step, 0).sum(0).astype(np.float32)


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1], side="left").clip(0, len(values) - 1)])


def saliency_box(kp: np.ndarray, frame_size: tuple[int, int], margin: float = 0.3,
                 min_size: float = 0.25, quantile: float = 0.02, min_score: float = 0.1,
                 ) -> tuple[np.ndarray, bool]:
    """Square crop box (x0, y0, x1, y1) in pixels for a clip, and whether it fell back to
    the whole frame (no salient keypoint seen).

    kp: [T, 68, 3] in source pixels; frame_size: (width, height). Each seen salient point
    is weighted by its score x (0.2 + its keypoint's motion energy / the mean energy), so
    still joints still count a little and moving ones dominate; the box spans the weighted
    ``quantile``..``1 - quantile`` range, grows by ``margin`` of its size on every side, is at
    least ``min_size`` of the frame's short side, square, and shifted inside the frame.
    """
    w, h = frame_size
    sub = kp[:, SALIENT]
    seen = (sub[..., 2] > min_score) & (sub[..., 0] >= 0) & (sub[..., 0] < w) \
        & (sub[..., 1] >= 0) & (sub[..., 1] < h)
    if not seen.any():
        return np.array([0, 0, w, h], np.float32), True
    energy = motion_energy(kp, min_score)[SALIENT]
    rel = energy / energy.mean() if energy.mean() > 0 else np.zeros_like(energy)
    weights = (sub[..., 2] * (0.2 + rel[None, :]))[seen]
    xs, ys = sub[..., 0][seen], sub[..., 1][seen]
    x0, x1 = (_weighted_quantile(xs, weights, q) for q in (quantile, 1 - quantile))
    y0, y1 = (_weighted_quantile(ys, weights, q) for q in (quantile, 1 - quantile))
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    side = float(np.clip(side, min_size * min(w, h), min(w, h)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bx0 = float(np.clip(cx - side / 2, 0, w - side))
    by0 = float(np.clip(cy - side / 2, 0, h - side))
    return np.array([bx0, by0, bx0 + side, by0 + side], np.float32), False


def crop_frames(frames: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Crop uint8 frames [T, H, W, 3] to ``box`` and resize to [T, size, size, 3]."""
    x0, y0, x1, y1 = np.round(box).astype(int)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, f in enumerate(frames):  # T resizes per clip: cheap next to decoding
        out[i] = cv2.resize(f[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
    return out


def crop_clip(video: str, start: int, frames: int, kp: np.ndarray | None,
              frame_size: tuple[int, int], length: int, size: int, margin: float = 0.3,
              ) -> tuple[np.ndarray, dict]:
    """Saliency crop of one clip: uint8 [length, size, size, 3] and its attributes
    (box, fallback, frame indices relative to the clip start, source frame size). Many
    clips of one video: :func:`crop_video` (one decoding pass for all)."""
    clip = dict(clip_id="", start=start, frames=frames, kp=kp, frame_size=frame_size)
    (_, rgb, attrs, _, err), = crop_video(video, [clip], length, size, margin)
    if err is not None:
        raise err
    return rgb, attrs


def crop_video(video: str, clips: list[dict], length: int, size: int, margin: float = 0.3,
               full_frame: frozenset | set = frozenset(), stats: DecodeStats | None = None):
    """Saliency crops of all clips of one video, decoding the video once
    (:func:`mgpipe.video.read_clips`): yields (clip_id, rgb uint8 [length, size, size, 3],
    attrs, full frame or None, None) per clip as soon as its frames are decoded, or
    (clip_id, None, None, None, exception) for a clip that fails (the others go on).

    clips: dicts with clip_id, start, frames, kp ([T, 68, 3] or None), frame_size (w, h).
    full_frame: clip ids whose uncropped middle sampled frame (uint8 RGB) is wanted too (the
    contact sheet). Holds only the sampled frames of the clips open at the current frame."""
    plans, readable = [], []
    for k, c in enumerate(clips):
        try:
            kp, frame_size = c["kp"], tuple(c["frame_size"])
            if kp is None or len(kp) == 0:
                box, fallback = np.array([0, 0, *frame_size], np.float32), True
            else:
                box, fallback = saliency_box(kp, frame_size, margin)
            # A fallback box is the whole frame, squashed square: the model still sees it all.
            plans.append((box, fallback, uniform_indices(int(c["frames"]), length), frame_size))
            readable.append(k)
        except Exception as err:  # noqa: BLE001 - one bad clip, not the video
            plans.append(None)
            yield c["clip_id"], None, None, None, err
    specs = [(int(clips[k]["start"]), int(clips[k]["start"]) + int(clips[k]["frames"]),
              plans[k][2]) for k in readable]
    for j, frames in read_clips(video, specs, stats):
        k = readable[j]
        cid = clips[k]["clip_id"]
        if isinstance(frames, Exception):
            yield cid, None, None, None, frames
            continue
        box, fallback, idx, frame_size = plans[k]
        try:
            rgb = crop_frames(frames, box, size)
        except Exception as err:  # noqa: BLE001 - one bad clip, not the video
            yield cid, None, None, None, err
            continue
        full = frames[len(idx) // 2] if cid in full_frame else None
        yield cid, rgb, {"box": box, "fallback": fallback, "frame_indices": idx,
                         "source_size": np.array(frame_size, np.int32)}, full, None


def crop_sheet(items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path, thumb: int = 128) -> None:
    """PNG: per row, a clip's full middle frame with its crop box drawn, then 4 crops.

    items: (clip_id, full frame uint8 RGB [H, W, 3], box [4], crops uint8 [T, S, S, 3])."""
    from mgpipe.io import atomic_path

    rows = []
    for clip_id, frame, box, crops in items:
        h, w = frame.shape[:2]
        s = thumb / max(h, w)
        full = cv2.resize(frame, (int(round(w * s)), int(round(h * s))))
        x0, y0, x1, y1 = (np.asarray(box) * s).round().astype(int)
        full = np.ascontiguousarray(full)
        cv2.rectangle(full, (x0, y0), (x1 - 1, y1 - 1), (255, 60, 60), 1)
        pad = np.zeros((thumb, thumb, 3), np.uint8)
        pad[:full.shape[0], :full.shape[1]] = full
        pick = crops[np.linspace(0, len(crops) - 1, 4).round().astype(int)]
        tiles = [pad] + [cv2.resize(c, (thumb, thumb), interpolation=cv2.INTER_NEAREST) for c in pick]
        row = np.concatenate(tiles, 1)
        cv2.putText(row, clip_id, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 0), 1)
        rows.append(row)
    if not rows:  # a skeleton-only dataset: say so in the picture the stage promises
        rows = [np.zeros((40, 5 * thumb, 3), np.uint8)]
        cv2.putText(rows[0], "no video in this dataset: no RGB crops", (8, 25),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
    with atomic_path(path, suffix=".png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR))
