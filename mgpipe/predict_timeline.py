"""``mgpipe predict --window``: untrimmed videos as timelines of detected micro-gestures.

Per input (a video, a CSV row's video range, or a keypoint file):
    keypoints  once for the whole range: its keypoint file, or MediaPipe Holistic over the
               video in chunks on ``--workers`` processes
               (:func:`mgpipe.keypoints.extract_mediapipe_parallel`)      -> [T, 68, 3]
    windows    :func:`mgpipe.timeline.window_starts` (``--window``, ``--stride``); each
               window is a clip of T_w frames cut from those keypoints, its RGB crop and
               heatmaps made as for any clip (one decoding pass for all windows, which
               stream out as the video is read: memory holds the open windows' sampled
               frames and one model batch, whatever the video's length)
    models     the windows in batches of ``--batch-size`` through every branch and the
               fusion (:func:`mgpipe.predict.predict_batch`)               -> [W, C]
    timeline   per-frame scores (mean over the windows holding the frame), background
               where the top probability is under ``--threshold`` or a background class
               (``idle``) wins, runs of one class merged across short gaps
               (:func:`mgpipe.timeline.detect`)                             -> segments
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mgpipe import timeline as tl
from mgpipe.predict import (PARTS, Clip, Prepared, UsageError, _reason, _write,
                            filtered_stderr, predict_batch, top_k_table)

DEFAULT_WINDOW_S = 2.0  # when the bundle does not say how long its training clips were
THUMBS = 12             # video thumbnails on top of the timeline picture
THUMB_HEIGHT = 72


@dataclass
class Options:
    """The timeline settings of the command line, in seconds (None: the default)."""
    window: float | None
    stride: float | None
    threshold: float = 0.5
    background: list[str] | None = None
    merge_gap: float | None = None
    min_length: float | None = None
    workers: int | None = None
    truth: str | None = None
    fps: float = 25.0


def training_clip_seconds(bundle: dict) -> float | None:
    """The training clips' median length in seconds from bundle.json's ``clips`` (written by
    the fuse stage since the timeline), or None for an older bundle."""
    try:
        s = float((bundle.get("clips") or {}).get("seconds") or 0)
    except (TypeError, ValueError):
        return None
    return s if s > 0 else None


@dataclass
class Settings:
    """Options resolved against the bundle: seconds, and the background classes."""
    window: float
    stride: float
    threshold: float
    background: list[str]
    merge_gap: float
    min_length: float
    window_from: str


def resolve(opts: Options, bundle: dict) -> tuple[Settings, list[str]]:
    """Settings and notes for the user; raises UsageError for a bad value."""
    notes = []
    classes = bundle["classes"]
    window, origin = opts.window, "--window"
    if window is None:
        window = training_clip_seconds(bundle)
        origin = "the training clips' median length (bundle.json)"
        if window is None:
            window, origin = DEFAULT_WINDOW_S, "the default"
            notes.append(f"the models folder does not say how long the training clips were "
                         f"(an older bundle): --window {DEFAULT_WINDOW_S:g} s; give --window "
                         f"with the length of the clips the models were trained on")
    if window <= 0:
        raise UsageError(f"--window must be > 0 seconds, got {window:g}")
    stride = window / 4 if opts.stride is None else opts.stride
    if stride <= 0:
        raise UsageError(f"--stride must be > 0 seconds, got {stride:g}")
    if not 0 <= opts.threshold <= 1:
        raise UsageError(f"--threshold is a probability in [0, 1], got {opts.threshold:g}")
    if opts.background is None:
        background = [c for c in classes if c.lower() in ("idle", "background", "none")]
    else:
        background = [b for b in opts.background if b.lower() != "none"]
        unknown = [b for b in background if b not in classes]
        if unknown:
            raise UsageError(f"--background {', '.join(unknown)}: not a class of the models "
                             f"({', '.join(classes)})")
    merge_gap = window / 2 if opts.merge_gap is None else opts.merge_gap
    min_length = window / 4 if opts.min_length is None else opts.min_length
    if merge_gap < 0 or min_length < 0:
        raise UsageError("--merge-gap and --min-length must be >= 0 seconds")
    return Settings(window, stride, opts.threshold, background, merge_gap, min_length,
                    origin), notes


def read_truth(path: str | None) -> pd.DataFrame | None:
    """Ground-truth segments: a CSV with label, start_frame, end_frame (frames of the video,
    end exclusive, as timeline.csv) and optionally clip (rows without one, or without the
    column, belong to every input). Raises UsageError."""
    if not path:
        return None
    p = Path(path)
    try:
        t = pd.read_csv(p, dtype={"clip": str, "label": str}, keep_default_na=False)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"--truth {p}: cannot read it as CSV ({e})") from None
    missing = {"label", "start_frame", "end_frame"} - set(t.columns)
    if missing:
        raise UsageError(f"--truth {p}: needs columns label, start_frame, end_frame (end "
                         f"exclusive), optional clip; it lacks {sorted(missing)}")
    try:
        t["start_frame"] = t["start_frame"].astype(int)
        t["end_frame"] = t["end_frame"].astype(int)
    except ValueError:
        raise UsageError(f"--truth {p}: start_frame and end_frame must be whole numbers") from None
    if (t.end_frame <= t.start_frame).any():
        raise UsageError(f"--truth {p}: a segment with end_frame <= start_frame (end is exclusive)")
    return t


# ---- one video ----------------------------------------------------------------------------------

@dataclass
class Result:
    """One input's timeline: window starts (relative to ``offset``, the first frame), fused
    probabilities [W, C], per-frame scores [T, C], detections, seconds per part."""
    clip: Clip
    fps: float
    offset: int
    frames: int
    window: int
    starts: np.ndarray
    fused: np.ndarray
    branch_probs: dict
    scores: np.ndarray
    detections: list
    seconds: dict = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    thumbs: list = field(default_factory=list)
    workers: int = 1
    notes: list = field(default_factory=list)
    kp: np.ndarray | None = None  # [T, 68, 3] the video's keypoints (for --render)


class Failed(Exception):
    """The input cannot be predicted (its message goes to skipped.csv)."""


def _thumb(rgb: np.ndarray) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (max(1, round(w * THUMB_HEIGHT / h)), THUMB_HEIGHT),
                      interpolation=cv2.INTER_AREA)


def _read_thumbs(video: str, offset: int, frames: Sequence[int]) -> list:
    """(frame, RGB thumbnail) for the wanted frames (relative to ``offset``), one pass."""
    import cv2

    from mgpipe.video import open_capture, scan_frames

    want = {offset + f: f for f in frames}
    out = []
    cap = open_capture(video)
    try:
        for i, bgr in scan_frames(cap, want.__contains__, max(want) + 1):
            out.append((want[i], _thumb(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))))
    finally:
        cap.release()
    return out


class TimelinePredictor:
    """Inputs -> ``Result`` with the bundle's models and the resolved ``Settings``."""

    def __init__(self, pre, branches: dict, bundle: dict, device, batch_size: int,
                 settings: Settings, opts: Options):
        self.pre, self.branches, self.bundle = pre, branches, bundle
        self.device, self.batch_size, self.s, self.opts = device, batch_size, settings, opts
        self.classes = bundle["classes"]

    # keypoints of the whole range ------------------------------------------------------------
    def _keypoints(self, it: Prepared, video: str, seconds: dict) -> tuple[np.ndarray, int]:
        from mgpipe.keypoints import (_check_result, extract_mediapipe_parallel,
                                      mediapipe_model_problem)

        t0 = time.perf_counter()
        workers = 1
        if it.clip.keypoints:
            try:
                kp = self.pre._read_keypoints(it, video)
            except Exception as e:  # noqa: BLE001
                raise Failed(f"cannot read the keypoints file: {_reason(e)}") from None
            kp, _, reason = _check_result((kp, {}))
        else:
            cfg = self.pre.kp_cfg
            complexity = int(cfg.get("model_complexity", 1))
            problem = mediapipe_model_problem(complexity)
            if problem:
                raise Failed(f"no keypoints file and MediaPipe cannot run: {problem}")
            try:
                with filtered_stderr():
                    kp, info = extract_mediapipe_parallel(
                        video, it.clip.start_frame, None, self.opts.workers, frames=it.frames,
                        model_complexity=complexity,
                        min_detection_confidence=float(cfg.get("min_detection_confidence", 0.5)))
            except Exception as e:  # noqa: BLE001
                raise Failed(f"keypoint detection failed: {_reason(e)}") from None
            workers = int(info.get("chunks", 1))
            kp, _, reason = _check_result((kp, info))
            reason = f"{reason} (MediaPipe Holistic)" if reason else None
        seconds["keypoints"] += time.perf_counter() - t0
        if reason:
            raise Failed(reason)
        return kp, workers

    def predict(self, clip: Clip) -> Result:
        """Raises Failed."""
        if clip.problem:
            raise Failed(clip.problem)
        it = Prepared(clip, problem=clip.problem)
        video = clip.video
        seconds = dict.fromkeys(PARTS, 0.0)
        size, fps = None, self.opts.fps
        if video:
            from types import SimpleNamespace

            from mgpipe.manifest import _video_problem
            from mgpipe.video import VideoError, probe_video

            t0 = time.perf_counter()
            try:
                info = probe_video(video)
            except VideoError as e:
                raise Failed(f"cannot read the video: {e}") from None
            problem, it.frames = _video_problem(SimpleNamespace(
                video=video, start_frame=clip.start_frame, end_frame=clip.end_frame), info)
            if problem:
                raise Failed(problem)
            size, fps = (info.width, info.height), info.fps
            seconds["keypoints"] += time.perf_counter() - t0
        kp, workers = self._keypoints(it, video, seconds)
        n = len(kp) if it.frames < 0 else min(len(kp), it.frames)
        kp = kp[:n]
        wf, sf = tl.to_frames(self.s.window, fps), tl.to_frames(self.s.stride, fps)
        starts = tl.window_starts(n, wf, sf)
        fused, branch_probs, thumbs = self._windows(clip, video, kp, starts, wf, size, seconds)
        scores = tl.frame_scores(fused, starts, wf, n)
        dets = tl.detect(scores, self.classes, self.s.threshold, self.s.background,
                         merge_gap=int(round(self.s.merge_gap * fps)),
                         min_frames=max(1, int(round(self.s.min_length * fps))))
        if video and not thumbs:  # no RGB branch decoded the video: one cheap pass
            picks = np.unique(np.linspace(0, n - 1, min(THUMBS, n)).round().astype(int))
            thumbs = _read_thumbs(video, clip.start_frame, picks.tolist())
        return Result(clip, fps, clip.start_frame, n, wf, starts, fused, branch_probs, scores,
                      dets, seconds, sorted(thumbs, key=lambda x: x[0]), workers, it.notes,
                      kp)

    # windows through crops, heatmaps and the models, streamed ----------------------------------
    def _windows(self, clip: Clip, video: str, kp: np.ndarray, starts: np.ndarray, wf: int,
                 size, seconds: dict):
        from mgpipe.crop import crop_video
        from mgpipe.heatmaps import render_clip
        from mgpipe.manifest import keypoint_extent

        n = len(kp)
        C = len(self.classes)
        fused = np.full((len(starts), C), np.nan)
        branch_probs = {b: np.full((len(starts), C), np.nan) for b in self.branches}
        pending: list[tuple[int, Prepared]] = []
        thumbs = []
        pick = set(np.unique(np.linspace(0, len(starts) - 1, min(THUMBS, len(starts)))
                             .round().astype(int)).tolist())
        hm = self.pre.hm_cfg
        hm_size = tuple(int(s) for s in hm["size"])
        notes_seen = set()

        def window_item(k: int) -> Prepared:
            a = int(starts[k])
            b = min(a + wf, n)
            c = Clip(f"{clip.clip_id}@{clip.start_frame + a}", video, clip.keypoints,
                     clip.start_frame + a, clip.start_frame + b, clip.origin)
            return Prepared(c, frames=b - a, kp=kp[a:b])

        def add(k: int, w: Prepared) -> None:
            if self.pre.needs_volume:
                t0 = time.perf_counter()
                try:
                    source = size or keypoint_extent(w.kp)
                    w.heatmap, _ = render_clip(w.kp, source, hm_size, float(hm["sigma"]),
                                               hm["mode"], int(hm["frames"]))
                except Exception as e:  # noqa: BLE001 - as the heatmaps stage skips it
                    w.notes.append(f"no heatmaps ({_reason(e)}); predicted without posec3d")
                seconds["heatmaps"] += time.perf_counter() - t0
            for note in w.notes:
                key = note.split(" (")[0]
                if key not in notes_seen:
                    notes_seen.add(key)
                    print(f"mgpipe predict: {clip.clip_id}: window at frame "
                          f"{w.clip.start_frame}: {note}", file=sys.stderr)
            pending.append((k, w))
            if len(pending) >= self.batch_size:
                flush()

        def flush() -> None:
            if not pending:
                return
            items = [w for _, w in pending]
            f, probs = predict_batch(self.branches, self.bundle, items, self.device,
                                     self.batch_size)
            rows = [k for k, _ in pending]
            fused[rows] = f
            for b in self.branches:
                branch_probs[b][rows] = probs[b]
            seconds["models"] += sum(w.seconds["models"] for w in items)
            pending.clear()

        if video and self.pre.needs_rgb:
            cfg = self.pre.rgb_cfg
            items = {k: window_item(k) for k in range(len(starts))}
            specs = [dict(clip_id=k, start=w.clip.start_frame, frames=w.frames, kp=w.kp,
                          frame_size=size) for k, w in items.items()]
            gen = crop_video(video, specs, int(cfg["frames"]), int(cfg["size"]),
                             float(cfg.get("margin", 0.3)), full_frame=pick)
            while True:
                t0 = time.perf_counter()
                got = next(gen, None)
                seconds["crop"] += time.perf_counter() - t0
                if got is None:
                    break
                k, rgb, _, full, err = got
                w = items.pop(k)
                if err is not None:
                    w.notes.append(f"no RGB crop ({_reason(err)}); predicted without the RGB "
                                   f"branches")
                else:
                    w.rgb = rgb
                    if full is not None:
                        mid = int(starts[k]) + w.frames // 2
                        thumbs.append((mid, _thumb(full)))
                add(k, w)
            for k, w in sorted(items.items()):  # windows the decoder never reached
                w.notes.append("no RGB crop (the video ended early); predicted without the "
                               "RGB branches")
                add(k, w)
        else:
            for k in range(len(starts)):
                add(k, window_item(k))
        flush()
        return fused, branch_probs, thumbs


