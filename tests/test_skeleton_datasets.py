"""Any keypoint dataset in (issue #11): the ST-GCN and pyskl container adapters (several
people per sample, zero padding, splits from the files), the pickle reader that refuses
code, the train stage's stop for RGB branches without video, the real UTD-MHAD skeletons
through the csv adapter, and a skeleton-only CSV dataset through the whole DVC pipeline."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import copy_project

from mgpipe import layout, skeletons
from mgpipe.datasets import DatasetError, load_csv, load_dataset, utd_mhad_keypoints
from mgpipe.datasets_skeleton import load_data_pickle, load_pyskl, load_stgcn, trim_padding
from mgpipe.manifest import build_manifest

ROOT = Path(__file__).resolve().parents[1]


# ---- one person of several -----------------------------------------------------------------

def test_most_active_person_by_hand():
    """[M=4, T=3, V=2, C=2]. Person 0 stands still; person 1's joint 0 moves 5 then 0 and
    joint 1 moves 0 then 1: (5 + 0) / 2 + (0 + 1) / 2 = 3; person 2 has no valid joint
    (all 0); person 3's joint 0 is lost in frame 1, so only joint 1 counts: 1 + 1 = 2."""
    p = np.zeros((4, 3, 2, 2))
    p[0] = [[[1, 1], [2, 2]]] * 3
    p[1] = [[[10, 0], [20, 0]], [[13, 4], [20, 0]], [[13, 4], [20, 1]]]
    p[3] = [[[5, 5], [30, 30]], [[0, 0], [31, 30]], [[50, 50], [32, 30]]]
    motion, count = skeletons.person_motion(p, has_score=False)
    assert motion.tolist() == [0.0, 3.0, 0.0, 2.0] and count.tolist() == [6, 6, 0, 5]
    assert skeletons.most_active_person(p) == 1
    # a person with no valid joint never wins, even when the others do not move
    still = p[[2, 0]]
    assert skeletons.most_active_person(still) == 1
    # ties go to the one with more valid joints
    tie = np.stack([p[0], p[0]])
    tie[0, 0, 0] = 0                                     # one joint fewer
    assert skeletons.most_active_person(tie) == 1
    # with a score channel, score 0 means unseen
    scored = np.concatenate([p, np.ones(p.shape[:3] + (1,))], -1)
    scored[1, ..., 2] = 0
    assert skeletons.most_active_person(scored, has_score=True) == 3
    assert skeletons.most_active_person(np.zeros((2, 3, 2, 2))) == 0


def test_trim_padding():
    a = np.zeros((2, 6, 3, 3))
    a[1, :4] = 1
    assert trim_padding(a).shape == (2, 4, 3, 3)
    assert trim_padding(np.zeros((1, 5, 3, 3))).shape[1] == 0


# ---- ST-GCN arrays -------------------------------------------------------------------------

def _kinect_person(rng, frames: int, moving: bool) -> np.ndarray:
    """[T, 25, 3] Kinect v2 joints in metres, 2.5 m in front of the sensor."""
    base = np.stack([rng.uniform(-0.4, 0.4, 25), rng.uniform(-0.5, 0.5, 25),
                     np.full(25, 2.5)], -1)
    wave = np.sin(np.arange(frames) / 2)[:, None, None] * (0.1 if moving else 0.0)
    return (base[None] + wave * [1, 0, 0]).astype(np.float32)


