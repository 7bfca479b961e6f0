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
    frames: int             # frames that decode (the header's count when it is confirmed)
    fps: float
    width: int
    height: int
    header_frames: int = 0  # the count the container claims (0 = none); > frames when truncated


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps and frame size of a video; raises VideoError when it is missing,
    unreadable or has no frame. Reads the first frame to prove the file decodes; trusts the
    header's frame count once its packets are all there (short videos) or its last frame
    decodes (long ones), else counts the frames that decode (:func:`decodable_frames`)."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video not found; check the path in the dataset table")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: OpenCV cannot open this video (corrupt or unsupported "
                             f"codec); re-encode it, e.g. ffmpeg -i in -c:v libx264 out.mp4")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        header = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        ok, frame = cap.read()
        if not ok or frame is None:
            raise VideoError(f"{path}: video has zero readable frames; remove it from the "
                             f"dataset or re-encode it")
        height, width = frame.shape[:2]
        frames = header if _header_confirmed(path, cap, header) else decodable_frames(path)
        return VideoInfo(frames=frames, fps=fps if fps > 0 else 25.0, width=width,
                         height=height, header_frames=header)
    finally:
        cap.release()


# Up to this many frames (2 minutes at 25 fps) a video's header count is checked by counting
# its packets, which demuxes without decoding (~5 us a frame); longer videos by one seek to
# the last frame, which decodes from the keyframe before it. Short clips are often one
# keyframe long (all of ../shared/media), so a seek there decodes the whole clip.
PACKET_COUNT_MAX_FRAMES = 3000


def _header_confirmed(path: Path, cap: cv2.VideoCapture, header: int) -> bool:
    """Whether the video holds exactly ``header`` frames. ``cap`` has just read frame 0."""
    if header <= 0:  # some containers do not store a count
        return False
    if header <= PACKET_COUNT_MAX_FRAMES:
        packets = count_packets(path)
        if packets is not None:
            return packets == header
    return _last_frame_reads(cap, header)


def _last_frame_reads(cap: cv2.VideoCapture, header: int) -> bool:
    """Frame ``header - 1`` decodes and none follows it. One seek: milliseconds even on
    hour-long videos with the usual keyframe every few seconds."""
    if header > 1:
        cap.set(cv2.CAP_PROP_POS_FRAMES, header - 1)
        ok, _ = cap.read()
        if not ok:   # truncated: the header claims frames that are not there
            return False
    return not cap.grab()  # a frame past the claimed end: the header undercounts


def count_packets(path: str | Path) -> int | None:
    """Video packets (compressed frames) in a file, read without decoding them (OpenCV's raw
    stream mode of the FFmpeg backend); None when this OpenCV build cannot."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened() or not cap.set(cv2.CAP_PROP_FORMAT, -1):
            return None
        return _grab_all(cap)
    finally:
        cap.release()


def _grab_all(cap: cv2.VideoCapture) -> int:
    """Frames (or raw packets) ``cap`` yields from where it is until the first failure."""
    n = 0
    while cap.grab():
        n += 1
    return n


def decodable_frames(path: str | Path) -> int:
    """Frames of a video that decode, counted by decoding from the start until the first
    failure (as :func:`read_frames` reads them). Slow on long videos: for headers that lie."""
    cap = cv2.VideoCapture(str(path))
    try:
        return _grab_all(cap)
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
