"""``mgpipe predict``: the trained pipeline on new clips, without DVC, params.yaml or the
training data: only the model bundle the fuse stage writes (``models/predict``,
:mod:`mgpipe.bundle`).

Each clip goes through the functions the stages use, with the bundle's params:
    keypoints  from the clip's keypoint file (:func:`mgpipe.skeletons.load_clip`, the csv
               adapter's formats) or from its video with MediaPipe Holistic
               (:func:`mgpipe.keypoints.extract_mediapipe_video`), cleaned and checked as the
               keypoints stage does (``_check_result``)       -> float32 [T, 68, 3]
    crop       :func:`mgpipe.crop.crop_video` (RGB branches)  -> uint8 [rgb.frames, S, S, 3]
    heatmaps   :func:`mgpipe.heatmaps.render_clip` (posec3d; with ``render`` set the branch
               draws them from the keypoints itself)        -> uint8 [K, T, H, W]
then each branch's model through the evaluation path of training (``ClipDataset`` and
:func:`mgpipe.train.predict`, with the branch's ``test_flip``), its logits [N, C] made
probabilities with its temperature (:func:`mgpipe.fusion.calibrated_probs`) and fused with
the bundle's weights (:func:`mgpipe.fusion.fuse_with_fallback`), as the fuse stage does.

A clip is a video (or keypoint file) and a frame range [start_frame, end_frame): a window
of a long video is just another clip. Clips of one video are cut in one decoding pass.
With ``--window``/``--stride`` each input is an untrimmed video made into a timeline of
detected micro-gestures (:mod:`mgpipe.predict_timeline`, :mod:`mgpipe.timeline`).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from mgpipe.bundle import BundleError, read_bundle

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
KEYPOINT_SUFFIXES = (".npy", ".npz", ".json", ".txt")  # mgpipe.skeletons' (a .csv is a clip table)
NATIVE_LAYOUT = "mgpipe68"  # our own 68 keypoints (keypoints.h5, the synthetic set's files)
TOP_K = 5
PARTS = ("keypoints", "crop", "heatmaps", "models")


class UsageError(ValueError):
    """Inputs that cannot be read as clips at all (exit code 2)."""


# ---- inputs -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clip:
    """One clip to predict: a video and/or a keypoint file, and a frame range [start_frame,
    end_frame) (end -1: to the end). ``problem``: why it cannot be used, found while reading
    the input (it is then skipped with that reason)."""
    clip_id: str
    video: str = ""
    keypoints: str = ""
    start_frame: int = 0
    end_frame: int = -1
    origin: str = ""
    problem: str = ""


def _unique(clips: list[Clip]) -> list[Clip]:
    """Clip ids made unique in order: a repeated id gets ~2, ~3, ..."""
    seen: dict[str, int] = {}
    out = []
    for c in clips:
        n = seen.get(c.clip_id, 0) + 1
        seen[c.clip_id] = n
        out.append(c if n == 1 else Clip(**{**c.__dict__, "clip_id": f"{c.clip_id}~{n}"}))
    return out


def _csv_clips(path: Path) -> list[Clip]:
    """A CSV as the csv adapter reads it: ``video`` and/or ``keypoints`` (paths relative to
    the CSV), optional clip_id, start_frame, end_frame; other columns (labels) are ignored."""
    from mgpipe.datasets import _frame_cell

    try:
        t = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for a malformed file
        raise UsageError(f"{path}: cannot parse as CSV ({e})") from None
    if "video" not in t.columns and "keypoints" not in t.columns:
        raise UsageError(f"{path}: needs a 'video' or a 'keypoints' column (paths relative to "
                         f"the CSV); it has {list(t.columns)}")
    clips = []
    for i, r in enumerate(t.to_dict("records")):
        origin = f"{path}:{i + 2}"
        video, kp = (str(r.get(k, "")).strip() for k in ("video", "keypoints"))
        start, bad_start = _frame_cell(r.get("start_frame", ""), "start_frame")
        end, bad_end = _frame_cell(r.get("end_frame", ""), "end_frame")
        problem = bad_start or bad_end
        if not video and not kp:
            problem = "neither a video nor a keypoints file in this row"
        elif start is not None and end is not None and end <= start:
            problem = f"end_frame {end} must come after start_frame {start} (end is exclusive)"
        name = str(r.get("clip_id", "")).strip() or Path(video or kp).stem or f"row{i + 2}"
        clips.append(Clip(name, str(path.parent / video) if video else "",
                          str(path.parent / kp) if kp else "", start or 0,
                          -1 if end is None else end, origin, problem))
    return clips


def read_inputs(inputs: Sequence[str]) -> list[Clip]:
    """The clips the command line names: video files, folders (their videos, searched
    recursively, in name order) and CSV files (see ``_csv_clips``). Raises UsageError for a
    path that does not exist or a file of another kind."""
    clips: list[Clip] = []
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES
                           and f.is_file())
            if not found:
                raise UsageError(f"{p}: no video files in this folder ({', '.join(VIDEO_SUFFIXES)})")
            clips += [Clip(f.relative_to(p).with_suffix("").as_posix(), str(f), origin=str(f))
                      for f in found]
        elif p.suffix.lower() == ".csv":
            if not p.is_file():
                raise UsageError(f"{p}: no such CSV file")
            clips += _csv_clips(p)
        elif p.suffix.lower() in KEYPOINT_SUFFIXES:  # a keypoint file alone: skeleton branches
            clips.append(Clip(p.stem, keypoints=str(p), origin=str(p)))
        elif p.suffix.lower() in VIDEO_SUFFIXES or p.is_file():
            # a missing or unreadable video is one clip's problem, not the whole run's
            clips.append(Clip(p.stem, str(p), origin=str(p)))
        else:
            raise UsageError(f"{p}: no such file or folder (give videos, folders of videos or "
                             f"a CSV with a video and/or keypoints column)")
    if not clips:
        raise UsageError("no clips to predict")
    return _unique(clips)


def keypoint_format(bundle: dict, layout: str | None = None):
    """How keypoint files are read: ``layout`` (a mgpipe.layout.LAYOUTS name or
    ``mgpipe68``), else the bundle's ``dataset.csv`` settings when the models were trained
    on a CSV dataset with keypoint files, else ``mgpipe68`` (files already in our 68-keypoint
    layout, x y score, as the synthetic dataset ships them). A mgpipe.skeletons.SkeletonFormat."""
    from mgpipe import skeletons

    csv = dict((bundle["params"].get("dataset") or {}).get("csv") or {})
    name = layout or csv.get("layout") or NATIVE_LAYOUT
    block = {**csv, "layout": name} if (not layout or layout == csv.get("layout")) else \
        {"layout": name}
    if name == NATIVE_LAYOUT:
        return skeletons.SkeletonFormat(NATIVE_LAYOUT, {i: i for i in range(68)}, 68,
                                        block.get("rows") or "auto",
                                        block.get("channels") or "auto",
                                        where="--layout")
    if name == "custom" and layout:
        raise UsageError("--layout custom: a custom layout comes from the bundle's "
                         "dataset.csv.layout_map; give a named layout")
    return skeletons.skeleton_format(block, "--layout" if layout else "dataset.csv")


# ---- one clip's inputs ------------------------------------------------------------------------

@dataclass
class Prepared:
    """A clip made ready for the models: keypoints [T, 68, 3], the RGB crop [T, S, S, 3] and
    heatmap volume [K, T, H, W] where its branches need them, the seconds each part took,
    and ``problem`` (the clip is skipped) or ``notes`` (it is predicted, maybe without some
    branches)."""
    clip: Clip
    frames: int = -1                       # the clip's video frames (-1: no video)
    kp: np.ndarray | None = None
    rgb: np.ndarray | None = None
    heatmap: np.ndarray | None = None
    seconds: dict = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    problem: str = ""
    notes: list = field(default_factory=list)


def _reason(err: BaseException) -> str:
    text = str(err)
    return text if isinstance(err, (ValueError, RuntimeError, OSError)) and text else \
        f"{type(err).__name__}: {text}"


class Preprocessor:
    """Clips -> ``Prepared``, with the bundle's keypoints, rgb and heatmaps params."""

    def __init__(self, bundle: dict, fmt, needs_rgb: bool, needs_volume: bool):
        p = bundle["params"]
        self.kp_cfg, self.rgb_cfg, self.hm_cfg = p["keypoints"], p["rgb"], p["heatmaps"]
        self.fmt, self.needs_rgb, self.needs_volume = fmt, needs_rgb, needs_volume

    def groups(self, clips: Sequence[Clip]) -> list[list[Clip]]:
        """Clips of one video together (one decoding pass), in order of first appearance;
        clips without video alone."""
        by_video: dict[str, list[Clip]] = {}
        out: list[list[Clip]] = []
        for c in clips:
            if c.video and not c.problem:
                if c.video not in by_video:
                    by_video[c.video] = []
                    out.append(by_video[c.video])
                by_video[c.video].append(c)
            else:
                out.append([c])
        return out

    def prepare(self, group: list[Clip]) -> Iterator[Prepared]:
        """``Prepared`` for every clip of ``group`` (one video's clips, or one clip)."""
        items = {c.clip_id: Prepared(c, problem=c.problem) for c in group}
        video = group[0].video if not group[0].problem else ""
        size = None
        if video:
            t0 = time.perf_counter()
            size = self._video_frames(video, items)
            for it in items.values():
                it.seconds["keypoints"] += (time.perf_counter() - t0) / len(items)
        self._keypoints(video, items, size)
        if video and self.needs_rgb:
            self._crops(video, items, size)
        if self.needs_volume:
            self._heatmaps(items, size)
        yield from items.values()

    def _video_frames(self, video: str, items: dict[str, Prepared]) -> tuple[int, int] | None:
        """Probe the video once; per clip its frame count (as prepare's manifest has it) in
        ``it.frames``; problems for an unreadable video or a range beyond its end."""
        from mgpipe.manifest import _video_problem
        from mgpipe.video import VideoError, probe_video

        try:
            info = probe_video(video)
        except VideoError as e:
            for it in items.values():
                it.problem = it.problem or f"cannot read the video: {e}"
            return None
        for it in items.values():
            c = it.clip
            problem, frames = _video_problem(SimpleNamespace(
                video=video, start_frame=c.start_frame, end_frame=c.end_frame), info)
            it.problem = it.problem or problem
            it.frames = frames
        return info.width, info.height

    def _keypoints(self, video: str, items: dict[str, Prepared], size) -> None:
        from mgpipe.keypoints import _check_result

        detect = []
        for it in items.values():
            if it.problem:
                continue
            if not it.clip.keypoints:
                detect.append(it)
                continue
            t0 = time.perf_counter()
            try:
                kp = self._read_keypoints(it, video)
                kp, _, reason = _check_result((kp, {}))
                it.problem = reason or ""
                it.kp = kp
            except Exception as e:  # noqa: BLE001 - a bad file skips its clip only
                it.problem = f"cannot read the keypoints file: {_reason(e)}"
            it.seconds["keypoints"] += time.perf_counter() - t0
        if detect:
            self._detect(video, detect)

    def _read_keypoints(self, it: Prepared, video: str) -> np.ndarray:
        from mgpipe import skeletons
        from mgpipe.datasets import _frame_range

        c = it.clip
        kp, _ = skeletons.load_clip(c.keypoints, self.fmt)
        if not video:  # the file is the source: the range picks its frames
            return _frame_range(kp, {"start_frame": c.start_frame, "end_frame": c.end_frame,
                                     "origin": c.origin or c.keypoints}, Path(c.keypoints))
        if abs(len(kp) - it.frames) > 1:  # as prepare checks a dataset's own keypoints
            raise ValueError(f"{len(kp)} frames of keypoints in {c.keypoints} for "
                             f"{it.frames} video frames")
        return kp

    def _detect(self, video: str, items: list[Prepared]) -> None:
        """MediaPipe Holistic over the clips of one video (one decoding pass)."""
        from mgpipe.keypoints import mediapipe_model_problem

        cfg = self.kp_cfg
        complexity = int(cfg.get("model_complexity", 1))
        problem = mediapipe_model_problem(complexity)
        if problem:
            for it in items:
                it.problem = f"no keypoints file and MediaPipe cannot run: {problem}"
            return
        rows = [dict(clip_id=it.clip.clip_id, video=video, start_frame=it.clip.start_frame,
                     end_frame=it.clip.end_frame) for it in items]
        by_id = {it.clip.clip_id: it for it in items}
        t0 = time.perf_counter()
        try:
            with filtered_stderr():
                self._detect_loop(rows, by_id, complexity, t0)
        except Exception as e:  # noqa: BLE001 - the video failed: its clips left are skipped
            for it in by_id.values():
                it.problem = f"keypoint detection failed: {_reason(e)}"
            return
        for it in by_id.values():
            it.problem = "keypoint detection reported nothing for this clip"

    def _detect_loop(self, rows: list[dict], by_id: dict[str, Prepared], complexity: int,
                     t0: float) -> None:
        from mgpipe.keypoints import _check_result, extract_mediapipe_video

        for cid, result in extract_mediapipe_video(
                rows, complexity, float(self.kp_cfg.get("min_detection_confidence", 0.5))):
            it = by_id.pop(cid)
            now = time.perf_counter()
            it.seconds["keypoints"] += now - t0
            t0 = now
            if isinstance(result, BaseException):
                it.problem = f"keypoint detection failed: {_reason(result)}"
                continue
            kp, _, reason = _check_result(result)
            it.kp, it.problem = kp, (f"{reason} (MediaPipe Holistic)" if reason else "")

    def _crops(self, video: str, items: dict[str, Prepared], size) -> None:
        from mgpipe.crop import crop_video

        todo = [it for it in items.values() if not it.problem]
        if not todo:
            return
        cfg = self.rgb_cfg
        clips = [dict(clip_id=it.clip.clip_id, start=int(it.clip.start_frame),
                      frames=int(it.frames), kp=it.kp, frame_size=size) for it in todo]
        t0 = time.perf_counter()
        for cid, rgb, _, _, err in crop_video(video, clips, int(cfg["frames"]), int(cfg["size"]),
                                              float(cfg.get("margin", 0.3))):
            it = items[cid]
            now = time.perf_counter()
            it.seconds["crop"] += now - t0
            t0 = now
            if err is not None:  # as the crop stage skips it: the RGB branches lack the clip
                it.notes.append(f"no RGB crop ({_reason(err)}); predicted without the RGB "
                                f"branches")
            else:
                it.rgb = rgb

    def _heatmaps(self, items: dict[str, Prepared], size) -> None:
        from mgpipe.heatmaps import render_clip
        from mgpipe.manifest import keypoint_extent

        cfg = self.hm_cfg
        for it in items.values():
            if it.problem:
                continue
            t0 = time.perf_counter()
            try:
                source = size or keypoint_extent(it.kp)  # only recorded, as the stage does
                it.heatmap, _ = render_clip(it.kp, source, tuple(int(s) for s in cfg["size"]),
                                            float(cfg["sigma"]), cfg["mode"], int(cfg["frames"]))
            except Exception as e:  # noqa: BLE001 - as the heatmaps stage skips it
                it.notes.append(f"no heatmaps ({_reason(e)}); predicted without posec3d")
            it.seconds["heatmaps"] += time.perf_counter() - t0


