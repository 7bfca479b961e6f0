"""From a RawDataset to the pipeline's manifest: checks, video probing, cross-subject split.

Manifest (``data/interim/manifest.csv``), one row per clip: clip_id, subject, split
(train/val/test), label (empty for test), video, start_frame, end_frame (end exclusive),
frames, fps, width, height (of the video; for a clip without video from the dataset's
keypoints and frame size, see ``_check_clip``). Test labels go only to ``test_labels.csv``,
read by the evaluation code alone; it also lists test clips skipped here, which are scored
as wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from mgpipe.datasets import DatasetError, RawDataset
from mgpipe.video import VideoError, VideoInfo, probe_video

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["clip_id", "subject", "split", "label", "video", "start_frame", "end_frame",
                    "frames", "fps", "width", "height"]


@dataclass
class PreparedDataset:
    manifest: pd.DataFrame     # MANIFEST_COLUMNS; label "" for test clips
    test_labels: pd.DataFrame  # clip_id, label
    skipped: pd.DataFrame      # clip_id, origin, reason
    classes: list[str]
    warnings: list[str] = field(default_factory=list)  # not errors: for the stage to print


def split_subjects(subjects: list[str], by: str, protocol: dict[str, str] | None = None,
                   lists: dict | None = None, ratio: dict | None = None,
                   val_subjects: list | None = None, seed: int = 0) -> dict[str, str]:
    """Assign every subject to train/val/test; never splits a subject.

    by="dataset": the dataset's own protocol (``protocol`` maps subject -> split); subjects
    in ``val_subjects`` move to val (for protocols without a validation set).
    by="subjects": explicit ``lists`` {train: [...], val: [...], test: [...]}.
    by="ratio": a seeded shuffle of subjects cut by ``ratio`` {train, val, test}.
    """
    subjects = sorted(set(subjects))
    val_subjects = [str(s) for s in (val_subjects or [])]
    if by == "dataset":
        if not protocol or any(not protocol.get(s) for s in subjects):
            none = [s for s in subjects if not (protocol or {}).get(s)]
            raise DatasetError(f"split.by=dataset but the dataset gives no split for subject(s) "
                               f"{none[:5]}; use split.by: subjects (with split.subjects) or ratio")
        out = dict(protocol)
    elif by == "subjects":
        out = {}
        for split in SPLITS:
            for s in (lists or {}).get(split, []) or []:
                s = str(s)
                if s in out and out[s] != split:
                    raise DatasetError(f"params split.subjects: subject {s!r} is in both "
                                       f"{out[s]} and {split}; a subject belongs to one split")
                out[s] = split
        unknown = sorted(set(out) - set(subjects))
        if unknown:
            raise DatasetError(f"params split.subjects names subject(s) {unknown} that the "
                               f"dataset does not have (it has {subjects[:10]}...)")
        unassigned = [s for s in subjects if s not in out]
        if unassigned:
            raise DatasetError(f"params split.subjects leaves subject(s) {unassigned[:10]} in no "
                               f"split; list every subject")
    elif by == "ratio":
        ratio = ratio or {"train": 0.6, "val": 0.2, "test": 0.2}
        order = list(np.random.default_rng(seed).permutation(subjects))
        total = sum(ratio.get(s, 0) for s in SPLITS)
        n_val = max(1, int(round(len(order) * ratio.get("val", 0) / total)))
        n_test = max(1, int(round(len(order) * ratio.get("test", 0) / total)))
        if n_val + n_test >= len(order):
            raise DatasetError(f"split.ratio: {len(order)} subjects cannot fill train, val and "
                               f"test; use more subjects or split.by: subjects")
        out = {s: "test" for s in order[:n_test]}
        out.update({s: "val" for s in order[n_test:n_test + n_val]})
        out.update({s: "train" for s in order[n_test + n_val:]})
    else:
        raise DatasetError(f"split.by: unknown value {by!r}; use dataset, subjects or ratio")
    for s in val_subjects:
        if s not in out:
            raise DatasetError(f"split.val_subjects: subject {s!r} is not in the dataset")
        if out[s] == "test":
            raise DatasetError(f"split.val_subjects: subject {s!r} is a test subject; validation "
                               f"subjects must come from train")
        out[s] = "val"
    return out


def _protocol(table: pd.DataFrame) -> dict[str, str]:
    """subject -> split from the dataset's per-clip split column; a subject in two splits is
    an error (the split would leak that person)."""
    proto: dict[str, str] = {}
    for r in table.itertuples():
        if not r.split:
            continue
        if r.split not in SPLITS:
            raise DatasetError(f"{r.origin}: split {r.split!r} is not one of {SPLITS}")
        if proto.get(r.subject, r.split) != r.split:
            raise DatasetError(f"{r.origin}: subject {r.subject!r} is in both {proto[r.subject]} "
                               f"and {r.split}; splits must be by subject, fix the split column")
        proto[r.subject] = r.split
    return proto


# Where each adapter's class list is set, for the fix of a label outside it.
_CLASSES_FIX = {"csv": "add it to dataset.csv.classes",
                "imigue": "add it to dataset.imigue.classes",
                "stgcn": "add it to dataset.stgcn.classes",
                "pyskl": "add it to dataset.pyskl.classes",
                "synth": "regenerate the dataset (dvc repro synth)"}


def clip_id_problem(clip_id: str) -> str:
    """Why ``clip_id`` cannot name an HDF5 group (and a file) in later stages; "" if it can."""
    fix = "give the row another clip id (letters, digits, '_', '-', '.')"
    if not clip_id.strip():
        return f"empty clip id; {fix}"
    if clip_id in (".", ".."):
        return f"clip id {clip_id!r} cannot name an HDF5 group; {fix}"
    if "/" in clip_id:
        return f"clip id {clip_id!r} contains '/' (clip ids name HDF5 groups); {fix}"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in clip_id):
        return f"clip id {clip_id!r} contains a control character; {fix}"
    return ""


def _row_problem(r, classes: set[str], dataset: str) -> str:
    """What makes one table row unusable before its video is opened ("" when nothing):
    clip id, subject, label, frame range."""
    if r.problem:
        return r.problem
    problem = clip_id_problem(r.clip_id)
    if problem:
        return problem
    if not r.subject.strip():
        return ("empty subject; every clip needs its person (the split is by subject): fill "
                "the subject column")
    if r.label and r.label not in classes:
        return (f"label {r.label!r} is not in the class list ({len(classes)} classes); fix the "
                f"label or {_CLASSES_FIX.get(dataset, 'fix the class list')}")
    if r.start_frame < 0 or r.end_frame < -1:
        return f"frame range {r.start_frame}..{r.end_frame} is negative; frames count from 0"
    if 0 <= r.end_frame <= r.start_frame:
        return (f"end_frame {r.end_frame} must come after start_frame {r.start_frame} (end is "
                f"exclusive); fix the range, or leave end_frame empty for the rest of the video")
    return ""


def _video_problem(r, v: VideoInfo) -> tuple[str, int]:
    """(problem or "", frames of the clip) for row ``r`` of video ``v``."""
    lost = (f" (its header claims {v.header_frames}: a truncated file? copy it again or "
            f"re-encode it)" if v.header_frames > v.frames else "")
    if r.start_frame >= v.frames:
        return (f"start_frame {r.start_frame} is beyond the end of {r.video}: only "
                f"{v.frames} frames decode{lost}", -1)
    end = v.frames if r.end_frame < 0 else r.end_frame
    if end > v.frames + 1:  # one frame of slack: read_frames repeats the last one
        return (f"{r.video}: the clip needs frames {r.start_frame}..{end - 1} but only "
                f"{v.frames} decode{lost}; fix the frame range or the video", -1)
    return "", end - r.start_frame


class _Probes:
    """probe_video once per distinct video (many clips share one long video in iMiGUE)."""

    def __init__(self):
        self.seen: dict[str, VideoInfo | VideoError] = {}

    def __call__(self, video: str) -> VideoInfo:
        if video not in self.seen:
            try:
                self.seen[video] = probe_video(video)
            except VideoError as e:
                self.seen[video] = e
        got = self.seen[video]
        if isinstance(got, VideoError):
            raise got
        return got


def _check_clip(r, ds: RawDataset, classes: set[str], probe: _Probes,
                on_keypoints: Callable[[str, np.ndarray], None] | None) -> dict:
    """One row -> dict(problem, frames, fps, width, height); hands good clips' keypoints to
    ``on_keypoints``. A clip without video takes the dataset's frame rate and its frame size
    from ``ds.frame_sizes``, ``ds.frame_size`` or the extent of its keypoints, in that order."""
    info = dict(problem=_row_problem(r, classes, ds.name), frames=-1, fps=0.0, width=0, height=0)
    if info["problem"]:
        return info
    if r.video:
        try:
            v = probe(r.video)
        except VideoError as e:
            return {**info, "problem": str(e)}
        info["problem"], info["frames"] = _video_problem(r, v)
        info.update(fps=v.fps, width=v.width, height=v.height)
    elif ds.keypoints is None:
        info["problem"] = "no video path and the dataset brings no keypoints"
    else:
        info.update(fps=ds.fps or 30.0,
                    frames=(r.end_frame - r.start_frame) if r.end_frame >= 0 else -1)
    if not info["problem"] and ds.keypoints is not None:
        size_of = None if r.video else (lambda kp: _frame_size(ds, r.clip_id, kp))
        info.update(_check_keypoints(r.clip_id, ds.keypoints, info["frames"], on_keypoints,
                                     size_of))
    return info


def keypoint_extent(kp: np.ndarray) -> tuple[int, int]:
    """(width, height) px of the smallest frame from (0, 0) holding every seen keypoint of
    [T, 68, 3] (score > 0): floor(largest x) + 1 by floor(largest y) + 1, at least 1 x 1."""
    kp = np.asarray(kp, np.float32)
    seen = (kp[..., 2] > 0) & np.isfinite(kp[..., :2]).all(-1)
    if not seen.any():
        return 1, 1
    x, y = kp[..., 0][seen], kp[..., 1][seen]
    return max(1, int(np.floor(x.max())) + 1), max(1, int(np.floor(y.max())) + 1)


def _frame_size(ds: RawDataset, clip_id: str, kp: np.ndarray) -> tuple[int, int]:
    """A clip without video: (width, height) from the adapter, else the keypoints' extent."""
    size = ds.frame_sizes.get(clip_id) or ds.frame_size or keypoint_extent(kp)
    return int(size[0]), int(size[1])