# ---- outputs ------------------------------------------------------------------------------------

def windows_table(results: Sequence[Result], classes: Sequence[str]) -> pd.DataFrame:
    """windows.csv: clip, window, start_frame, end_frame, start_s, end_s, label, score (the
    fused top class and its probability), p_<class>... (5 decimals)."""
    frames = []
    for r in results:
        a = r.offset + r.starts
        b = r.offset + np.minimum(r.starts + r.window, r.frames)
        p = np.round(r.fused, 5)
        top = np.nan_to_num(r.fused, nan=-1).argmax(1)
        t = pd.DataFrame({"clip": r.clip.clip_id, "window": np.arange(len(a)),
                          "start_frame": a, "end_frame": b,
                          "start_s": np.round(a / r.fps, 3), "end_s": np.round(b / r.fps, 3),
                          "label": [classes[i] for i in top],
                          "score": p[np.arange(len(a)), top]})
        frames.append(pd.concat([t, pd.DataFrame(p, columns=[f"p_{c}" for c in classes])], axis=1))
    cols = ["clip", "window", "start_frame", "end_frame", "start_s", "end_s", "label", "score"]
    return pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=cols + [f"p_{c}" for c in classes])


def truth_for(truth: pd.DataFrame | None, r: Result) -> list[tl.Segment] | None:
    """The ground-truth segments of ``r``'s input, relative to its first frame, cut to its
    range (None: no --truth)."""
    if truth is None:
        return None
    rows = truth if "clip" not in truth.columns else \
        truth[(truth["clip"] == r.clip.clip_id) | (truth["clip"] == "")]
    out = []
    for s in tl.segments_from_table(rows.to_dict("records"), r.offset):
        a, b = max(s.start, 0), min(s.end, r.frames)
        if b > a:
            out.append(tl.Segment(s.label, a, b, 1.0))
    return out


