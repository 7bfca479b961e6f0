"""The synthetic micro-gesture dataset generator (SPEC section 3)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from mgpipe import layout as L
from mgpipe import synth
from mgpipe.synth import SynthConfig

SMALL = dict(subjects=4, test_subjects=1, val_subjects=1, clips_per_subject=6, classes=10,
             frames=12)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The small dataset generated twice with seed 0 and once with seed 1."""
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        d = tmp_path_factory.mktemp(f"synth_{name}")
        synth.generate(SynthConfig(seed=seed, **SMALL), d, progress=False)
        out[name] = d
    return out


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_same_seed_is_byte_identical(runs):
    a, b = runs["a"], runs["b"]
    assert _files(a) == _files(b)
    names = ["labels.csv", "classes.json"] + [f for f in _files(a) if f.startswith("keypoints/")]
    assert len(names) == 2 + 4 * 6
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_other_seed_changes_data(runs):
    a, c = runs["a"], runs["c"]
    assert (a / "labels.csv").read_bytes() != (c / "labels.csv").read_bytes()
    kp_a, kp_c = sorted((a / "keypoints").glob("*.npy")), sorted((c / "keypoints").glob("*.npy"))
    assert all(x.read_bytes() != y.read_bytes() for x, y in zip(kp_a, kp_c))


def test_label_table(runs):
    root = runs["a"]
    labels = pd.read_csv(root / "labels.csv")
    assert list(labels.columns) == synth.LABEL_COLUMNS
    classes = json.loads((root / "classes.json").read_text())
    assert classes == synth.class_names(10)
    assert set(labels.label) <= set(classes)
    assert len(labels) == 24 and labels.clip_id.is_unique
    assert (labels.groupby("subject").size() == 6).all()
    assert (labels[["frames", "fps", "width", "height"]].drop_duplicates().values.tolist()
            == [[12, 25, 160, 120]])
    assert ((labels.onset >= 0) & (labels.onset <= labels.offset) & (labels.offset < 12)).all()
    counts = labels.label.value_counts()
    assert [counts.get(n, 0) for n in classes] == synth.class_counts(SynthConfig(**SMALL)).tolist()


def test_splits_are_subject_disjoint(runs):
    labels = pd.read_csv(runs["a"] / "labels.csv")
    per_subject = labels.groupby("subject").split.nunique()
    assert (per_subject == 1).all()
    subjects = labels.groupby("split").subject.unique()
    assert sorted(subjects["test"]) == ["S04"] and sorted(subjects["val"]) == ["S03"]
    assert sorted(subjects["train"]) == ["S01", "S02"]


def test_videos_open_with_stated_size_and_length(runs):
    root = runs["a"]
    labels = pd.read_csv(root / "labels.csv")
    for row in labels.itertuples():
        cap = cv2.VideoCapture(str(root / row.video))
        assert cap.isOpened(), row.video
        assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == row.width
        assert int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == row.height
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(row.fps)
        cap.release()
        frames = synth.read_video(root / row.video)
        assert frames.shape == (row.frames, row.height, row.width, 3)


def test_keypoints_shape_scores_and_bounds(runs):
    root = runs["a"]
    seen = []
    for path in sorted((root / "keypoints").glob("*.npy")):
        kp = np.load(path)
        assert kp.dtype == np.float32 and kp.shape == (12, L.NUM_KEYPOINTS, 3)
        vis = kp[..., 2] > 0
        assert vis[:, [11, 12]].mean() > 0.9      # shoulders are nearly always found
        seen.append(vis.mean())
        s = kp[..., 2][vis]
        assert (s > 0.3).all() and (s <= 1).all()
        xy = kp[..., :2][vis]
        assert (xy >= 0).all() and (xy[:, 0] <= 159).all() and (xy[:, 1] <= 119).all()
        assert (kp[~vis] == 0).all()       # missing joints are (0, 0, 0)
    assert np.mean(seen) > 0.6


def test_noise_jitters_and_drops():
    cfg = SynthConfig(**SMALL)
    table = synth.plan(cfg)
    row = table.iloc[0]
    sub = synth.make_subject(cfg, 0, shifted=False)
    clip = synth.render_clip(cfg, sub, int(row.label), int(row["index"]))
    vis = clip.keypoints[..., 2] > 0
    err = np.linalg.norm(clip.keypoints[..., :2] - clip.clean, axis=-1)[vis]
    assert 0.2 < np.median(err) < 3.0           # about a pixel of jitter, not exact
    many = [synth.render_clip(cfg, sub, int(r.label), int(r["index"])) for _, r in table.iterrows()]
    inside = [((c.clean[..., 0] >= 1) & (c.clean[..., 0] <= 158) & (c.clean[..., 1] >= 1)
               & (c.clean[..., 1] <= 118)) for c in many]
    dropped = sum(int((m & (c.keypoints[..., 2] == 0)).sum()) for c, m in zip(many, inside))
    assert dropped > 0                           # some in-frame joints are missed


def test_hands_leave_the_frame_and_lose_score():
    cfg = SynthConfig()
    table = synth.plan(cfg)
    rows = table[table.subject == "S12"]         # a test (shifted) subject
    sub = synth.make_subject(cfg, 11, shifted=True)
    outside_any = False
    for _, r in rows.iterrows():
        clip = synth.render_clip(cfg, sub, int(r.label), int(r["index"]))
        c = clip.clean[:, L.HANDS]
        out = ((c[..., 0] < -2) | (c[..., 0] > cfg.width + 1)
               | (c[..., 1] < -2) | (c[..., 1] > cfg.height + 1))
        outside_any |= bool(out.any())
        assert (clip.keypoints[:, L.HANDS, 2][out] == 0).all()
    assert outside_any


