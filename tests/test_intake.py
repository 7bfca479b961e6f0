"""Checks at dataset intake (issue #9): CSV frame ranges, clip ids, subjects, truncated videos,
classes unseen in train, no absolute paths in the outputs, hints that name real params, and
non-finite provided keypoints."""
from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

import mgpipe.manifest
import mgpipe.video
from mgpipe.datasets import DatasetError, load_csv, load_dataset, load_imigue, load_synth
from mgpipe.manifest import build_manifest
from mgpipe.synth import read_video
from mgpipe.video import probe_video

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "stages"))
import prepare as prepare_stage  # noqa: E402

RATIO = {"by": "ratio", "ratio": {"train": 0.5, "val": 0.25, "test": 0.25}, "seed": 1}
CLASSES = ["nod", "scratch", "shrug"]


def write_video(path: Path, frames: int = 6, size=(32, 24), fourcc="mp4v") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, size)
    rng = np.random.default_rng(frames)
    for _ in range(frames):  # noise: every frame costs bytes, so a cut file loses frames
        vw.write(rng.integers(0, 255, (size[1], size[0], 3), np.uint8))
    vw.release()
    return path


def truncate(src: Path, dst: Path, keep: float = 0.55) -> Path:
    """A copy of ``src`` cut after ``keep`` of its bytes (an interrupted download or copy)."""
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * keep)])
    return dst


