"""Any keypoint dataset in (issue #11): the named source layouts, per-clip keypoint files in
every supported type (npy, npz, csv, txt, json, OpenPose JSON), the 3D projection, the
csv adapter's keypoints column, and bad files (an error naming the file and the param, or a
recorded skip)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from mgpipe import layout, skeletons
from mgpipe.datasets import DatasetError, load_csv, load_dataset, project_kinect
from mgpipe.manifest import build_manifest, keypoint_extent
from mgpipe.params import LAYOUT_NAMES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stages"))
import prepare as prepare_stage  # noqa: E402

I = layout.INDEX
RATIO = {"by": "ratio", "ratio": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 1}


def fmt_of(name: str, **block) -> skeletons.SkeletonFormat:
    return skeletons.skeleton_format({"layout": name, **block}, "dataset.csv")


# ---- layouts -------------------------------------------------------------------------------

def _index_skeleton(joints: int) -> np.ndarray:
    """[J, 3]: x = the source index (to read a mapping back), y = 0, score 1."""
    src = np.zeros((joints, 3), np.float32)
    src[:, 0] = np.arange(joints)
    src[:, 2] = 1
    return src


# our keypoint name -> the source joint it must come from, read off each format's definition
HAND_CHECKS = {
    "kinect_v1": {"nose": 0, "neck": 1, "left_shoulder": 4, "left_elbow": 5, "left_wrist": 6,
                  "left_hand_middle_mcp": 7, "right_shoulder": 8, "right_wrist": 10,
                  "right_hand_middle_mcp": 11, "left_hip": 12, "right_hip": 16},
    "kinect_v2": {"nose": 3, "neck": 20, "left_shoulder": 4, "left_wrist": 6,
                  "left_hand_middle_mcp": 7, "right_shoulder": 8, "right_elbow": 9,
                  "right_wrist": 10, "right_hand_middle_mcp": 11, "left_hip": 12,
                  "right_hip": 16, "left_hand_middle_tip": 21, "left_hand_thumb_tip": 22,
                  "right_hand_middle_tip": 23, "right_hand_thumb_tip": 24},
    "coco17": {"nose": 0, "left_eye": 1, "right_eye": 2, "left_ear": 3, "right_ear": 4,
               "left_shoulder": 5, "right_shoulder": 6, "left_wrist": 9, "right_wrist": 10,
               "left_hip": 11, "right_hip": 12},
    "openpose18": {"nose": 0, "neck": 1, "right_shoulder": 2, "right_wrist": 4,
                   "left_shoulder": 5, "left_elbow": 6, "right_hip": 8, "left_hip": 11,
                   "right_eye": 14, "left_eye": 15, "right_ear": 16, "left_ear": 17},
    "openpose_body25": {"nose": 0, "neck": 1, "right_shoulder": 2, "right_elbow": 3,
                        "left_shoulder": 5, "left_wrist": 7, "right_hip": 9, "left_hip": 12,
                        "right_eye": 15, "left_eye": 16, "right_ear": 17, "left_ear": 18},
    "openpose137": {"left_shoulder": 5, "right_wrist": 4, "left_hand_wrist": 95,
                    "right_hand_pinky_tip": 136, "left_eye_outer": 25 + 45,
                    "right_eye_outer": 25 + 36, "mouth_left": 25 + 54},
    "mediapipe_pose33": {"nose": 0, "left_shoulder": 11, "right_shoulder": 12,
                         "left_hip": 23, "right_hip": 24},
}


def test_registry_covers_every_layout_and_the_params_names():
    assert set(layout.LAYOUTS) == set(LAYOUT_NAMES) == set(HAND_CHECKS)
    assert layout.LAYOUTS["mediapipe_pose33"][0] == 33
    assert layout.LAYOUTS["kinect_v2"][0] == 25 and layout.LAYOUTS["openpose137"][0] == 137
    for name, (joints, table) in layout.LAYOUTS.items():
        assert max(table.values()) < joints and min(table.values()) >= 0, name
        assert all(0 <= k < layout.NUM_KEYPOINTS for k in table), name


@pytest.mark.parametrize("name", sorted(HAND_CHECKS))
def test_layout_maps_sides_and_fills_the_neck(name):
    joints, table = layout.LAYOUTS[name]
    kp = layout.map_keypoints(_index_skeleton(joints)[None], table)[0]
    for ours, source in HAND_CHECKS[name].items():
        assert kp[I[ours], 0] == source and kp[I[ours], 2] == 1, (name, ours)
    assert kp[layout.NECK, 2] > 0, "the neck is filled (mapped or derived)"
    if layout.NECK not in table:  # derived: the shoulders' midpoint
        mid = (kp[I["left_shoulder"], 0] + kp[I["right_shoulder"], 0]) / 2
        assert kp[layout.NECK, 0] == mid
    # every left keypoint mapped has its right twin mapped (no side is half there)
    for a, b in layout.FLIP_PAIRS:
        assert (a in table) == (b in table), (name, layout.NAMES[a])


def test_left_shoulder_lands_on_the_image_right_for_a_person_facing_the_camera():
    """A Kinect v2 person facing the sensor: its left shoulder (x < 0 in camera space, the
    sensor's right) projects to the larger image x, as in an unmirrored frame."""
    joints = np.zeros((1, 25, 3), np.float32)
    joints[..., 2] = 2.0
    joints[0, 4, 0], joints[0, 8, 0] = -0.2, 0.2     # left, right shoulder
    kp, _ = skeletons.to_layout(joints, fmt_of("kinect_v2"), "t")
    assert kp[0, I["left_shoulder"], 0] > kp[0, I["right_shoulder"], 0]


def test_custom_layout_from_our_names():
    table = layout.table_from_names({"left_wrist": 7, "neck": 1, "right_shoulder": 2}, 8)
    assert table == {15: 7, 25: 1, 12: 2}
    with pytest.raises(ValueError, match=r"unknown keypoint name\(s\) \['left_wirst'\]; "
                                         r"valid names: nose, .*left_wrist"):
        layout.table_from_names({"left_wirst": 7})
    with pytest.raises(ValueError, match=r"\{'neck': 9\} out of range.*0\.\.7"):
        layout.table_from_names({"neck": 9}, 8)
    with pytest.raises(DatasetError, match=r"dataset\.csv\.layout_map: unknown keypoint name"):
        fmt_of("custom", layout_map={"elbow": 1})
    with pytest.raises(DatasetError, match=r"dataset\.csv\.layout is not set.*coco17"):
        skeletons.skeleton_format({}, "dataset.csv")


# ---- file types ----------------------------------------------------------------------------

@pytest.fixture
def coco_clip():
    """A 2D COCO-17 clip [T=4, 17, 3] (x, y pixels, score) and what it maps to."""
    rng = np.random.default_rng(0)
    src = rng.uniform(5, 200, (4, 17, 3)).astype(np.float32)
    src[..., 2] = rng.uniform(0.2, 1, (4, 17))
    return src, layout.map_keypoints(src, layout.FROM_COCO17)


def _openpose_frame(people: list[np.ndarray]) -> dict:
    return {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": p.ravel().tolist(),
                                        "face_keypoints_2d": []} for p in people]}


