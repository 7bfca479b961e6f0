"""Deterministic synthetic micro-gesture dataset (SPEC section 3): the public API.

Upper-body cartoon figures are posed by a small 2D kinematic model (``synth_figures``),
rendered with OpenCV onto textured backgrounds (``synth_render``) and written as mp4 videos
with the 68 keypoints of the model (``mgpipe.layout``) after detector-like noise, in one of two
on-disk layouts (``synth_formats``): ``clips`` (one short video per clip, read by
``dataset.name: synth``) or ``imigue`` (long videos per subject with OpenPose sheets and label
files as the iMiGUE release, read by ``dataset.name: imigue``). Gestures are small target
trajectories of one or both hands (or the shoulders/torso) over idle motion.

Randomness: subject ``s`` draws from ``default_rng([seed, SUBJECT_STREAM, s])`` and clip ``i``
from ``default_rng([seed, i])``, so clips are independent and can be made in any order.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from .synth_figures import (CLASS_NAMES, GESTURES, SUBJECT_STREAM, Subject,
                            class_names, detector_noise, hand_local, hand_points, make_subject,
                            rot, two_link_ik)
from .synth_formats import (LABEL_COLUMNS, read_video, save_contact_sheet,
                            to_openpose137, write_clips, write_imigue, write_video)
from .synth_render import Clip, render_clip, render_idle

__all__ = [  # the public API; the figures, rendering and formats live in synth_*.py
    "CLASS_NAMES", "GESTURES", "LABEL_COLUMNS", "LAYOUTS", "SUBJECT_STREAM", "Clip", "Subject",
    "SynthConfig", "class_counts", "class_names", "detector_noise", "generate", "hand_local",
    "hand_points", "make_subject", "plan", "read_video", "render_clip", "render_idle", "rot",
    "save_contact_sheet", "to_openpose137", "two_link_ik", "write_video",
]
LAYOUTS = ("clips", "imigue")
PLAN_STREAM = 0x9A1A5


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of the generator; the keys of params.yaml's ``synth:`` block."""
    seed: int = 0
    subjects: int = 12
    test_subjects: int = 4      # drawn from a shifted distribution (the target domain)
    val_subjects: int = 2
    clips_per_subject: int = 30
    classes: int = 12
    imbalance: float = 24.0     # head/tail class count ratio
    width: int = 160
    height: int = 120
    frames: int = 40
    fps: int = 25
    layout: str = "clips"       # clips (one video per clip) | imigue (one long video per subject)
    idle_frames: int = 20       # imigue layout: mean idle frames before, between and after clips

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if self.idle_frames < 0:
            raise ValueError(f"idle_frames must be >= 0, got {self.idle_frames}")
        if not 2 <= self.classes <= len(CLASS_NAMES):
            raise ValueError(f"classes must be in [2, {len(CLASS_NAMES)}], got {self.classes}")
        if self.test_subjects < 0 or self.val_subjects < 0:
            raise ValueError("test_subjects and val_subjects must be >= 0")
        if self.subjects <= self.test_subjects + self.val_subjects:
            raise ValueError("need at least one training subject: subjects > test + val")
        if self.subjects * self.clips_per_subject < 2 * self.classes:
            raise ValueError("need at least 2 clips per class: subjects * clips_per_subject "
                             f"= {self.subjects * self.clips_per_subject} < 2 * classes")
        if self.imbalance < 1:
            raise ValueError(f"imbalance must be >= 1, got {self.imbalance}")
        if self.width < 32 or self.height < 32 or self.frames < 2 or self.fps <= 0:
            raise ValueError("width, height >= 32, frames >= 2 and fps > 0 required")

    @classmethod
    def from_params(cls, params: Mapping) -> "SynthConfig":
        """Build from a params dict, rejecting unknown keys (typos would be silently ignored)."""
        unknown = set(params) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown synth parameters: {sorted(unknown)}")
        return cls(**params)


def class_counts(cfg: SynthConfig) -> np.ndarray:
    """Per-class clip totals int64 [classes], decaying geometrically from head to tail.

    The ideal counts have head/tail = ``imbalance``; they are rounded by largest remainder
    (so they sum to subjects * clips_per_subject) with at least 2 clips per class.
    """
    n, c = cfg.subjects * cfg.clips_per_subject, cfg.classes
    w = cfg.imbalance ** (-np.arange(c) / (c - 1))
    ideal = n * w / w.sum()
    counts = np.floor(ideal).astype(np.int64)
    order = np.argsort(-(ideal - counts), kind="stable")
    counts[order[:n - counts.sum()]] += 1
    while counts.min() < 2:       # small datasets: the tail borrows from the head
        counts[int(np.argmin(counts))] += 1
        counts[int(np.argmax(counts))] -= 1
    return np.sort(counts)[::-1].copy()   # keep the head first


def plan(cfg: SynthConfig) -> pd.DataFrame:
    """The clip table without rendering: clip_id, subject, label (index), split, index.

    Clips of each class are dealt round-robin over a seeded order of the subjects, so every
    subject gets exactly ``clips_per_subject`` clips and about the global class mix. The last
    ``test_subjects`` subjects are the test split, the ``val_subjects`` before them val.
    """
    rng = np.random.default_rng([cfg.seed, PLAN_STREAM])
    labels = np.repeat(np.arange(cfg.classes), class_counts(cfg))
    order = rng.permutation(cfg.subjects)
    owner = order[np.arange(labels.size) % cfg.subjects]
    rows = []
    for s in range(cfg.subjects):
        mine = rng.permutation(labels[owner == s])
        split = ("test" if s >= cfg.subjects - cfg.test_subjects else
                 "val" if s >= cfg.subjects - cfg.test_subjects - cfg.val_subjects else "train")
        for j, lab in enumerate(mine):
            rows.append((f"S{s + 1:02d}_{j:03d}", f"S{s + 1:02d}", int(lab), split))
    table = pd.DataFrame(rows, columns=["clip_id", "subject", "label", "split"])
    table["index"] = np.arange(len(table))
    return table



def generate(cfg: SynthConfig, out_dir: Path, progress: bool = True) -> dict:
    """Write the dataset into ``out_dir`` in ``cfg.layout`` (see ``mgpipe.synth_formats``);
    returns a summary. An interrupted run never looks finished (the file a reader looks
    for first is removed at the start and written last)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = class_names(cfg.classes)
    table = plan(cfg)
    subjects = {}
    for sid, split in table.groupby("subject", sort=True)["split"].first().items():
        subjects[sid] = make_subject(cfg, int(sid[1:]) - 1, shifted=split == "test")
    write = write_imigue if cfg.layout == "imigue" else write_clips
    # looked up here, at call time, so a test can replace render_clip in this module
    info = write(cfg, out_dir, table, subjects, render_clip, progress)
    counts = class_counts(cfg)
    return {
        "layout": cfg.layout,
        "clips": len(table),
        "classes": names,
        "class_counts": dict(zip(names, counts.tolist())),
        "imbalance": float(counts.max() / counts.min()),
        "splits": table.split.value_counts().to_dict(),
        "subjects": {s: sorted(table.subject[table.split == s].unique())
                     for s in ("train", "val", "test")},
        **info,
        "seconds": round(time.perf_counter() - t0, 2),
    }
