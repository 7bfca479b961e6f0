"""Dataset adapters, checks and the cross-subject split (the `prepare` stage)."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from mgpipe.datasets import DatasetError, load_csv, load_imigue, load_utd_mhad
from mgpipe.manifest import build_manifest, split_subjects

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stages"))
import prepare as prepare_stage  # noqa: E402


def write_video(path: Path, frames: int = 6, size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
    for i in range(frames):
        vw.write(np.full((size[1], size[0], 3), 20 * i, np.uint8))
    vw.release()
    return path


@pytest.fixture
def csv_dataset(tmp_path):
    """6 subjects x 2 clips, 3 classes, videos under tmp_path/videos."""
    rows = []
    for s in range(6):
        for c in range(2):
            name = f"videos/s{s}_c{c}.mp4"
            write_video(tmp_path / name)
            rows.append(dict(video=name, subject=f"p{s}", label=["nod", "shrug", "scratch"][(s + c) % 3]))
    return tmp_path, rows


def write_csv(root: Path, rows, name="clips.csv") -> Path:
    p = root / name
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


RATIO = {"by": "ratio", "ratio": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 1}


def test_csv_manifest_is_split_by_subject(csv_dataset):
    root, rows = csv_dataset
    p = build_manifest(load_csv(write_csv(root, rows)), RATIO, progress=False)
    m = p.manifest
    assert len(m) == 12 and set(m.split) == {"train", "val", "test"}
    assert m.groupby("subject").split.nunique().max() == 1
    assert (m[m.split == "test"].label == "").all()
    assert set(p.test_labels.clip_id) == set(m[m.split == "test"].clip_id)
    assert (m.frames == 6).all() and (m.width == 32).all() and (m.height == 24).all()
    assert p.classes == ["nod", "scratch", "shrug"]
    # relative paths resolve against the CSV's folder
    assert all(Path(v).is_file() for v in m.video)


def test_ratio_split_is_seeded():
    subjects = [f"p{i}" for i in range(10)]
    a = split_subjects(subjects, "ratio", seed=3)
    assert a == split_subjects(subjects, "ratio", seed=3)
    assert a != split_subjects(subjects, "ratio", seed=4)
    assert sorted(a.values()).count("test") == 2


def test_explicit_subject_lists(csv_dataset):
    root, rows = csv_dataset
    cfg = {"by": "subjects", "subjects": {"train": ["p0", "p1", "p2"], "val": ["p3"], "test": ["p4", "p5"]}}
    m = build_manifest(load_csv(write_csv(root, rows)), cfg, progress=False).manifest
    assert set(m[m.split == "test"].subject) == {"p4", "p5"}


def test_csv_split_column_used_and_checked(csv_dataset):
    root, rows = csv_dataset
    for r in rows:
        r["split"] = {"p0": "train", "p1": "train", "p2": "train", "p3": "val"}.get(r["subject"], "test")
    m = build_manifest(load_csv(write_csv(root, rows)), {"by": "dataset"}, progress=False).manifest
    assert set(m[m.split == "val"].subject) == {"p3"}
    rows[0]["split"] = "test"  # p0 now in train and test
    with pytest.raises(DatasetError, match=r"clips.csv:\d+: subject 'p0' is in both"):
        build_manifest(load_csv(write_csv(root, rows)), {"by": "dataset"}, progress=False)


def test_subject_in_two_splits_in_params(csv_dataset):
    root, rows = csv_dataset
    cfg = {"by": "subjects", "subjects": {"train": ["p0", "p1", "p2", "p3"], "val": ["p3"], "test": ["p4", "p5"]}}
    with pytest.raises(DatasetError, match="'p3' is in both train and val"):
        build_manifest(load_csv(write_csv(root, rows)), cfg, progress=False)


def test_empty_split_is_an_error(csv_dataset):
    root, rows = csv_dataset
    cfg = {"by": "subjects", "subjects": {"train": [f"p{i}" for i in range(5)], "val": [], "test": ["p5"]}}
    with pytest.raises(DatasetError, match="split 'val' is empty"):
        build_manifest(load_csv(write_csv(root, rows)), cfg, progress=False)


def test_missing_columns(csv_dataset):
    root, rows = csv_dataset
    path = write_csv(root, [{"path": r["video"], "subject": r["subject"]} for r in rows])
    with pytest.raises(DatasetError, match=r"clips.csv: missing column\(s\) \['video', 'label'\].*dataset.csv.columns"):
        load_csv(path)
    # ... and the fix the message names works
    path = write_csv(root, [{"path": r["video"], "subject": r["subject"], "class": r["label"]} for r in rows])
    assert len(load_csv(path, columns={"video": "path", "label": "class"}).table) == 12


def test_duplicate_clip_ids(csv_dataset):
    root, rows = csv_dataset
    rows[1]["clip_id"] = rows[0]["clip_id"] = "same"
    with pytest.raises(DatasetError, match=r"duplicate clip id 'same' at \[.*clips.csv:2.*clips.csv:3"):
        build_manifest(load_csv(write_csv(root, rows)), RATIO, progress=False)


@pytest.mark.parametrize("bad", ["missing", "unreadable", "zero_frames", "label", "escape"])
def test_bad_clip_errors_or_is_skipped(csv_dataset, bad):
    root, rows = csv_dataset
    if bad == "missing":
        rows[3]["video"] = "videos/nope.mp4"
        expect = "video not found"
    elif bad == "unreadable":
        (root / "videos/garbage.mp4").write_bytes(b"\x00not a video" * 100)
        rows[3]["video"] = "videos/garbage.mp4"
        expect = "cannot open|zero readable frames"
    elif bad == "zero_frames":
        (root / "videos/empty.mp4").write_bytes(b"")
        rows[3]["video"] = "videos/empty.mp4"
        expect = "cannot open|zero readable frames"
    elif bad == "label":
        rows[3]["label"] = "sneeze"
        expect = "label 'sneeze' is not in the class list"
    else:
        write_video(root.parent / "outside.mp4")
        rows[3]["video"] = "../outside.mp4"
        expect = "escapes the dataset root"
    classes = ["nod", "scratch", "shrug"]
    ds = load_csv(write_csv(root, rows), classes=classes)
    with pytest.raises(DatasetError, match=rf"clips.csv:5: clip '.*': .*({expect}).*on_bad_clip: skip"):
        build_manifest(ds, RATIO, progress=False)
    p = build_manifest(ds, RATIO, on_bad_clip="skip", progress=False)
    assert len(p.manifest) == 11
    assert list(p.skipped.origin) == [f"{root / 'clips.csv'}:5"]
    assert p.skipped.reason.str.contains(expect).all()


def _run_stage(tmp_path, dataset: dict, split: dict, on_bad_clip="error"):
    params = {"dataset": dataset, "split": split, "prepare": {"on_bad_clip": on_bad_clip}}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = tmp_path / "interim"
    rc = prepare_stage.main(["--params", str(pfile), "--out", str(out)])
    return rc, out


def test_stage_records_skips_in_skipped_csv(csv_dataset, tmp_path):
    root, rows = csv_dataset
    rows[0]["video"] = "videos/missing.mp4"
    write_csv(root, rows)
    rc, out = _run_stage(tmp_path, {"name": "csv", "root": str(root), "csv": {"file": "clips.csv"}},
                         RATIO, "skip")
    assert rc == 0
    skipped = pd.read_csv(out / "skipped.csv")
    assert len(skipped) == 1 and "video not found" in skipped.reason[0]
    assert len(pd.read_csv(out / "manifest.csv")) == 11
    rc, _ = _run_stage(tmp_path, {"name": "csv", "root": str(root), "csv": {"file": "clips.csv"}}, RATIO)
    assert rc == 2


# ---- UTD-MHAD (real Kinect skeletons in ../shared) -----------------------------------------

def test_utd_mhad_manifest(utd_mhad_root, tmp_path):
    rc, out = _run_stage(tmp_path, {"name": "utd_mhad", "root": str(utd_mhad_root),
                                    "utd_mhad": {"val_subjects": ["s7"]}}, {"by": "dataset"})
    assert rc == 0
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert len(m) == 861 and m.subject.nunique() == 8
    assert set(m[m.split == "train"].subject) == {"s1", "s3", "s5"}
    assert set(m[m.split == "val"].subject) == {"s7"}
    assert set(m[m.split == "test"].subject) == {"s2", "s4", "s6", "s8"}
    assert (m[m.split == "test"].label == "").all()
    labels = pd.read_csv(out / "test_labels.csv")
    assert len(labels) == (m.split == "test").sum()
    import json
    assert len(json.loads((out / "classes.json").read_text())) == 27
    assert m.frames.between(41, 125).all()
    with h5py.File(out / "provided_keypoints.h5") as h5:
        assert set(h5.keys()) == set(m.clip_id)
        kp = h5["a01_s1_t1/kp"][()]
    assert kp.shape[1:] == (68, 3)
    vis = kp[..., 2] > 0
    assert (kp[vis][:, 0] >= 0).all() and (kp[vis][:, 0] < 640).all()
    assert (kp[vis][:, 1] >= 0).all() and (kp[vis][:, 1] < 480).all()
    # subject faces the camera: the left shoulder is on the image right
    assert (kp[:, 11, 0] > kp[:, 12, 0]).mean() > 0.9
    # head above the neck above the hips (image y grows downward)
    assert (kp[:, 0, 1] < kp[:, 25, 1]).all() and (kp[:, 25, 1] < kp[:, 23, 1]).all()


def test_utd_mhad_val_subject_must_come_from_train(utd_mhad_root):
    with pytest.raises(DatasetError, match="validation subjects come from train"):
        load_utd_mhad(utd_mhad_root, val_subjects=["s2"])


# ---- iMiGUE: a small fixture in the challenge's format -------------------------------------

def write_imigue_fixture(root: Path, videos=("v01", "v02", "v03"), frames=40, with_video=True):
    rng = np.random.default_rng(0)
    for k, vid in enumerate(videos):
        d = root / vid
        d.mkdir(parents=True)
        pose = rng.uniform(100, 600, (frames, 137, 3)).astype(np.float32)
        pose[..., 2] = rng.uniform(0.2, 1, (frames, 137))
        pose[:, 5, :] = [700, 300, 0.9]   # LShoulder, a fixed value to check the mapping
        sheet = pd.DataFrame(pose.reshape(frames, -1),
                             columns=[f"{a}{i}" for i in range(137) for a in ("x", "y", "c")])
        sheet.insert(0, "frame", np.arange(frames))
        sheet.to_excel(d / f"{vid}_openpose.xlsx", index=False)
        pd.DataFrame({"label": [1 + k, 2, 5], "start_frame": [0, 10, 25],
                      "end_frame": [9, 24, 39]}).to_csv(d / f"{vid}_label.csv", index=False)
        if with_video:
            write_video(d / f"{vid}.mp4", frames=frames, size=(64, 36))
    (root / "train_list.txt").write_text("v01\n")
    (root / "val_list.txt").write_text("v02\n")
    (root / "test_list.txt").write_text("v03_0\nv03_1\nv03_2\n")


def test_imigue_fixture(tmp_path):
    root = tmp_path / "imigue"
    write_imigue_fixture(root)
    ds = load_imigue(root, frame_column="frame")
    assert len(ds.table) == 9
    p = build_manifest(ds, {"by": "dataset"}, progress=False)
    m = p.manifest.set_index("clip_id")
    assert m.loc["v01_1", "start_frame"] == 10 and m.loc["v01_1", "end_frame"] == 25
    assert m.loc["v01_1", "frames"] == 15 and m.loc["v01_0", "width"] == 64
    assert set(m[m.split == "test"].index) == {"v03_0", "v03_1", "v03_2"}
    assert (m[m.split == "test"].label == "").all()
    kp = ds.keypoints("v02_2")
    assert kp.shape == (15, 68, 3)
    assert np.allclose(kp[:, 11], [700, 300, 0.9])   # OpenPose LShoulder -> our left_shoulder
    assert p.classes == ["1", "2", "3", "5"]


def test_imigue_configurable_columns_and_errors(tmp_path):
    root = tmp_path / "imigue"
    write_imigue_fixture(root, with_video=False)
    for vid in ("v01", "v02", "v03"):
        f = root / vid / f"{vid}_label.csv"
        pd.read_csv(f).rename(columns={"label": "class", "start_frame": "begin"}).to_csv(f, index=False)
    with pytest.raises(DatasetError, match=r"v01_label.csv: missing column\(s\) \['label', 'start_frame'\]"):
        load_imigue(root)
    ds = load_imigue(root, frame_column="frame",
                     label_columns={"label": "class", "start": "begin", "end": "end_frame"})
    p = build_manifest(ds, {"by": "dataset"}, progress=False)  # skeleton only: no video
    assert (p.manifest.video == "").all() and (p.manifest.width == 1280).all()
    with pytest.raises(DatasetError, match="411 numeric columns"):
        load_imigue(root, label_columns={"label": "class", "start": "begin", "end": "end_frame"}).keypoints("v01_0")
