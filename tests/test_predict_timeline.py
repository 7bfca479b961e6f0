"""`mgpipe predict --window`: a timeline on a synthetic long video end to end (a tiny bundle
with a skeleton and an RGB branch), its files and bad inputs; MediaPipe in parallel chunks
against the serial run on a real clip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mgpipe import bundle as bundle_mod
from mgpipe.bundle import write_bundle
from mgpipe.keypoints import chunk_spans
from mgpipe.params import validate_params
from mgpipe.predict import main
from mgpipe.synth import SynthConfig
from mgpipe.synth_long import write_long_videos

CLASSES = ["scratch_head", "touch_nose", "rub_eyes", "idle"]
CFG = SynthConfig(seed=5, subjects=3, test_subjects=1, val_subjects=1, clips_per_subject=4,
                  classes=4, imbalance=1.5, frames=20, idle_frames=16)


def _bundle(tmp_path: Path, clips=None) -> Path:
    """models/predict with random tiny stcnn and r2plus1d models, written by write_bundle."""
    from mgpipe.models import build_model
    from mgpipe.train import DEFAULTS

    torch.manual_seed(0)
    specs = {"stcnn": (5, {"frames": 8, "model": {"channels": [8], "strides": [1]}}),
             "r2plus1d": (3, {"frames": 4, "model": {"widths": [8, 8, 16, 16],
                                                    "layers": [1, 1, 1, 1]}})}
    rounds = {"rounds": 0, "branches": list(specs), "logits": {"0": {}}}
    branches = {}
    for b, (channels, block) in specs.items():
        model = build_model(b, len(CLASSES), channels, embed_dim=8, dropout=0.0, **block["model"])
        rdir = tmp_path / "train" / b
        rdir.mkdir(parents=True)
        torch.save({"branch": b, "config": {**DEFAULTS, "embed_dim": 8, "dropout": 0.0, **block},
                    "num_classes": len(CLASSES), "modality": bundle_mod.MODALITY_OF[b],
                    "epoch": 0, "model": model.state_dict()}, rdir / "best.pt")
        rounds["logits"]["0"][b] = str(rdir / "logits.npz")
        branches[b] = {"input": "x", **block}
    params = validate_params({"branches": branches, "rgb": {"frames": 4, "size": 32}})
    return write_bundle(tmp_path / "models" / "predict", CLASSES, rounds,
                        {"temperature": {b: 1.0 for b in specs},
                         "weight": {b: 0.5 for b in specs}, "fallback": None},
                        {b: False for b in specs}, params, clips)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("long")
    write_long_videos(CFG, folder, ["S03"])
    return folder


def test_synthetic_long_video_and_its_truth(long_video):
    truth = pd.read_csv(long_video / "truth.csv")
    kp = np.load(long_video / "S03.npy")
    assert list(truth.columns) == ["clip", "label", "start_frame", "end_frame"]
    assert len(truth) == 4 and (truth.end_frame - truth.start_frame == CFG.frames).all()
    assert (truth.start_frame.to_numpy()[1:] >= truth.end_frame.to_numpy()[:-1] + 8).all()
    assert kp.shape[1:] == (68, 3) and len(kp) > truth.end_frame.max()
    from mgpipe.video import probe_video
    assert probe_video(long_video / "S03.mp4").frames == len(kp)


def test_timeline_end_to_end(tmp_path, long_video, capsys):
    folder = _bundle(tmp_path, clips={"frames": 20, "fps": 25.0, "seconds": 0.8})
    out = tmp_path / "out"
    code = main([str(long_video / "videos.csv"), "--out", str(out), "--models", str(folder),
                 "--window", "--stride", "0.2", "--threshold", "0", "--background", "none", "--truth",
                 str(long_video / "truth.csv"), "--no-progress", "--batch-size", "8", "--render"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "window: the training clips' median length" in printed.out
    n = len(np.load(long_video / "S03.npy"))
    win = pd.read_csv(out / "windows.csv")
    # 0.8 s = 20 frames every 0.2 s = 5 frames, plus one to reach the end
    starts = list(range(0, n - 20 + 1, 5))
    starts += [n - 20] if starts[-1] + 20 < n else []
    assert win.start_frame.tolist() == starts and (win.end_frame - win.start_frame == 20).all()
    p = win[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-4)
    assert (win.label == np.array(CLASSES)[p.argmax(1)]).all()
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert len(pred) == len(win) and pred["clip"].iloc[1] == "S03@5"
    assert (pred.r2plus1d_1 != "").all() and (pred.stcnn_1 != "").all()  # both branches ran
    tl = pd.read_csv(out / "timeline.csv")
    assert list(tl.columns) == ["clip", "label", "start_s", "end_s", "start_frame", "end_frame",
                                "score"]
    assert set(tl.label) <= set(CLASSES)
    assert len(tl) and (tl.end_frame > tl.start_frame).all() and (tl.score > 0.2).all()
    np.testing.assert_allclose(tl.start_s.astype(float), tl.start_frame / 25, atol=1e-3)
    ev = json.loads((out / "timeline_eval.json").read_text())
    s = ev["pooled"]["0.5"]
    assert s["tp"] + s["fp"] == len(tl) and s["tp"] + s["fn"] == 4
    assert ev["settings"]["window_s"] == 0.8 and ev["settings"]["background"] == []
    timing = pd.read_csv(out / "timing.csv")
    assert timing.windows.tolist() == [len(win)] and timing.keypoint_workers.tolist() == [1]
    assert (timing[["crop_s", "models_s"]] > 0).all(axis=None)
    assert (out / "timeline.png").stat().st_size > 5000
    assert pd.read_csv(out / "skipped.csv").empty
    # --render: the whole video, its timeline strip under it
    import cv2
    rendered = pd.read_csv(out / "render.csv", keep_default_na=False)
    assert rendered.problem.tolist() == [""] and rendered.frames.tolist() == [n]
    cap = cv2.VideoCapture(str(out / rendered.file[0]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n
    cap.release()


def test_timeline_bad_inputs_say_what_is_wrong(tmp_path, long_video, capsys):
    folder = _bundle(tmp_path)  # an older bundle: no training clip length
    video = str(long_video / "videos.csv")
    args = ["--models", str(folder), "--no-progress"]

    def run(*extra):
        code = main([video, "--out", str(tmp_path / "o"), *args, *extra])
        return code, capsys.readouterr().err

    code, err = run("--window", "0")
    assert code == 2 and "--window must be > 0 seconds" in err
    code, err = run("--window", "two")
    assert code == 2 and "--window takes seconds, got 'two'" in err
    code, err = run("--stride", "0.5", "--background", "wave")
    assert code == 2 and "--background wave: not a class of the models" in err
    (tmp_path / "t.csv").write_text("label,start\na,1\n")
    code, err = run("--window", "1", "--truth", str(tmp_path / "t.csv"))
    assert code == 2 and "needs columns label, start_frame, end_frame" in err
    code, err = run("--window", "1", "--workers", "0")
    assert code == 2 and "--workers must be >= 1" in err
    # no clip length in the bundle: 2 s and a note; a corrupt video is skipped, the rest go on
    (tmp_path / "corrupt.mp4").write_bytes(b"\0garbage" * 300)
    code = main([video, str(tmp_path / "corrupt.mp4"), "--out", str(tmp_path / "o"), *args,
                 "--stride", "0.4", "--background", "none"])
    err = capsys.readouterr().err
    assert code == 1 and "does not say how long the training clips were" in err
    assert "skipped corrupt: cannot read the video" in err and "Traceback" not in err
    assert pd.read_csv(tmp_path / "o/skipped.csv")["clip"].tolist() == ["corrupt"]
    assert (tmp_path / "o/timeline.png").is_file()
    assert pd.read_csv(tmp_path / "o/windows.csv").end_frame.iloc[0] == 50  # 2 s at 25 fps


def test_chunk_spans_tile_the_range():
    assert chunk_spans(0, 300, 2, overlap=10, min_frames=100) == [(0, 0, 150), (140, 150, 300)]
    assert chunk_spans(10, 130, 4, overlap=5, min_frames=50) == [(10, 10, 70), (65, 70, 130)]
    assert chunk_spans(0, 99, 8, min_frames=100) == [(0, 0, 99)]  # too short: serial
    for start, end, parts in [(0, 1801, 16), (7, 1000, 3)]:
        spans = chunk_spans(start, end, parts, overlap=15, min_frames=60)
        kept = [(k, b) for _, k, b in spans]
        assert kept[0][0] == start and kept[-1][1] == end
        assert all(a[1] == b[0] for a, b in zip(kept, kept[1:]))
        assert all(k - r <= 15 and r >= start for r, k, _ in spans)


def test_parallel_mediapipe_agrees_with_the_serial_run(shared_media):
    """Chunks on 2 processes give the serial run's per-frame keypoints: the first chunk
    exactly (same graph, same frames), the others after the tracker has settled."""
    from mgpipe.keypoints import extract_mediapipe, extract_mediapipe_parallel

    video = shared_media / "carphone-upper-body.mp4"  # 120 frames, one person
    kp, info = extract_mediapipe(video)
    par, pinfo = extract_mediapipe_parallel(video, workers=2, overlap=10, min_chunk=50)
    assert par.shape == kp.shape == (120, 68, 3) and par.dtype == np.float32
    assert pinfo["chunks"] == 2 and pinfo["frames"] == 120
    assert set(info) <= set(pinfo) and pinfo["width"] == info["width"]
    np.testing.assert_array_equal(par[:60], kp[:60])
    seen, pseen = kp[60:, :25, 2] > 0.5, par[60:, :25, 2] > 0.5
    both = seen & pseen
    err = np.linalg.norm(kp[60:, :25, :2] - par[60:, :25, :2], axis=-1)[both]
    assert both.sum() > 0.9 * (seen | pseen).sum(), (both.sum(), (seen | pseen).sum())
    # pixels of a 176x144 frame; the smoothing filter restarted 10 frames before the cut
    assert np.median(err) < 2.0 and np.percentile(err, 90) < 6.0, (np.median(err),
                                                                    np.percentile(err, 90))