@pytest.fixture
def stgcn_root(tmp_path):
    """train (3 samples) and test (1) files, no val files; 2 person slots (the second one
    empty, or a person standing still beside the active one), zero padding to T = 10."""
    rng = np.random.default_rng(0)
    want = {}

    def write(split: str, names: list[str], labels: list[int], active: list[int], lengths):
        data = np.zeros((len(names), 3, 10, 25, 2), np.float32)
        for n, (who, length) in enumerate(zip(active, lengths)):
            for m in range(2):
                if m == who or who == 1:         # person 1 active: person 0 stands beside
                    person = _kinect_person(rng, length, moving=m == who)
                    data[n, :, :length, :, m] = person.transpose(2, 0, 1)
            want[names[n]] = data[n, :, :length, :, who].transpose(1, 2, 0)
        np.save(tmp_path / f"{split}_data.npy", data)
        with open(tmp_path / f"{split}_label.pkl", "wb") as f:
            pickle.dump((names, [np.int64(y) for y in labels]), f)

    write("train", ["S001C001P001R001A001", "S001C001P001R001A002", "S001C001P002R001A003"],
          [0, 1, 2], active=[0, 1, 0], lengths=[7, 10, 9])
    write("test", ["S001C001P003R001A001"], [1], active=[1], lengths=[6])
    return tmp_path, want


def test_stgcn_adapter(stgcn_root):
    root, want = stgcn_root
    ds = load_stgcn(root, subject_regex=r"P(\d+)", classes=["a", "b", "c"])
    t = ds.table.set_index("clip_id")
    assert list(t.split) == ["train", "train", "train", "test"]
    assert list(t.subject) == ["001", "001", "002", "003"] and list(t.label) == ["a", "b", "c", "b"]
    assert (t.video == "").all()
    fmt = skeletons.skeleton_format({"layout": "kinect_v2"}, "dataset.stgcn")
    for name, person in want.items():
        kp = ds.keypoints(name)
        assert len(kp) == len(person), name                     # zero padding trimmed
        assert np.array_equal(kp, skeletons.to_layout(person, fmt, "x")[0]), name  # active one
    p = build_manifest(ds, {"by": "dataset", "val_subjects": ["002"]}, progress=False)
    m = p.manifest.set_index("clip_id")
    assert m.loc["S001C001P002R001A003"].split == "val"
    assert all(m.loc[name].frames == len(person) for name, person in want.items())
    assert (m.width == 640).all() and (m.height == 480).all() and (m.fps == 30).all()
    # default class names and subject (the whole name), through load_dataset
    ds = load_dataset({"name": "stgcn", "root": str(root), "stgcn": {}})
    assert ds.classes == ["class_0", "class_1", "class_2"]
    assert ds.table.subject[0] == "S001C001P001R001A001"


def test_stgcn_2d_with_scores_and_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    data = np.zeros((2, 3, 5, 18, 1), np.float32)
    data[:, :2] = rng.uniform(5, 60, (2, 2, 5, 18, 1))
    data[:, 2] = 0.8
    np.save(tmp_path / "train_data.npy", data)
    pickle.dump((["a", "b"], [0, 1]), open(tmp_path / "train_label.pkl", "wb"))
    ds = load_stgcn(tmp_path, layout="openpose18", splits={"val": None, "test": None})
    kp = ds.keypoints("b")
    assert kp.shape == (5, 68, 3) and np.isclose(kp[0, layout.INDEX["left_shoulder"], 2], 0.8)
    assert ds.frame_size is None and ds.frame_sizes == {}            # 2D: the extent
    with pytest.raises(DatasetError, match=r"train_data\.npy: 18 joints .* kinect_v2 \(25 joints\) "
                                           r"expects 25; set dataset\.stgcn\.layout"):
        load_stgcn(tmp_path)
    pickle.dump((["a"], [0]), open(tmp_path / "train_label.pkl", "wb"))
    with pytest.raises(DatasetError, match=r"train_data\.npy: 2 samples, but its label file names 1"):
        load_stgcn(tmp_path, layout="openpose18")
    pickle.dump({"names": ["a", "b"]}, open(tmp_path / "train_label.pkl", "wb"))
    with pytest.raises(DatasetError, match=r"train_label\.pkl: expected a pickle of \(sample_names, "
                                           r"labels\)"):
        load_stgcn(tmp_path, layout="openpose18")
    (tmp_path / "train_label.pkl").unlink()
    with pytest.raises(DatasetError, match=r"train_label\.pkl: not found, but its partner"):
        load_stgcn(tmp_path, layout="openpose18")