def test_keypoints_match_the_drawing(runs):
    """Hand keypoints land on the drawn figure: the pixels there differ from the empty scene,
    in memory and in the decoded mp4."""
    cfg = SynthConfig(**SMALL)
    root = runs["a"]
    labels = pd.read_csv(root / "labels.csv")
    table = synth.plan(cfg)
    diffs_mem, diffs_vid = [], []
    for (_, r), row in zip(table.iterrows(), labels.itertuples()):
        sub = synth.make_subject(cfg, int(r.subject[1:]) - 1, shifted=r.split == "test")
        clip = synth.render_clip(cfg, sub, int(r.label), int(r["index"]))
        video = synth.read_video(root / row.video)
        bg = clip.background.astype(int)
        kp = clip.keypoints
        for t in range(cfg.frames):
            for j in [15, 16] + L.HANDS:
                if kp[t, j, 2] == 0:
                    continue
                x, y = np.rint(kp[t, j, :2]).astype(int)
                win = np.s_[max(0, y - 1):y + 2, max(0, x - 1):x + 2]
                diffs_mem.append(np.abs(clip.frames[t][win].astype(int) - bg[win]).mean())
                diffs_vid.append(np.abs(video[t][win].astype(int) - bg[win]).mean())
    assert np.mean(np.array(diffs_mem) > 8) > 0.95
    assert np.mean(np.array(diffs_vid) > 8) > 0.9
    # and far from the figure, the scene is untouched
    far = np.abs(clip.frames[0, :3, :3].astype(int) - bg[:3, :3]).mean()
    assert far < 8


def test_clips_are_order_invariant(runs):
    """A clip depends only on (seed, clip index): rendering it alone reproduces the file."""
    cfg = SynthConfig(**SMALL)
    r = synth.plan(cfg).iloc[-1]
    sub = synth.make_subject(cfg, 3, shifted=True)
    clip = synth.render_clip(cfg, sub, int(r.label), int(r["index"]))
    assert np.array_equal(clip.keypoints, np.load(runs["a"] / "keypoints" / f"{r.clip_id}.npy"))


def test_contact_sheet(runs):
    img = cv2.imread(str(runs["a"] / "contact_sheet.png"))
    assert img is not None
    assert img.shape == (10 * (2 * 120 + 18), 3 * 2 * 160, 3)
    assert img.std() > 10


@pytest.mark.parametrize("classes", [10, 12, 14, 16])
def test_class_counts_long_tail(classes):
    cfg = SynthConfig(classes=classes)
    counts = synth.class_counts(cfg)
    assert counts.sum() == cfg.subjects * cfg.clips_per_subject
    assert (np.diff(counts) <= 0).all() and counts.min() >= 2
    ratio = counts.max() / counts.min()
    assert ratio >= 20 and ratio >= 0.9 * cfg.imbalance


def test_defaults():
    cfg = SynthConfig()
    assert cfg.classes >= 10 and len(set(synth.class_names(cfg.classes))) == cfg.classes
    counts = synth.class_counts(cfg)
    assert counts.max() / counts.min() >= 20
    table = synth.plan(cfg)
    assert table.groupby("split").subject.nunique().to_dict() == {"test": 4, "train": 6, "val": 2}


def test_config_validation():
    assert SynthConfig.from_params({"seed": 3, "frames": 16}) == SynthConfig(seed=3, frames=16)
    with pytest.raises(ValueError, match="unknown"):
        SynthConfig.from_params({"sede": 3})
    with pytest.raises(ValueError):
        SynthConfig(subjects=4)                  # 4 test + 2 val leave no training subject
    with pytest.raises(ValueError):
        SynthConfig(classes=len(synth.CLASS_NAMES) + 1)
    assert SynthConfig.from_params({"layout": "imigue", "idle_frames": 0}).layout == "imigue"
    with pytest.raises(ValueError, match="layout"):
        SynthConfig(layout="folders")
    with pytest.raises(ValueError, match="idle_frames"):
        SynthConfig(idle_frames=-1)


def test_params_yaml_synth_block_is_a_config():
    """Every key of params.yaml's synth block is a SynthConfig field, with the same defaults."""
    import yaml

    block = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["synth"]
    assert SynthConfig.from_params(block) == SynthConfig()


def test_interrupted_run_never_looks_finished(tmp_path, monkeypatch):
    cfg = SynthConfig(**SMALL)
    synth.generate(cfg, tmp_path, progress=False)
    assert (tmp_path / "labels.csv").exists()
    calls = []

    def failing(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    real = synth.render_clip
    monkeypatch.setattr(synth, "render_clip", failing)
    with pytest.raises(KeyboardInterrupt):
        synth.generate(cfg, tmp_path, progress=False)
    assert not (tmp_path / "labels.csv").exists()
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]   # no temporary leftovers


def test_repro_with_another_dataset_does_not_generate_the_synthetic_one(tmp_path):
    """dvc.yaml always lists the synth stage; with dataset.name: csv, `dvc repro` used to
    spend minutes writing 360 videos nobody reads. Now the stage writes a note."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(root / f, tmp_path / f)
    for d in ("stages", "mgpipe"):  # the deps DVC hashes
        shutil.copytree(root / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["dataset"].update(name="csv", root="data/raw/mine")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "synth"]):
        p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    assert "nothing generated" in p.stdout
    made = sorted(x.name for x in (tmp_path / "data/raw/synth").iterdir())
    assert made == ["NOT_GENERATED.txt"]
    assert "dataset.name is 'csv'" in (tmp_path / "data/raw/synth/NOT_GENERATED.txt").read_text()