@contextmanager
def filtered_stderr():
    """This process's file descriptor 2 through a filter that drops the lines MediaPipe and
    TFLite print for every graph and that say nothing wrong (``WORKER_STDERR_NOISE``, which
    the keypoints stage filters from its workers); everything else passes."""
    from mgpipe.keypoints import WORKER_STDERR_NOISE as noise

    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def emit(data: bytes) -> None:
        try:
            while data:
                data = data[os.write(saved, data):]
        except OSError:  # our stderr is gone: keep draining the pipe
            pass

    def pump() -> None:
        rest = b""
        while chunk := os.read(read, 1 << 16):
            *lines, rest = (rest + chunk).split(b"\n")
            emit(b"".join(line + b"\n" for line in lines if not noise.search(line)))
        if rest and not noise.search(rest):
            emit(rest + b"\n")
        os.close(read)

    thread = threading.Thread(target=pump, daemon=True, name="mediapipe-stderr")
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the pump reads to its end
        thread.join(5.0)
        os.close(saved)


# ---- models -----------------------------------------------------------------------------------

@dataclass
class Branch:
    """One branch of the bundle, loaded: its model (eval mode, on the device), the training
    config of its checkpoint, modality, temperature and fusion weight."""
    name: str
    model: object
    cfg: dict
    modality: str
    temperature: float
    weight: float
    heatmap_mode: str = "joint"


