"""From a RawDataset to the pipeline's manifest: checks, video probing, cross-subject split.

Manifest (``data/interim/manifest.csv``), one row per clip: clip_id, subject, split
(train/val/test), label (empty for test), video, start_frame, end_frame (end exclusive),
frames, fps, width, height. Test labels go only to ``test_labels.csv``, read by the
evaluation code alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from mgpipe.datasets import DatasetError, RawDataset
from mgpipe.video import VideoError, probe_video

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["clip_id", "subject", "split", "label", "video", "start_frame", "end_frame",
                    "frames", "fps", "width", "height"]


@dataclass
class PreparedDataset:
    manifest: pd.DataFrame     # MANIFEST_COLUMNS; label "" for test clips
    test_labels: pd.DataFrame  # clip_id, label
    skipped: pd.DataFrame      # clip_id, origin, reason
    classes: list[str]


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


def build_manifest(ds: RawDataset, split_cfg: dict, on_bad_clip: str = "error",
                   progress: bool = True,
                   on_keypoints: Callable[[str, np.ndarray], None] | None = None) -> PreparedDataset:
    """Check the dataset, probe its videos and split it by subject.

    Per-clip problems (missing/unreadable/empty video, label not in the class list, path
    outside the root, bad frame range) raise a DatasetError naming the clip's file and row,
    or with ``on_bad_clip="skip"`` are recorded in ``skipped``. Dataset-level problems
    (duplicate clip ids, a subject in two splits, an empty split) always raise.
    """
    if on_bad_clip not in ("error", "skip"):
        raise DatasetError(f"prepare.on_bad_clip: {on_bad_clip!r}; use error or skip")
    t = ds.table.copy()
    if t.empty:
        raise DatasetError(f"dataset {ds.name}: no clips found")
    dup = t[t.duplicated("clip_id", keep=False)]
    if len(dup):
        first = dup.groupby("clip_id")["origin"].apply(list).iloc[0]
        raise DatasetError(f"duplicate clip id {dup.clip_id.iloc[0]!r} at {first}; "
                           f"clip ids must be unique: rename one")
    classes = set(ds.classes)
    skipped: list[dict] = []
    info_rows = []
    for r in tqdm(list(t.itertuples()), desc="prepare: checking clips", unit="clip",
                  disable=not progress):
        problem = r.problem
        if not problem and r.label and r.label not in classes:
            problem = (f"label {r.label!r} is not in the class list ({len(classes)} classes); "
                       f"fix the label or add it to dataset classes")
        frames, fps, width, height = -1, 0.0, 0, 0
        if not problem and r.video:
            try:
                v = probe_video(r.video)
                end = v.frames if r.end_frame < 0 else r.end_frame
                if end > v.frames + 1:  # header counts may be off by one frame
                    problem = f"frame range {r.start_frame}..{end} beyond the video's {v.frames} frames"
                frames, fps, width, height = end - r.start_frame, v.fps, v.width, v.height
            except VideoError as e:
                problem = str(e)
        elif not problem:
            if ds.keypoints is None or ds.frame_size is None:
                problem = "no video path and the dataset brings no keypoints"
            else:
                width, height = ds.frame_size
                fps = ds.fps or 30.0
                frames = (r.end_frame - r.start_frame) if r.end_frame >= 0 else -1
        if not problem and ds.keypoints is not None:
            try:
                kp = ds.keypoints(r.clip_id)
                if frames < 0:
                    frames = len(kp)
                elif abs(len(kp) - frames) > 1:
                    problem = f"{len(kp)} frames of keypoints for {frames} video frames"
                if not problem and on_keypoints is not None:
                    on_keypoints(r.clip_id, kp)
            except Exception as e:  # a corrupt keypoint file must not kill a run of thousands
                problem = f"cannot read the dataset's keypoints: {e}"
        if problem:
            if on_bad_clip == "error":
                raise DatasetError(f"{r.origin}: clip {r.clip_id!r}: {problem}. "
                                   f"(set prepare.on_bad_clip: skip to record and skip such clips)")
            skipped.append(dict(clip_id=r.clip_id, origin=r.origin, reason=problem))
        info_rows.append(dict(clip_id=r.clip_id, frames=frames, fps=round(fps, 3),
                              width=width, height=height, bad=bool(problem)))
    info = pd.DataFrame(info_rows)
    t = t.merge(info, on="clip_id")
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
    test_labels = t.loc[test & (t.label != ""), ["clip_id", "label"]].reset_index(drop=True)
    t.loc[test, "label"] = ""
    manifest = t[MANIFEST_COLUMNS].reset_index(drop=True)
    return PreparedDataset(manifest, test_labels,
                           pd.DataFrame(skipped, columns=["clip_id", "origin", "reason"]),
                           list(ds.classes))
