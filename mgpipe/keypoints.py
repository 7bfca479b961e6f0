"""Keypoint extraction: MediaPipe Holistic into the 68-keypoint layout, and the parallel,
resumable engine that the `keypoints` stage runs over a manifest (SPEC sections 4, 5, 10).

The engine (``run_extraction``) knows nothing about MediaPipe: it takes any top-level
``extract_fn(clip) -> (kp [T, 68, 3] float32, info dict)``, so the ``provided`` backend reuses
it with a cheap function. Output HDF5: one group per clip_id holding ``kp`` and attributes
``source, fps, width, height, detector, detector_version, signature, frames`` (plus any other
scalar ``info`` entries, and ``nonfinite_cleaned`` where NaN/inf keypoints were zeroed).
Identical content gives identical bytes: clips in list order, attributes sorted, fixed
dataset settings, no absolute paths or mtimes (SPEC section 12).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from .io import atomic_path
from .layout import LEFT_HAND, NAMES, NUM_KEYPOINTS, RIGHT_HAND, clean_keypoints, fill_neck
from .signals import init_worker, terminate_pool
from .video import DecodeStats, VideoError, open_capture, scan_frames

log = logging.getLogger(__name__)

DETECTOR = "mediapipe-holistic"
REQUIRED_ATTRS = ("source", "fps", "width", "height", "detector", "detector_version",
                  "signature", "frames")
# Two Holistic hands whose landmark boxes overlap this much are one physical hand seen twice
# (on the make-up clip both hand ROIs lock onto the one visible hand: IoU is either < 0.4 or
# > 0.65 there, and 0 on two real hands).
HAND_DUPLICATE_IOU = 0.5


_NAMES_ATTR = np.array(NAMES, dtype=h5py.string_dtype())
# Every kp dataset, in the work file and the final one. track_times=False: no timestamps, so
# byte-identical reruns keep DVC downstream cached.
_KP_DATASET = dict(compression="gzip", compression_opts=4, shuffle=True, track_times=False)


# ---- video reading ---------------------------------------------------------------------------

def _frame_bound(value: Any) -> int | None:
    """None for a missing bound (None, NaN, '', negative), else int."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    value = int(value)
    return None if value < 0 else value


@contextmanager
def open_video(path: str | os.PathLike) -> Iterator[cv2.VideoCapture]:
    """An opened ``cv2.VideoCapture``; raises FileNotFoundError / VideoError naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"cannot open video {path} (empty, corrupt or no decoder)")
        yield cap
    finally:
        cap.release()


def iter_frames(cap: cv2.VideoCapture, start_frame: int = 0,
                end_frame: int | None = None) -> Iterator[np.ndarray]:
    """BGR frames [H, W, 3] uint8 with index in [start_frame, end_frame) (end exclusive).

    Skips by decoding (``grab``), not by seeking: seeking is frame-inaccurate in many codecs.
    """
    for _ in range(start_frame):
        if not cap.grab():
            return
    i = start_frame
    while end_frame is None or i < end_frame:
        ok, frame = cap.read()
        if not ok:
            return
        yield frame
        i += 1


# ---- MediaPipe Holistic -> 68 layout ----------------------------------------------------------

def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the bounding boxes of two point sets [N, 2]."""
    lo, hi = np.maximum(a.min(0), b.min(0)), np.minimum(a.max(0), b.max(0))
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    area = float(np.prod(a.max(0) - a.min(0)) + np.prod(b.max(0) - b.min(0)))
    return inter / max(area - inter, 1e-9)


def holistic_frame(pose: np.ndarray | None, left: np.ndarray | None, right: np.ndarray | None,
                   width: int, height: int, *, dedupe_hands: bool = True,
                   outside_margin: float = 0.02) -> tuple[np.ndarray, bool, bool]:
    """One frame of Holistic output, in pixels, mapped into the layout.

    pose: [25, 3] (x, y, visibility) of Pose's first 25 landmarks or None; left/right: [21, 2] (x, y) of the subject's
    left/right hand or None. Returns (kp [68, 3] float32, left kept, right kept).
    No pose: all zeros. A detected hand gets score 1 (Holistic exposes no hand score).
    ``dedupe_hands``: when both hands are one physical hand (box IoU > HAND_DUPLICATE_IOU),
    keep only the side whose pose wrist (15 left, 16 right) is nearer the hand's wrist.
    ``outside_margin``: keypoints farther outside the frame than this fraction of its larger
    side get score 0 (coordinates kept): Pose extrapolates the unseen body, e.g. elbows and
    hips below the frame, often with a high visibility.
    """
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    if pose is None:
        return kp, False, False
    kp[:25] = pose[:25]
    fill_neck(kp)  # from the raw shoulders: the neck is often in frame when a shoulder is not
    if dedupe_hands and left is not None and right is not None and _box_iou(left, right) > HAND_DUPLICATE_IOU:
        wrist = (left[0] + right[0]) / 2
        if np.linalg.norm(wrist - pose[15, :2]) <= np.linalg.norm(wrist - pose[16, :2]):
            right = None
        else:
            left = None
    for first, hand in ((LEFT_HAND, left), (RIGHT_HAND, right)):
        if hand is not None:
            kp[first:first + 21, :2] = hand
            kp[first:first + 21, 2] = 1.0
    if outside_margin is not None:
        m = outside_margin * max(width, height)
        x, y = kp[:, 0], kp[:, 1]
        kp[(x < -m) | (x > width + m) | (y < -m) | (y > height + m), 2] = 0.0
    return kp, left is not None, right is not None