def _check_keypoints(clip_id: str, keypoints: Callable[[str], np.ndarray], frames: int,
                     on_keypoints: Callable[[str, np.ndarray], None] | None,
                     size_of: Callable[[np.ndarray], tuple[int, int]] | None = None) -> dict:
    """Read a clip's provided keypoints [T, 68, 3]; their length must match ``frames`` (-1 =
    unknown: taken from them) within one frame. ``size_of`` (clips without video) gives the
    frame (width, height) from them. -> updates for the clip's info dict."""
    try:
        kp = keypoints(clip_id)
        if frames < 0:
            frames = len(kp)
        elif abs(len(kp) - frames) > 1:
            return dict(problem=f"{len(kp)} frames of keypoints for {frames} video frames")
        update = dict(frames=frames)
        if size_of is not None:
            update["width"], update["height"] = size_of(kp)
        if on_keypoints is not None:
            on_keypoints(clip_id, kp)
        return update
    except Exception as e:  # a corrupt keypoint file must not kill a run of thousands
        return dict(problem=f"cannot read the dataset's keypoints: {e}")


def unseen_class_warnings(manifest: pd.DataFrame, test_labels: pd.DataFrame,
                          classes: list[str]) -> list[str]:
    """One warning per class that has val or test clips but no training clip (the model can
    never predict it). ``manifest`` still holds every split; test labels come from
    ``test_labels``."""
    train = set(manifest.label[manifest.split == "train"])
    val = manifest.label[manifest.split == "val"].value_counts()
    test = test_labels.label.value_counts()
    out = []
    for c in classes:
        if c not in train and (val.get(c, 0) or test.get(c, 0)):
            out.append(f"class {c!r} has no training clip (val {val.get(c, 0)}, test "
                       f"{test.get(c, 0)} clips): no model can learn it; move a subject with "
                       f"it into train (split.by, split.subjects) or drop the class")
    return out


