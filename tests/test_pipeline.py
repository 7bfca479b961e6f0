"""End-to-end: the DVC pipeline on a small synthetic dataset, in a fresh copy of the project.

What a user relies on: `dvc repro` runs from a fresh clone, a second `dvc repro` does
nothing, a params change reruns exactly what depends on it (`dvc exp run -S cmpl.rounds=2`
reruns only cmpl and fuse, resuming after round 1), `dvc metrics diff` and `dvc exp show`
report F1, and the hidden test labels never change what CMPL does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import copy_project, edit_params

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Smaller than params.yaml's demo so the suite stays fast; `make demo` runs the default.
SMALL = {
    "synth": {"subjects": 7, "test_subjects": 2, "val_subjects": 1, "clips_per_subject": 12,
              "frames": 24},
    "branches": {"stcnn": {"epochs": 6}, "posec3d": {"epochs": 3}, "r2plus1d": {"epochs": 3},
                 "swin3d": {"epochs": 3}},
    "cmpl": {"threshold": 0.3},
}


def _run(cmd: list[str], cwd: Path) -> str:
    # dvc exp run commits experiments: give git an identity on machines that have none
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               GIT_AUTHOR_NAME="mgpipe-test", GIT_AUTHOR_EMAIL="test@mgpipe.invalid",
               GIT_COMMITTER_NAME="mgpipe-test", GIT_COMMITTER_EMAIL="test@mgpipe.invalid")
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout + p.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


def _edit_params(project: Path, **blocks) -> None:
    edit_params(project, blocks)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh clone: the project's files in a new git repo, with a small synthetic set,
    after one `dvc repro` whose results are committed."""
    dst = tmp_path_factory.mktemp("clone") / "mgpipe"
    copy_project(dst)
    _edit_params(dst, **SMALL)
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-qm", "clone")
    out = _run(["dvc", "repro"], dst)
    (dst / "first_repro.log").write_text(out)
    _git(dst, "add", "-A")
    _git(dst, "commit", "-qm", "first repro")
    return dst


def test_repro_runs_every_stage(project):
    ran = _ran((project / "first_repro.log").read_text())
    assert {"synth", "prepare", "keypoints", "crop", "heatmaps", "train@stcnn", "train@posec3d",
            "train@r2plus1d", "train@swin3d", "cmpl", "fuse"} <= ran
    m = pd.read_csv(project / "data/interim/manifest.csv", keep_default_na=False)
    assert len(m) == 7 * 12 and m.groupby("subject").split.nunique().max() == 1
    metrics = json.loads((project / "metrics/metrics.json").read_text())
    assert set(metrics["test"]["branch"]) == {"stcnn", "posec3d", "r2plus1d", "swin3d"}
    assert 0 <= metrics["test"]["fused"]["macro_f1"] <= 1
    assert metrics["cmpl_rounds"] == 1
    for f in ("predictions.csv", "confusion.png", "per_class_f1.png", "cmpl_rounds.png",
              "cmpl.json", "confusion.json", "train/stcnn.json"):
        assert (project / "metrics" / f).is_file(), f
    assert len(pd.read_csv(project / "metrics/predictions.csv")) == (m.split == "test").sum()
    val = json.loads((project / "metrics/train/stcnn.json").read_text())["val"]
    assert 0 < val["p_value"] <= 1 and 0 <= val["chance_macro_f1"] <= val["chance_p95"] <= 1
    import h5py  # every modality holds exactly the manifest's clips (no skips here)
    for f in ("data/interim/keypoints.h5", "data/processed/rgb.h5", "data/processed/heatmaps.h5"):
        with h5py.File(project / f) as h5:
            assert set(h5.keys()) == set(m.clip_id), f


def test_second_repro_is_a_noop(project):
    assert _ran(_run(["dvc", "repro"], project)) == set()