def input_channels(modality: str, cfg: dict, heatmap_mode: str) -> int | None:
    """The model's input channels, as training built it (``mgpipe.train._input_channels``):
    joints 3 (+2 with motion), heatmaps K = one per keypoint or bone of the mode."""
    from mgpipe import layout

    if modality == "joints":
        return 5 if cfg.get("motion", True) else 3
    if modality == "heatmap":
        mode = (cfg.get("render") or {}).get("mode", "joint") if cfg.get("render") \
            else heatmap_mode
        return layout.NUM_KEYPOINTS if mode == "joint" else len(layout.BONES)
    return None


def load_branches(folder: str | os.PathLike, bundle: dict, device) -> dict[str, Branch]:
    """Every branch's model from its checkpoint in the bundle ``folder``, checked against
    bundle.json (class count, branch, modality). Raises BundleError."""
    import torch

    from mgpipe.models import build_model

    classes = bundle["classes"]
    heatmap_mode = bundle["params"].get("heatmaps", {}).get("mode", "joint")
    out = {}
    for b, entry in bundle["branches"].items():
        path = Path(folder) / entry["checkpoint"]
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise BundleError(f"{path}: cannot load the checkpoint ({_reason(e)}); copy the "
                              f"whole folder the fuse stage wrote") from None
        if ckpt.get("num_classes") != len(classes):
            raise BundleError(f"{folder}: bundle.json lists {len(classes)} classes, but "
                              f"{entry['checkpoint']} was trained on {ckpt.get('num_classes')}: "
                              f"the class list does not belong to these models; copy the "
                              f"whole folder the fuse stage wrote")
        if ckpt.get("branch", b) != b or ckpt.get("modality", entry["modality"]) != entry["modality"]:
            raise BundleError(f"{path}: a {ckpt.get('branch')} checkpoint, bundle.json says "
                              f"{b}; copy the whole folder the fuse stage wrote")
        cfg = ckpt["config"]
        model = build_model(b, len(classes), input_channels(entry["modality"], cfg, heatmap_mode),
                            embed_dim=cfg["embed_dim"], dropout=cfg["dropout"],
                            **(cfg.get("model") or {}))
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise BundleError(f"{path}: the weights do not fit the model its config builds "
                              f"({str(e).splitlines()[0]})") from None
        out[b] = Branch(b, model.to(device).eval(), cfg, entry["modality"],
                        float(entry["temperature"]), float(entry["weight"]), heatmap_mode)
    return out