def picture_name(clip_id: str, several: bool) -> str:
    return "timeline.png" if not several else \
        "timeline_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", clip_id) + ".png"


def run_timeline(args, bundle: dict, branches: dict, pre, clips: list[Clip], device,
                 out: Path) -> int:
    """The ``--window`` mode of ``mgpipe predict`` (args as its parser makes them)."""
    from tqdm import tqdm

    opts = Options(args.window, args.stride, args.threshold, args.background, args.merge_gap,
                   args.min_length, args.workers, args.truth, args.fps)
    try:
        settings, notes = resolve(opts, bundle)
        truth = read_truth(opts.truth)
    except UsageError as e:
        print(f"mgpipe predict: error: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"mgpipe predict: note: {note}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    classes = bundle["classes"]
    predictor = TimelinePredictor(pre, branches, bundle, device, args.batch_size, settings, opts)
    results: list[Result] = []
    skipped = []
    bar = tqdm(total=len(clips), desc="timeline", unit="video", disable=args.no_progress)
    for clip in clips:
        t0 = time.perf_counter()
        try:
            r = predictor.predict(clip)
        except Failed as e:
            skipped.append({"clip": clip.clip_id, "reason": str(e)})
            tqdm.write(f"mgpipe predict: skipped {clip.clip_id}: {e}", file=sys.stderr)
        else:
            r.seconds["wall"] = time.perf_counter() - t0
            results.append(r)
        bar.update(1)
    bar.close()

    rows, evals = [], {}
    pooled = {iou: tl.Score(0, 0, 0, iou, []) for iou in (0.3, 0.5, 0.7)}
    several = len(results) > 1
    for r in results:
        rows += tl.timeline_rows(r.clip.clip_id, r.detections, r.fps, r.offset)
        gt = truth_for(truth, r)
        if gt is not None:
            gt_eval = [g for g in gt if g.label not in settings.background]
            per = {}
            for iou in pooled:
                s = tl.evaluate(r.detections, gt_eval, iou)
                pooled[iou] = pooled[iou] + s
                per[f"{iou:g}"] = tl.score_json(s)
            evals[r.clip.clip_id] = per
        t0 = time.perf_counter()
        tl.draw_timeline(out / picture_name(r.clip.clip_id, several), r.scores, classes, r.fps,
                         r.detections, settings.threshold, r.thumbs, gt,
                         settings.background,
                         f"{r.clip.clip_id}: window {settings.window:g} s, stride "
                         f"{settings.stride:g} s, {len(r.starts)} windows", r.offset)
        r.seconds["picture"] = time.perf_counter() - t0
    _write(out, "timeline.csv", pd.DataFrame(rows, columns=tl.TIMELINE_COLUMNS))
    _write(out, "windows.csv", windows_table(results, classes))
    win_clips = [Clip(f"{r.clip.clip_id}@{r.offset + int(a)}", r.clip.video)
                 for r in results for a in r.starts]
    probs = {"fused": np.concatenate([r.fused for r in results]) if results
             else np.zeros((0, len(classes)))}
    for b in branches:
        probs[b] = np.concatenate([r.branch_probs[b] for r in results]) if results \
            else np.zeros((0, len(classes)))
    _write(out, "predictions.csv", top_k_table(win_clips, probs, classes))
    timing = pd.DataFrame([{
        "clip": r.clip.clip_id, **{f"{k}_s": round(r.seconds[k], 4) for k in PARTS},
        "total_s": round(sum(r.seconds[k] for k in PARTS), 4),
        "wall_s": round(r.seconds["wall"], 4), "video_s": round(r.frames / r.fps, 3),
        "windows": len(r.starts), "keypoint_workers": r.workers} for r in results],
        columns=["clip"] + [f"{k}_s" for k in PARTS] +
        ["total_s", "wall_s", "video_s", "windows", "keypoint_workers"])
    _write(out, "timing.csv", timing)
    _write(out, "skipped.csv", pd.DataFrame(skipped, columns=["clip", "reason"]))
    unrendered = render_timelines(out, results, classes, args) if getattr(args, "render", False) \
        else 0
    settings_doc = {"window_s": settings.window, "stride_s": settings.stride,
                    "window_from": settings.window_from, "threshold": settings.threshold,
                    "background": settings.background, "merge_gap_s": settings.merge_gap,
                    "min_length_s": settings.min_length}
    summary = ""
    if truth is not None:
        doc = {"settings": settings_doc,
               "note": "ground-truth segments of a background class are not scored",
               "pooled": {f"{iou:g}": tl.score_json(s) for iou, s in pooled.items()},
               "clips": evals}
        (out / "timeline_eval.json").write_text(json.dumps(doc, indent=2) + "\n")
        s = pooled[0.5]
        summary = (f"; at tIoU 0.5: precision {s.precision:.3f}, recall {s.recall:.3f}, "
                   f"F1 {s.f1:.3f} ({s.tp} of {s.tp + s.fn} segments found, {s.fp} false "
                   f"detections; timeline_eval.json)")
    secs = {k: sum(r.seconds[k] for r in results) for k in PARTS}
    split = ", ".join(f"{k} {v:.2f}" for k, v in secs.items())
    print(f"mgpipe predict: {len(results)} videos, {sum(len(r.starts) for r in results)} "
          f"windows of {settings.window:g} s every {settings.stride:g} s "
          f"(window: {settings.window_from}), {len(rows)} micro-gestures detected, "
          f"{len(skipped)} skipped{' (see skipped.csv)' if skipped else ''}{summary}; "
          f"seconds: {split} (device {device.type}); wrote {out / 'timeline.csv'}")
    return 1 if skipped or unrendered else 0


def render_timelines(out: Path, results: Sequence[Result], classes: Sequence[str], args) -> int:
    """``--render`` with ``--window``: ``<out>/<clip>.mp4``, each whole video with its
    keypoints, the window-averaged top-3 of every frame in the banner and the detections in
    a strip with a cursor (no crop box: each window has its own). Writes render.csv; returns
    how many failed (each reported, none stops the others)."""
    from tqdm import tqdm

    from mgpipe.overlay import RENDER_COLUMNS, output_name, render_clip

    rows = []
    for r in results:
        row = dict.fromkeys(RENDER_COLUMNS, "")
        row.update(clip=r.clip.clip_id, file=output_name(r.clip.clip_id))
        segments = [(d.start + r.offset, d.end + r.offset, d.label, d.score)
                    for d in r.detections]

        def frame_top(i: int, r: Result = r) -> list[tuple[str, float]]:
            p = r.scores[min(i, len(r.scores) - 1)]
            return [(classes[k], float(p[k])) for k in np.argsort(-p, kind="stable")[:3]]

        try:
            info = render_clip(out / row["file"], r.kp, classes=classes,
                               video=r.clip.video or None, start_frame=r.offset, frames=r.frames,
                               segments=segments, fps=None if r.clip.video else r.fps,
                               title=r.clip.clip_id, frame_top=frame_top)
            row.update(frames=info.frames, width=info.width, height=info.height,
                       fps=round(info.fps, 3), seconds=round(info.seconds, 4),
                       ms_per_frame=round(info.ms_per_frame, 3))
        except Exception as e:  # noqa: BLE001 - one video's render never stops the others
            row.update(file="", problem=f"not rendered: {e}")
            tqdm.write(f"mgpipe predict: {r.clip.clip_id}: not rendered: {e}", file=sys.stderr)
        rows.append(row)
    _write(out, "render.csv", pd.DataFrame(rows, columns=RENDER_COLUMNS))
    return sum(1 for x in rows if x["problem"])
