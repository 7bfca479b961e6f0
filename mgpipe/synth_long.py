"""Synthetic untrimmed videos with ground-truth segments, for ``mgpipe predict --window``.

The long videos of the ``imigue`` layout (:func:`mgpipe.synth_formats.write_imigue`: per
subject, its clips in plan order between idle stretches of ``idle_frames`` frames on
average), written in the form ``predict`` reads directly, with the keypoints in our own
68-keypoint layout as the ``clips`` layout ships them::

    <id>.mp4        the whole video, width x height at fps
    <id>.npy        float32 [T, 68, 3], x y score, one row per frame of the video
    videos.csv      clip_id, video, keypoints, subject, split (predict's CSV input)
    truth.csv       clip, label, start_frame, end_frame (exclusive), the subject's clips
                    (predict's --truth)

Same seed and subjects as ``write_imigue`` give the same frames and keypoints; a seed other
than the training set's gives subjects and clips the models never saw.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import write_csv_atomic
from .synth_figures import class_names, make_subject
from .synth_formats import _save_npy, render_long_video
from .synth_render import render_clip


def write_long_videos(cfg, out_dir: str | Path, subjects: list[str] | None = None,
                      progress: bool = False) -> pd.DataFrame:
    """Write the long videos of ``cfg`` (a SynthConfig; ``subjects``: their ids, e.g.
    ["S11", "S12"], default all) into ``out_dir``; returns truth.csv's table. A subject
    of the test split gets the shifted (target-domain) look, as in the dataset."""
    from tqdm import tqdm

    from .synth import plan

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = class_names(cfg.classes)
    table = plan(cfg)
    order = sorted(table.subject.unique())
    chosen = order if subjects is None else [s for s in order if s in set(subjects)]
    truth, videos = [], []
    for sid in tqdm(chosen, desc="synthetic long videos", disable=not progress, unit="video"):
        v = order.index(sid)  # the video index write_imigue gives this subject
        rows = table[table.subject == sid]
        split = rows.split.iloc[0]
        sub = make_subject(cfg, int(sid[1:]) - 1, shifted=split == "test")
        kp = render_long_video(cfg, sub, rows, v, render_clip, out / f"{sid}.mp4",
                               lambda row, clip, first: truth.append(
                                   (sid, names[row.label], first, first + len(clip.frames))))
        _save_npy(out / f"{sid}.npy", kp)
        videos.append((sid, f"{sid}.mp4", f"{sid}.npy", sid, split))
    truth_t = pd.DataFrame(truth, columns=["clip", "label", "start_frame", "end_frame"])
    write_csv_atomic(out / "videos.csv", pd.DataFrame(
        videos, columns=["clip_id", "video", "keypoints", "subject", "split"]))
    write_csv_atomic(out / "truth.csv", truth_t)
    return truth_t