def count_by_decoding(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def header_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


@pytest.fixture
def csv_root(tmp_path):
    """6 subjects x 2 clips (6-frame videos), 3 classes; returns (root, rows)."""
    root = tmp_path / "data"
    rows = []
    for s in range(6):
        for c in range(2):
            name = f"videos/s{s}_c{c}.mp4"
            write_video(root / name)
            rows.append(dict(video=name, subject=f"p{s}", label=CLASSES[(s + c) % 3]))
    return root, rows


def write_csv(root: Path, rows, name="clips.csv") -> Path:
    p = root / name
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def assert_clip_problem(root: Path, rows, expect: str, row: int = 5):
    """Row ``row`` of clips.csv is a per-clip problem: an error naming file:row and ``expect``
    with on_bad_clip=error, one skipped row with on_bad_clip=skip."""
    ds = load_csv(write_csv(root, rows), classes=CLASSES)
    with pytest.raises(DatasetError, match=rf"clips.csv:{row}: clip .*{expect}"):
        build_manifest(ds, RATIO, progress=False)
    p = build_manifest(ds, RATIO, on_bad_clip="skip", progress=False)
    assert len(p.manifest) == len(rows) - 1
    assert list(p.skipped.origin) == [f"{root / 'clips.csv'}:{row}"]
    assert p.skipped.reason.str.contains(expect).all()


# ---- 1. per-clip problems --------------------------------------------------------------------

@pytest.mark.parametrize("start, end, expect", [
    ("15", "5", r"end_frame 5 .*after start_frame 15"),
    ("3", "3", r"end_frame 3 .*after start_frame 3"),
    ("200", "", r"start_frame 200 is beyond .*6 frames"),
    ("6", "", r"start_frame 6 is beyond .*6 frames"),
    ("-3", "", r"start_frame '-3' is negative"),
    ("", "-2", r"end_frame '-2' is negative"),
    ("", "-1", r"end_frame '-1' is negative.*leave the cell empty"),
    ("abc", "", r"start_frame 'abc' is not a whole number"),
    ("1", "2.5", r"end_frame '2.5' is not a whole number"),
])
def test_csv_bad_frame_range(csv_root, start, end, expect):
    root, rows = csv_root
    for r in rows:
        r["start_frame"], r["end_frame"] = "", ""
    rows[3]["start_frame"], rows[3]["end_frame"] = start, end
    assert_clip_problem(root, rows, expect)


def test_csv_good_frame_range(csv_root):
    root, rows = csv_root
    for r in rows:
        r["start_frame"], r["end_frame"] = "", ""
    rows[3]["start_frame"], rows[3]["end_frame"] = "1", "5"
    m = build_manifest(load_csv(write_csv(root, rows)), RATIO, progress=False).manifest
    assert (m.frames == 6).sum() == 11 and m.set_index("clip_id").loc["s1_c1", "frames"] == 4


@pytest.mark.parametrize("clip_id, expect", [
    ("a/b", r"clip id 'a/b' contains '/'"),
    (".", r"clip id '\.' cannot name"),
    ("..", r"clip id '\.\.' cannot name"),
    ("a\tb", r"clip id 'a\\tb' contains a control character"),
])
def test_bad_clip_id(csv_root, clip_id, expect):
    root, rows = csv_root
    rows[3]["clip_id"] = clip_id
    assert_clip_problem(root, rows, expect)


def test_empty_clip_id_from_any_adapter(csv_root):
    """build_manifest checks ids whatever the adapter (here: a table edited after loading)."""
    root, rows = csv_root
    ds = load_csv(write_csv(root, rows))
    ds.table.loc[3, "clip_id"] = ""
    with pytest.raises(DatasetError, match=r"clips.csv:5: clip '': empty clip id"):
        build_manifest(ds, RATIO, progress=False)
    p = build_manifest(ds, RATIO, on_bad_clip="skip", progress=False)
    assert len(p.manifest) == 11 and list(p.skipped.reason.str[:13]) == ["empty clip id"]


def test_empty_subject(csv_root):
    root, rows = csv_root
    rows[3]["subject"] = "  "
    assert_clip_problem(root, rows, "empty subject")


@pytest.mark.parametrize("packet_count_max", [3000, 0])  # short video: packets; long: seek
def test_probe_finds_decodable_frames_of_truncated_video(tmp_path, monkeypatch, packet_count_max):
    monkeypatch.setattr(mgpipe.video, "PACKET_COUNT_MAX_FRAMES", packet_count_max)
    full = write_video(tmp_path / "full.avi", frames=60, size=(64, 48), fourcc="MJPG")
    cut = truncate(full, tmp_path / "cut.avi")
    assert header_frames(cut) == 60  # the header still claims every frame ...
    real = count_by_decoding(cut)
    assert 0 < real < 60              # ... but only part of them decode
    assert probe_video(full).frames == 60
    v = probe_video(cut)
    assert (v.frames, v.header_frames) == (real, 60)


def test_clip_beyond_decodable_frames(tmp_path, csv_root):
    root, rows = csv_root
    full = write_video(tmp_path / "full.avi", frames=60, size=(64, 48), fourcc="MJPG")
    truncate(full, root / "videos" / "cut.avi")
    real = count_by_decoding(root / "videos" / "cut.avi")
    rows[3].update(video="videos/cut.avi", start_frame="0", end_frame="60")
    assert_clip_problem(root, rows,
                        rf"cut.avi.*frames 0\.\.59 .*only {real} decode.*header claims 60")
    rows[3].update(end_frame="")  # the whole video: as many frames as decode
    m = build_manifest(load_csv(write_csv(root, rows)), RATIO, progress=False).manifest
    assert m.set_index("clip_id").loc["cut", "frames"] == real


def test_each_video_probed_once(tmp_path, monkeypatch):
    """Many clips of one long video (as in iMiGUE) probe that video once."""
    root = tmp_path / "data"
    rows = []
    for s in range(6):
        write_video(root / f"videos/long{s}.mp4", frames=9)
        rows += [dict(video=f"videos/long{s}.mp4", subject=f"p{s}", label=CLASSES[k],
                      clip_id=f"long{s}_{k}", start_frame=3 * k, end_frame=3 * k + 3)
                 for k in range(3)]
    calls = []
    real_probe = mgpipe.manifest.probe_video
    monkeypatch.setattr(mgpipe.manifest, "probe_video", lambda p: calls.append(p) or real_probe(p))
    m = build_manifest(load_csv(write_csv(root, rows)), RATIO, progress=False).manifest
    assert len(m) == 18 and (m.frames == 3).all()
    assert sorted(calls) == sorted({os.path.normpath(root / r["video"]) for r in rows})


def test_probe_real_clips(shared_media, tmp_path):
    """probe_video's count equals the decodable count on real clips and on a truncated copy;
    on intact clips it seeks to the last frame rather than decoding them all."""
    clips = sorted(p for p in shared_media.iterdir() if p.suffix in (".mp4", ".avi"))
    assert clips
    for clip in clips:
        assert probe_video(clip).frames == count_by_decoding(clip) == header_frames(clip), clip
    frames = read_video(shared_media / "makeup-upper-body.avi")
    full = tmp_path / "makeup-mjpg.avi"
    vw = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 25, frames[0].shape[1::-1])
    for f in frames:
        vw.write(f)
    vw.release()
    cut = truncate(full, tmp_path / "makeup-cut.avi")
    v = probe_video(cut)
    assert v.header_frames == len(frames) == 164 and v.frames == count_by_decoding(cut) < 164