def _landmarks(lms, width: int, height: int, n: int, score: bool) -> np.ndarray | None:
    if lms is None:
        return None
    pts = lms.landmark[:n]
    if score:
        return np.array([(p.x * width, p.y * height, p.visibility) for p in pts], np.float32)
    return np.array([(p.x * width, p.y * height) for p in pts], np.float32)


def mediapipe_model_problem(model_complexity: int) -> str:
    """Why Holistic at ``model_complexity`` cannot run offline ("" when it can). mediapipe
    0.10.21's wheel carries the pose landmark model of complexity 1 only; 0 (lite) and 2
    (heavy) are downloaded into the package at first use, which fails without network (on
    clusters and behind firewalls) and is not reproducible."""
    name = {0: "lite", 1: "full", 2: "heavy"}[model_complexity]
    from importlib.util import find_spec

    spec = find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return "mediapipe is not installed; pip install mediapipe==0.10.21"
    model = Path(list(spec.submodule_search_locations)[0]) / "modules" / "pose_landmark" / \
        f"pose_landmark_{name}.tflite"
    if model.is_file():
        return ""
    return (f"keypoints.model_complexity: {model_complexity} needs {model.name}, which the "
            f"mediapipe wheel does not ship (it downloads it at first use: that fails offline "
            f"and is not reproducible); use keypoints.model_complexity: 1, or place the file at "
            f"{model}")


def mediapipe_version() -> str:
    """Installed mediapipe version, without importing it."""
    from importlib.metadata import version
    return version("mediapipe")


def extract_mediapipe(video_path: str | os.PathLike, model_complexity: int = 1,
                      start_frame: int = 0, end_frame: int | None = None,
                      min_detection_confidence: float = 0.5,
                      min_tracking_confidence: float = 0.5, *, dedupe_hands: bool = True,
                      outside_margin: float = 0.02) -> tuple[np.ndarray, dict]:
    """MediaPipe Holistic (video mode) over frames [start_frame, end_frame) of a video.

    Returns kp float32 [T, 68, 3] (x, y in pixels of the source frame, score) and info:
    source, frames, fps, width, height, detector, detector_version, model_complexity,
    frames_with_pose, frames_with_left_hand, frames_with_right_hand. Holistic's
    ``left_hand_landmarks`` is the subject's own left hand (it is cropped around the pose's
    left wrist), so it goes to 26-46 unswapped. See ``holistic_frame`` for scores, duplicate
    hands and out-of-frame points. Raises FileNotFoundError / VideoError naming the file.
    Many clips of one video: :func:`extract_mediapipe_video` (one decoding pass).
    """
    clip = dict(clip_id="", video=video_path, start_frame=start_frame, end_frame=end_frame)
    (_, result), = extract_mediapipe_video(
        [clip], model_complexity, min_detection_confidence, min_tracking_confidence,
        dedupe_hands=dedupe_hands, outside_margin=outside_margin)
    if isinstance(result, BaseException):
        raise result
    return result


class _HolisticClip:
    """One clip's Holistic graph (video mode: its tracking state is the clip's alone) and
    the keypoints so far."""

    def __init__(self, holistic_cls, opts: dict, dedupe_hands: bool, outside_margin: float):
        self.graph = holistic_cls(static_image_mode=False, smooth_landmarks=True,
                                  enable_segmentation=False, refine_face_landmarks=False,
                                  **opts)
        self.dedupe_hands, self.outside_margin = dedupe_hands, outside_margin
        self.frames: list[np.ndarray] = []
        self.n_pose = self.n_left = self.n_right = 0
        self.width = self.height = 0

    def add(self, rgb: np.ndarray) -> None:
        self.height, self.width = height, width = rgb.shape[:2]
        res = self.graph.process(rgb)
        kp, has_l, has_r = holistic_frame(
            _landmarks(res.pose_landmarks, width, height, 25, True),
            _landmarks(res.left_hand_landmarks, width, height, 21, False),
            _landmarks(res.right_hand_landmarks, width, height, 21, False),
            width, height, dedupe_hands=self.dedupe_hands, outside_margin=self.outside_margin)
        self.frames.append(kp)
        self.n_pose += res.pose_landmarks is not None
        self.n_left += has_l
        self.n_right += has_r

    def close(self) -> None:
        self.graph.close()