def test_exp_more_rounds_reruns_only_cmpl_and_fuse(project):
    out = _run(["dvc", "exp", "run", "-S", "cmpl.rounds=2"], project)
    assert _ran(out) == {"cmpl", "fuse"}, out
    assert "round 1 already done" in out
    assert json.loads((project / "metrics/metrics.json").read_text())["cmpl_rounds"] == 2
    rounds = json.loads((project / "metrics/cmpl.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    diff = _run(["dvc", "metrics", "diff"], project)
    assert "metrics/metrics.json" in diff and "cmpl_rounds" in diff
    show = _run(["dvc", "exp", "show", "--no-pager", "--csv"], project)
    assert "test.fused.macro_f1" in show
    _run(["dvc", "exp", "apply", "--help"], project)  # the exp commands are all there
    _git(project, "checkout", "-q", "--", ".")
    _run(["dvc", "checkout", "-q"], project)


def test_hidden_test_labels_do_not_change_cmpl(project, tmp_path):
    labels = pd.read_csv(project / "data/interim/test_labels.csv")
    classes = json.loads((project / "data/interim/classes.json").read_text())
    interim = tmp_path / "interim"
    shutil.copytree(project / "data/interim", interim)
    rng = np.random.default_rng(0)
    labels.assign(label=rng.choice(classes, len(labels))).to_csv(interim / "test_labels.csv", index=False)
    _edit_params(project, cmpl={"rounds": 1})
    _run([sys.executable, "stages/cmpl.py", "--interim", str(interim), "--out", str(tmp_path / "cmpl")], project)
    for f in sorted((project / "models/cmpl/round1").glob("pseudo_*.csv")):
        assert f.read_bytes() == (tmp_path / "cmpl/round1" / f.name).read_bytes(), f.name
    for b in ("stcnn", "posec3d", "r2plus1d", "swin3d"):
        a = np.load(project / f"models/cmpl/round1/{b}/logits.npz")
        c = np.load(tmp_path / f"cmpl/round1/{b}/logits.npz")
        assert np.array_equal(a["test_logits"], c["test_logits"]), b
    _git(project, "checkout", "-q", "--", "params.yaml")


def test_seed_change_reruns_synth_and_prepare(project):
    _edit_params(project, synth={"seed": 1})
    assert _ran(_run(["dvc", "repro", "prepare"], project)) == {"synth", "prepare"}
    _edit_params(project, prepare={"on_bad_clip": "skip"})
    assert _ran(_run(["dvc", "repro", "prepare"], project)) == {"prepare"}
    _git(project, "checkout", "-q", "--", "params.yaml")


def test_utd_mhad_skeleton_only_pipeline(utd_mhad_root, tmp_path):
    """The real UTD-MHAD skeletons through the whole pipeline: no video, so crop writes an
    empty rgb.h5 and only the skeleton branches train; CMPL and fusion run on them."""
    dst = tmp_path / "utd"
    copy_project(dst)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["dataset"].update(name="utd_mhad", root=str(utd_mhad_root))
    for b in ("r2plus1d", "swin3d"):
        del params["branches"][b]
    params["branches"]["stcnn"]["epochs"] = 2
    params["branches"]["posec3d"]["epochs"] = 1
    params["cmpl"]["threshold"] = 0.2
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-qm", "utd")
    ran = _ran(_run(["dvc", "repro"], dst))
    assert {"prepare", "keypoints", "crop", "heatmaps", "train@stcnn", "train@posec3d", "cmpl",
            "fuse"} <= ran and not any("r2plus1d" in s or "swin3d" in s for s in ran)
    import h5py
    with h5py.File(dst / "data/processed/rgb.h5") as h5:
        assert len(h5.keys()) == 0 and not h5.attrs["has_rgb"]
    metrics = json.loads((dst / "metrics/metrics.json").read_text())
    assert set(metrics["test"]["branch"]) == {"stcnn", "posec3d"}
    assert metrics["test"]["fused"]["micro_f1"] > 1 / 27  # above chance even after 2 epochs
    rounds = json.loads((dst / "metrics/cmpl.json").read_text())["rounds"]
    assert len(rounds) == 1 and set(rounds[0]["branches"]) == {"stcnn", "posec3d"}