# ---- pyskl ---------------------------------------------------------------------------------

def _pyskl_annotation(rng, name: str, label: int, active: int, frames: int = 8) -> dict:
    kp = rng.uniform(100, 300, (2, 1, 17, 2)).repeat(frames, 1).astype(np.float32)
    kp[active] += np.sin(np.arange(frames))[:, None, None] * 20          # it moves
    return {"frame_dir": name, "label": label, "keypoint": kp,
            "keypoint_score": np.full((2, frames, 17), 0.9, np.float32),
            "img_shape": (480, 854), "original_shape": (480, 854), "total_frames": frames}


@pytest.fixture
def pyskl_file(tmp_path):
    rng = np.random.default_rng(2)
    names = ["S001C001P001R001A001", "S001C001P002R001A002", "S001C001P003R001A001"]
    anns = [_pyskl_annotation(rng, n, y, a) for n, y, a in zip(names, [0, 1, 0], [1, 0, 1])]
    obj = {"split": {"xsub_train": names[:2] + ["S009C001P009R001A001"], "xsub_val": names[2:],
                     "xview_train": names}, "annotations": anns}
    with open(tmp_path / "ntu60_hrnet.pkl", "wb") as f:
        pickle.dump(obj, f)
    return tmp_path, anns


def test_pyskl_adapter(pyskl_file):
    root, anns = pyskl_file
    ds = load_pyskl(root, subject_regex=r"P(\d+)", classes=["drink", "eat"])
    t = ds.table.set_index("clip_id")
    assert list(t.split) == ["train", "train", "train", "test"]
    assert t.loc["S009C001P009R001A001"].problem == "listed in the split but has no annotation"
    assert list(t.label[:2]) == ["drink", "eat"] and t.loc["S001C001P003R001A001"].subject == "003"
    fmt = skeletons.skeleton_format({"layout": "coco17", "channels": "xy_score"}, "dataset.pyskl")
    for a, active in zip(anns, [1, 0, 1]):
        person = np.concatenate([a["keypoint"][active], a["keypoint_score"][active][..., None]], -1)
        assert np.array_equal(ds.keypoints(a["frame_dir"]), skeletons.to_layout(person, fmt, "x")[0])
    assert ds.frame_sizes["S001C001P001R001A001"] == (854, 480)           # img_shape is (h, w)
    p = build_manifest(ds, {"by": "subjects", "subjects": {"train": ["001"], "val": ["002"],
                                                           "test": ["003"]}},
                       on_bad_clip="skip", progress=False)
    assert (p.manifest.width == 854).all() and list(p.skipped.clip_id) == ["S009C001P009R001A001"]
    with pytest.raises(DatasetError, match=r"no split 'xsub_test' \(dataset\.pyskl\.splits\.test\); "
                                           r"the file has \['xsub_train', 'xsub_val', 'xview_train'\]"):
        load_pyskl(root, splits={"test": "xsub_test"})
    with pytest.raises(DatasetError, match=r"in both train and test"):
        load_pyskl(root, splits={"test": "xview_train"})


# ---- pickles cannot run code ---------------------------------------------------------------

class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_naming_os_system_is_refused(tmp_path):
    marker = tmp_path / "ran"
    with open(tmp_path / "train_label.pkl", "wb") as f:
        pickle.dump((["a"], [_Evil(marker)]), f)
    np.save(tmp_path / "train_data.npy", np.zeros((1, 3, 2, 25, 1), np.float32))
    with pytest.raises(DatasetError, match=r"train_label\.pkl: not a pickle of plain data "
                                           r"\(UnpicklingError: refused global (os|posix)\.system"):
        load_stgcn(tmp_path)
    with open(tmp_path / "ntu60_hrnet.pkl", "wb") as f:
        pickle.dump({"split": {}, "annotations": [_Evil(marker)]}, f)
    with pytest.raises(DatasetError, match=r"ntu60_hrnet\.pkl: not a pickle of plain data"):
        load_pyskl(tmp_path)
    assert not marker.exists()
    # plain data with numpy arrays and scalars reads back (protocols 2 and 5)
    for proto in (2, 5):
        obj = {"a": [np.arange(3.0), np.int64(4), ("x", 1.5)], "s": np.array(["p", "q"])}
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(obj, protocol=proto))
        back = load_data_pickle(tmp_path / "ok.pkl")
        assert np.array_equal(back["a"][0], np.arange(3.0)) and back["a"][1] == 4