def extract_mediapipe_video(clips: Sequence[Mapping], model_complexity: int = 1,
                            min_detection_confidence: float = 0.5,
                            min_tracking_confidence: float = 0.5, *, dedupe_hands: bool = True,
                            outside_margin: float = 0.02, stats: DecodeStats | None = None,
                            ) -> Iterator[tuple[str, tuple[np.ndarray, dict] | Exception]]:
    """``extract_mediapipe`` on many clips (rows with clip_id, video, start_frame,
    end_frame) of one video, decoding it once: one sequential pass in which each frame goes
    to a Holistic graph of its own for every clip that holds it (overlapping clips get one
    each, fed the same frames they would get alone, so the keypoints equal per-clip runs).
    Yields (clip_id, (kp, info)) as each clip ends, or (clip_id, exception) for a clip that
    fails; the others go on. Holds no frame beyond the current one, and one graph per clip
    open at that frame. The engine's ``extract_fn`` with ``run_extraction(by_video=True)``;
    bind options with ``functools.partial``."""
    import mediapipe  # heavy; only workers that run this backend pay for it

    spans = []
    for c in clips:
        start, end = _frame_bound(c.get("start_frame", 0)) or 0, _frame_bound(c.get("end_frame"))
        spans.append((str(c["clip_id"]), start, end))
    paths = {os.fspath(c["video"]) for c in clips}
    if len(paths) != 1:
        raise ValueError(f"extract_mediapipe_video takes the clips of one video, got {sorted(paths)}")
    video_path = clips[0]["video"]
    opts = dict(model_complexity=model_complexity,
                min_detection_confidence=min_detection_confidence,
                min_tracking_confidence=min_tracking_confidence)
    open_: dict[int, _HolisticClip] = {}
    pending = set(range(len(spans)))
    fps = 0.0

    def finish(k: int):
        pending.discard(k)
        cid, start, end = spans[k]
        clip = open_.pop(k, None)
        if clip is None or not clip.frames:
            if clip is not None:
                clip.close()
            return cid, VideoError(f"no frames in [{start}, {end if end is not None else 'end'}) "
                                   f"of video {video_path}")
        clip.close()
        info = dict(source=str(video_path), frames=len(clip.frames), fps=fps,
                    width=clip.width, height=clip.height, detector=DETECTOR,
                    detector_version=mediapipe.__version__,
                    model_complexity=int(model_complexity), frames_with_pose=clip.n_pose,
                    frames_with_left_hand=clip.n_left, frames_with_right_hand=clip.n_right)
        return cid, (np.stack(clip.frames), info)

    for k, (_, start, end) in enumerate(spans):
        if end is not None and end <= start:
            yield finish(k)
    try:
        cap = open_capture(video_path, stats)
    except Exception as err:  # noqa: BLE001 - every clip of the video fails alike
        for k in sorted(pending):
            yield spans[k][0], err
        return
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        starts: dict[int, list[int]] = {}
        for k in pending:
            starts.setdefault(spans[k][1], []).append(k)
        ends = [spans[k][2] for k in pending]
        stop = None if not ends or None in ends else max(ends)

        def wanted(i: int) -> bool:
            return any(spans[k][1] <= i and (spans[k][2] is None or i < spans[k][2])
                       for k in pending)

        for i, bgr in scan_frames(cap, wanted, stop, stats):
            for k in starts.pop(i, ()):
                try:
                    open_[k] = _HolisticClip(mediapipe.solutions.holistic.Holistic, opts,
                                             dedupe_hands, outside_margin)
                except Exception as err:  # noqa: BLE001
                    pending.discard(k)
                    yield spans[k][0], err
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            rgb.flags.writeable = False  # lets MediaPipe wrap the buffer without a copy
            for k in sorted(open_):
                try:
                    open_[k].add(rgb)
                except Exception as err:  # noqa: BLE001 - this clip fails, the others go on
                    open_.pop(k).close()
                    pending.discard(k)
                    yield spans[k][0], err
                    continue
                if spans[k][2] is not None and i + 1 >= spans[k][2]:
                    yield finish(k)
        for k in sorted(pending):  # the video ended first: clips to its end, or past it
            yield finish(k)
    except Exception as err:  # noqa: BLE001 - a video failing mid-way fails its open clips
        for k in sorted(pending):
            if k in open_:
                open_.pop(k).close()
            pending.discard(k)
            yield spans[k][0], err
    finally:
        cap.release()
        for clip in open_.values():  # the consumer stopped early
            clip.close()


def extract_mediapipe_clip(clip: Mapping, **kwargs) -> tuple[np.ndarray, dict]:
    """``extract_fn`` for the engine: ``extract_mediapipe`` on a clip row (video, start_frame,
    end_frame). Top-level so process pools can pickle it; bind options with
    ``functools.partial(extract_mediapipe_clip, model_complexity=2)``."""
    return extract_mediapipe(clip["video"], start_frame=clip.get("start_frame", 0),
                             end_frame=clip.get("end_frame"), **kwargs)


# One long video on all cores: chunks in parallel worker processes. Holistic in video mode
# tracks from frame to frame (and smooths the landmarks over the last frames), so a chunk
# starts CHUNK_OVERLAP frames early and drops them: by then the tracker has found the person
# and the smoothing filter has settled (on the shared clips the pose then agrees with the
# serial run's to a pixel or two). Chunks shorter than MIN_CHUNK_FRAMES are not worth a
# process (its start, about 1-2 s for mediapipe's import and graph, is ~50 frames of work).
CHUNK_OVERLAP = 15
MIN_CHUNK_FRAMES = 100