def branch_logits(branch: Branch, arrays: dict[str, np.ndarray], device, batch_size: int
                  ) -> np.ndarray:
    """Logits [len(arrays), C] of one branch for clips as its stage output stores them
    (``arrays``: clip_id -> keypoints [T, 68, 3], heatmap volume or RGB crop), through
    ``ClipDataset`` and ``mgpipe.train.predict`` exactly as training evaluates."""
    from mgpipe.data import ClipDataset
    from mgpipe.train import predict

    cfg = branch.cfg
    ids = list(arrays)
    ds = ClipDataset(branch.modality, arrays, ids, [-1] * len(ids), frames=cfg["frames"],
                     motion=cfg["motion"], seed=cfg["seed"], heatmap_mode=branch.heatmap_mode,
                     augment=cfg.get("augment"), render=cfg.get("render"))
    amp = bool(cfg.get("amp")) and device.type == "cuda"
    return predict(branch.model, ds, device, batch_size, amp, False, bool(cfg.get("test_flip")))


def branch_input(branch: Branch, it: Prepared) -> np.ndarray | None:
    """The stored form of ``it`` that ``branch`` reads, or None (it lacks it)."""
    if branch.modality == "joints" or (branch.modality == "heatmap" and branch.cfg.get("render")):
        return it.kp
    return it.heatmap if branch.modality == "heatmap" else it.rgb