def build_manifest(ds: RawDataset, split_cfg: dict, on_bad_clip: str = "error",
                   progress: bool = True,
                   on_keypoints: Callable[[str, np.ndarray], None] | None = None) -> PreparedDataset:
    """Check the dataset, probe its videos (each distinct video once) and split it by subject.

    Per-clip problems (bad clip id, empty subject, missing/unreadable/empty/truncated video,
    label not in the class list, path outside the root, bad frame range, provided keypoints
    that cannot be read or do not match the video's length) raise a
    DatasetError naming the clip's file and row, or with ``on_bad_clip="skip"`` are recorded
    in ``skipped``. Dataset-level problems (duplicate clip ids, a subject in two splits, an
    empty split) always raise. Classes without a training clip become ``warnings``.
    """
    if on_bad_clip not in ("error", "skip"):
        raise DatasetError(f"prepare.on_bad_clip: {on_bad_clip!r}; use error or skip")
    t = ds.table.copy().reset_index(drop=True)
    if t.empty:
        raise DatasetError(f"dataset {ds.name}: no clips found")
    dup = t[t.duplicated("clip_id", keep=False) & (t.clip_id.str.strip() != "")]
    if len(dup):
        first = dup.groupby("clip_id")["origin"].apply(list).iloc[0]
        raise DatasetError(f"duplicate clip id {dup.clip_id.iloc[0]!r} at {first}; "
                           f"clip ids must be unique: rename one")
    classes, probe = set(ds.classes), _Probes()
    skipped: list[dict] = []
    info_rows = []
    for r in tqdm(list(t.itertuples()), desc="prepare: checking clips", unit="clip",
                  disable=not progress):
        info = _check_clip(r, ds, classes, probe, on_keypoints)
        if info["problem"]:
            if on_bad_clip == "error":
                raise DatasetError(f"{r.origin}: clip {r.clip_id!r}: {info['problem']}. "
                                   f"(set prepare.on_bad_clip: skip to record and skip such clips)")
            skipped.append(dict(clip_id=r.clip_id, origin=r.origin, reason=info["problem"]))
        info_rows.append(dict(frames=info["frames"], fps=round(info["fps"], 3),
                              width=info["width"], height=info["height"],
                              bad=bool(info["problem"])))
    t = pd.concat([t, pd.DataFrame(info_rows)], axis=1)
    bad = t[t.bad]
    t = t[~t.bad].drop(columns="bad")

    assign = split_subjects(
        list(t.subject), split_cfg.get("by", "dataset"), _protocol(t),
        split_cfg.get("subjects"), split_cfg.get("ratio"), split_cfg.get("val_subjects"),
        int(split_cfg.get("seed", 0)))
    t["split"] = t.subject.map(assign)
    for split in SPLITS:
        if not (t.split == split).any():
            raise DatasetError(f"split {split!r} is empty after splitting {t.subject.nunique()} "
                               f"subjects; check the split params (split.by, split.subjects, "
                               f"split.val_subjects)")
    t = t.sort_values(["split", "subject", "clip_id"],
                      key=lambda c: c.map({s: i for i, s in enumerate(SPLITS)}) if c.name == "split" else c)
    test = t.split == "test"
    test_labels = t.loc[test & (t.label != ""), ["clip_id", "label"]]
    # A challenge scores every test clip: a skipped clip of a test subject keeps its label
    # here, so the evaluation counts it (as wrong: no branch can see it).
    lost = bad[(bad.subject.map(assign) == "test") & bad.label.isin(classes)
               & (bad.clip_id.map(clip_id_problem) == "")]
    test_labels = pd.concat([test_labels, lost[["clip_id", "label"]]]).reset_index(drop=True)
    warnings = unseen_class_warnings(t, test_labels, list(ds.classes))
    t.loc[test, "label"] = ""
    manifest = t[MANIFEST_COLUMNS].reset_index(drop=True)
    return PreparedDataset(manifest, test_labels,
                           pd.DataFrame(skipped, columns=["clip_id", "origin", "reason"]),
                           list(ds.classes), warnings)