def chunk_spans(start: int, end: int, parts: int, overlap: int = CHUNK_OVERLAP,
                min_frames: int = MIN_CHUNK_FRAMES) -> list[tuple[int, int, int]]:
    """How frames [start, end) split over at most ``parts`` workers: (read_from, keep_from,
    end) per chunk, in order; a chunk runs Holistic over [read_from, end) and keeps
    [keep_from, end); the kept ranges tile [start, end) exactly. Chunks are about equal and
    at least ``min_frames`` long (fewer chunks for a short video: one = the serial run).

    >>> chunk_spans(0, 300, 2, overlap=10, min_frames=100)
    [(0, 0, 150), (140, 150, 300)]
    """
    n = end - start
    parts = max(1, min(parts, n // max(min_frames, 1)))
    cuts = [start + (n * k) // parts for k in range(parts + 1)]
    return [(max(start, a - overlap) if k else a, a, b)
            for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


def extract_mediapipe_parallel(video_path: str | os.PathLike, start_frame: int = 0,
                               end_frame: int | None = None, workers: int | None = None,
                               overlap: int = CHUNK_OVERLAP,
                               min_chunk: int = MIN_CHUNK_FRAMES, *, frames: int | None = None,
                               start_method: str = "spawn", **kwargs
                               ) -> tuple[np.ndarray, dict]:
    """``extract_mediapipe`` over frames [start_frame, end_frame) of one (long) video on
    ``workers`` processes (default: every core): :func:`chunk_spans` cuts the range, each
    chunk runs in a worker of the keypoint engine's pool (``_map_clips``: workers die with
    this process, their MediaPipe noise is filtered from stderr), the kept frames are put
    back in frame order. Same result format as ``extract_mediapipe`` (kp float32 [T, 68, 3],
    info; ``frames_with_*`` counted on the kept frames, plus ``chunks``); frames near a
    chunk's start can differ slightly from the serial run's (the tracker restarted
    ``overlap`` frames before). ``frames``: the range's frame count when known (else the
    video is probed); one chunk (short video, ``workers`` <= 1) runs here, serially.
    Raises the first chunk's error (a video that fails, fails whole)."""
    from .video import probe_video

    start = int(start_frame or 0)
    if frames is None:
        total = probe_video(video_path).frames
        frames = (total if end_frame is None else min(int(end_frame), total)) - start
    end = start + max(int(frames), 0)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    spans = chunk_spans(start, end, workers, overlap, min_chunk) if end > start else []
    if len(spans) <= 1:
        kp, info = extract_mediapipe(video_path, start_frame=start, end_frame=end, **kwargs)
        return kp, {**info, "chunks": 1}
    rows = [dict(clip_id=str(k), video=os.fspath(video_path), start_frame=r, end_frame=b)
            for k, (r, _, b) in enumerate(spans)]
    fn = partial(extract_mediapipe_clip, **kwargs)
    parts: dict[int, tuple[np.ndarray, dict]] = {}
    with closing(_map_clips(rows, fn, len(rows), start_method)) as results:
        for clip, result, err in results:
            if err is not None:
                raise err if isinstance(err, BaseException) else VideoError(
                    f"{video_path}: keypoint detection failed on frames "
                    f"[{clip['start_frame']}, {clip['end_frame']}): {err}")
            parts[int(clip["clip_id"])] = result
    kps = []
    for k, (read_from, keep_from, _) in enumerate(spans):
        kps.append(np.asarray(parts[k][0], np.float32)[keep_from - read_from:])
    kp = np.concatenate(kps)
    info = dict(parts[0][1])
    seen = kp[..., 2] > 0
    info.update(frames=len(kp), chunks=len(spans),
                frames_with_pose=int(seen[:, :25].any(1).sum()),
                frames_with_left_hand=int(seen[:, LEFT_HAND:LEFT_HAND + 21].any(1).sum()),
                frames_with_right_hand=int(seen[:, RIGHT_HAND:RIGHT_HAND + 21].any(1).sum()))
    return kp, info


DIGEST_BLOCK = 1 << 20  # bytes read from each of the start, middle and end of a video


def video_digest(path: str | os.PathLike) -> str:
    """Fast content digest of a file: sha1 of its size and of its first, middle and last MiB
    (the whole file when under 3 MiB), so a multi-GB video costs 3 MiB of reading. A
    re-encode, truncation or replacement changes it; an edit confined to the unread parts of
    a long video does not (the size and path are in the signature too)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(f"{size}\n".encode())
        if size <= 3 * DIGEST_BLOCK:
            h.update(f.read())
        else:
            for offset in (0, size // 2 - DIGEST_BLOCK // 2, size - DIGEST_BLOCK):
                f.seek(offset)
                h.update(f.read(DIGEST_BLOCK))
    return h.hexdigest()


def clip_signature(video: str | os.PathLike, start_frame: Any = 0, end_frame: Any = None, *,
                   digests: dict | None = None, **params) -> str:
    """A string that changes exactly when the clip's source or the backend's parameters
    change: the video path as given (the manifest's, relative to the project root for a
    relative dataset root, so a clone elsewhere keeps its signatures), the file's size and
    ``video_digest``, the frame range, and ``params`` (e.g. backend, model_complexity). No
    mtime: a fresh checkout or copy of the same bytes is the same clip.

    digests: a dict that caches (size, ``video_digest``) per path within a run (many clips
    share one long video); the caller owns it, so an edited video is re-read by the next run.
    Raises FileNotFoundError naming the video."""
    key = os.fspath(video)
    if digests is not None and key in digests:
        size, digest = digests[key]
    else:
        size, digest = os.stat(video).st_size, video_digest(video)
        if digests is not None:
            digests[key] = size, digest
    return json.dumps(dict(video=key, size=size, sha1=digest,
                           start=_frame_bound(start_frame) or 0, end=_frame_bound(end_frame),
                           **params), sort_keys=True, default=str)


# ---- the engine ------------------------------------------------------------------------------

@dataclass
class ExtractionSummary:
    """What ``run_extraction`` did. ``skipped``: (clip_id, reason) of clips not written."""
    path: str
    done: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def shard_path(out_path: str | os.PathLike, index: int, count: int) -> Path:
    """``data/kp.h5`` -> ``data/kp.shard-<index>-of-<count>.h5`` (index 0-based)."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.shard-{index}-of-{count}.h5")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0-based, as in ``--shard 0/4``) -> (i, n)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard index {i} not in [0, {n})")
    return i, n


def _as_dict(clip) -> dict:
    if isinstance(clip, Mapping):
        return dict(clip)
    if hasattr(clip, "to_dict"):  # pandas Series
        return clip.to_dict()
    if hasattr(clip, "_asdict"):  # namedtuple, e.g. DataFrame.itertuples()
        return clip._asdict()
    raise TypeError(f"a clip must be a mapping or row, got {type(clip).__name__}")


def _check_clips(clips: list[dict]) -> None:
    seen = set()
    for c in clips:
        for key in ("clip_id", "signature"):
            if key not in c:
                raise ValueError(f"clip {c.get('clip_id', c)!r} has no {key!r}")
        cid = c["clip_id"] = str(c["clip_id"])
        c["signature"] = str(c["signature"])
        if not cid or "/" in cid or cid in (".", ".."):
            raise ValueError(f"clip_id {cid!r} cannot name an HDF5 group")
        if cid in seen:
            raise ValueError(f"duplicate clip_id {cid!r}")
        seen.add(cid)


def _signature(group: h5py.Group) -> str | None:
    sig = group.attrs.get("signature")
    return sig.decode() if isinstance(sig, bytes) else sig


def _open_partial(path: Path) -> h5py.File:
    """Open the work file for appending; a corrupt one (killed mid-write) is started afresh."""
    try:
        return h5py.File(path, "a")
    except OSError as err:
        if "lock" in str(err).lower():  # HDF5's file lock: another run is writing it
            raise RuntimeError(f"{path} is in use by another extraction run ({err})") from err
        log.warning("discarding unreadable partial file %s (%s)", path, err)
        path.unlink()
        return h5py.File(path, "a")


def _reconcile(f: h5py.File, clips: list[dict], sources: Iterable[Path]) -> set[str]:
    """Drop from ``f`` groups not listed or with another signature, copy matching ones from
    ``sources``; returns the clip ids now in f."""
    wanted = {c["clip_id"]: c["signature"] for c in clips}
    for name in list(f.keys()):
        try:
            keep = wanted.get(name) == _signature(f[name]) and "kp" in f[name]
        except (KeyError, OSError):  # a group half-written when the run was killed
            keep = False
        if not keep:
            del f[name]
    present = set(f.keys())
    for src_path in sources:
        if not src_path.exists() or len(present) == len(wanted):
            continue
        try:
            with h5py.File(src_path, "r") as src:
                for cid, sig in wanted.items():
                    if cid not in present and cid in src and _signature(src[cid]) == sig:
                        src.copy(src[cid], f, name=cid)
                        present.add(cid)
        except OSError as err:
            log.warning("cannot reuse clips from %s (%s)", src_path, err)
    f.flush()
    return present


def _attr_value(value):
    if isinstance(value, (np.generic,)):
        value = value.item()
    return value if isinstance(value, (str, int, float, bool)) else None


def _write_clip(f: h5py.File, clip: dict, kp: np.ndarray, info: Mapping) -> None:
    """Append one clip to the work file (its layout is redone by ``_write_final``)."""
    g = f.create_group(clip["clip_id"])
    g.create_dataset("kp", data=kp, **_KP_DATASET)
    attrs = {k: v for k, v in ((k, _attr_value(v)) for k, v in info.items()) if v is not None}
    attrs.update(source=str(info.get("source", clip.get("video", ""))), frames=len(kp))
    missing = [k for k in REQUIRED_ATTRS if k not in attrs and k != "signature"]
    if missing:
        del f[clip["clip_id"]]
        raise ValueError(f"extract_fn info for clip {clip['clip_id']!r} lacks {missing}")
    for k, v in attrs.items():
        if k != "signature":
            g.attrs[k] = v
    g.attrs["signature"] = clip["signature"]  # last: a group without it is never reused
    f.flush()


def _has_kp_settings(ds: h5py.Dataset) -> bool:
    """Whether ``ds`` has ``_KP_DATASET``'s filters and h5py's chunk shape for it. (HDF5 does
    not store track_times, a reopened dataset always reports it on; H5Ocopy adds no time.)"""
    return (ds.compression, ds.compression_opts, ds.shuffle, ds.fletcher32, ds.scaleoffset,
            ds.chunks, ds.dtype) == (
        "gzip", 4, True, False, None,
        h5py.filters.guess_chunk(ds.shape, None, ds.dtype.itemsize), np.dtype(np.float32))


def _write_final(sources: Sequence[Path], out: Path, order: Sequence[str] | None = None) -> int:
    """Write every clip of the HDF5 files ``sources`` into a new file ``out`` in a fixed
    layout, whatever order the clips were appended in: groups in ``order`` (clips it does not
    list after them, by name), attributes sorted by name, ``kp`` with ``_KP_DATASET``
    settings; no freed space. Returns the clip count; a clip_id in two sources is an error.

    ``kp`` is copied chunk for chunk when it has those settings already (always, for the
    engine's own files), else recompressed. Cost, 10,000 clips of real MediaPipe keypoints
    (1.4 M frames, 520 MB) on the 2-core dev machine: 36 s, mostly h5py's per-attribute
    overhead (61 s if every kp were recompressed); MediaPipe takes hours on those frames."""
    rank = {cid: i for i, cid in enumerate(order or ())}
    with ExitStack() as stack:
        found: dict[str, h5py.File] = {}  # clip_id -> the source holding it
        for p in sources:
            src = stack.enter_context(h5py.File(p, "r"))
            for cid in src:
                if cid in found:
                    raise ValueError(f"clip {cid!r} is in more than one of {list(map(str, sources))}")
                found[cid] = src
        with h5py.File(out, "w") as dst:
            dst.attrs["keypoint_names"] = _NAMES_ATTR
            for cid in sorted(found, key=lambda c: (rank.get(c, len(rank)), c)):
                src, g = found[cid][cid], dst.create_group(cid)
                if _has_kp_settings(src["kp"]):
                    src.copy(src["kp"], g)
                else:
                    g.create_dataset("kp", data=src["kp"][()], **_KP_DATASET)
                for k in sorted(src.attrs):
                    g.attrs[k] = src.attrs[k]
    return len(found)


def _check_result(result) -> tuple[np.ndarray | None, dict, str | None]:
    """(kp, info, None) or (None, {}, reason to skip). NaN/inf keypoints become unseen
    (``clean_keypoints``), counted in info["nonfinite_cleaned"]."""
    try:
        kp, info = result
        kp, info = np.asarray(kp, np.float32), dict(info)
    except (TypeError, ValueError) as err:
        return None, {}, f"extract_fn returned no (kp, info) pair: {err}"
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3) or len(kp) == 0:
        return None, {}, f"keypoints of shape {kp.shape}, expected [T>0, {NUM_KEYPOINTS}, 3]"
    kp, cleaned = clean_keypoints(kp)
    if cleaned:
        info["nonfinite_cleaned"] = cleaned
    if not (kp[..., 2] > 0).any():
        return None, {}, "no person found in any frame"
    return kp, info, None


# ---- worker processes --------------------------------------------------------------------------

# Lines that MediaPipe 0.10.21 and TFLite print on stderr in every worker, for every clip or
# graph, and that say nothing wrong. They come from absl's C++ logging before
# absl::InitializeLog, which writes everything to stderr: neither GLOG_minloglevel,
# TF_CPP_MIN_LOG_LEVEL nor ABSL_MIN_LOG_LEVEL changes it (tried on the shared clips), and the
# wheel exports no logging symbol to call, so the workers' stderr is filtered instead.
WORKER_STDERR_NOISE = re.compile(
    rb"inference_feedback_manager\.cc:\d+\] Feedback manager requires a model with a single"
    rb"|landmark_projection_calculator\.cc:\d+\] Using NORM_RECT without IMAGE_DIMENSIONS"
    rb"|^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _copy_stderr(conn, noise: re.Pattern) -> None:
    """Thread: copy the workers' stderr pipe to this process's stderr, line by line, less
    the lines ``noise`` matches, until every worker has closed it."""
    fd, rest = conn.fileno(), b""
    try:
        while chunk := os.read(fd, 1 << 16):
            *lines, rest = (rest + chunk).split(b"\n")
            if len(rest) > 1 << 16:  # no newline in sight: pass it on as it is
                lines, rest = lines + [rest], b""
            keep = b"".join(line + b"\n" for line in lines if not noise.search(line))
            try:
                _write_all(2, keep)
            except OSError:  # our stderr is gone: keep draining, or workers would block
                pass
        if rest and not noise.search(rest):
            _write_all(2, rest + b"\n")
    except OSError:
        pass
    finally:
        conn.close()


@contextmanager
def _worker_stderr(ctx, noise: re.Pattern = WORKER_STDERR_NOISE) -> Iterator[Any]:
    """The write end of a pipe for pool workers' stderr (pass it to ``_init_worker``).

    The filter runs here, in the parent, not in the worker: what a dying worker writes last
    (a C++ fatal error just before abort) is in the pipe and still gets through. On exit,
    waits briefly for the workers' last lines."""
    reader, writer = ctx.Pipe(duplex=False)
    thread = threading.Thread(target=_copy_stderr, args=(reader, noise), daemon=True,
                              name="worker-stderr")
    thread.start()
    try:
        yield writer
    finally:
        writer.close()
        thread.join(5.0)  # EOF comes once every worker has exited


_started = None  # in a worker: the queue on which it announces each task (its first clip_id)
_results = None  # in a worker: the queue on which it sends each clip's result


def _init_worker(started, parent_pid: int, stderr=None, results=None) -> None:
    """Worker initializer: die with the parent, ignore SIGINT (``signals.init_worker``), send
    fd 2 into the parent's filtered pipe, announce tasks on ``started``, send per-clip
    results on ``results``."""
    global _started, _results
    init_worker(parent_pid)
    if stderr is not None:
        os.dup2(stderr.fileno(), 2)  # C++ logging writes to fd 2, not to sys.stderr
        stderr.close()
    _started, _results = started, results


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _iter_group(extract_fn: Callable, group: list[dict]) -> Iterator[tuple[str, Any, str | None]]:
    """(clip_id, result, None) or (clip_id, None, reason) for every clip of ``group`` (one
    video), from ``extract_fn(group)``; a clip it does not report, or all the clips left when
    it raises, get a reason."""
    left = {c["clip_id"] for c in group}
    try:
        for cid, result in extract_fn(group):
            if cid not in left:
                continue
            left.discard(cid)
            if isinstance(result, BaseException):
                yield cid, None, _reason(result)
            else:
                yield cid, result, None
        reason = "extract_fn reported nothing for this clip"
    except Exception as err:  # noqa: BLE001 - the video failed: its unfinished clips skip
        reason = _reason(err)
    for c in group:
        if c["clip_id"] in left:
            yield c["clip_id"], None, reason


def _run_group(extract_fn: Callable, group: list[dict]) -> None:
    """Worker: one task's clips, each result sent on ``_results`` as it finishes (so an
    interruption keeps them, and the worker holds one clip's result at a time)."""
    if _started is not None:
        _started.put(group[0]["clip_id"])
    for item in _iter_group(extract_fn, group):
        _results.put(item)


def _clip_as_group(extract_fn: Callable, group: list[dict]) -> Iterator[tuple[str, Any]]:
    """A per-clip ``extract_fn`` (clip -> result) as a group one, for a group of one clip."""
    clip, = group
    yield clip["clip_id"], extract_fn(clip)


def _map_clips(clips: list[dict], extract_fn: Callable, workers: int, start_method: str,
               ) -> Iterator[tuple[dict, Any, BaseException | str | None]]:
    """``_map_groups`` with one clip per task and ``extract_fn(clip) -> result``."""
    return _map_groups([[c] for c in clips], partial(_clip_as_group, extract_fn), workers,
                       start_method, unit="clip")


def _map_groups(groups: list[list[dict]], extract_fn: Callable, workers: int,
                start_method: str, unit: str = "video",
                ) -> Iterator[tuple[dict, Any, BaseException | str | None]]:
    """Yield (clip, result, error or reason) per clip as the ``workers`` processes (0: this
    one) send them; a task is one group (one video's clips; ``unit`` names it in messages),
    ``extract_fn(group)`` yields (clip_id, result or exception) per clip.

    A worker that dies (segfault, OOM kill) breaks the pool: it loses only the clips of its
    task not yet sent, which are rerun alone in a pool of their own, and if that dies too,
    one clip at a time, so only the clip that kills a worker is skipped (error =
    BrokenProcessPool); the other tasks go back to the parallel pool. Workers die with this
    process, even when it is SIGKILLed, and their stderr loses known noise
    (``WORKER_STDERR_NOISE``). An interruption (KeyboardInterrupt, ``signals.Interrupted``,
    closing the generator) terminates the workers before it propagates."""
    if workers == 0:
        for group in groups:
            by_id = {c["clip_id"]: c for c in group}
            for cid, result, reason in _iter_group(extract_fn, group):
                yield by_id[cid], result, reason
        return
    ctx = mp.get_context(start_method)
    queue, alone = list(groups), []
    with _worker_stderr(ctx) as stderr:
        while queue or alone:
            if alone:
                batch, n, isolated = [alone.pop()], 1, True
            else:
                batch, n, isolated, queue = queue, min(workers, len(queue)), False, []
            started, results = ctx.SimpleQueue(), ctx.SimpleQueue()
            try:
                broken = yield from _run_group_pool(ctx, batch, n, extract_fn, started,
                                                    results, stderr)
                if not broken:
                    continue
                ids = set()
                while not started.empty():
                    ids.add(started.get())
                if isolated:
                    (_, group, err), = broken
                    if len(group) == 1:
                        yield group[0], None, err if unit == "clip" else BrokenProcessPool(
                            "the worker died on this clip (crash or out of memory)")
                    else:
                        alone += [[c] for c in reversed(group)]
                    continue
                suspects = [g for key, g, _ in broken if key in ids]
                if not suspects:
                    raise RuntimeError(
                        f"worker processes died before starting any {unit}: is extract_fn "
                        "importable in a fresh process, and does the main script guard its "
                        "entry point with `if __name__ == '__main__':`?")
                alone += suspects
                queue += [g for key, g, _ in broken if key not in ids]
            finally:
                started.close()
                results.close()


def _run_group_pool(ctx, batch: list[list[dict]], n: int, extract_fn: Callable, started,
                    results, stderr) -> Iterator[tuple[dict, Any, str | None]]:
    """One pool of ``n`` workers over the tasks ``batch``: yields each clip's result as it
    arrives, returns (announcement key, clips not finished, the BrokenProcessPool) of the
    tasks lost to a broken pool."""
    ex = ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                             initargs=(started, os.getpid(), stderr, results))
    left = {c["clip_id"]: c for g in batch for c in g}
    broken: list[tuple[str, list[dict], BrokenProcessPool]] = []

    def drain():
        while not results.empty():
            cid, result, reason = results.get()
            clip = left.pop(cid, None)
            if clip is not None:
                yield clip, result, reason

    try:
        pending = {ex.submit(_run_group, extract_fn, g): g for g in batch}
        while pending:
            finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            yield from drain()  # sent before the futures completed: all there
            for fut in finished:
                group = pending.pop(fut)
                try:
                    fut.result()
                    err = "the worker sent no result for this clip"
                except BrokenProcessPool as dead:
                    rest = [c for c in group if c["clip_id"] in left]
                    if rest:
                        broken.append((group[0]["clip_id"], rest, dead))
                    for c in rest:
                        left.pop(c["clip_id"])
                    continue
                except Exception as e:  # noqa: BLE001
                    err = _reason(e)
                for c in group:
                    if left.pop(c["clip_id"], None) is not None:
                        yield c, None, err
        yield from drain()
    except BaseException:
        # Interrupted: unwritten results are lost anyway, so do not let workers finish their
        # queued tasks (hours each on long videos).
        terminate_pool(ex)
        raise
    ex.shutdown(wait=True)
    return broken


def work_path(out_path: str | os.PathLike, shard: tuple[int, int] | None = None) -> Path:
    """The work file of a run into ``out_path`` (or of one shard): ``<final>.partial``, which
    keeps finished clips across interruptions."""
    final = Path(out_path) if shard is None else shard_path(out_path, *shard)
    return final.with_name(final.name + ".partial")


def count_clips(path: str | os.PathLike) -> int:
    """Finished clips (groups with a signature) in a keypoints or work file; 0 if absent or
    unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return sum(1 for g in f.values() if "signature" in g.attrs)
    except (OSError, KeyError):
        return 0


def group_by_video(clips: Sequence[dict]) -> list[list[dict]]:
    """Clips grouped by their ``video``: groups in order of their first clip, clips in list
    order within each."""
    groups: dict[str, list[dict]] = {}
    for c in clips:
        groups.setdefault(os.fspath(c.get("video", "")), []).append(c)
    return list(groups.values())


def run_extraction(clips: Sequence, out_path: str | os.PathLike, extract_fn: Callable,
                   workers: int | None = None, *, shard: tuple[int, int] | None = None,
                   progress: bool = True, start_method: str = "spawn",
                   by_video: bool = False) -> ExtractionSummary:
    """Extract keypoints for ``clips`` into HDF5 ``out_path``, in parallel and resumably.

    clips: mappings/rows with clip_id, signature, and whatever ``extract_fn`` reads (video,
    start_frame, end_frame). extract_fn: top-level, picklable ``clip -> (kp [T, 68, 3],
    info)``; info needs fps, width, height, detector, detector_version (source defaults to
    the clip's video, as given). workers: processes (default os.cpu_count(); 0 runs in this
    process); this process is the only writer. Work goes to ``work_path(out_path)``
    (``<out>.partial``), flushed after each clip; when all clips are done, the final file is
    written from it atomically in list order (``_write_final``), so the bytes do not depend
    on the order clips finished in or on interruptions. Clips already in the partial file or
    in an existing ``out_path`` with the same signature are copied, not redone; others are
    redone; unlisted clips are dropped. A clip whose extract_fn raises, kills its worker or
    finds no person is skipped (reported, not written); NaN/inf keypoints are zeroed and
    counted (attribute ``nonfinite_cleaned``). shard=(i, n): only clips with list index % n
    == i, written to ``shard_path(out_path, i, n)`` (all shards must get the same list); a
    shard also reuses clips from ``out_path``. by_video: a task is one source video with
    all its clips to do, ``extract_fn(clips of one video)`` yields (clip_id, (kp, info) or
    exception) per clip (``extract_mediapipe_video``: one decoding pass per video); each
    result is written as it arrives, a failing clip is skipped and the video's other clips
    go on; shards then take whole videos (video index % n == i). An interruption (Ctrl-C, or SIGTERM within
    ``signals.raise_on_signals``) ends the workers and keeps the partial file for the rerun.
    """
    t0 = time.perf_counter()
    clips = [_as_dict(c) for c in clips]
    _check_clips(clips)
    out_path = Path(out_path)
    final, sources = out_path, [out_path]
    if shard is not None:
        i, n = shard
        if not 0 <= i < n:
            raise ValueError(f"shard index {i} not in [0, {n})")
        if by_video:
            mine = {id(c) for g in group_by_video(clips)[i::n] for c in g}
            clips = [c for c in clips if id(c) in mine]
        else:
            clips = clips[i::n]
        final = shard_path(out_path, i, n)
        sources = [final, out_path]
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = work_path(out_path, shard)
    workers = (os.cpu_count() or 1) if workers is None else workers
    summary = ExtractionSummary(path=str(final))

    with _open_partial(partial) as f:
        f.attrs["keypoint_names"] = _NAMES_ATTR
        present = _reconcile(f, clips, sources)
        summary.reused = len(present)
        todo = [c for c in clips if c["clip_id"] not in present]
        bar = tqdm(total=len(todo), unit="clip", desc=f"keypoints {final.name}",
                   disable=not progress or not todo, dynamic_ncols=True)
        # closing(): an interruption here must stop the worker pool now, not at garbage collection
        if by_video:
            groups = group_by_video(todo)
            mapped = _map_groups(groups, extract_fn, min(workers, len(groups)), start_method)
        else:
            mapped = _map_clips(todo, extract_fn, min(workers, len(todo)), start_method)
        with bar, closing(mapped) as results:
            for clip, result, err in results:
                if err is None:
                    kp, info, reason = _check_result(result)
                else:
                    reason = err if isinstance(err, str) else _reason(err)
                if reason is None:
                    _write_clip(f, clip, kp, info)
                    summary.done += 1
                else:
                    summary.skipped.append((clip["clip_id"], reason))
                    log.warning("skipped clip %s: %s", clip["clip_id"], reason)
                    bar.set_postfix(skipped=len(summary.skipped))
                bar.update()
    with atomic_path(final, suffix=".h5") as tmp:
        _write_final([partial], tmp, [c["clip_id"] for c in clips])
    partial.unlink()
    summary.seconds = time.perf_counter() - t0
    return summary


def merge_shards(paths: Sequence[str | os.PathLike], out_path: str | os.PathLike,
                 order: Sequence[str] | None = None) -> int:
    """Merge shard files into ``out_path`` (written atomically); returns the clip count.
    order: the clip list the shards were run with (e.g. the manifest's clip_id column): the
    merged file is then byte-identical to an unsharded run's. A clip_id present in two
    shards is an error."""
    with atomic_path(out_path, suffix=".h5") as tmp:
        return _write_final([Path(p) for p in paths], tmp, order)


def read_clip(path: str | os.PathLike, clip_id: str) -> tuple[np.ndarray, dict]:
    """(kp float32 [T, 68, 3], attributes) of one clip of a keypoints file."""
    with h5py.File(path, "r") as f:
        g = f[clip_id]
        return g["kp"][()], {k: (v.decode() if isinstance(v, bytes) else v)
                             for k, v in g.attrs.items()}
