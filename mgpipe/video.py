"""Video probing and frame reading with OpenCV."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


class VideoError(RuntimeError):
    """A video that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps and frame size of a video; raises VideoError when it is missing,
    unreadable or has no frame. Reads the first frame to prove the file decodes."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video not found; check the path in the dataset table")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: OpenCV cannot open this video (corrupt or unsupported "
                             f"codec); re-encode it, e.g. ffmpeg -i in -c:v libx264 out.mp4")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = cap.read()
        if not ok or frame is None:
            raise VideoError(f"{path}: video has zero readable frames; remove it from the "
                             f"dataset or re-encode it")
        if frames <= 0:  # some containers do not store a count: count by decoding
            frames = 1
            while cap.grab():
                frames += 1
        height, width = frame.shape[:2]
        return VideoInfo(frames=frames, fps=fps if fps > 0 else 25.0, width=width, height=height)
    finally:
        cap.release()


def read_frames(path: str | Path, indices: np.ndarray, start: int = 0,
                end: int | None = None) -> np.ndarray:
    """Frames ``indices`` (relative to ``start``; any order, repeats allowed) of the clip
    [start, end) of a video, as uint8 RGB [len(indices), H, W, 3]. Decodes sequentially
    (no seeking inaccuracy) and stops after the last index wanted."""
    wanted = {int(i) for i in indices}
    stop = max(wanted) + 1 if end is None else min(max(wanted) + 1, end - start)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open this video")
    kept: dict[int, np.ndarray] = {}
    try:
        for _ in range(start):
            if not cap.grab():
                break
        for n in range(stop):
            ok, frame = cap.read()
            if not ok:
                break
            if n in wanted:
                kept[n] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    if not kept:
        raise VideoError(f"{path}: no frame decoded in [{start}, {end})")
    # Frames past the decodable end (a short count in the header) repeat the last decoded one.
    last_ok = kept[max(kept)]
    return np.stack([kept.get(int(i), last_ok) for i in indices])