@pytest.mark.parametrize("packet_count_max", [3000, 0])  # short video: packets; long: seek
def test_probe_decodes_few_frames_of_an_intact_video(tmp_path, monkeypatch, packet_count_max):
    """Normal case: the header's count is confirmed without decoding every frame."""
    video = write_video(tmp_path / "v.avi", frames=400, size=(32, 24), fourcc="MJPG")
    monkeypatch.setattr(mgpipe.video, "PACKET_COUNT_MAX_FRAMES", packet_count_max)
    decodes = []
    real_capture = cv2.VideoCapture

    class Counting:  # cv2.VideoCapture, counting the frames it decodes
        def __init__(self, *args):
            self._cap, self._raw = real_capture(*args), False

        def set(self, prop, value):
            self._raw |= (prop, value) == (cv2.CAP_PROP_FORMAT, -1)  # packets, not frames
            return self._cap.set(prop, value)

        def grab(self):
            decodes.append(not self._raw)
            return self._cap.grab()

        def read(self, *args):
            decodes.append(not self._raw)
            return self._cap.read(*args)

        def __getattr__(self, name):
            return getattr(self._cap, name)

    monkeypatch.setattr(mgpipe.video.cv2, "VideoCapture", Counting)
    v = probe_video(video)
    assert (v.frames, v.header_frames) == (400, 400)
    assert sum(decodes) <= 3


def test_class_missing_from_train_warns(csv_root, tmp_path, capsys):
    root, rows = csv_root
    labels = {"p4": ["scratch", "nod"], "p5": ["scratch", "scratch"]}
    for r in rows:  # scratch only for p4 (val, 1 clip) and p5 (test, 2 clips)
        r["label"] = labels.get(r["subject"], ["nod", "shrug"])[int(r["video"][-5])]
    write_csv(root, rows)
    split = {"by": "subjects",
             "subjects": {"train": ["p0", "p1", "p2", "p3"], "val": ["p4"], "test": ["p5"]}}
    p = build_manifest(load_csv(root / "clips.csv"), split, progress=False)
    assert len(p.warnings) == 1
    assert "'scratch'" in p.warnings[0] and "val 1" in p.warnings[0] and "test 2" in p.warnings[0]
    rc, out = _run_stage(tmp_path, {"name": "csv", "root": str(root), "csv": {"file": "clips.csv"}},
                         split)
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning" in err and "'scratch' has no training clip" in err
    # the default split of a balanced dataset warns about nothing
    for r in rows:
        r["label"] = CLASSES[int(r["subject"][1:]) % 3]
    split["subjects"] = {"train": ["p0", "p1", "p2"], "val": ["p3"], "test": ["p4", "p5"]}
    assert build_manifest(load_csv(write_csv(root, rows)), split, progress=False).warnings == []


# ---- 2. no absolute paths in the outputs ---------------------------------------------------

def _run_stage(tmp_path, dataset: dict, split: dict, on_bad_clip="error", out=None):
    out = tmp_path / "interim" if out is None else out
    params = {"dataset": dataset, "split": split, "prepare": {"on_bad_clip": on_bad_clip}}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    rc = prepare_stage.main(["--params", str(pfile), "--out", str(out)])
    return rc, Path(out)