def predict_batch(branches: dict[str, Branch], bundle: dict, items: list[Prepared], device,
                  batch_size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fused probabilities [N, C] and each branch's calibrated ones [N, C] for ``items``
    (NaN rows: the branch lacks the clip), as the fuse stage computes them; adds each
    branch's seconds, shared evenly among its clips, to ``seconds['models']``."""
    from mgpipe.fusion import aligned, calibrated_probs, fuse_with_fallback

    ids = [it.clip.clip_id for it in items]
    probs = {}
    for b, br in branches.items():
        arrays = {it.clip.clip_id: x for it in items if (x := branch_input(br, it)) is not None}
        z = np.zeros((0, len(bundle["classes"])), np.float32)
        if arrays:
            t0 = time.perf_counter()
            z = branch_logits(br, arrays, device, batch_size)
            share = (time.perf_counter() - t0) / len(arrays)
            for it in items:
                if it.clip.clip_id in arrays:
                    it.seconds["models"] += share
        probs[b] = calibrated_probs(aligned(list(arrays), z, ids), br.temperature)
    weights = {b: br.weight for b, br in branches.items()}
    fused, _ = fuse_with_fallback(probs, weights, bundle["fusion"].get("fallback_weights"))
    return fused, probs


# ---- outputs ----------------------------------------------------------------------------------

def top_k_table(clips: Sequence[Clip], probs: dict[str, np.ndarray], classes: Sequence[str],
                k: int = TOP_K) -> pd.DataFrame:
    """One row per clip: clip, video, then per entry of ``probs`` (name -> [N, C], e.g.
    fused then each branch) its k most probable classes and their probabilities, as columns
    <name>_1, <name>_p1, ..., <name>_k, <name>_pk (probabilities rounded to 5 decimals, as
    metrics/predictions.csv; ties go to the class listed first). A NaN row (no prediction)
    leaves its cells empty."""
    k = min(k, len(classes))
    table = {"clip": [c.clip_id for c in clips], "video": [c.video for c in clips]}
    names = np.asarray(classes, dtype=object)
    for name, p in probs.items():
        p = np.asarray(p, np.float64).reshape(len(clips), len(classes))
        missing = np.isnan(p).any(1)
        order = np.argsort(-np.nan_to_num(p, nan=0.0), axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(p, order, axis=1)
        for j in range(k):
            table[f"{name}_{j + 1}"] = np.where(missing, "", names[order[:, j]])
            table[f"{name}_p{j + 1}"] = np.where(missing, np.nan, np.round(top[:, j], 5))
    return pd.DataFrame(table)


def timing_table(items: Sequence[Prepared]) -> pd.DataFrame:
    """clip, keypoints_s, crop_s, heatmaps_s, models_s, total_s (seconds, 4 decimals)."""
    rows = []
    for it in items:
        s = {f"{k}_s": round(it.seconds[k], 4) for k in PARTS}
        rows.append({"clip": it.clip.clip_id, **s, "total_s": round(sum(it.seconds.values()), 4)})
    return pd.DataFrame(rows, columns=["clip"] + [f"{k}_s" for k in PARTS] + ["total_s"])


# ---- the command ------------------------------------------------------------------------------

EXAMPLES = """\
examples:
  mgpipe predict new/clip1.mp4 new/clip2.mp4 --out predictions
  mgpipe predict new_clips/ --out predictions --models models/predict
  mgpipe predict clips.csv --out predictions        # video and/or keypoints columns
  mgpipe predict interview.mp4 --out timeline --window --stride 0.4   # untrimmed video

INPUT: video files, keypoint files (.npy, .npz, .json, .txt), folders (every video in
them, recursively; clip = the path without the suffix) or CSV files as the csv dataset
adapter reads them: a `video` and/or a `keypoints` column (paths relative to the CSV),
optional clip_id, start_frame, end_frame (frames [start, end) of the video, or of the
keypoint file of a row without video); other columns (labels) are ignored.
A clip with a keypoints file uses it (read as --layout says); one without is run through
MediaPipe Holistic (keypoints params of the bundle). Clips without video get no RGB
branch: their fusion is over the skeleton branches.

--models is the folder the fuse stage writes (models/predict: bundle.json and one
checkpoint per branch, the last CMPL round's); copy it to predict on another machine.

writes, in --out:
  predictions.csv  clip, video, then for the fusion and each branch the 5 most probable
                   classes and their calibrated probabilities: fused_1, fused_p1, ...,
                   fused_5, fused_p5, stcnn_1, stcnn_p1, ... (empty: the branch had no input)
  timing.csv       clip, keypoints_s, crop_s, heatmaps_s, models_s, total_s (seconds; a
                   batch's model time is shared evenly among its clips)
  skipped.csv      clip, reason: clips that could not be predicted (unreadable video, no
                   person found, a bad keypoints file, ...)
  with --render:
  <clip>.mp4       the clip with its keypoints and bones (face yellow, body blue, left hand
                   green, right hand magenta), the crop box (white) and the top-3 labels
  render.csv       clip, file, frames, width, height, fps, seconds, ms_per_frame, problem

with --window/--stride (untrimmed video), also: timeline.csv (clip, label, start_s,
end_s, start_frame, end_frame, score), windows.csv (every window's fused probabilities),
timeline.png (timeline_<clip>.png with several inputs), timeline_eval.json (with --truth);
with --render the whole video with the timeline strip under it.

exit status: 0 every clip predicted (and rendered), 1 some skipped (or not rendered), 2 a
usage or models-folder error.
"""


def build_parser() -> argparse.ArgumentParser:
    from mgpipe.layout import LAYOUTS

    ap = argparse.ArgumentParser(
        prog="mgpipe predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the trained pipeline (every branch and the temperature-scaled "
                    "fusion) on new clips, without DVC: keypoints, saliency crops and heatmaps "
                    "made exactly as the stages make them, then each model as evaluation does.",
        epilog=EXAMPLES)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="video file, keypoint file, folder or CSV")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    ap.add_argument("--models", default="models/predict", metavar="DIR",
                    help="the model bundle (default: %(default)s)")
    ap.add_argument("--layout", choices=[NATIVE_LAYOUT, *LAYOUTS], default=None,
                    help="skeleton of the keypoint files (default: the training dataset's "
                         f"dataset.csv.layout, else {NATIVE_LAYOUT}: our 68 keypoints, x y "
                         f"score, as keypoints.h5 and the synthetic set store them)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where the models run (default: CUDA when present)")
    ap.add_argument("--batch-size", type=int, default=16, metavar="N",
                    help="clips per model batch (default: %(default)s)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--render", action="store_true",
                    help="also write DIR/<clip>.mp4: keypoints, bones, crop box and the "
                         "predicted labels drawn on the clip (mgpipe.overlay); with "
                         "--window, the timeline under each long video")
    g = ap.add_argument_group(
        "untrimmed video (a timeline of detected micro-gestures; on with --window or --stride)")
    g.add_argument("--window", nargs="?", const="auto", default=None, metavar="SECONDS",
                   help="slide windows of this length over each input (alone: the training "
                        "clips' median length from the models folder, else 2 s)")
    g.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                   help="step between windows (default: a quarter of the window)")
    g.add_argument("--threshold", type=float, default=0.5, metavar="P",
                   help="a frame is background when its top fused probability is below P "
                        "(default: %(default)s)")
    g.add_argument("--background", action="append", default=None, metavar="CLASS",
                   help="a class that means no micro-gesture (repeatable; default: the class "
                        "named idle, if any; 'none': no such class)")
    g.add_argument("--merge-gap", type=float, default=None, metavar="SECONDS",
                   help="join detections of one class this close (default: half a window)")
    g.add_argument("--min-length", type=float, default=None, metavar="SECONDS",
                   help="drop shorter detections (default: a quarter of a window)")
    g.add_argument("--truth", default=None, metavar="CSV",
                   help="ground-truth segments (clip, label, start_frame, end_frame exclusive): "
                        "drawn in the picture and scored (timeline_eval.json)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes for MediaPipe on a long video, each on a chunk of it "
                        "(default: every core; 1: one process)")
    g.add_argument("--fps", type=float, default=25.0,
                   help="frame rate of keypoint files without video (default: %(default)s)")
    return ap


