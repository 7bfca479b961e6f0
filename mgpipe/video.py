"""Video probing and frame reading with OpenCV.

OpenCV is the decoder by measurement (issue #10): PyAV decodes about as fast, but its RGB
conversion is 2-5x slower and not bit-identical to OpenCV's on every video (1280x720 mp4v:
5 of 1500 frames off by up to 2), and torchcodec needs a system FFmpeg. Frames are read sequentially, never by seeking; :func:`read_clips` cuts all
of a video's clips in one pass."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

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
                end: int | None = None, stats: "DecodeStats | None" = None) -> np.ndarray:
    """Frames ``indices`` (relative to ``start``; any order, repeats allowed) of the clip
    [start, end) of a video, as uint8 RGB [len(indices), H, W, 3]. Decodes sequentially
    from frame 0 (no seeking inaccuracy) and stops after the last index wanted: one clip at
    a time, so many clips of a long video cost clips x video length; :func:`read_clips`
    reads them all in one pass, with the same frames."""
    wanted = {int(i) for i in indices}
    stop = max(wanted) + 1 if end is None else min(max(wanted) + 1, end - start)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open this video")
    kept: dict[int, np.ndarray] = {}
    if stats is not None:
        stats.opened += 1
    try:
        for _ in range(start):
            if not cap.grab():
                break
            if stats is not None:
                stats.decoded += 1
        for n in range(stop):
            ok, frame = cap.read()
            if not ok:
                break
            if stats is not None:
                stats.decoded += 1
                stats.converted += 1
            if n in wanted:
                kept[n] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    if not kept:
        raise VideoError(f"{path}: no frame decoded in [{start}, {end})")
    # Frames past the decodable end (a short count in the header) repeat the last decoded one.
    last_ok = kept[max(kept)]
    return np.stack([kept.get(int(i), last_ok) for i in indices])


# ---- one sequential pass per video ---------------------------------------------------------

@dataclass
class DecodeStats:
    """What the readers decoded, summed over calls that share this object: ``opened``
    captures opened, ``decoded`` frames decoded (``grab``), ``converted`` frames also turned
    into pixels (``retrieve``). A grouped pass decodes each frame of its video at most once:
    ``decoded`` <= the frames up to its last clip's end, with ``opened`` == 1."""
    opened: int = 0
    decoded: int = 0
    converted: int = 0

    def add(self, other: "DecodeStats") -> None:
        self.opened += other.opened
        self.decoded += other.decoded
        self.converted += other.converted