def test_csv_outputs_hold_no_absolute_path(csv_root, tmp_path, monkeypatch):
    root, rows = csv_root
    rows[0]["video"] = "videos/missing.mp4"  # a skipped row: its origin must be relative too
    rows[1]["video"] = "videos/../videos/s0_c1.mp4"
    write_csv(root, rows)
    monkeypatch.chdir(tmp_path)
    rc, out = _run_stage(tmp_path, {"name": "csv", "root": "data", "csv": {"file": "clips.csv"}},
                         RATIO, "skip", out="interim")
    assert rc == 0
    m = pd.read_csv(out / "manifest.csv")
    kept = {f"data/videos/s{s}_c{c}.mp4" for s in range(6) for c in range(2)}
    assert set(m.video) == kept - {"data/videos/s0_c0.mp4"}
    for f in out.iterdir():
        if f.suffix in (".csv", ".json"):
            assert str(tmp_path) not in f.read_text(), f
    # an absolute dataset.root stays absolute (the user's choice)
    ds = load_dataset({"name": "csv", "root": str(root), "csv": {"file": "clips.csv"}})
    assert all(Path(v).is_absolute() for v in ds.table.video)
    # the escape check still works on relative roots
    write_video(tmp_path / "outside.mp4")
    rows[3]["video"] = "../outside.mp4"
    write_csv(root, rows)
    ds = load_dataset({"name": "csv", "root": "data", "csv": {"file": "clips.csv"}})
    assert "escapes the dataset root" in ds.table.problem[3]


def write_synth_format(root: Path, frames: int = 5) -> Path:
    """A tiny dataset in the synth stage's format: 4 subjects (train, train, val, test) x 2
    clips, keypoints [frames, 68, 3] per clip."""
    rng = np.random.default_rng(0)
    rows = []
    for s, split in enumerate(["train", "train", "val", "test"]):
        for c in range(2):
            cid = f"s{s}_c{c}"
            write_video(root / "videos" / f"{cid}.mp4", frames=frames)
            kp = rng.uniform(1, 30, (frames, 68, 3)).astype(np.float32)
            kp[..., 2] = 0.9
            (root / "keypoints").mkdir(exist_ok=True)
            np.save(root / "keypoints" / f"{cid}.npy", kp)
            rows.append(dict(clip_id=cid, subject=f"p{s}", label=["a", "b"][c], split=split,
                             video=f"videos/{cid}.mp4"))
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    (root / "classes.json").write_text(json.dumps(["a", "b"]))
    return root


def test_synth_and_imigue_videos_are_relative(tmp_path, monkeypatch):
    write_synth_format(tmp_path / "synth")
    from test_prepare import write_imigue_fixture
    write_imigue_fixture(tmp_path / "imigue")
    monkeypatch.chdir(tmp_path)
    assert set(load_synth("synth").table.video) == {f"synth/videos/s{s}_c{c}.mp4"
                                                    for s in range(4) for c in range(2)}
    assert set(load_synth("./synth/").table.video) == set(load_synth("synth").table.video)
    assert set(load_imigue("imigue", frame_column="frame").table.video) == {
        f"imigue/{v}/{v}.mp4" for v in ("v01", "v02", "v03")}
    assert all(Path(v).is_absolute() for v in load_synth(tmp_path / "synth").table.video)


# ---- 3. hints name params that exist ---------------------------------------------------------