def _write(out: Path, name: str, frame: pd.DataFrame) -> None:
    from mgpipe.io import write_csv_atomic

    write_csv_atomic(out / name, frame)


def run(args) -> int:
    import torch
    from tqdm import tqdm

    try:
        bundle = read_bundle(args.models)
        clips = read_inputs(args.inputs)
        fmt = keypoint_format(bundle, args.layout)
    except (BundleError, UsageError) as e:
        print(f"mgpipe predict: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # a bad layout setting (mgpipe.datasets.DatasetError)
        print(f"mgpipe predict: error: {e}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print("mgpipe predict: error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    timeline = args.window is not None or args.stride is not None
    if timeline:
        try:
            args.window = None if args.window in (None, "auto") else float(args.window)
        except ValueError:
            print(f"mgpipe predict: error: --window takes seconds, got {args.window!r}",
                  file=sys.stderr)
            return 2
        if args.workers is not None and args.workers < 1:
            print("mgpipe predict: error: --workers must be >= 1", file=sys.stderr)
            return 2
        if args.fps <= 0:
            print("mgpipe predict: error: --fps must be > 0", file=sys.stderr)
            return 2
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        branches = load_branches(args.models, bundle, device)
    except BundleError as e:
        print(f"mgpipe predict: error: {e}", file=sys.stderr)
        return 2
    needs_rgb = any(b.modality == "rgb" for b in branches.values())
    needs_volume = any(b.modality == "heatmap" and not b.cfg.get("render")
                       for b in branches.values())
    pre = Preprocessor(bundle, fmt, needs_rgb, needs_volume)
    if bundle["params"]["keypoints"].get("backend") == "provided" and \
            any(c.video and not c.keypoints for c in clips):
        print("mgpipe predict: note: the models were trained on the dataset's own keypoints "
              "(keypoints.backend: provided); clips without a keypoints file get MediaPipe "
              "Holistic's, which may differ from what the models saw", file=sys.stderr)
    out = Path(args.out)
    if timeline:
        from mgpipe.predict_timeline import run_timeline

        return run_timeline(args, bundle, branches, pre, clips, device, out)
    out.mkdir(parents=True, exist_ok=True)
    done: list[Prepared] = []
    fused_rows, branch_rows = [], {b: [] for b in branches}
    skipped = []
    pending: list[Prepared] = []
    bar = tqdm(total=len(clips), desc="predict", unit="clip", disable=args.no_progress)

    def flush():
        if not pending:
            return
        fused, probs = predict_batch(branches, bundle, pending, device, args.batch_size)
        fused_rows.append(fused)
        for b in branches:
            branch_rows[b].append(probs[b])
        done.extend(pending)
        pending.clear()

    for group in pre.groups(clips):
        for it in pre.prepare(group):
            bar.update(1)
            if it.problem:
                skipped.append({"clip": it.clip.clip_id, "reason": it.problem})
                tqdm.write(f"mgpipe predict: skipped {it.clip.clip_id}: {it.problem}",
                           file=sys.stderr)
                continue
            for note in it.notes:
                tqdm.write(f"mgpipe predict: {it.clip.clip_id}: {note}", file=sys.stderr)
            pending.append(it)
        if len(pending) >= args.batch_size:
            flush()
    flush()
    bar.close()
    classes = bundle["classes"]
    n_classes = len(classes)

    def stacked(rows):
        return np.concatenate(rows) if rows else np.zeros((0, n_classes))

    probs = {"fused": stacked(fused_rows), **{b: stacked(r) for b, r in branch_rows.items()}}
    _write(out, "predictions.csv", top_k_table([it.clip for it in done], probs, classes))
    _write(out, "timing.csv", timing_table(done))
    _write(out, "skipped.csv", pd.DataFrame(skipped, columns=["clip", "reason"]))
    unrendered = 0
    if getattr(args, "render", False):
        from mgpipe.overlay import render_predictions
        rendered = render_predictions(
            out, done, probs["fused"], classes, float(bundle["params"]["rgb"].get("margin", 0.3)),
            not args.no_progress, lambda m: tqdm.write(f"mgpipe predict: {m}", file=sys.stderr))
        _write(out, "render.csv", rendered)
        unrendered = int((rendered.problem != "").sum())
        ok = rendered[rendered.problem == ""]
        print(f"mgpipe predict: rendered {len(ok)} clips ({int(ok.frames.sum()) if len(ok) else 0}"
              f" frames, {ok.seconds.sum() / max(ok.frames.sum(), 1) * 1000 if len(ok) else 0:.1f}"
              f" ms a frame){f', {unrendered} failed (see render.csv)' if unrendered else ''}")
    t = timing_table(done)
    mean = ", ".join(f"{k} {t[f'{k}_s'].mean():.3f}" for k in PARTS) if len(t) else "-"
    print(f"mgpipe predict: {len(done)} clips predicted, {len(skipped)} skipped"
          f"{' (see skipped.csv)' if skipped else ''}; mean seconds per clip: {mean} "
          f"(device {device.type}); wrote {out / 'predictions.csv'}, {out / 'timing.csv'}, "
          f"{out / 'skipped.csv'}")
    return 1 if skipped or unrendered else 0


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