# ---- train: RGB branches without video -----------------------------------------------------

def test_rgb_branch_without_video_stops_with_the_fix(tmp_path, capsys):
    rgb = tmp_path / "rgb.h5"
    with h5py.File(rgb, "w") as f:
        f.attrs.update(frames=8, size=48, has_rgb=False)
    params = {"branches": {"r2plus1d": {"input": str(rgb)}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    spec = importlib.util.spec_from_file_location("stage_train", ROOT / "stages/train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    rc = stage.main(["--branch", "r2plus1d", "--params", str(tmp_path / "params.yaml"),
                     "--interim", str(tmp_path / "nothing-here")])
    err = capsys.readouterr().err
    assert rc == 2
    assert ("train@r2plus1d: error: the dataset has no video" in err
            and "so the RGB branches cannot train; remove them: dvc exp run -S "
                "'~branches.r2plus1d' -S '~branches.swin3d'" in err), err
    assert stage.no_video_problem(tmp_path / "absent.h5") == ""


# ---- the real UTD-MHAD skeletons through the csv adapter -----------------------------------

def test_utd_mhad_files_through_the_csv_adapter(utd_mhad_root, tmp_path):
    """Two real Kinect v1 files converted to a .npy [T, 20, 3] and a row-per-joint .txt read
    with layout kinect_v1 give exactly what the UTD-MHAD adapter gives."""
    from scipy.io import loadmat

    mats = sorted(utd_mhad_root.glob("a*_s*_t*_skeleton.mat"))[:2]
    rows = []
    for mat, suffix in zip(mats, (".npy", ".txt")):
        joints = loadmat(str(mat))["d_skel"].transpose(2, 0, 1)          # [T, 20, 3]
        name = mat.stem + suffix
        if suffix == ".npy":
            np.save(tmp_path / name, joints)
        else:
            (tmp_path / name).write_text("\n".join(" ".join(repr(float(v)) for v in j)
                                                   for j in joints.reshape(-1, 3)))
        rows.append(dict(keypoints=name, subject="s1", label="wave", mat=str(mat)))
    pd.DataFrame(rows).drop(columns="mat").to_csv(tmp_path / "clips.csv", index=False)
    ds = load_csv(tmp_path / "clips.csv", keypoints={"layout": "kinect_v1"})
    for r, cid in zip(rows, ds.table.clip_id):
        assert np.array_equal(ds.keypoints(cid), utd_mhad_keypoints(r["mat"])), r["keypoints"]


# ---- a skeleton-only CSV dataset through the whole pipeline --------------------------------

GESTURES = ("wave_left", "wave_right", "nod")


def moving_skeleton(rng, gesture: str, subject: int, frames: int = 20) -> np.ndarray:
    """A COCO-17 person [T, 17, 3] (x, y pixels in a 320 x 240 frame, score) doing
    ``gesture``: a wrist circling (left or right) or the head nodding, with the subject's own
    position, size and tempo, and keypoint noise."""
    # the subject's left (COCO 1, 3, 5, 7, ...) on the image right, as facing the camera
    coco = np.array([[0, -60], [6, -66], [-6, -66], [12, -62], [-12, -62],       # head
                     [25, -40], [-25, -40], [35, -10], [-35, -10], [38, 20], [-38, 20],
                     [15, 30], [-15, 30], [16, 70], [-16, 70], [16, 100], [-16, 100]], float)
    scale = 0.8 + 0.1 * (subject % 3)
    centre = np.array([160 + 10 * (subject - 3), 120])
    phase = np.arange(frames) * (0.5 + 0.05 * subject)
    pts = np.repeat(coco[None] * scale, frames, 0)
    if gesture == "nod":
        pts[:, :5, 1] += 8 * np.sin(phase)[:, None]
    else:
        wrist, elbow = (9, 7) if gesture == "wave_left" else (10, 8)
        pts[:, wrist] += 18 * np.stack([np.cos(phase), np.sin(phase)], -1)
        pts[:, elbow] += 6 * np.stack([np.cos(phase), np.sin(phase)], -1)
    pts = pts + centre + rng.normal(0, 0.7, pts.shape)
    return np.concatenate([pts, np.full((frames, 17, 1), 0.9)], -1).astype(np.float32)


def write_gesture_dataset(root: Path, subjects: int = 6, clips: int = 4) -> None:
    """subjects x clips keypoint files kp/<subject>_<n>.npy + clips.csv (keypoints, subject,
    label; no video column)."""
    rng = np.random.default_rng(0)
    (root / "kp").mkdir(parents=True)
    rows = []
    for s in range(subjects):
        for n in range(clips):
            gesture = GESTURES[(s + n) % 3]
            np.save(root / "kp" / f"p{s}_{n}.npy", moving_skeleton(rng, gesture, s))
            rows.append(dict(keypoints=f"kp/p{s}_{n}.npy", subject=f"p{s}", label=gesture))
    pd.DataFrame(rows).to_csv(root / "clips.csv", index=False)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


@pytest.mark.slow
def test_skeleton_only_csv_dataset_through_dvc_repro(tmp_path):
    """24 keypoint files (.npy, COCO-17, no video) in a fresh copy of the project: `dvc repro`
    runs prepare -> keypoints -> crop (empty) / heatmaps -> ST-CNN, PoseC3D -> cmpl -> fuse."""
    dst = tmp_path / "proj"
    copy_project(dst)
    write_gesture_dataset(dst / "data/raw/gestures")
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["dataset"].update(name="csv", root="data/raw/gestures")
    params["dataset"]["csv"].update(layout="coco17", fps=15)
    params["split"].update(by="subjects", subjects={"train": ["p0", "p1", "p2", "p3"],
                                                    "val": ["p4"], "test": ["p5"]})
    for b in ("r2plus1d", "swin3d"):
        del params["branches"][b]
    params["branches"]["stcnn"].update(epochs=2, frames=16)
    params["branches"]["posec3d"].update(epochs=1)
    params["heatmaps"].update(frames=8, size=[16, 16])
    params["cmpl"].update(rounds=1, threshold=0.0, min_agree=1)
    params["runtime"].update(crop_workers=1, heatmap_workers=1)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-qm", "gestures")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    p = subprocess.run(["dvc", "repro"], cwd=dst, env=env, capture_output=True, text=True)
    assert p.returncode == 0, f"dvc repro failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    m = pd.read_csv(dst / "data/interim/manifest.csv", keep_default_na=False)
    assert len(m) == 24 and (m.video == "").all() and (m.fps == 15).all()
    assert (m.frames == 20).all() and (m.width > 100).all()           # the keypoints' extent
    with h5py.File(dst / "data/interim/keypoints.h5") as f:
        assert set(f) == set(m.clip_id)
    with h5py.File(dst / "data/processed/rgb.h5") as f:
        assert len(f) == 0 and not f.attrs["has_rgb"]
    with h5py.File(dst / "data/processed/heatmaps.h5") as f:
        assert set(f) == set(m.clip_id)
    metrics = json.loads((dst / "metrics/metrics.json").read_text())
    assert set(metrics["test"]["branch"]) == {"stcnn", "posec3d"}
    assert 0 <= metrics["test"]["fused"]["macro_f1"] <= 1
    assert metrics["cmpl_rounds"] == 1
    pred = pd.read_csv(dst / "metrics/predictions.csv")
    assert len(pred) == 4                                                # p5's clips