def _param_paths(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield f"{prefix}{k}"
            yield from _param_paths(v, f"{prefix}{k}.")


def _strings(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def test_hints_name_real_params():
    import re
    params = set(_param_paths(yaml.safe_load((ROOT / "params.yaml").read_text())))
    named = set()
    for f in ("mgpipe/datasets.py", "mgpipe/manifest.py", "mgpipe/video.py", "stages/prepare.py"):
        for s in _strings(ROOT / f):
            named |= {m.group(0).rstrip(".") for m in
                      re.finditer(r"\b(?:dataset|split|prepare)\.[a-z_]+(?:\.[a-z_]+)*", s)}
    assert named, "no param named in any message?"
    assert sorted(named - params) == []


def test_missing_csv_names_the_params(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset.root .*dataset.csv.file"):
        load_dataset({"name": "csv", "root": str(tmp_path), "csv": {"file": "nope.csv"}})


# ---- 4. non-finite provided keypoints --------------------------------------------------------

def test_non_finite_provided_keypoints_are_cleaned(tmp_path, capsys):
    root = write_synth_format(tmp_path / "synth")
    kp = np.load(root / "keypoints" / "s0_c0.npy")
    kp[0, 3, 0] = np.nan
    kp[2, 40, 2] = np.inf
    np.save(root / "keypoints" / "s0_c0.npy", kp)
    kp2 = np.load(root / "keypoints" / "s2_c1.npy")
    kp2[4, 60, 1] = -np.inf
    np.save(root / "keypoints" / "s2_c1.npy", kp2)
    rc, out = _run_stage(tmp_path, {"name": "synth", "root": str(root)}, {"by": "dataset"})
    assert rc == 0
    with h5py.File(out / "provided_keypoints.h5") as h5:
        assert len(h5) == 8 and all(np.isfinite(h5[f"{c}/kp"][()]).all() for c in h5)
        got = h5["s0_c0/kp"][()]
        got2 = h5["s2_c1/kp"][()]
    assert (got[0, 3] == 0).all() and (got[2, 40] == 0).all() and (got2[4, 60] == 0).all()
    keep = np.ones(kp.shape[:2], bool)
    keep[0, 3] = keep[2, 40] = False
    assert np.array_equal(got[keep], kp[keep])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "non-finite" in ln]
    assert len(lines) == 1 and "3 non-finite keypoints" in lines[0] and "2 clips" in lines[0]



def test_skipped_test_clip_is_still_scored(csv_root, tmp_path):
    """A test clip prepare skips keeps its hidden label, so the evaluation counts it (as
    wrong) instead of dropping it: a challenge scores every test clip."""
    from mgpipe.evaluate import evaluate_rounds

    root, rows = csv_root
    split = {"by": "subjects", "subjects": {"train": ["p0", "p1", "p2"], "val": ["p3"],
                                            "test": ["p4", "p5"]}}
    (root / rows[8]["video"]).write_bytes(b"not a video")  # p4's first clip
    ds = load_csv(write_csv(root, rows), classes=CLASSES)
    p = build_manifest(ds, split, on_bad_clip="skip", progress=False)
    lost = Path(rows[8]["video"]).stem
    assert list(p.skipped.clip_id) == [lost] and lost not in set(p.manifest.clip_id)
    assert lost in set(p.test_labels.clip_id) and len(p.test_labels) == 4
    labels = tmp_path / "test_labels.csv"
    p.test_labels.to_csv(labels, index=False)
    test_ids = list(p.manifest[p.manifest.split == "test"].clip_id)
    val_ids = list(p.manifest[p.manifest.split == "val"].clip_id)
    truth = {c: CLASSES.index(x) for c, x in zip(p.test_labels.clip_id, p.test_labels.label)}
    perfect = np.eye(3)[[truth[c] for c in test_ids]] * 10  # right on every clip it has
    val_truth = [CLASSES.index(x) for x in p.manifest.set_index("clip_id").loc[val_ids].label]
    npz = tmp_path / "logits.npz"
    np.savez(npz, val_ids=np.array(val_ids), val_logits=np.eye(3)[val_truth] * 10,
             test_ids=np.array(test_ids), test_logits=perfect)
    res, _, ids = evaluate_rounds({"logits": {"0": {"stcnn": str(npz)}}}, p.manifest, CLASSES,
                                  labels, tmp_path)
    assert ids[-1] == lost and len(ids) == 4
    assert res[0]["test"]["fused"]["micro_f1"] == 0.75 and res[0]["test"]["fused"]["unpredicted"] == 1