def open_capture(path: str | Path, stats: DecodeStats | None = None) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture``; raises VideoError naming ``path`` (FileNotFoundError
    for a missing file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{path}: OpenCV cannot open this video (empty, corrupt or no decoder)")
    if stats is not None:
        stats.opened += 1
    return cap


def scan_frames(cap: cv2.VideoCapture, want: Callable[[int], bool], stop: int | None = None,
                stats: DecodeStats | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) for each frame ``i`` < ``stop`` of an opened capture with
    ``want(i)``, in order, decoding every frame from the capture's position (0 when just
    opened) once and sequentially: no seeking (frame-inaccurate in many codecs). Frames not
    wanted are decoded but not converted (``grab`` without ``retrieve``: 2-5x cheaper on
    large frames). Stops at the first frame that does not decode, as ``read`` does."""
    i = 0
    while stop is None or i < stop:
        if not cap.grab():
            return
        if stats is not None:
            stats.decoded += 1
        if want(i):
            ok, frame = cap.retrieve()
            if not ok or frame is None:
                return
            if stats is not None:
                stats.converted += 1
            yield i, frame
        i += 1


def _clip_stop(start: int, end: int | None, indices: np.ndarray) -> int:
    """One past the last source frame :func:`read_frames` decodes for the clip."""
    top = int(np.max(indices)) + 1
    return start + (top if end is None else min(top, end - start))


def read_clips(path: str | Path, clips: Sequence[tuple[int, int | None, np.ndarray]],
               stats: DecodeStats | None = None,
               ) -> Iterator[tuple[int, np.ndarray | Exception]]:
    """Frames of many clips of one video in one sequential pass: for clips (start, end,
    indices) as :func:`read_frames` takes them, yields (clip position in ``clips``, uint8 RGB
    [len(indices), H, W, 3]) as soon as a clip's last frame has decoded, or (position,
    exception) for a clip that cannot be read; every clip is yielded once. The frames are
    exactly :func:`read_frames`'s (frames past the decodable end repeat the clip's last
    decoded one). Holds only the sampled frames of the clips open at the current frame
    (a frame shared by overlapping clips is converted and kept once); decodes each frame up
    to the last clip's end once. A video that fails to open fails every clip; one that
    stops decoding mid-way fails the clips that had no frame before it (the others get the
    frames they had, as :func:`read_frames` would), and an exception mid-way fails the
    clips not yet yielded."""
    specs = []          # per clip: (start, end, indices, stop)
    needs: dict[int, list[tuple[int, int]]] = {}   # source frame -> [(clip, relative index)]
    closing: dict[int, list[int]] = {}             # last source frame read -> clips done then
    pending: set[int] = set()
    for k, (start, end, indices) in enumerate(clips):
        indices = np.asarray(indices, np.int64)
        start = int(start)
        end = None if end is None else int(end)
        stop = _clip_stop(start, end, indices) if len(indices) else start
        specs.append((start, end, indices, stop))
        pending.add(k)
        for rel in {int(i) for i in indices}:
            if start + rel < stop:
                needs.setdefault(start + rel, []).append((k, rel))
        if stop > start:
            closing.setdefault(stop - 1, []).append(k)
    kept: dict[int, dict[int, np.ndarray]] = {}

    def finish(k: int) -> tuple[int, np.ndarray | Exception]:
        pending.discard(k)
        got = kept.pop(k, {})
        start, end, indices, _ = specs[k]
        if not got:
            return k, VideoError(f"{path}: no frame decoded in [{start}, {end})")
        last_ok = got[max(got)]
        return k, np.stack([got.get(int(i), last_ok) for i in indices])

    for k, (start, _, _, stop) in enumerate(specs):
        if stop <= start:  # an empty range: nothing to decode
            yield finish(k)
    if pending:
        try:
            cap = open_capture(path, stats)
        except Exception as err:  # noqa: BLE001 - reported per clip
            for k in sorted(pending):
                yield k, err
            return
        try:
            stop = max(specs[k][3] for k in pending)
            for i, frame in scan_frames(cap, needs.__contains__, stop, stats):
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                for k, rel in needs.pop(i):
                    kept.setdefault(k, {})[rel] = rgb
                for k in closing.pop(i, ()):
                    yield finish(k)
        except Exception as err:  # noqa: BLE001 - a video failing mid-way fails its open clips
            for k in sorted(pending):
                kept.pop(k, None)
                pending.discard(k)
                yield k, err
        finally:
            cap.release()
    for k in sorted(pending):   # the video ended before these clips' last frame
        yield finish(k)


# ---- writing -----------------------------------------------------------------------------

FOURCC = "mp4v"


class AtomicVideoWriter:
    """``cv2.VideoWriter`` (``mp4v`` in an .mp4) on a temporary file beside ``path``; on
    ``close()`` the file's frame count (its header, no decoding) is checked against the
    frames written and it is renamed onto ``path``; ``abort()`` (or an exception inside a
    ``with`` block) removes it. Frames: uint8 BGR [h, w, 3] of the size given."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the container comes from the suffix, so the temporary name ends in .mp4 too
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.partial.mp4")
        self.count = 0
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*FOURCC),
                                      float(fps) if fps and fps > 0 else 25.0, self.size)
        if not self.writer.isOpened():
            self.abort()
            raise VideoError(f"OpenCV cannot write {FOURCC} video to {self.tmp.parent} "
                              f"(no FFmpeg in this OpenCV build, or the folder is not writable)")

    def write(self, frame: np.ndarray) -> None:
        if frame.shape[:2] != (self.size[1], self.size[0]) or frame.dtype != np.uint8:
            raise VideoError(f"frame {self.count} is {frame.shape} {frame.dtype}, the video "
                              f"is {self.size[0]}x{self.size[1]} uint8")
        self.writer.write(np.ascontiguousarray(frame))
        self.count += 1

    def close(self) -> Path:
        self.writer.release()
        cap = cv2.VideoCapture(str(self.tmp))
        try:
            got = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
        finally:
            cap.release()
        if got != self.count:
            self.abort()
            raise VideoError(f"the written video holds {got} frames, {self.count} were drawn")
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicVideoWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            self.abort()
