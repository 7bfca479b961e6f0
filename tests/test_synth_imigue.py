"""The synthetic dataset in iMiGUE's layout (synth.layout: imigue): read back by the iMiGUE
adapter with the right clips, labels, frame ranges and keypoints; the whole pipeline runs
on it with dataset.name: imigue; and whatever in a real release differs from the adapter's
params stops with a message naming the file, the row and the param to set."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mgpipe import layout as L
from mgpipe import synth
from mgpipe.datasets import DatasetError, load_imigue, read_openpose_xlsx
from mgpipe.synth import SynthConfig
from mgpipe.synth_formats import OPENPOSE_COLUMNS, idle_gaps, write_xlsx

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(subjects=4, test_subjects=1, val_subjects=1, clips_per_subject=5, classes=10,
            frames=12, idle_frames=6, layout="imigue")


@pytest.fixture(scope="module")
def imigue_root(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synth_imigue")
    synth.generate(SynthConfig(**TINY), d, progress=False)
    return d


@pytest.fixture
def copy(imigue_root, tmp_path) -> Path:
    """A copy to break."""
    shutil.copytree(imigue_root, tmp_path / "d")
    return tmp_path / "d"


def test_layout_on_disk(imigue_root):
    subjects = ["S01", "S02", "S03", "S04"]
    assert sorted(p.name for p in imigue_root.iterdir() if p.is_dir()) == subjects
    for s in subjects:
        assert sorted(p.name for p in (imigue_root / s).iterdir()) == [
            f"{s}.mp4", f"{s}_label.csv", f"{s}_openpose.xlsx"]
        assert list(pd.read_csv(imigue_root / s / f"{s}_label.csv").columns) == [
            "label", "start_frame", "end_frame"]
    for name in ("train_list.txt", "val_list.txt", "test_list.txt", "classes.json",
                 "contact_sheet.png"):
        assert (imigue_root / name).is_file()
    assert not list(imigue_root.rglob(".*"))          # no temporary leftovers


def test_same_seed_is_byte_identical(imigue_root, tmp_path):
    synth.generate(SynthConfig(**TINY), tmp_path, progress=False)
    for p in sorted(imigue_root.rglob("*")):
        if p.is_file() and p.suffix != ".mp4":
            assert p.read_bytes() == (tmp_path / p.relative_to(imigue_root)).read_bytes(), p


def test_load_imigue_reads_clips_labels_ranges_and_keypoints(imigue_root):
    cfg = SynthConfig(**TINY)
    names = synth.class_names(cfg.classes)
    table = synth.plan(cfg)
    ds = load_imigue(imigue_root)
    t = ds.table
    assert len(t) == len(table) == 20 and (t.problem == "").all()
    assert set(ds.classes) == set(names[i] for i in table.label)
    video_frames = {}
    for v, (sid, rows) in enumerate(table.groupby("subject", sort=True)):
        gaps = idle_gaps(cfg, v, len(rows))
        pos = 0
        for n, r in enumerate(rows.itertuples()):
            got = t.set_index("clip_id").loc[f"{sid}_{n}"]
            pos += gaps[n]
            assert got.subject == sid and got.label == names[r.label] and got.split == r.split
            assert (got.start_frame, got.end_frame) == (pos, pos + cfg.frames)   # end exclusive
            assert got.video.endswith(f"{sid}/{sid}.mp4")
            sub = synth.make_subject(cfg, v, shifted=r.split == "test")
            clip = synth.render_clip(cfg, sub, r.label, r.index)
            kp = ds.keypoints(f"{sid}_{n}")
            want = clip.keypoints.copy()
            # OpenPose has one point per pose knuckle: the hand model's
            for ours, hand in ((17, 17), (19, 5), (21, 2)):
                want[:, ours] = want[:, L.LEFT_HAND + hand]
                want[:, ours + 1] = want[:, L.RIGHT_HAND + hand]
            assert kp.shape == want.shape == (cfg.frames, 68, 3)
            np.testing.assert_allclose(kp, want, atol=6e-4)    # 3 decimals in the sheet
            pos += cfg.frames
        video_frames[sid] = pos + gaps[-1]
    for sid, n in video_frames.items():
        frames = synth.read_video(imigue_root / sid / f"{sid}.mp4")
        assert frames.shape == (n, cfg.height, cfg.width, 3)
        assert len(read_openpose_xlsx(imigue_root / sid / f"{sid}_openpose.xlsx")) == n


def test_prepare_on_it_with_dataset_defaults(imigue_root):
    from mgpipe.manifest import build_manifest

    prepared = build_manifest(load_imigue(imigue_root), {"by": "dataset"}, progress=False)
    m = prepared.manifest
    assert len(m) == 20 and set(m.split) == {"train", "val", "test"}
    assert (m.frames == 12).all() and (m.width == 160).all() and (m.fps == 25).all()
    assert sorted(m[m.split == "test"].subject.unique()) == ["S04"]


def test_stage_generates_only_for_the_dataset_that_reads_the_layout(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synth"].update(TINY, clips_per_subject=5)

    def run(name: str, layout: str) -> subprocess.CompletedProcess:
        params["dataset"]["name"] = name
        params["synth"]["layout"] = layout
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return subprocess.run([sys.executable, str(ROOT / "stages/synth.py"), "--out", "out"],
                              cwd=tmp_path, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))

    p = run("synth", "imigue")
    assert p.returncode == 2 and "set synth.layout: clips" in p.stderr
    p = run("imigue", "clips")   # the user's own iMiGUE copy: nothing generated
    assert p.returncode == 0 and "nothing generated" in p.stdout
    assert [x.name for x in (tmp_path / "out").iterdir()] == ["NOT_GENERATED.txt"]


# ---- what a real release may do differently -----------------------------------------------

def test_label_csv_missing_a_column(copy):
    path = copy / "S02" / "S02_label.csv"
    pd.read_csv(path).rename(columns={"end_frame": "end"}).to_csv(path, index=False)
    with pytest.raises(DatasetError) as e:
        load_imigue(copy)
    assert str(path) in str(e.value) and "['end_frame']" in str(e.value)
    assert "dataset.imigue.label_columns" in str(e.value)
    for other in copy.glob("S0[134]/*_label.csv"):                # a release naming it so
        pd.read_csv(other).rename(columns={"end_frame": "end"}).to_csv(other, index=False)
    ds = load_imigue(copy, label_columns={"end": "end"})   # the fix the message names
    assert len(ds.table) == 20


def test_list_naming_an_unknown_clip(copy):
    path = copy / "val_list.txt"
    path.write_text(path.read_text() + "S03_99\n")
    with pytest.raises(DatasetError) as e:
        load_imigue(copy)
    msg = str(e.value)
    assert f"{path}:6" in msg and "'S03_99'" in msg and "dataset.imigue.lists" in msg


def test_xlsx_with_the_wrong_number_of_columns(copy):
    path = copy / "S01" / "S01_openpose.xlsx"
    values = read_openpose_xlsx(path).reshape(-1, 411)
    write_xlsx(path, OPENPOSE_COLUMNS[:-3], values[:, :-3])         # 136 keypoints
    with pytest.raises(DatasetError) as e:
        load_imigue(copy).keypoints("S01_0")
    assert str(path) in str(e.value) and "found 408" in str(e.value)
    assert "dataset.imigue.frame_column" in str(e.value)


def test_xlsx_with_a_frame_column(copy):
    """A sheet whose first column numbers the frames from 1: read by setting frame_column and
    first_frame; frames without a row (no person) are unseen."""
    path = copy / "S01" / "S01_openpose.xlsx"
    values = read_openpose_xlsx(path).reshape(-1, 411)
    frames = np.arange(1, len(values) + 1)[:, None]
    keep = np.arange(len(values)) != 3                              # frame 4: no row
    write_xlsx(path, ["frame"] + OPENPOSE_COLUMNS, np.hstack([frames, values])[keep])
    with pytest.raises(DatasetError, match="dataset.imigue.frame_column"):
        read_openpose_xlsx(path)                                    # 412 numeric columns
    got = read_openpose_xlsx(path, "frame", first_frame=1)
    want = values.reshape(-1, 137, 3).copy()
    want[3] = 0
    np.testing.assert_array_equal(got, want)
    with pytest.raises(DatasetError) as e:
        read_openpose_xlsx(path, "frame_no")
    assert str(path) in str(e.value) and "dataset.imigue.frame_column" in str(e.value)


def test_one_based_frames_beyond_the_sheet(copy):
    """A label csv counting from 1 read as counting from 0: the last clip of a video that
    ends with a clip runs past the sheet; the message says to set first_frame."""
    path = copy / "S01" / "S01_label.csv"
    labels = pd.read_csv(path)
    frames = len(read_openpose_xlsx(copy / "S01" / "S01_openpose.xlsx"))
    labels.loc[len(labels) - 1, ["start_frame", "end_frame"]] = [frames - 11, frames]
    labels.to_csv(path, index=False)
    ds = load_imigue(copy)
    with pytest.raises(DatasetError) as e:
        ds.keypoints("S01_4")
    msg = str(e.value)
    assert "S01_openpose.xlsx" in msg and f"{path}:6" in msg
    assert "dataset.imigue.first_frame: 1" in msg
    assert ds.keypoints("S01_0").shape == (12, 68, 3)               # the other clips read
    # a 0 in a file read as counting from 1 is a row problem naming the param
    labels.loc[0, "start_frame"] = 0
    labels.to_csv(path, index=False)
    t = load_imigue(copy, first_frame=1).table.set_index("clip_id")
    assert "dataset.imigue.first_frame" in t.loc["S01_0", "problem"]


def test_missing_openpose_sheet_names_the_param(copy):
    (copy / "S02" / "S02_openpose.xlsx").unlink()
    with pytest.raises(DatasetError, match="dataset.imigue.openpose"):
        load_imigue(copy).keypoints("S02_0")


# ---- the whole pipeline on it --------------------------------------------------------------

E2E = {
    "synth": dict(TINY, subjects=5, test_subjects=1, val_subjects=1, clips_per_subject=6,
                  imbalance=3, frames=16, idle_frames=8),
    "dataset": {"name": "imigue", "root": "data/raw/synth"},
    "rgb": {"frames": 4, "size": 32},
    "heatmaps": {"frames": 8, "size": [16, 16]},
    "cmpl": {"rounds": 1, "threshold": 0.0, "min_agree": 1, "class_fraction": None, "selection": "confidence"},
}


def _stage(project: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True,
                       env=env)
    assert p.returncode == 0, (f"{' '.join(args)} failed ({p.returncode}):\n"
                               f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p.stdout + p.stderr


@pytest.mark.slow
def test_pipeline_on_the_synthetic_imigue_set(tmp_path):
    project = tmp_path
    shutil.copytree(ROOT / "stages", project / "stages")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for block, values in E2E.items():
        params[block].update(values)
    params["keypoints"]["backend"] = "provided"
    params["runtime"].update(crop_workers=1) if "runtime" in params else None
    branches = {b: params["branches"][b] for b in ("stcnn", "posec3d", "r2plus1d")}
    for b in branches.values():
        b["epochs"] = 1
    params["branches"] = branches
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _stage(project, "stages/synth.py")
    assert "'layout': 'imigue'" in out.replace('"', "'")
    assert (project / "data/raw/synth/S01/S01_openpose.xlsx").is_file()
    assert "imigue: 30 clips" in _stage(project, "stages/prepare.py")
    for name in ("keypoints", "crop", "heatmaps"):
        _stage(project, f"stages/{name}.py")
    for b in branches:
        _stage(project, "stages/train.py", "--branch", b)
    _stage(project, "stages/cmpl.py")
    _stage(project, "stages/fuse.py")
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    m = pd.read_csv(project / "data/interim/manifest.csv", dtype=str, keep_default_na=False)
    assert metrics["test_clips"] == (m.split == "test").sum() == 6
    assert set(m.video) == {f"data/raw/synth/S0{i}/S0{i}.mp4" for i in range(1, 6)}
    assert 0 <= metrics["test"]["fused"]["macro_f1"] <= 1


def test_interrupted_run_never_looks_finished(imigue_root, tmp_path, monkeypatch):
    shutil.copytree(imigue_root, tmp_path / "d")
    calls = []

    def failing(*args, **kwargs):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    real = synth.render_clip
    monkeypatch.setattr(synth, "render_clip", failing)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(SynthConfig(**TINY), tmp_path / "d", progress=False)
    assert not list((tmp_path / "d").glob("*_list.txt"))      # no split lists: not finished
    assert not [p for p in (tmp_path / "d").rglob(".*") if p.is_file()]   # no temporaries