WRITERS = {
    "npy": lambda p, a: np.save(p.with_suffix(".npy"), a),
    "npz_one": lambda p, a: np.savez(p.with_suffix(".npz"), whatever=a),
    "npz_named": lambda p, a: np.savez(p.with_suffix(".npz"), keypoints=a, frame_ids=np.arange(len(a))),
    "csv_joint": lambda p, a: p.with_suffix(".csv").write_text(
        "x,y,score\n" + "\n".join(",".join(repr(float(v)) for v in r) for r in a.reshape(-1, 3))),
    "csv_frame": lambda p, a: p.with_suffix(".csv").write_text(
        ",".join(f"j{j}_{c}" for j in range(17) for c in "xys") + "\n"
        + "\n".join(",".join(repr(float(v)) for v in r) for r in a.reshape(len(a), -1))),
    "txt": lambda p, a: p.with_suffix(".txt").write_text(
        "# x y score\n" + "\n".join(" ".join(repr(float(v)) for v in r) for r in a.reshape(-1, 3))),
    "csv_pandas": lambda p, a: pd.DataFrame(a.reshape(len(a), -1)).to_csv(  # header 0,1,...
        p.with_suffix(".csv"), index=False, float_format="%.9g"),
    "json": lambda p, a: p.with_suffix(".json").write_text(json.dumps(a.tolist())),
    "json_dict": lambda p, a: p.with_suffix(".json").write_text(json.dumps({"keypoints": a.tolist()})),
    "json_rows": lambda p, a: p.with_suffix(".json").write_text(json.dumps(a.reshape(len(a), -1).tolist())),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_file_type_reads_the_same_keypoints(tmp_path, coco_clip, kind):
    src, want = coco_clip
    WRITERS[kind](tmp_path / "clip", src)
    path = next(tmp_path.glob("clip.*"))
    kp = skeletons.read_keypoint_file(path, fmt_of("coco17"))
    assert kp.dtype == np.float32 and kp.shape == (4, 68, 3)
    assert np.allclose(kp, want, atol=1e-4)


def test_openpose_json_frame_list_and_folder(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.uniform(1, 100, (3, 25, 3))
    frames[..., 2] = 0.9
    weak = frames * [1, 1, 0.1]                            # a less confident second person
    objs = [_openpose_frame([weak[t], frames[t]]) for t in range(3)]
    objs[1] = _openpose_frame([])                          # nobody in frame 1
    (tmp_path / "list.json").write_text(json.dumps(objs))
    folder = tmp_path / "clip_openpose"
    folder.mkdir()
    for t, o in enumerate(objs):
        (folder / f"clip_{t:012d}_keypoints.json").write_text(json.dumps(o))
    fmt = fmt_of("openpose_body25")
    want = layout.map_keypoints(frames, layout.FROM_OPENPOSE_BODY25)
    want[1] = 0
    for path in (tmp_path / "list.json", folder):
        kp = skeletons.read_keypoint_file(path, fmt)
        assert np.allclose(kp, want, atol=1e-5), path
    (tmp_path / "one.json").write_text(json.dumps(objs[0]))
    assert skeletons.read_keypoint_file(tmp_path / "one.json", fmt).shape == (1, 68, 3)


def test_openpose137_json_reads_face_and_hands(tmp_path):
    person = {k: (np.arange(n * 3) % 7 + 1.0).tolist() for k, n in (
        ("pose_keypoints_2d", 25), ("face_keypoints_2d", 70),
        ("hand_left_keypoints_2d", 21), ("hand_right_keypoints_2d", 21))}
    (tmp_path / "f.json").write_text(json.dumps({"people": [person]}))
    kp = skeletons.read_keypoint_file(tmp_path / "f.json", fmt_of("openpose137"))
    assert kp.shape == (1, 68, 3) and (kp[0, layout.LEFT_HAND:, 2] > 0).all()


def test_channels_auto_and_explicit(tmp_path):
    xy = np.array([[[10, 20], [0, 0], [np.nan, 5]] + [[30, 40]] * 14], np.float32)  # [1, 17, 2]
    kp, ch = skeletons.to_layout(xy, fmt_of("coco17"), "t")
    assert ch == "xy"
    assert kp[0, I["nose"]].tolist() == [10, 20, 1]
    assert kp[0, I["left_eye"]].tolist() == [0, 0, 0]        # (0, 0): unseen
    assert kp[0, I["right_eye"]].tolist() == [0, 0, 0]       # NaN: unseen
    three = np.ones((2, 20, 3), np.float32)
    three[..., 2] = 2.0
    assert skeletons.to_layout(three, fmt_of("kinect_v1"), "t")[1] == "xyz"
    assert skeletons.to_layout(three[:, :17], fmt_of("coco17"), "t")[1] == "xy_score"
    assert skeletons.to_layout(np.ones((2, 17, 4), np.float32), fmt_of("coco17"), "t")[1] == "xyz_score"
    assert skeletons.to_layout(three, fmt_of("kinect_v1", channels="xy_score"), "t")[1] == "xy_score"
    with pytest.raises(DatasetError, match=r"t: 3 values per joint, but dataset\.csv\.channels is xyz_score"):
        skeletons.to_layout(three, fmt_of("kinect_v1", channels="xyz_score"), "t")


def test_3d_projection_is_project_kinect(tmp_path):
    rng = np.random.default_rng(2)
    joints = np.stack([rng.uniform(-0.8, 0.8, (6, 20)), rng.uniform(-0.6, 0.6, (6, 20)),
                       rng.uniform(1.5, 3.5, (6, 20))], -1).astype(np.float32)
    joints[0, 3] = 0                                     # a lost joint: (0, 0, 0)
    joints[1, 5, 0] = 9.0                                # far outside the frame
    np.save(tmp_path / "k.npy", joints)
    cam = {"width": 320, "height": 240, "focal": 300.0}
    kp = skeletons.read_keypoint_file(tmp_path / "k.npy", fmt_of("kinect_v1", camera=cam))
    uv = project_kinect(joints, 320, 240, 300.0)
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < 320) & (uv[..., 1] >= 0) & (uv[..., 1] < 240)
    inside[0, 3] = False
    src = np.concatenate([uv, inside[..., None].astype(np.float32)], -1)
    want = layout.map_keypoints(src, layout.FROM_KINECT20)
    want[..., :2] *= want[..., 2:3] > 0
    assert np.array_equal(kp, want)
    assert kp[1, I["left_elbow"]].tolist() == [0, 0, 0]     # source joint 5: outside


def test_rows_auto_rule_and_its_ambiguity(tmp_path):
    table = np.arange(24, dtype=float).reshape(6, 4) + 10   # 6 rows of 4 values
    np.savetxt(tmp_path / "t.txt", table)
    two = fmt_of("custom", layout_map={"left_wrist": 0, "right_wrist": 1}, joints=2)
    with pytest.raises(DatasetError, match=r"t\.txt: 6 rows of 4 values fit both .* set "
                                           r"dataset\.csv\.rows to joint or frame"):
        skeletons.read_frames(tmp_path / "t.txt", two)
    by_joint = skeletons.read_frames(tmp_path / "t.txt", fmt_of(
        "custom", layout_map={"left_wrist": 0, "right_wrist": 1}, joints=2, rows="joint"))
    by_frame = skeletons.read_frames(tmp_path / "t.txt", fmt_of(
        "custom", layout_map={"left_wrist": 0, "right_wrist": 1}, joints=2, rows="frame"))
    assert by_joint.shape == (3, 2, 4) and by_frame.shape == (6, 2, 2)
    with pytest.raises(DatasetError, match=r"dataset\.csv\.joints"):
        skeletons.read_frames(tmp_path / "t.txt", fmt_of("custom", layout_map={"nose": 0}))


# ---- bad files -----------------------------------------------------------------------------

BAD = {
    "joint_count_npy": (lambda p: np.save(p / "c.npy", np.ones((3, 18, 3), np.float32)),
                        r"c\.npy: 18 joints per frame .* expects 17; set dataset\.csv\.layout"),
    "joint_count_txt": (lambda p: np.savetxt(p / "c.txt", np.ones((3 * 16, 3))),
                        r"c\.txt: 48 rows of 3 values fit no reading for layout coco17 .* "
                        r"dataset\.csv\.layout"),
    "empty_file": (lambda p: (p / "c.csv").write_text(""), r"c\.csv: empty file"),
    "header_only": (lambda p: (p / "c.csv").write_text("x,y,score\n"), r"c\.csv: no rows of numbers"),
    "empty_array": (lambda p: np.save(p / "c.npy", np.zeros((0, 17, 3))), r"c\.npy: empty array"),
    "nan_only": (lambda p: np.save(p / "c.npy", np.full((4, 17, 3), np.nan)),
                 r"c\.npy: every value is NaN"),
    "not_a_number": (lambda p: (p / "c.txt").write_text("1 2 3\n" * 17 + "1 two 3\n" + "1 2 3\n" * 16),
                     r"c\.txt: line 18: 'two' is not a number"),
    "ragged_text": (lambda p: (p / "c.txt").write_text("5 6 7\n1 2\n"),
                    r"c\.txt: line 2 has 2 values, line 1 has 3.*dataset\.csv\.rows"),
    "bad_json": (lambda p: (p / "c.json").write_text("[[1, 2, 3], "), r"c\.json: not valid JSON"),
    "ragged_json": (lambda p: (p / "c.json").write_text("[[[1, 2, 3]], [[1, 2]]]"),
                    r"c\.json: frames are ragged"),
    "garbage_npy": (lambda p: (p / "c.npy").write_bytes(b"\x93NUMPY garbage"),
                    r"c\.npy: cannot read as a \.npy array"),
    "wrong_dims": (lambda p: np.save(p / "c.npy", np.ones((2, 3, 17, 3))),
                   r"c\.npy: 4 dimensions \(shape \(2, 3, 17, 3\)\), expected \[T, J, C\]"),
    "npz_which": (lambda p: np.savez(p / "c.npz", a=np.ones((2, 17, 3)), b=np.ones(2)),
                  r"c\.npz: 2 arrays \['a', 'b'\] and none named 'keypoints'; set dataset\.csv\.npz_key"),
    "channels": (lambda p: np.save(p / "c.npy", np.ones((2, 17, 5))),
                 r"c\.npy: 5 values per joint, expected 2 .* dataset\.csv\.channels"),
    "suffix": (lambda p: (p / "c.pose").write_text("1"), r"c\.pose: unknown keypoints file type"),
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_file_names_the_file_what_and_the_param(tmp_path, bad):
    write, message = BAD[bad]
    write(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(DatasetError, match=message):
        skeletons.read_keypoint_file(path, fmt_of("coco17"))


def test_npz_key_picks_the_array(tmp_path):
    np.savez(tmp_path / "c.npz", a=np.ones((2, 17, 3)), pose=np.full((3, 17, 3), 5.0))
    assert skeletons.read_frames(tmp_path / "c.npz", fmt_of("coco17", npz_key="pose")).shape == (3, 17, 3)
    with pytest.raises(DatasetError, match=r"no array 'kp' \(dataset\.csv\.npz_key\); the archive holds"):
        skeletons.read_frames(tmp_path / "c.npz", fmt_of("coco17", npz_key="kp"))


# ---- the csv adapter's keypoints column ----------------------------------------------------

def write_skeleton_csv(root: Path, clips: int = 2, subjects: int = 6, frames: int = 8,
                       three_d: bool = False) -> list[dict]:
    """Keypoints-only CSV dataset: subjects x clips .npy files (COCO-17 pixels, or Kinect v1
    metres with ``three_d``), 3 classes, clips.csv with a keypoints column and no video."""
    rng = np.random.default_rng(3)
    rows = []
    (root / "kp").mkdir(parents=True, exist_ok=True)
    for s in range(subjects):
        for c in range(clips):
            if three_d:
                a = np.stack([rng.uniform(-0.5, 0.5, (frames, 20)), rng.uniform(-0.5, 0.5, (frames, 20)),
                              rng.uniform(2, 3, (frames, 20))], -1)
            else:
                a = rng.uniform(10, 90, (frames, 17, 3))
                a[..., 2] = 1
            np.save(root / "kp" / f"s{s}_c{c}.npy", a.astype(np.float32))
            rows.append(dict(keypoints=f"kp/s{s}_c{c}.npy", subject=f"p{s}",
                             label=["nod", "shrug", "scratch"][(s + c) % 3]))
    pd.DataFrame(rows).to_csv(root / "clips.csv", index=False)
    return rows


def test_keypoints_only_csv_dataset(tmp_path):
    write_skeleton_csv(tmp_path)
    ds = load_csv(tmp_path / "clips.csv", keypoints={"layout": "coco17", "fps": 12})
    assert (ds.table.video == "").all() and list(ds.table.clip_id[:2]) == ["s0_c0", "s0_c1"]
    got = {}
    p = build_manifest(ds, RATIO, progress=False, on_keypoints=lambda c, kp: got.setdefault(c, kp))
    m = p.manifest
    assert len(m) == 12 and (m.frames == 8).all() and (m.fps == 12).all()
    want = np.load(tmp_path / "kp/s0_c0.npy")
    assert np.allclose(got["s0_c0"], layout.map_keypoints(want, layout.FROM_COCO17), atol=1e-5)
    row = m.set_index("clip_id").loc["s0_c0"]        # 2D, no frame_size: the extent
    assert (row.width, row.height) == keypoint_extent(got["s0_c0"])
    assert row.width <= 91 and row.height <= 91
    ds = load_csv(tmp_path / "clips.csv", keypoints={"layout": "coco17", "frame_size": [320, 200]})
    m = build_manifest(ds, RATIO, progress=False).manifest
    assert (m.width == 320).all() and (m.height == 200).all()


def test_3d_keypoints_take_the_camera_frame(tmp_path):
    write_skeleton_csv(tmp_path, three_d=True)
    ds = load_dataset({"name": "csv", "root": str(tmp_path), "csv": {
        "layout": "kinect_v1", "camera": {"width": 320, "height": 240, "focal": 200.0}}})
    m = build_manifest(ds, RATIO, progress=False).manifest
    assert (m.width == 320).all() and (m.height == 240).all()


def test_keypoints_column_renamed_and_frame_ranges_cut_the_file(tmp_path):
    rows = write_skeleton_csv(tmp_path, frames=10)
    for r in rows:
        r.update(pose=r.pop("keypoints"), start_frame="", end_frame="")
    rows[0].update(start_frame="2", end_frame="6")
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    ds = load_csv(tmp_path / "clips.csv", columns={"keypoints": "pose"}, keypoints={"layout": "coco17"})
    got = {}
    m = build_manifest(ds, RATIO, progress=False, on_keypoints=lambda c, kp: got.setdefault(c, kp)).manifest
    assert m.set_index("clip_id").loc["s0_c0"].frames == 4 and len(got["s0_c0"]) == 4
    full = layout.map_keypoints(np.load(tmp_path / "kp/s0_c0.npy"), layout.FROM_COCO17)
    assert np.allclose(got["s0_c0"], full[2:6], atol=1e-5)


def test_video_and_keypoints_rows(tmp_path):
    rows = write_skeleton_csv(tmp_path, frames=6)
    for r in rows:
        video = tmp_path / "videos" / (Path(r["keypoints"]).stem + ".mp4")
        video.parent.mkdir(exist_ok=True)
        vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25, (64, 48))
        for i in range(6):
            vw.write(np.full((48, 64, 3), 30 * i, np.uint8))
        vw.release()
        r["video"] = f"videos/{video.name}"
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    ds = load_csv(tmp_path / "clips.csv", keypoints={"layout": "coco17"})
    m = build_manifest(ds, RATIO, progress=False).manifest
    assert (m.video != "").all() and (m.width == 64).all() and (m.fps == 25).all()
    assert (m.frames == 6).all()


def test_keypoint_paths_must_stay_inside_and_every_row_needs_its_file(tmp_path):
    rows = write_skeleton_csv(tmp_path / "data")
    np.save(tmp_path / "outside.npy", np.ones((8, 17, 3), np.float32))
    rows[1]["keypoints"] = "../outside.npy"
    rows[2]["keypoints"] = ""
    pd.DataFrame(rows).to_csv(tmp_path / "data/clips.csv", index=False)
    ds = load_csv(tmp_path / "data/clips.csv", keypoints={"layout": "coco17"})
    assert "keypoints path '../outside.npy' escapes the dataset root" in ds.table.problem[1]
    assert "every clip needs its keypoints file" in ds.table.problem[2]
    with pytest.raises(DatasetError, match=r"dataset\.csv\.layout is not set"):
        load_csv(tmp_path / "data/clips.csv")


def test_bad_keypoint_file_stops_prepare_or_is_a_recorded_skip(tmp_path):
    root = tmp_path / "data"
    write_skeleton_csv(root)
    np.save(root / "kp/s1_c0.npy", np.ones((8, 18, 3), np.float32))       # wrong joint count
    (root / "kp/s2_c1.npy").write_bytes(b"")                              # empty
    cfg = {"name": "csv", "root": str(root), "csv": {"layout": "coco17"}}
    params = {"dataset": cfg, "split": RATIO, "prepare": {"on_bad_clip": "error"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(DatasetError, match=r"clips\.csv:4: clip 's1_c0': cannot read the dataset's "
                                           r"keypoints: .*s1_c0\.npy: 18 joints per frame.*"
                                           r"dataset\.csv\.layout.*on_bad_clip: skip"):
        build_manifest(load_dataset(cfg), RATIO, progress=False)
    assert prepare_stage.main(["--params", str(tmp_path / "params.yaml"), "--out",
                               str(tmp_path / "interim")]) == 2
    params["prepare"]["on_bad_clip"] = "skip"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert prepare_stage.main(["--params", str(tmp_path / "params.yaml"), "--out",
                               str(tmp_path / "interim")]) == 0
    skipped = pd.read_csv(tmp_path / "interim/skipped.csv")
    assert list(skipped.clip_id) == ["s1_c0", "s2_c1"]
    assert re.search(r"s1_c0\.npy: 18 joints", skipped.reason[0])
    assert re.search(r"s2_c1\.npy: empty file", skipped.reason[1])
    m = pd.read_csv(tmp_path / "interim/manifest.csv")
    assert len(m) == 10
    import h5py
    with h5py.File(tmp_path / "interim/provided_keypoints.h5") as f:
        assert f.attrs["has_keypoints"] and set(f) == set(m.clip_id)
