"""`mgpipe predict`: the model bundle the fuse stage writes, its checks, the top-5 table,
inputs, bad inputs, and (slow) the trained pipeline's own test predictions reproduced from a
fresh project without DVC."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import copy_project, edit_params

from mgpipe import bundle as bundle_mod
from mgpipe.bundle import BundleError, read_bundle, write_bundle
from mgpipe.params import validate_params
from mgpipe.predict import Clip, keypoint_format, main, read_inputs, top_k_table

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b", "c", "d", "e", "f"]


def test_modalities_match_the_data_module():
    from mgpipe.data import MODALITY_OF
    assert bundle_mod.MODALITY_OF == MODALITY_OF


# ---- the top-5 table -------------------------------------------------------------------------

def test_top_k_table_orders_rounds_and_leaves_missing_rows_empty():
    clips = [Clip("c1", "v/c1.mp4"), Clip("c2", "")]
    fused = np.array([[0.05, 0.4, 0.1, 0.2, 0.15, 0.1],
                      [0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])
    stcnn = np.array([[1 / 3, 1 / 3, 1 / 3, 0, 0, 0], [np.nan] * 6])
    t = top_k_table(clips, {"fused": fused, "stcnn": stcnn}, CLASSES)
    assert list(t.columns[:4]) == ["clip", "video", "fused_1", "fused_p1"]
    assert list(t.columns[-2:]) == ["stcnn_5", "stcnn_p5"] and len(t.columns) == 2 + 2 * 2 * 5
    row = t.iloc[0]
    assert [row[f"fused_{j}"] for j in range(1, 6)] == ["b", "d", "e", "c", "f"]  # tie c/f: c first
    assert [row[f"fused_p{j}"] for j in range(1, 6)] == [0.4, 0.2, 0.15, 0.1, 0.1]
    assert row["stcnn_1"] == "a" and row["stcnn_p1"] == 0.33333  # 5 decimals
    assert t.iloc[1]["fused_1"] == "f" and t.iloc[1]["stcnn_1"] == "" and np.isnan(t.iloc[1]["stcnn_p1"])
    # written and read back as a user would
    assert t.iloc[0]["video"] == "v/c1.mp4" and t.iloc[1]["video"] == ""


def test_top_k_table_with_fewer_classes_than_k():
    t = top_k_table([Clip("x")], {"fused": np.array([[0.3, 0.7]])}, ["p", "q"])
    assert list(t.columns) == ["clip", "video", "fused_1", "fused_p1", "fused_2", "fused_p2"]
    assert t.iloc[0]["fused_1"] == "q"


# ---- inputs ----------------------------------------------------------------------------------

def test_read_inputs_csv_folder_and_files(tmp_path):
    (tmp_path / "vids" / "sub").mkdir(parents=True)
    for name in ("vids/a.mp4", "vids/sub/b.avi", "vids/notes.txt", "k.npy"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "clips.csv").write_text(
        "clip_id,video,keypoints,start_frame,end_frame,label\n"
        "one,vids/a.mp4,k.npy,,,scratch\n"
        ",,k.npy,3,9,\n"
        "bad,vids/a.mp4,,x,,\n"
        "empty,,,,,\n")
    clips = read_inputs([str(tmp_path / "clips.csv"), str(tmp_path / "vids"),
                         str(tmp_path / "k.npy")])
    ids = [c.clip_id for c in clips]
    assert ids == ["one", "k", "bad", "empty", "a", "sub/b", "k~2"]
    one, k = clips[0], clips[1]
    assert one.video == str(tmp_path / "vids/a.mp4") and one.keypoints == str(tmp_path / "k.npy")
    assert (k.video, k.start_frame, k.end_frame, k.problem) == ("", 3, 9, "")
    assert "not a whole number" in clips[2].problem and "neither" in clips[3].problem
    assert clips[6].keypoints and not clips[6].video
    from mgpipe.predict import UsageError
    with pytest.raises(UsageError, match="no such file"):
        read_inputs([str(tmp_path / "nothing")])
    with pytest.raises(UsageError, match="'video' or a 'keypoints' column"):
        (tmp_path / "x.csv").write_text("path,label\na.mp4,b\n")
        read_inputs([str(tmp_path / "x.csv")])


def test_keypoint_format_follows_the_bundle_unless_told():
    synth = {"params": {"dataset": {"name": "synth", "csv": {"layout": None}}}}
    assert keypoint_format(synth).layout == "mgpipe68"
    assert keypoint_format(synth, "coco17").layout == "coco17"
    csv = {"params": {"dataset": {"name": "csv", "csv": {"layout": "openpose_body25",
                                                         "rows": "frame"}}}}
    fmt = keypoint_format(csv)
    assert fmt.layout == "openpose_body25" and fmt.rows == "frame"


# ---- a small bundle, made the way the fuse stage makes one -----------------------------------

STCNN_MODEL = {"channels": [8], "strides": [1]}


POSEC3D_MODEL = {"base_channels": 4, "stage_blocks": [1], "inflate": [0], "spatial_strides": [1],
                 "temporal_strides": [1], "block": "basic", "stem_stride": 2}
HEATMAPS = {"mode": "limb", "sigma": 0.8, "frames": 8, "size": [16, 16]}


def _tiny_bundle(tmp_path: Path, classes=CLASSES, posec3d: str | None = None) -> Path:
    """models/predict for a tiny ST-CNN (random weights) and, with ``posec3d`` = "stored" or
    "render", a tiny PoseC3D on limb heatmaps (read as the heatmaps stage stores them, or
    drawn from the keypoints), written by write_bundle from a round-1 folder as models/cmpl
    holds it."""
    from mgpipe import layout
    from mgpipe.models import build_model
    from mgpipe.train import DEFAULTS

    torch.manual_seed(0)
    specs = {"stcnn": (5, {"frames": 8, "model": STCNN_MODEL}, {})}
    if posec3d:
        render = {**HEATMAPS, "margin": 0.1} if posec3d == "render" else None
        specs["posec3d"] = (len(layout.BONES), {"model": POSEC3D_MODEL, "test_flip": True},
                            {"render": render})
    rounds = {"rounds": 1, "branches": list(specs), "logits": {"0": {}, "1": {}}}
    branches = {}
    for b, (channels, block, extra) in specs.items():
        model = build_model(b, len(classes), channels, embed_dim=8, dropout=0.0, **block["model"])
        cfg = {**DEFAULTS, "embed_dim": 8, "dropout": 0.0, **block, **extra}
        rdir = tmp_path / "cmpl" / "round1" / b
        rdir.mkdir(parents=True)
        torch.save({"branch": b, "config": cfg, "num_classes": len(classes),
                    "modality": bundle_mod.MODALITY_OF[b], "epoch": 0,
                    "model": model.state_dict()}, rdir / "best.pt")
        rounds["logits"]["0"][b] = f"models/train/{b}/logits.npz"
        rounds["logits"]["1"][b] = str(rdir / "logits.npz")
        branches[b] = {"input": "data/interim/keypoints.h5", **block, **extra}
    params = validate_params({"branches": branches, "heatmaps": HEATMAPS})
    temps = {"stcnn": 1.7, "posec3d": 0.8}
    return write_bundle(tmp_path / "models" / "predict", list(classes), rounds,
                        {"temperature": {b: temps[b] for b in specs},
                         "weight": {b: 1 / len(specs) for b in specs}, "fallback": None},
                        {b: False for b in specs}, params)


def test_write_bundle_layout_and_content(tmp_path):
    out = _tiny_bundle(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "stcnn.pt"]
    assert not list(out.parent.glob(".predict*"))  # the temporary folder was renamed away
    doc = json.loads((out / "bundle.json").read_text())
    assert doc["format_version"] == bundle_mod.FORMAT_VERSION and doc["classes"] == CLASSES
    assert doc["mgpipe_version"] and doc["cmpl_round"] == 1
    b = doc["branches"]["stcnn"]
    assert (b["checkpoint"], b["modality"], b["temperature"], b["weight"]) == \
        ("stcnn.pt", "joints", 1.7, 1.0)
    assert set(doc["params"]) >= {"keypoints", "rgb", "heatmaps", "branches", "train", "loss",
                                  "fuse", "dataset"}
    assert (out / "stcnn.pt").read_bytes() == \
        (tmp_path / "cmpl/round1/stcnn/best.pt").read_bytes()
    first = (out / "bundle.json").read_bytes()
    _tiny_bundle(tmp_path / "again")  # same content, same bytes (no paths, no times)
    assert (tmp_path / "again/models/predict/bundle.json").read_bytes() == first
    assert read_bundle(out)["classes"] == CLASSES


def _edit(folder: Path, **changes) -> None:
    doc = json.loads((folder / "bundle.json").read_text())
    doc.update(changes)
    (folder / "bundle.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("damage, match", [
    (lambda f: (f / "bundle.json").unlink(), "no bundle.json"),
    (lambda f: (f / "bundle.json").write_text("{"), "cannot be read as JSON"),
    (lambda f: _edit(f, format_version=0), "bundle format version 0"),
    (lambda f: _edit(f, format="other"), "not an mgpipe prediction bundle"),
    (lambda f: _edit(f, classes=[]), "list of distinct class names"),
    (lambda f: (f / "stcnn.pt").unlink(), "checkpoint 'stcnn.pt' of stcnn is missing"),
    (lambda f: (f / "stcnn.pt").write_bytes(b"other"), "mixes files of two trainings"),
])
def test_read_bundle_says_what_is_wrong(tmp_path, damage, match):
    folder = _tiny_bundle(tmp_path)
    damage(folder)
    with pytest.raises(BundleError, match=match) as e:
        read_bundle(folder)
    assert str(folder) in str(e.value)
    with pytest.raises(BundleError, match="no such models folder"):
        read_bundle(tmp_path / "absent")


def _keypoints(path: Path, frames: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    kp = np.concatenate([rng.uniform(20, 140, (frames, 68, 2)),
                         rng.uniform(0.5, 1, (frames, 68, 1))], -1).astype(np.float32)
    np.save(path, kp)
    return path


def _blank_video(path: Path, frames: int = 6) -> Path:
    import cv2
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (96, 64))
    for _ in range(frames):
        w.write(np.full((64, 96, 3), 90, np.uint8))
    w.release()
    return path


def test_cli_predicts_skips_bad_inputs_and_reports_bundle_errors(tmp_path, capsys):
    folder = _tiny_bundle(tmp_path)
    clips = tmp_path / "clips"
    clips.mkdir()
    _keypoints(clips / "k1.npy")
    _keypoints(clips / "k2.npy", seed=1)
    np.save(clips / "nobody.npy", np.zeros((10, 68, 3), np.float32))
    (clips / "corrupt.mp4").write_bytes(b"not a video at all" * 100)
    _blank_video(clips / "empty_room.mp4")
    (clips / "list.csv").write_text("clip_id,keypoints,video,label\nk1,k1.npy,,a\n"
                                    "k2,k2.npy,,zzz\nnobody,nobody.npy,,\nbroken,,corrupt.mp4,\n"
                                    "room,,empty_room.mp4,\n")
    out = tmp_path / "out"
    code = main([str(clips / "list.csv"), "--out", str(out), "--models", str(folder),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(pred["clip"]) == ["k1", "k2"] and pred.video.tolist() == ["", ""]
    assert set(pred.fused_1) <= set(CLASSES)
    p = pred[[f"fused_p{j}" for j in range(1, 6)]].to_numpy(float)
    assert (np.diff(p, axis=1) <= 0).all() and (p.sum(1) <= 1 + 1e-4).all()
    # one branch with weight 1: the fusion is the branch
    assert (pred.fused_1 == pred.stcnn_1).all() and np.allclose(p, pred[[f"stcnn_p{j}" for j in range(1, 6)]])
    skipped = pd.read_csv(out / "skipped.csv")
    reasons = dict(zip(skipped["clip"], skipped.reason))
    assert set(reasons) == {"nobody", "broken", "room"}
    assert "no person found" in reasons["nobody"]
    assert reasons["room"] == "no person found in any frame (MediaPipe Holistic)"
    assert "cannot read the video" in reasons["broken"] and "corrupt.mp4" in reasons["broken"]
    assert "Traceback" not in err and "skipped broken: cannot read the video" in err
    timing = pd.read_csv(out / "timing.csv")
    assert list(timing.columns) == ["clip", "keypoints_s", "crop_s", "heatmaps_s", "models_s",
                                    "total_s"]
    assert (timing.models_s > 0).all() and np.allclose(
        timing.total_s, timing[["keypoints_s", "crop_s", "heatmaps_s", "models_s"]].sum(1), atol=1e-3)
    # all good: exit 0; same clips, same numbers
    code = main([str(clips / "k1.npy"), str(clips / "k2.npy"), "--out", str(tmp_path / "o2"),
                 "--models", str(folder), "--no-progress"])
    assert code == 0
    again = pd.read_csv(tmp_path / "o2/predictions.csv", keep_default_na=False)
    assert again.drop(columns="clip").equals(pred.drop(columns="clip"))
    # a bundle whose class list is not the models': exit 2, one line, nothing predicted
    capsys.readouterr()
    _edit(folder, classes=CLASSES[:-1])
    code = main([str(clips / "k1.npy"), "--out", str(tmp_path / "o3"), "--models", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "lists 5 classes, but stcnn.pt was trained on 6" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o3").exists()
    _edit(folder, classes=CLASSES, format_version=99)
    assert main([str(clips / "k1.npy"), "--out", str(tmp_path / "o3"), "--models", str(folder)]) == 2
    assert "bundle format version 99" in capsys.readouterr().err


def test_heatmaps_drawn_by_the_branch_equal_the_stored_ones(tmp_path):
    """branches.posec3d.render: the branch draws its heatmaps from the keypoints; with the
    heatmaps stage's settings that is the stage's volume, so both bundles predict alike
    (limb channels, test_flip with the bone swap)."""
    clip = _keypoints(tmp_path / "k.npy", frames=20)
    got = {}
    for how in ("stored", "render"):
        folder = _tiny_bundle(tmp_path / how, posec3d=how)
        assert main([str(clip), "--out", str(tmp_path / how / "out"), "--models", str(folder),
                     "--no-progress"]) == 0
        got[how] = pd.read_csv(tmp_path / how / "out/predictions.csv", keep_default_na=False)
        timing = pd.read_csv(tmp_path / how / "out/timing.csv")
        assert (timing.heatmaps_s > 0).all() == (how == "stored")
    assert got["stored"].equals(got["render"])
    assert got["stored"].posec3d_1.iloc[0] in CLASSES


def test_mgpipe_help_without_the_stage_scripts(tmp_path):
    """A non-editable install has no stages/ folder: --help still works, and predict is there."""
    import shutil
    shutil.copytree(ROOT / "mgpipe", tmp_path / "mgpipe",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "mgpipe", "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "predict" in p.stdout and "crop" not in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", "mgpipe", "crop"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 2 and "no stage scripts" in p.stderr
    folder = _tiny_bundle(tmp_path / "trained")  # and predict runs from the package alone
    p = subprocess.run([sys.executable, "-m", "mgpipe", "predict", str(_keypoints(tmp_path / "k.npy")),
                        "--out", "out", "--models", str(folder), "--no-progress"], cwd=tmp_path,
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert pd.read_csv(tmp_path / "out/predictions.csv")["clip"].tolist() == ["k"]


# ---- end to end: the pipeline's own test predictions, from the bundle alone ------------------

TINY = {
    "synth": {"subjects": 6, "test_subjects": 2, "val_subjects": 1, "clips_per_subject": 10,
              "frames": 20},
    "branches": {"stcnn": {"epochs": 3, "test_flip": True}, "posec3d": {"epochs": 2},
                 "r2plus1d": {"epochs": 1}, "swin3d": {"epochs": 1}},
    "cmpl": {"threshold": 0.2, "selection": "confidence"},
}


def _sh(cmd: list[str], cwd: Path, ok=(0,)) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               GIT_AUTHOR_NAME="mgpipe-test", GIT_AUTHOR_EMAIL="test@mgpipe.invalid",
               GIT_COMMITTER_NAME="mgpipe-test", GIT_COMMITTER_EMAIL="test@mgpipe.invalid",
               DVC_NO_ANALYTICS="1", PYTHONPATH=str(cwd))
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert p.returncode in ok, f"{cmd}: {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
def test_predict_reproduces_the_pipelines_test_predictions(tmp_path):
    project = copy_project(tmp_path / "mgpipe")
    edit_params(project, TINY)
    _sh(["git", "init", "-q"], project)
    _sh(["git", "add", "-A"], project)
    _sh(["git", "commit", "-qm", "clone"], project)
    _sh(["dvc", "repro", "-q"], project)
    check_reproduced(project)


def check_reproduced(project: Path) -> None:
    """predict on the test clips (their videos and the keypoints the synthetic set ships)
    gives metrics/predictions.csv's fused probabilities and each branch's calibrated ones;
    a corrupt video and a bundle with another class list or format version say so."""
    from mgpipe.cmpl import load_logits
    from mgpipe.fusion import aligned, calibrated_probs

    synth = project / "data/raw/synth"
    m = pd.read_csv(project / "data/interim/manifest.csv", keep_default_na=False, dtype=str)
    test = m[m.split == "test"]
    rows = [{"clip_id": c, "video": os.path.relpath(project / v, project),
             "keypoints": f"data/raw/synth/keypoints/{c}.npy", "label": "ignored"}
            for c, v in zip(test.clip_id, test.video)]
    (project / "data/raw/bad").mkdir(exist_ok=True)
    (project / "data/raw/bad/corrupt.mp4").write_bytes(b"\0garbage" * 500)
    rows.insert(3, {"clip_id": "corrupt", "video": "data/raw/bad/corrupt.mp4", "keypoints": "",
                    "label": ""})
    pd.DataFrame(rows).to_csv(project / "new_clips.csv", index=False)
    assert (synth / "keypoints").is_dir()
    p = _sh([sys.executable, "-m", "mgpipe", "predict", "new_clips.csv", "--out", "pred",
             "--no-progress"], project, ok=(1,))
    assert "Traceback" not in p.stderr and "skipped corrupt: cannot read the video" in p.stderr
    skipped = pd.read_csv(project / "pred/skipped.csv")
    assert skipped["clip"].tolist() == ["corrupt"]
    ours = pd.read_csv(project / "pred/predictions.csv", keep_default_na=False, dtype={"clip": str})
    theirs = pd.read_csv(project / "metrics/predictions.csv", keep_default_na=False,
                         dtype={"clip_id": str}).set_index("clip_id")
    assert ours["clip"].tolist() == list(test.clip_id)
    bundle = json.loads((project / "models/predict/bundle.json").read_text())
    classes = bundle["classes"]
    assert classes == json.loads((project / "data/interim/classes.json").read_text())
    assert set(bundle["branches"]) == {"stcnn", "posec3d", "r2plus1d", "swin3d"}

    def check(name: str, probs: pd.DataFrame) -> None:
        """ours' top-5 of ``name`` against the pipeline's probabilities (clip x class)."""
        for j in range(1, 6):
            labels, p = ours[f"{name}_{j}"], ours[f"{name}_p{j}"].astype(float)
            want = np.array([probs.loc[c, lab] for c, lab in zip(ours["clip"], labels)])
            np.testing.assert_allclose(p, want, atol=1.1e-5, err_msg=f"{name} top-{j}")
        # the 5th is not below any class left out
        p5 = ours[f"{name}_p5"].astype(float).to_numpy()
        assert (probs.loc[list(ours["clip"])].to_numpy().max(1) >= p5 - 1e-5).all()
        # and the first is the pipeline's prediction
        best = probs.loc[list(ours["clip"])].to_numpy().max(1)
        np.testing.assert_allclose(ours[f"{name}_p1"].astype(float), best, atol=1.1e-5)

    check("fused", theirs[[f"p_{c}" for c in classes]].set_axis(classes, axis=1))
    rounds = json.loads((project / "models/cmpl/rounds.json").read_text())
    last = rounds["logits"][str(bundle["cmpl_round"])]
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    for b, path in last.items():
        z = load_logits(project / path)
        t = bundle["branches"][b]["temperature"]
        assert round(t, 4) == metrics["temperature"][b]
        probs = calibrated_probs(aligned(z["test_ids"], z["test_logits"], list(ours["clip"])), t)
        check(b, pd.DataFrame(probs, index=list(ours["clip"]), columns=classes))
    timing = pd.read_csv(project / "pred/timing.csv", dtype={"clip": str})
    assert timing["clip"].tolist() == ours["clip"].tolist()
    assert (timing.crop_s > 0).all() and (timing.heatmaps_s > 0).all() and (timing.models_s > 0).all()

    # a models folder with another class list, or of another format version: exit 2, one line
    bad = project / "models/bad"
    import shutil
    shutil.copytree(project / "models/predict", bad, dirs_exist_ok=True)
    _edit(bad, classes=classes[::-1][:-1])
    p = _sh([sys.executable, "-m", "mgpipe", "predict", "new_clips.csv", "--out", "p2",
             "--models", "models/bad"], project, ok=(2,))
    assert "bundle.json lists" in p.stderr and "Traceback" not in p.stderr
    _edit(bad, classes=classes, format_version=bundle_mod.FORMAT_VERSION + 1)
    p = _sh([sys.executable, "-m", "mgpipe", "predict", "new_clips.csv", "--out", "p2",
             "--models", "models/bad"], project, ok=(2,))
    assert "bundle format version" in p.stderr and len(p.stderr.strip().splitlines()) == 1
