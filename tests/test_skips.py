"""One clip set downstream: a clip an early stage skips (here the keypoints stage finds no
person) is recorded by every later stage, left out of training, still predicted by the
branches that can see it, and counted in the metrics. Nothing crashes on a skip.

The stages run as scripts (as DVC runs them) in a scratch project on a small synthetic set.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = {
    "synth": {"subjects": 6, "test_subjects": 2, "val_subjects": 1, "clips_per_subject": 10,
              "classes": 10, "imbalance": 3, "frames": 16},
    "runtime": {"crop_workers": 1},
    "branches": {b: {"epochs": 2} for b in ("stcnn", "posec3d", "r2plus1d", "swin3d")},
    "cmpl": {"threshold": 0.0, "min_agree": 1, "class_fraction": None, "selection": "confidence"},  # every clip qualifies
}


def _stage(project: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True, env=env)
    assert p.returncode == 0, f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def skipped_run(tmp_path_factory):
    """Stages run on a synthetic set where one train, one val and one test clip show no
    person (all keypoint scores 0, as MediaPipe reports a person 6 m away)."""
    project = tmp_path_factory.mktemp("skips")
    shutil.copytree(ROOT / "stages", project / "stages")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for block, values in SMALL.items():
        for k, v in values.items():
            if isinstance(v, dict):
                params[block][k].update(v)
            else:
                params[block][k] = v
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    logs = {"synth": _stage(project, "stages/synth.py")}
    labels = pd.read_csv(project / "data/raw/synth/labels.csv", dtype=str)
    gone = {s: labels[labels.split == s].clip_id.iloc[0] for s in ("train", "val", "test")}
    for cid in gone.values():
        kp = project / "data/raw/synth/keypoints" / f"{cid}.npy"
        np.save(kp, np.zeros_like(np.load(kp)))
    for name in ("prepare", "keypoints", "crop", "heatmaps"):
        logs[name] = _stage(project, f"stages/{name}.py")
    for b in SMALL["branches"]:
        logs[f"train@{b}"] = _stage(project, "stages/train.py", "--branch", b)
    logs["cmpl"] = _stage(project, "stages/cmpl.py")
    logs["fuse"] = _stage(project, "stages/fuse.py")
    return project, gone, logs


def test_every_stage_records_or_honours_the_skip(skipped_run):
    project, gone, logs = skipped_run
    kp_skips = pd.read_csv(project / "data/interim/keypoints_skipped.csv")
    assert set(kp_skips.clip_id) == set(gone.values())
    assert kp_skips.reason.str.contains("no person found").all()
    hm_skips = pd.read_csv(project / "data/processed/heatmaps_skipped.csv")
    assert set(hm_skips.clip_id) == set(gone.values())
    assert hm_skips.reason.str.contains("no keypoints \\(keypoints: no person found").all()
    with h5py.File(project / "data/processed/rgb.h5") as f:  # RGB needs no person: whole frame
        assert all(f[c].attrs["fallback"] for c in gone.values())
    left_out = json.loads((project / "metrics/train/stcnn.json").read_text())["clips_left_out"]
    assert left_out == {"train": 1, "val": 1, "test": 1}
    assert f"1 train ({gone['train']})" in logs["train@stcnn"]
    assert json.loads((project / "metrics/train/r2plus1d.json").read_text())["clips_left_out"] == {
        "train": 0, "val": 0, "test": 0}


def test_the_skipped_test_clip_is_predicted_by_the_branches_that_see_it(skipped_run):
    project, gone, _ = skipped_run
    m = pd.read_csv(project / "data/interim/manifest.csv", dtype=str, keep_default_na=False)
    pred = pd.read_csv(project / "metrics/predictions.csv", dtype=str, keep_default_na=False)
    assert list(pred.clip_id) == list(m[m.split == "test"].clip_id)  # every test clip
    row = pred.set_index("clip_id").loc[gone["test"]]
    assert row.branches == "r2plus1d swin3d" and row.predicted != ""
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    assert metrics["test_clips"] == len(pred)
    assert metrics["test"]["fused"]["unpredicted"] == 0
    for b in ("stcnn", "posec3d"):
        cov = metrics["coverage"][b]
        assert cov["test_missing"] == 1 and cov["val_missing"] == 1
        (reason, n), = cov["test_missing_reasons"].items()
        assert n == 1 and "no person found" in reason
        assert metrics["test"]["branch"][b]["unpredicted"] == 1  # counted wrong, not dropped
    assert metrics["coverage"]["swin3d"]["test_missing"] == 0
    for b in SMALL["branches"]:  # pseudo-labels only for clips a branch can train on
        p = pd.read_csv(project / f"models/cmpl/round1/pseudo_{b}.csv", dtype=str)
        assert (gone["test"] in set(p.clip_id)) == (b in ("r2plus1d", "swin3d")), b


def test_stages_rerun_give_identical_bytes(skipped_run):
    """Identical content, identical bytes: DVC then keeps downstream stages cached."""
    import hashlib

    project, _, _ = skipped_run

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for stage, out in (("heatmaps", "data/processed/heatmaps.h5"), ("crop", "data/processed/rgb.h5"),
                       ("keypoints", "data/interim/keypoints.h5")):
        again = project / "again" / Path(out).name
        _stage(project, f"stages/{stage}.py", "--out", str(again))
        assert sha(again) == sha(project / out), stage
    m = (project / "data/interim/manifest.csv").read_text()
    assert str(project) not in m and "/tmp" not in m  # no absolute path: a clone hashes the same
