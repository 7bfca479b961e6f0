"""Saliency-guided crop boxes: hand-checked cases."""
import numpy as np

from mgpipe.crop import crop_frames, motion_energy, saliency_box


def still_person(t=20):
    """A person in a 200x100 frame: every keypoint seen, standing still at x 40..60."""
    kp = np.zeros((t, 68, 3), np.float32)
    kp[..., 0] = np.linspace(40, 60, 68)
    kp[..., 1] = 50
    kp[..., 2] = 1
    return kp


def test_motion_energy_counts_seen_displacement_only():
    kp = still_person(3)
    kp[:, 26, 0] = [10, 13, 13]   # moves 3 px, then stays
    kp[1, 47, 2] = 0              # unseen in the middle frame: no energy across the gap
    kp[:, 47, 0] = [0, 50, 100]
    e = motion_energy(kp)
    assert e[26] == 3 and e[47] == 0 and e[0] == 0


def test_box_follows_the_moving_hand_and_stays_square_inside_frame():
    kp = still_person()
    kp[:, 47:68, 0] = 150 + 10 * np.sin(np.arange(20))[:, None]   # right hand waves at x~150
    box, fallback = saliency_box(kp, (200, 100), margin=0.1, min_size=0.1)
    x0, y0, x1, y1 = box
    assert not fallback
    assert abs((x1 - x0) - (y1 - y0)) < 1e-3          # square
    assert 0 <= x0 and x1 <= 200 and 0 <= y0 and y1 <= 100
    assert x0 < 150 < x1                             # the moving hand is inside
    assert (x0 + x1) / 2 > 100                       # and it pulls the box towards it


def test_no_keypoints_falls_back_to_the_whole_frame():
    kp = np.zeros((5, 68, 3), np.float32)
    box, fallback = saliency_box(kp, (64, 48))
    assert fallback and list(box) == [0, 0, 64, 48]


def test_crop_frames_shape_and_content():
    frames = np.zeros((4, 20, 30, 3), np.uint8)
    frames[:, 5:15, 10:20] = 255                      # a white square
    out = crop_frames(frames, np.array([10, 5, 20, 15], np.float32), 8)
    assert out.shape == (4, 8, 8, 3) and out.min() == 255


# ---- one decoding pass per video ----------------------------------------------------------------

def _video(path, frames=120, size=(80, 60)):
    import cv2
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    for i in range(frames):
        f = np.full((h, w, 3), 40, np.uint8)
        cv2.circle(f, ((3 * i) % w, h // 2), 8, (255, 200, 0), -1)
        vw.write(f)
    vw.release()
    return str(path)


def test_crop_video_equals_per_clip_crops_and_skips_bad_clips(tmp_path):
    from mgpipe.crop import crop_video
    from mgpipe.sampling import uniform_indices
    from mgpipe.video import DecodeStats, read_frames

    video = _video(tmp_path / "v.mp4")
    kp = still_person(30)
    kp[..., 0] += 10
    clips = [dict(clip_id="a", start=0, frames=30, kp=kp, frame_size=(80, 60)),
             dict(clip_id="b", start=20, frames=40, kp=None, frame_size=(80, 60)),   # overlaps a
             dict(clip_id="bad", start=500, frames=10, kp=None, frame_size=(80, 60)),
             dict(clip_id="empty", start=5, frames=0, kp=None, frame_size=(80, 60)),
             dict(clip_id="c", start=90, frames=30, kp=kp, frame_size=(80, 60))]
    stats = DecodeStats()
    out = {cid: (rgb, attrs, full, err) for cid, rgb, attrs, full, err in
           crop_video(video, clips, 8, 16, full_frame={"a"}, stats=stats)}
    assert sorted(out) == ["a", "b", "bad", "c", "empty"]
    assert out["bad"][3] is not None and "no frame decoded" in str(out["bad"][3])
    assert out["empty"][3] is not None
    for c in (clips[0], clips[1], clips[4]):
        rgb, attrs, full, err = out[c["clip_id"]]
        assert err is None and rgb.shape == (8, 16, 16, 3)
        idx = uniform_indices(c["frames"], 8)
        frames = read_frames(video, idx, c["start"], c["start"] + c["frames"])
        box = (saliency_box(c["kp"], (80, 60))[0] if c["kp"] is not None
               else np.array([0, 0, 80, 60], np.float32))
        assert np.array_equal(rgb, crop_frames(frames, box, 16))
        assert np.array_equal(attrs["frame_indices"], idx)
        assert (full is not None) == (c["clip_id"] == "a")
        if full is not None:
            assert np.array_equal(full, frames[4])
    assert stats.opened == 1 and stats.decoded <= 120  # one pass, each frame at most once


def test_crop_stage_groups_clips_by_video(tmp_path, capsys):
    """The stage: clips of two videos interleaved in the manifest; rgb.h5 in manifest order,
    a bad clip skipped with its reason, each video decoded once."""
    import h5py
    import pandas as pd
    import yaml

    from mgpipe.crop import crop_clip

    v1, v2 = _video(tmp_path / "v1.mp4"), _video(tmp_path / "v2.mp4", 90)
    rows = [("x1", v1, 0, 40), ("y1", v2, 10, 30), ("x2", v1, 30, 40), ("bad", v2, 300, 20),
            ("x3", v1, 80, 40)]
    m = pd.DataFrame([dict(clip_id=c, subject="S1", split="train", label="a", video=v,
                           start_frame=s, end_frame=s + n, frames=n, fps=25.0, width=80,
                           height=60) for c, v, s, n in rows])
    m.to_csv(tmp_path / "manifest.csv", index=False)
    with h5py.File(tmp_path / "kp.h5", "w") as f:
        f.create_dataset("x1/kp", data=still_person(40))
    params = yaml.safe_load(open("params.yaml"))
    params["rgb"].update(frames=4, size=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    import stages.crop as stage

    rc = stage.main(["--params", str(tmp_path / "params.yaml"), "--manifest",
                     str(tmp_path / "manifest.csv"), "--keypoints", str(tmp_path / "kp.h5"),
                     "--out", str(tmp_path / "out" / "rgb.h5")])
    assert rc == 0
    with h5py.File(tmp_path / "out" / "rgb.h5", "r") as f:
        assert list(f) == sorted(["x1", "y1", "x2", "x3"])
        for cid, v, s, n in rows:
            if cid != "bad":
                kp = still_person(40) if cid == "x1" else None
                ref, _ = crop_clip(v, s, n, kp, (80, 60), 4, 8)
                assert np.array_equal(f[cid][()], ref)
    skipped = pd.read_csv(tmp_path / "out" / "rgb_skipped.csv")
    assert list(skipped.clip_id) == ["bad"] and "no frame decoded" in skipped.reason[0]
    printed = capsys.readouterr().out
    assert "in 2 passes over 2 videos (each frame at most once" in printed
    assert not [p for p in (tmp_path / "out").iterdir() if "scratch" in p.name]
