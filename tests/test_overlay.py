"""`mgpipe predict --render` (mgpipe.overlay): the drawing functions checked pixel by pixel
on small synthetic images, the streaming mp4 writer, render_clip on a video range and on
keypoints alone, and predict --render end to end on a real clip (../shared/media)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from mgpipe import layout, overlay
from mgpipe.overlay import (BAND, BOX_COLOUR, PART_COLOURS, AtomicVideoWriter, class_colour,
                            draw_banner, draw_bones, draw_box, draw_keypoints, output_name,
                            render_clip, timeline_strip)

FACE, BODY, LHAND, RHAND = PART_COLOURS
L, R = layout.LEFT_HAND, layout.RIGHT_HAND


def _unseen() -> np.ndarray:
    return np.zeros((68, 3), np.float32)


def _read(path) -> list[np.ndarray]:
    from mgpipe.synth_formats import read_video

    return list(read_video(Path(path)))


def _near(pixel, colour, tol=0) -> bool:
    return bool(np.abs(np.asarray(pixel, int) - np.asarray(colour, int)).max() <= tol)


# ---- drawing ---------------------------------------------------------------------------------

def test_keypoints_drawn_where_they_are_in_their_parts_colour():
    img = np.zeros((40, 40, 3), np.uint8)
    kp = _unseen()
    kp[0] = (30, 5, 0.9)           # nose: face
    kp[11] = (20, 30, 0.8)         # left shoulder: body
    kp[L + 8] = (10, 20, 1.0)      # left index tip
    kp[R + 8] = (5, 5, 0.1)        # low score: not drawn
    kp[R + 4] = (np.nan, np.nan, 1.0)  # NaN: skipped, no error
    kp[R + 5] = (35, 35, np.nan)
    draw_keypoints(img, kp, radius=2)
    assert _near(img[5, 30], FACE) and _near(img[30, 20], BODY) and _near(img[20, 10], LHAND)
    assert (img[5, 5] == 0).all() and (img[35, 35] == 0).all()
    # the dark rim: the dot's edge is black, the background beyond untouched
    assert (img[20, 14] == 0).all() and (img[20, 16:] == 0).all()
    # scale 2 maps pixel (10, 20) to (20.5, 40.5), as cv2.resize maps pixel centres
    big = np.zeros((80, 80, 3), np.uint8)
    draw_keypoints(big, kp, scale=2, radius=1.5)
    assert _near(big[40, 20], LHAND) and _near(big[41, 21], LHAND)
    # nothing visible: nothing drawn, no error
    blank = np.zeros((10, 10, 3), np.uint8)
    all_nan = np.full((68, 3), np.nan, np.float32)
    draw_keypoints(blank, all_nan)
    draw_bones(blank, all_nan)
    assert not blank.any()


def test_bones_need_both_ends_and_take_their_parts_colour():
    img = np.zeros((40, 60, 3), np.uint8)
    kp = _unseen()
    kp[R], kp[R + 5] = (10, 10, 1), (50, 10, 1)     # a right-hand bone (wrist - index_mcp)
    kp[11], kp[13] = (10, 30, 1), (50, 30, 0.0)     # shoulder - elbow, elbow unseen
    draw_bones(img, kp, thickness=1)
    assert (R, R + 5) in layout.BONES and (11, 13) in layout.BONES
    assert _near(img[10, 30], RHAND, tol=40)
    assert not img[25:35].any()                      # no bone to the unseen elbow
    # the wrist-to-hand link is body-coloured
    assert overlay.bone_part(16, R) == 1 and overlay.bone_part(R, R + 1) == 3


def test_box_edges_are_the_outermost_pixels_inside_it():
    img = np.zeros((30, 30, 3), np.uint8)
    draw_box(img, (5, 6, 15, 20), thickness=1)
    on = (img == BOX_COLOUR).all(-1)
    assert on[6, 5:15].all() and on[19, 5:15].all() and on[6:20, 5].all() and on[6:20, 14].all()
    assert on.sum() == 2 * 10 + 2 * 14 - 4
    assert not on[7:19, 6:14].any() and not on[5].any() and not on[:, 15].any()
    # scale 2, 2 px wide: the scaled box's own outer pixels (rows 12-13 and 38-39, ...)
    big = np.zeros((60, 60, 3), np.uint8)
    draw_box(big, (5, 6, 15, 20), scale=2, thickness=2)
    on = (big == BOX_COLOUR).all(-1)
    assert on[12:14, 10:30].all() and on[38:40, 10:30].all() and on[12:40, 28:30].all()
    assert not on[11].any() and not on[:, 30].any() and not on[14:38, 12:28].any()


def test_banner_shows_the_prediction_and_greys_a_missing_hand():
    unit = 1.0
    h = overlay.banner_height(unit)
    top = [("touch_nose", 0.62), ("rub_eyes", 0.2), ("lean", 0.1)]
    a = draw_banner(np.zeros((h, 480, 3), np.uint8), top, 4, 10, (True, True), 1, "clip7", unit)
    assert (a[:, :, :] == BAND).all(-1).mean() > 0.6          # mostly background
    row1 = a[:40, 30:240]
    assert (row1.min(-1) > 150).sum() > 100                   # white label text on row 1
    assert _near(a[12, 12], class_colour(1))                  # the class swatch
    b = draw_banner(np.zeros((h, 480, 3), np.uint8), top, 4, 10, (True, False), 1, "clip7", unit)
    legend = slice(2 * h // 3, h)
    assert (a[legend] != b[legend]).any() and (a[: 2 * h // 3] == b[: 2 * h // 3]).all()
    # the right hand's magenta is gone from the legend, grey is there instead
    assert (a[legend] == RHAND).all(-1).any() and not (b[legend] == RHAND).all(-1).any()
    c = draw_banner(np.zeros((h, 480, 3), np.uint8), [], None, None, None)
    assert (c[: h // 3] != BAND).any()                        # "no prediction"


def test_timeline_strip_bars_scores_gaps_and_cursor():
    names = ["a", "b", "c"]
    segs = [(0, 50, "a", 1.0), (50, 100, 1, 0.0), (100, 150, None, 0.5), (150, 200, "zz", 1.0)]
    s = timeline_strip(200, 40, segs, names, current=74)
    assert s.shape == (40, 200, 3) and s.dtype == np.uint8
    y = 35                                                     # in the bar row
    assert _near(s[y, 25], class_colour(0))                    # a sure segment: its colour
    dim = 0.3 * np.array(class_colour(1)) + 0.7 * np.array(BAND)
    assert _near(s[y, 60], dim, tol=1)                         # score 0: dim
    assert _near(s[y, 125], BAND) and _near(s[y, 175], BAND)   # no label, unknown label: gap
    assert (s[y, 74] == 255).all() and (s[y, 80] != 255).any()  # the cursor at frame 74
    assert (s[:12, :100] != BAND).any()                        # "now: b 0%" above the bars
    # span: the strip covers frames [100, 200): frame 150 sits in its middle
    t = timeline_strip(100, 40, [(150, 200, "c", 1.0)], names, span=(100, 200))
    assert _near(t[y, 49], BAND) and _near(t[y, 51], class_colour(2))
    # no segments at all: an empty strip, no error
    assert (timeline_strip(50, 20, [], names, current=3) != BAND).any()


def test_output_geometry_and_output_names():
    assert overlay.output_geometry(176, 144) == (480 / 144, 586, 480)
    assert overlay.output_geometry(640, 480)[1:] == (640, 480)
    assert overlay.output_geometry(1920, 1080)[1:] == (1280, 720)
    assert output_name("sub/b") == "sub/b.mp4" and output_name("../../etc/x") == "etc/x.mp4"
    assert output_name("..") == "clip.mp4"


# ---- writing ---------------------------------------------------------------------------------

def test_writer_is_atomic_and_readable(tmp_path):
    path = tmp_path / "v" / "out.mp4"
    with AtomicVideoWriter(path, 20, (64, 48)) as w:
        for i in range(7):
            w.write(np.full((48, 64, 3), 30 * i, np.uint8))
        assert not path.exists()
        w.close()
    frames = _read(path)
    assert len(frames) == 7 and frames[0].shape == (48, 64, 3)
    assert abs(int(frames[3].mean()) - 90) <= 3
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) == 20
    with pytest.raises(overlay.RenderError, match="the video is 64x48"):
        with AtomicVideoWriter(tmp_path / "bad.mp4", 20, (64, 48)) as w:
            w.write(np.zeros((48, 64, 3), np.uint8))
            w.write(np.zeros((40, 64, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out.mp4", "v"]  # no partial file


def _grey_video(path, frames=9, size=(64, 48), fps=10):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        w.write(np.full((size[1], size[0], 3), 25 * i + 20, np.uint8))
    w.release()
    return path


def test_render_clip_streams_the_range_of_a_video(tmp_path):
    video = _grey_video(tmp_path / "src.mp4")
    kp = np.zeros((4, 68, 3), np.float32)
    kp[:, 11] = (32, 24, 1)   # a shoulder in the middle of the frame
    info = render_clip(tmp_path / "out" / "c.mp4", kp, [("a", 0.7)], classes=["a", "b"],
                       video=video, start_frame=3, frames=4, crop_margin=0.3,
                       segments=[(0, 5, "a", 0.9), (5, 9, "b", 0.5)])
    frames = _read(info.path)
    bh, th = overlay.banner_height(1.0), overlay.timeline_height(1.0)
    assert (info.frames, info.width, info.height, info.fps) == (4, 640, bh + 480 + th, 10)
    assert len(frames) == 4 and frames[0].shape == (bh + 480 + th, 640, 3)
    # source frames 3..6 (grey 95, 120, 145, 170; lossy: the nearest level), upscaled 10x;
    # the shoulder drawn at (32.5, 24.5) * 10 - 0.5; the crop box the crop stage computes,
    # 2 px wide at unit 1
    from mgpipe.crop import saliency_box
    box, fallback = saliency_box(kp, (64, 48), 0.3)
    x0, y0, x1, y1 = (np.round(box) * 10).astype(int)
    assert not fallback and x0 > 0
    for i, f in enumerate(frames):
        band = f[bh:bh + 480]
        levels = 25 * np.arange(9) + 20
        assert np.argmin(np.abs(levels - np.median(band))) == 3 + i, i
        assert _near(band[245, 325], BODY, tol=40)
        assert _near(band[(y0 + y1) // 2, x0], BOX_COLOUR, tol=40)
        assert _near(band[(y0 + y1) // 2, x1 - 1], BOX_COLOUR, tol=40)
        assert not _near(band[(y0 + y1) // 2, x0 - 3], BOX_COLOUR, tol=60)
    assert not list((tmp_path / "out").glob(".*"))
    # the timeline's cursor moves right, frame by frame (frames 3..6 of 0..9 span [3, 7))
    cursors = [int(np.argmax((f[-4, :, :] > 240).all(-1))) for f in frames]
    assert cursors == sorted(cursors) and cursors[0] < cursors[-1]


def test_render_clip_without_video_draws_on_a_blank_canvas(tmp_path):
    kp = np.zeros((5, 68, 3), np.float32)
    kp[:, R:, :2] = np.random.default_rng(0).uniform(10, 90, (21, 2))
    kp[:, R:, 2] = 1
    kp[:, 0] = (99, 119, 1)   # extent: 100 x 120
    info = render_clip(tmp_path / "k.mp4", kp, [("b", 0.5)], classes=["a", "b"])
    bh = overlay.banner_height(1.0)
    assert (info.frames, info.width, info.height, info.fps) == (5, 480, bh + 576, 25)
    f = _read(info.path)[2]
    assert len(_read(info.path)) == 5
    band = f[bh:]
    assert np.median(band) == pytest.approx(overlay.BLANK[0], abs=3)
    assert (np.abs(band.astype(int) - RHAND).max(-1) < 40).sum() > 50  # the right hand
    with pytest.raises(overlay.RenderError, match="neither a video nor keypoints"):
        render_clip(tmp_path / "x.mp4", None)
    with pytest.raises(Exception, match="cannot open|not found"):
        render_clip(tmp_path / "y.mp4", kp, video=tmp_path / "missing.mp4")
    assert not (tmp_path / "y.mp4").exists()


# ---- predict --render ------------------------------------------------------------------------

def test_predict_render_on_a_real_clip(tmp_path, shared_media, monkeypatch, capsys):
    """The tiny trained bundle of test_predict; 30 frames of a real clip through MediaPipe,
    a keypoint file (no video: blank canvas) and a corrupt video (skipped, the others
    rendered); then a render that fails for one clip only."""
    from test_predict import _keypoints, _tiny_bundle

    from mgpipe.predict import main

    folder = _tiny_bundle(tmp_path)
    _keypoints(tmp_path / "k1.npy", frames=12)
    (tmp_path / "corrupt.mp4").write_bytes(b"\0garbage" * 500)
    (tmp_path / "clips.csv").write_text(
        "clip_id,video,keypoints,start_frame,end_frame\n"
        f"car,{shared_media / 'carphone-upper-body.mp4'},,40,70\n"
        "bad,corrupt.mp4,,,\n"
        "kp/one,,k1.npy,,\n")
    out = tmp_path / "out"
    code = main([str(tmp_path / "clips.csv"), "--out", str(out), "--models", str(folder),
                 "--no-progress", "--render"])
    assert code == 1                                           # the corrupt video is skipped
    r = pd.read_csv(out / "render.csv", keep_default_na=False)
    assert r["clip"].tolist() == ["car", "kp/one"] and (r.problem == "").all()
    assert r.file.tolist() == ["car.mp4", "kp/one.mp4"]
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    car = _read(out / "car.mp4")
    bh = overlay.banner_height(1.0)
    assert len(car) == 30 and car[0].shape == (bh + 480, 586, 3)   # 176x144 upscaled
    assert r.frames.tolist() == [30, 12] and (r.ms_per_frame > 0).all()
    # MediaPipe found the face and shoulders (no hand in this clip): drawn in their colours
    band = car[15][bh:].astype(int)
    for colour in (FACE, BODY):
        assert (np.abs(band - colour).max(-1) < 40).sum() > 30, colour
    assert len(_read(out / "kp/one.mp4")) == 12
    assert pred["clip"].tolist() == ["car", "kp/one"]
    assert not list(out.rglob(".*"))                            # no partial files

    # one clip's render fails: the other is still rendered, the failure is reported
    real = overlay.render_clip

    def flaky(path, *a, **k):
        if "k2" in str(path):
            raise OSError("disk full (simulated)")
        return real(path, *a, **k)

    monkeypatch.setattr(overlay, "render_clip", flaky)
    _keypoints(tmp_path / "k2.npy", frames=8, seed=1)
    capsys.readouterr()
    out2 = tmp_path / "out2"
    code = main([str(tmp_path / "k1.npy"), str(tmp_path / "k2.npy"), "--out", str(out2),
                 "--models", str(folder), "--no-progress", "--render"])
    err = capsys.readouterr().err
    r = pd.read_csv(out2 / "render.csv", keep_default_na=False)
    assert code == 1 and "k2: not rendered: disk full (simulated)" in err
    assert r.set_index("clip").problem.to_dict() == {
        "k1": "", "k2": "not rendered: disk full (simulated)"}
    assert not (out2 / "k2.mp4").exists() and len(_read(out2 / "k1.mp4")) == 12
    assert len(pd.read_csv(out2 / "predictions.csv")) == 2     # predictions are unaffected


def test_render_predictions_names_timelines_and_top3(tmp_path):
    """render_predictions on predict's items (duck-typed): <out>/<clip>.mp4 with the clip
    id's folders, the top 3 of the fused row, a timeline strip where one is given."""
    from types import SimpleNamespace

    from mgpipe.predict import Clip

    kp = np.zeros((6, 68, 3), np.float32)
    kp[:, 11] = (40, 40, 1)
    kp[:, 0] = (79, 59, 1)
    items = [SimpleNamespace(clip=Clip("sub/a", keypoints="a.npy"), frames=-1, kp=kp, rgb=None),
             SimpleNamespace(clip=Clip("b", keypoints="b.npy"), frames=-1, kp=kp, rgb=None)]
    fused = np.array([[0.1, 0.6, 0.3], [np.nan] * 3])
    t = overlay.render_predictions(tmp_path, items, fused, ["x", "y", "z"], progress=False,
                                   timelines={"b": [(0, 3, "z", 0.9)]})
    assert list(t.columns) == overlay.RENDER_COLUMNS and (t.problem == "").all()
    assert t.file.tolist() == ["sub/a.mp4", "b.mp4"]
    bh, th = overlay.banner_height(1.0), overlay.timeline_height(1.0)
    a, b = _read(tmp_path / "sub/a.mp4"), _read(tmp_path / "b.mp4")
    assert len(a) == len(b) == 6
    assert a[0].shape[0] == bh + 480 and b[0].shape[0] == bh + 480 + th
    assert _near(b[0][-5, 5], class_colour(2), tol=40)   # the strip's "z" bar
