"""Keypoint extraction: MediaPipe Holistic on real clips, and the parallel resumable engine."""
from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest

from mgpipe.keypoints import (
    REQUIRED_ATTRS, VideoError, clip_signature, extract_mediapipe, extract_mediapipe_clip,
    holistic_frame, merge_shards, parse_shard, read_clip, run_extraction, shard_path,
)
from mgpipe.layout import LEFT_HAND, NECK, RIGHT_HAND

# ---- holistic_frame (pure) -------------------------------------------------------------------


def _hand(cx, cy, size=20.0):
    rng = np.random.default_rng(int(cx * 7 + cy))
    return (np.array([cx, cy]) + rng.uniform(-size, size, (21, 2))).astype(np.float32)


def _pose(lw=(200, 100), rw=(100, 100)):
    pose = np.zeros((25, 3), np.float32)
    pose[:, :2] = (150, 60)
    pose[:, 2] = 0.9
    pose[11, :2], pose[12, :2] = (190, 60), (110, 60)
    pose[15, :2], pose[16, :2] = lw, rw
    return pose


def test_holistic_frame_maps_sides_and_neck():
    left, right = _hand(200, 100), _hand(100, 100)
    kp, has_l, has_r = holistic_frame(_pose(), left, right, 320, 240)
    assert kp.shape == (68, 3) and kp.dtype == np.float32 and has_l and has_r
    np.testing.assert_allclose(kp[LEFT_HAND:LEFT_HAND + 21, :2], left)
    np.testing.assert_allclose(kp[RIGHT_HAND:RIGHT_HAND + 21, :2], right)
    assert (kp[LEFT_HAND:, 2] == 1).all()
    np.testing.assert_allclose(kp[NECK], [150, 60, 0.9])
    kp, has_l, has_r = holistic_frame(_pose(), None, right, 320, 240)
    assert not has_l and (kp[LEFT_HAND:LEFT_HAND + 21] == 0).all()
    kp, has_l, has_r = holistic_frame(None, left, right, 320, 240)
    assert (kp == 0).all() and not has_l and not has_r


def test_holistic_frame_drops_a_duplicated_hand():
    same = _hand(195, 100)
    # The one physical hand is at the pose's left wrist: the right-hand copy goes.
    kp, has_l, has_r = holistic_frame(_pose(), same, same + 1, 320, 240)
    assert has_l and not has_r and (kp[RIGHT_HAND:, 2] == 0).all()
    kp, has_l, has_r = holistic_frame(_pose(lw=(300, 200), rw=(190, 100)), same, same + 1, 320, 240)
    assert has_r and not has_l and (kp[LEFT_HAND:RIGHT_HAND, 2] == 0).all()
    kp, has_l, has_r = holistic_frame(_pose(), same, same + 1, 320, 240, dedupe_hands=False)
    assert has_l and has_r


def test_holistic_frame_zeroes_points_outside_the_frame():
    pose = _pose()
    pose[13, :2] = (150, 240 + 7)  # past the margin, 2% of 320 = 6.4 px
    pose[14, :2] = (150, 240 + 6)  # within it
    pose[23, :2] = (150, 400)
    kp, _, _ = holistic_frame(pose, None, None, 320, 240)
    assert kp[13, 2] == 0 and kp[14, 2] == pytest.approx(0.9) and kp[23, 2] == 0
    assert kp[23, 1] == 400  # coordinates are kept, only the score says "missing"
    kp, _, _ = holistic_frame(pose, None, None, 320, 240, outside_margin=None)
    assert kp[23, 2] == pytest.approx(0.9)


# ---- MediaPipe on real clips -------------------------------------------------------------------

# Keypoints with score > 0 lie in the frame grown by the default outside_margin (2% of its
# larger side). MediaPipe Pose extrapolates the unseen body far outside the frame (on the
# make-up clip: the left shoulder 134 px past the right edge with visibility 0.96, elbows
# 155 px below), so extraction marks those missing; a few pixels of slack stay for landmarks
# regressed just past the edge.
MARGIN = 0.02


def _assert_in_frame(kp, width, height):
    pts = kp[kp[..., 2] > 0]
    m = MARGIN * max(width, height) + 1e-3
    assert (pts[:, 0] >= -m).all() and (pts[:, 0] <= width + m).all()
    assert (pts[:, 1] >= -m).all() and (pts[:, 1] <= height + m).all()


def _nearer_own_wrist(kp, hand_first, own, other):
    """(frames where the hand wrist is nearer pose wrist ``own``, frames nearer ``other``)."""
    both = (kp[:, hand_first, 2] > 0) & (kp[:, own, 2] > 0) & (kp[:, other, 2] > 0)
    w = kp[both, hand_first, :2]
    d_own = np.linalg.norm(w - kp[both, own, :2], axis=1)
    d_other = np.linalg.norm(w - kp[both, other, :2], axis=1)
    return int((d_own < d_other).sum()), int((d_own >= d_other).sum())


@pytest.fixture(scope="module")
def makeup(shared_media):
    return extract_mediapipe(shared_media / "makeup-upper-body.avi")


def test_mediapipe_makeup_clip(makeup):
    kp, info = makeup
    assert kp.shape == (164, 68, 3) and kp.dtype == np.float32
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (164, 320, 240, 25.0)
    assert info["detector"] == "mediapipe-holistic" and info["detector_version"] == "0.10.21"
    assert info["frames_with_pose"] == 164
    assert (kp[:, :11, 2] > 0).any(1).all()  # the face: a person in every frame
    any_hand = (kp[:, LEFT_HAND, 2] > 0) | (kp[:, RIGHT_HAND, 2] > 0)
    assert any_hand.mean() >= 0.8
    _assert_in_frame(kp, 320, 240)
    # Pixels, not normalised coordinates: a hand spans tens of pixels.
    hand = kp[kp[:, RIGHT_HAND, 2] > 0, RIGHT_HAND:RIGHT_HAND + 21, :2]
    assert np.ptp(hand, axis=1).max(1).mean() > 20


def test_mediapipe_makeup_hands_not_swapped(makeup):
    kp, _ = makeup
    near, far = _nearer_own_wrist(kp, LEFT_HAND, 15, 16)
    assert near > 2 * far, (near, far)
    near, far = _nearer_own_wrist(kp, RIGHT_HAND, 16, 15)
    assert near > 2 * far, (near, far)


def test_mediapipe_carphone_clip(shared_media):
    kp, info = extract_mediapipe(shared_media / "carphone-upper-body.mp4")
    assert kp.shape == (120, 68, 3) and info["frames_with_pose"] == 120
    assert (info["width"], info["height"]) == (176, 144)
    _assert_in_frame(kp, 176, 144)


def test_mediapipe_ntu_first_frames_and_range(shared_media):
    """Two real hands far apart: each hand block sits at its own pose wrist. The range is
    [start_frame, end_frame): 30 frames of 1920x1080 keep the test fast."""
    kp, info = extract_mediapipe_clip(
        {"video": str(shared_media / "ntu-drink-water.avi"), "start_frame": 30, "end_frame": 60})
    assert kp.shape == (30, 68, 3) and info["frames_with_pose"] == 30
    assert info["frames_with_left_hand"] >= 20 and info["frames_with_right_hand"] >= 20
    _assert_in_frame(kp, 1920, 1080)
    for first, own, other in ((LEFT_HAND, 15, 16), (RIGHT_HAND, 16, 15)):
        near, far = _nearer_own_wrist(kp, first, own, other)
        assert near >= 20 and far == 0, (first, near, far)


def test_bad_videos_raise_naming_the_file(tmp_path):
    missing = tmp_path / "nope.avi"
    with pytest.raises(FileNotFoundError, match="nope.avi"):
        extract_mediapipe(missing)
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty.avi"):
        extract_mediapipe(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(VideoError, match="junk.mp4"):
        extract_mediapipe(junk)


def test_range_past_the_end_raises(shared_media):
    with pytest.raises(VideoError, match="carphone-upper-body.mp4"):
        extract_mediapipe(shared_media / "carphone-upper-body.mp4", start_frame=500)


def test_mediapipe_in_worker_process(shared_media, tmp_path):
    """The real backend through the engine: spawned worker, picklable extract_fn."""
    fn = partial(extract_mediapipe_clip, model_complexity=1)
    pickle.dumps(fn)
    video = shared_media / "carphone-upper-body.mp4"
    clips = [{"clip_id": "car", "video": str(video), "start_frame": 0, "end_frame": 15,
              "signature": "s"}]
    s = run_extraction(clips, tmp_path / "kp.h5", fn, workers=1, progress=False)
    assert s.done == 1 and not s.skipped
    kp, attrs = read_clip(tmp_path / "kp.h5", "car")
    assert kp.shape == (15, 68, 3) and attrs["detector"] == "mediapipe-holistic"
    assert attrs["source"] == str(video) and attrs["width"] == 176 and attrs["frames"] == 15


# ---- the engine, with a cheap extract_fn --------------------------------------------------------

def fake_extract(clip):
    """Top-level (picklable) extract_fn: keypoints from a .npy file; each call leaves a file
    in clip['calls'] so tests can count calls across processes."""
    calls = Path(clip["calls"])
    (calls / f"{clip['clip_id']}.{os.getpid()}.{os.urandom(4).hex()}").touch()
    time.sleep(clip.get("sleep", 0))
    action = clip.get("action")
    if action in ("stderr", "fatal"):  # what C++ logging does: write to fd 2 directly
        os.write(2, NOISE + f"E0000 real error in {clip['clip_id']}\n".encode())
    if action == "fatal":
        os._exit(134)  # abort() right after a fatal log line
    if action == "raise":
        raise ValueError("corrupt video")
    if action == "interrupt":
        raise KeyboardInterrupt
    if action == "crash":
        os._exit(3)  # a worker dying like a segfaulting decoder
    kp = np.load(clip["video"])
    return kp, dict(fps=25.0, width=64, height=48, detector="fake", detector_version="1")


NOISE = (b"W0000 00:00:1795802112.162314    3943 inference_feedback_manager.cc:114] Feedback "
         b"manager requires a model with a single signature inference. Disabling support for "
         b"feedback tensors.\n"
         b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")


def _calls(calls_dir: Path) -> list[str]:
    return sorted(p.name.split(".")[0] for p in calls_dir.iterdir())


@pytest.fixture
def corpus(tmp_path):
    """Eight small clips as .npy files; returns (clips, calls dir, root)."""
    calls = tmp_path / "calls"
    calls.mkdir()
    rng = np.random.default_rng(0)
    clips = []
    for i in range(8):
        kp = rng.uniform(1, 40, (5 + i, 68, 3)).astype(np.float32)
        path = tmp_path / f"c{i}.npy"
        np.save(path, kp)
        clips.append({"clip_id": f"c{i}", "video": str(path), "signature": f"sig{i}",
                      "calls": str(calls)})
    return clips, calls, tmp_path


def _contents(path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: (f[k]["kp"][()], dict(f[k].attrs)) for k in f}


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])
        assert a[k][1] == b[k][1]


def test_parallel_run_writes_exactly_the_listed_clips(corpus):
    clips, calls, root = corpus
    out = root / "out" / "kp.h5"
    s = run_extraction(clips[:6], out, fake_extract, workers=2, progress=False)
    assert (s.done, s.reused, s.skipped) == (6, 0, [])
    assert out.exists() and not Path(str(out) + ".partial").exists()
    got = _contents(out)
    assert sorted(got) == [f"c{i}" for i in range(6)]
    for c in clips[:6]:
        kp, attrs = got[c["clip_id"]]
        np.testing.assert_array_equal(kp, np.load(c["video"]))
        assert set(REQUIRED_ATTRS) <= set(attrs)
        assert attrs["signature"] == c["signature"] and attrs["frames"] == len(kp)
        assert attrs["source"] == c["video"] and attrs["detector"] == "fake"
    assert _calls(calls) == sorted(c["clip_id"] for c in clips[:6])


def test_interrupted_run_resumes_without_redoing_finished_clips(corpus):
    clips, calls, root = corpus
    out = root / "kp.h5"
    partial_file = Path(str(out) + ".partial")
    broken = [dict(c) for c in clips]
    broken[5]["action"] = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        run_extraction(broken, out, fake_extract, workers=2, progress=False)
    assert not out.exists() and partial_file.exists()
    with h5py.File(partial_file, "r") as f:
        finished = set(f)
    assert finished and "c5" not in finished
    first_calls = _calls(calls)
    for p in calls.iterdir():
        p.unlink()

    s = run_extraction(clips, out, fake_extract, workers=2, progress=False)
    assert s.reused == len(finished) and s.done == 8 - len(finished)
    assert set(_calls(calls)) == {c["clip_id"] for c in clips} - finished  # no clip redone
    assert set(first_calls) >= finished
    assert out.exists() and not partial_file.exists()
    got = _contents(out)
    assert sorted(got) == [c["clip_id"] for c in clips]  # none lost
    for c in clips:
        np.testing.assert_array_equal(got[c["clip_id"]][0], np.load(c["video"]))


def test_rerun_reuses_output_and_redoes_changed_clips(corpus):
    clips, calls, root = corpus
    out = root / "kp.h5"
    run_extraction(clips[:6], out, fake_extract, workers=0, progress=False)
    for p in calls.iterdir():
        p.unlink()
    # Nothing changed: everything is copied from the existing output (DVC persist).
    s = run_extraction(clips[:6], out, fake_extract, workers=0, progress=False)
    assert (s.done, s.reused) == (0, 6) and _calls(calls) == []

    # c1's source changed, c2 left the list, c6 joined.
    changed = [dict(c) for c in clips[:6] if c["clip_id"] != "c2"] + [clips[6]]
    changed[1]["signature"] = "sig1-new"
    np.save(changed[1]["video"], np.ones((3, 68, 3), np.float32))
    s = run_extraction(changed, out, fake_extract, workers=0, progress=False)
    assert (s.done, s.reused) == (2, 4) and _calls(calls) == ["c1", "c6"]
    got = _contents(out)
    assert sorted(got) == ["c0", "c1", "c3", "c4", "c5", "c6"]
    assert got["c1"][1]["signature"] == "sig1-new" and got["c1"][0].shape == (3, 68, 3)


def test_stale_partial_is_reconciled(corpus):
    """A partial file from an interrupted run with another list: unlisted and changed clips
    go, the rest is kept; a corrupt partial is started afresh."""
    clips, calls, root = corpus
    out = root / "kp.h5"
    run_extraction(clips[:4], out, fake_extract, workers=0, progress=False)
    os.replace(out, str(out) + ".partial")
    for p in calls.iterdir():
        p.unlink()
    new = [dict(c) for c in clips[1:5]]
    new[0]["signature"] = "changed"
    s = run_extraction(new, out, fake_extract, workers=0, progress=False)
    assert (s.done, s.reused) == (2, 2) and _calls(calls) == ["c1", "c4"]
    assert sorted(_contents(out)) == ["c1", "c2", "c3", "c4"]

    # A group half-written when the run was killed (no signature yet) is redone.
    with h5py.File(str(out) + ".partial", "w") as f:
        f.create_group("c2").create_dataset("kp", data=np.zeros((1, 68, 3), np.float32))
    out.unlink()
    for p in calls.iterdir():
        p.unlink()
    s = run_extraction(new, out, fake_extract, workers=0, progress=False)
    assert s.done == 4 and _calls(calls) == ["c1", "c2", "c3", "c4"]

    Path(str(out) + ".partial").write_bytes(b"not hdf5")
    out.unlink()
    s = run_extraction(new, out, fake_extract, workers=0, progress=False)
    assert s.done == 4 and sorted(_contents(out)) == ["c1", "c2", "c3", "c4"]


def test_failing_clips_are_skipped_and_the_rest_written(corpus):
    clips, calls, root = corpus
    bad = [dict(c) for c in clips]
    bad[1]["action"] = "raise"
    bad[4]["action"] = "crash"
    nobody = root / "nobody.npy"
    np.save(nobody, np.zeros((4, 68, 3), np.float32))
    bad[6]["video"] = str(nobody)
    bad[7]["video"] = str(root / "missing.npy")
    out = root / "kp.h5"
    s = run_extraction(bad, out, fake_extract, workers=2, progress=False)
    skipped = dict(s.skipped)
    assert sorted(skipped) == ["c1", "c4", "c6", "c7"]
    assert "corrupt video" in skipped["c1"]
    assert "BrokenProcessPool" in skipped["c4"]
    assert "no person" in skipped["c6"]
    assert "FileNotFoundError" in skipped["c7"]
    assert s.done == 4 and sorted(_contents(out)) == ["c0", "c2", "c3", "c5"]


def test_shards_merge_to_the_unsharded_output(corpus):
    clips, calls, root = corpus
    whole = root / "whole" / "kp.h5"
    run_extraction(clips, whole, fake_extract, workers=0, progress=False)
    out = root / "sharded" / "kp.h5"
    paths = []
    for i in range(3):
        s = run_extraction(clips, out, fake_extract, workers=0, shard=(i, 3), progress=False)
        assert s.path == str(shard_path(out, i, 3))
        assert sorted(_contents(s.path)) == sorted(c["clip_id"] for c in clips[i::3])
        paths.append(s.path)
    assert not out.exists()
    assert merge_shards(paths, out) == 8
    _assert_same(_contents(out), _contents(whole))
    # Merged in the list's order, the same bytes as the unsharded run.
    assert merge_shards(paths, out, order=[c["clip_id"] for c in clips]) == 8
    assert _sha256(out) == _sha256(whole)
    with pytest.raises(ValueError, match="more than one"):
        merge_shards([paths[0], paths[0]], root / "dup.h5")
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_bad_clip_lists_are_rejected(corpus, tmp_path):
    clips, _, _ = corpus
    with pytest.raises(ValueError, match="duplicate"):
        run_extraction([clips[0], clips[0]], tmp_path / "x.h5", fake_extract, workers=0)
    with pytest.raises(ValueError, match="signature"):
        run_extraction([{"clip_id": "a"}], tmp_path / "x.h5", fake_extract, workers=0)
    with pytest.raises(ValueError, match="HDF5 group"):
        run_extraction([{**clips[0], "clip_id": "a/b"}], tmp_path / "x.h5", fake_extract, workers=0)


# ---- identical content, identical bytes (SPEC section 12) ----------------------------------------

def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_output_bytes_do_not_depend_on_completion_order(corpus):
    """Two parallel runs whose clips finish in different orders write the same bytes."""
    clips, calls, root = corpus
    forward = [{**c, "sleep": 0.05 * i} for i, c in enumerate(clips)]
    backward = [{**c, "sleep": 0.05 * (len(clips) - i)} for i, c in enumerate(clips)]
    a = run_extraction(forward, root / "a" / "kp.h5", fake_extract, workers=2, progress=False)
    b = run_extraction(backward, root / "b" / "kp.h5", fake_extract, workers=2, progress=False)
    assert a.done == b.done == 8
    assert _sha256(a.path) == _sha256(b.path)


def test_resumed_run_writes_the_same_bytes_as_a_fresh_one(corpus):
    clips, calls, root = corpus
    fresh = run_extraction(clips, root / "fresh" / "kp.h5", fake_extract, workers=2,
                           progress=False)
    out = root / "resumed" / "kp.h5"
    broken = [dict(c) for c in clips]
    broken[5]["action"] = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        run_extraction(broken, out, fake_extract, workers=2, progress=False)
    s = run_extraction(clips[::-1], out, fake_extract, workers=0, progress=False)
    assert s.reused > 0 and _sha256(out) != _sha256(fresh.path)  # another list order...
    s = run_extraction(clips, out, fake_extract, workers=2, progress=False)
    assert s.reused == 8 and _sha256(out) == _sha256(fresh.path)  # ...the same as fresh


def test_signature_follows_content_not_location_or_mtime(tmp_path, monkeypatch):
    """A clone elsewhere (same relative path, same bytes) keeps the signature; a changed
    byte, size, frame range or parameter changes it."""
    rng = np.random.default_rng(0)
    for size in (1000, 5 << 20):  # read whole; sampled (first, middle, last MiB)
        data = rng.integers(0, 256, size, np.uint8).tobytes()
        for clone in ("a", "b"):
            (tmp_path / clone / "videos").mkdir(parents=True, exist_ok=True)
            (tmp_path / clone / "videos" / "v.avi").write_bytes(data)
        os.utime(tmp_path / "b" / "videos" / "v.avi", (1, 1))

        def sig(where, video="videos/v.avi", start=0, end=10, **params):
            monkeypatch.chdir(tmp_path / where)
            return clip_signature(video, start, end, backend="mediapipe",
                                  **{"model_complexity": 1, **params})

        assert sig("a") == sig("b")
        assert str(tmp_path) not in sig("a") and "mtime" not in sig("a")
        digests = {}
        assert clip_signature("videos/v.avi", 0, 10, digests=digests, backend="mediapipe",
                              model_complexity=1) == sig("a") and list(digests) == ["videos/v.avi"]
        assert sig("a", start=1) != sig("a") and sig("a", model_complexity=2) != sig("a")
        for offset in (0, size // 2, size - 1):
            changed = bytearray(data)
            changed[offset] ^= 0xFF
            (tmp_path / "b" / "videos" / "v.avi").write_bytes(bytes(changed))
            assert sig("b") != sig("a"), offset
        (tmp_path / "b" / "videos" / "v.avi").write_bytes(data + b"\0")
        assert sig("b") != sig("a")
    with pytest.raises(FileNotFoundError):
        sig("a", video="videos/missing.avi")


def test_source_is_the_path_as_given(corpus, monkeypatch):
    clips, calls, root = corpus
    monkeypatch.chdir(root)
    rel = [{**c, "video": Path(c["video"]).name} for c in clips[:2]]
    run_extraction(rel, root / "kp.h5", fake_extract, workers=0, progress=False)
    assert read_clip(root / "kp.h5", "c1")[1]["source"] == "c1.npy"


# ---- non-finite keypoints ----------------------------------------------------------------------

def test_nonfinite_keypoints_become_unseen_and_are_counted(corpus):
    clips, calls, root = corpus
    kp = np.load(clips[0]["video"])
    kp[0, 3, 0], kp[1, 5, 2], kp[2, 7, 1] = np.nan, np.inf, -np.inf
    np.save(clips[0]["video"], kp)
    np.save(clips[1]["video"], np.full((4, 68, 3), np.nan, np.float32))  # nobody, only NaN
    s = run_extraction(clips[:3], root / "kp.h5", fake_extract, workers=0, progress=False)
    assert s.done == 2 and dict(s.skipped) == {"c1": "no person found in any frame"}
    got, attrs = read_clip(root / "kp.h5", "c0")
    assert np.isfinite(got).all() and attrs["nonfinite_cleaned"] == 3
    assert (got[0, 3] == 0).all() and (got[1, 5] == 0).all() and (got[2, 7] == 0).all()
    np.testing.assert_array_equal(np.delete(got[0], 3, 0), np.delete(kp[0], 3, 0))
    assert "nonfinite_cleaned" not in read_clip(root / "kp.h5", "c2")[1]


# ---- workers' stderr ----------------------------------------------------------------------------

def test_worker_stderr_loses_known_noise_only(corpus, capfd):
    """Known MediaPipe/TFLite noise goes; anything else reaches our stderr, even a worker's
    last line before it aborts."""
    clips, calls, root = corpus
    clips = [{**c, "action": a} for c, a in zip(clips[:3], ("stderr", "fatal", None))]
    s = run_extraction(clips, root / "kp.h5", fake_extract, workers=2, progress=False)
    err = capfd.readouterr().err
    assert s.done == 2 and sorted(dict(s.skipped)) == ["c1"]
    assert "E0000 real error in c0" in err and "E0000 real error in c1" in err
    assert "inference_feedback_manager" not in err and "XNNPACK" not in err, err


MEDIAPIPE_IN_WORKER = """
import sys
from functools import partial
from mgpipe.keypoints import extract_mediapipe_clip, run_extraction

if __name__ == "__main__":
    clips = [{"clip_id": "car", "video": sys.argv[1], "start_frame": 0, "end_frame": 10,
              "signature": "s"}]
    s = run_extraction(clips, sys.argv[2], partial(extract_mediapipe_clip, model_complexity=1),
                       workers=1, progress=False)
    print(s.done, s.skipped)
"""


@pytest.mark.shared
def test_mediapipe_workers_stderr_has_no_known_noise(shared_media, tmp_path):
    """MediaPipe's C++ warnings (feedback tensors, XNNPACK, absl) are not in the stage's
    stderr, captured at the file-descriptor level of a separate process."""
    script = tmp_path / "run.py"
    script.write_text(MEDIAPIPE_IN_WORKER)
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(script), str(shared_media / "carphone-upper-body.mp4"),
                        str(tmp_path / "kp.h5")], capture_output=True, text=True, timeout=300,
                       cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0 and r.stdout.strip() == "1 []", r.stderr
    for noise in ("inference_feedback_manager", "XNNPACK", "absl::InitializeLog", "NORM_RECT"):
        assert noise not in r.stderr, r.stderr


def test_only_the_model_the_wheel_ships_is_allowed():
    """model_complexity 0 and 2 download their models at first use: offline (clusters,
    firewalls) every clip was skipped with a URLError. The stage now stops with the reason."""
    from mgpipe.keypoints import mediapipe_model_problem

    assert mediapipe_model_problem(1) == ""
    assert "pose_landmark_heavy.tflite" in mediapipe_model_problem(2)
    assert "use keypoints.model_complexity: 1" in mediapipe_model_problem(0)


# ---- one task per source video ------------------------------------------------------------------

def fake_extract_video(clips):
    """Top-level extract_fn for ``by_video=True``: ``fake_extract`` per clip of one video,
    from each clip's ``npy``; action "raise" fails that clip, "crash" kills the worker,
    "video_fails" raises mid-video (the clips not yet yielded fail)."""
    for clip in clips:
        if clip.get("action") == "video_fails":
            raise OSError("decoder died mid-video")
        try:
            yield clip["clip_id"], fake_extract({**clip, "video": clip["npy"]})
        except ValueError as err:
            yield clip["clip_id"], err


def _by_video(clips, videos=3):
    return [{**c, "npy": c["video"], "video": f"v{i % videos}"} for i, c in enumerate(clips)]


@pytest.mark.parametrize("workers", [0, 2])
def test_by_video_runs_one_task_per_video_and_skips_per_clip(corpus, workers):
    clips, calls, root = corpus
    clips = _by_video(clips)
    clips[1]["action"] = "raise"           # v1: a bad clip, v1's other clips go on
    clips[5]["action"] = "video_fails"     # v2: clip 2 (done before) kept, clip 5 fails
    clips[4]["action"] = "crash"           # v1 again: only the crashing clip is lost
    if workers == 0:
        clips[4].pop("action")
    out = root / f"w{workers}" / "kp.h5"
    s = run_extraction(clips, out, fake_extract_video, workers=workers, progress=False,
                       by_video=True)
    reasons = dict(s.skipped)
    assert "ValueError: corrupt video" == reasons["c1"]
    assert reasons["c5"] == "OSError: decoder died mid-video"
    expect_skipped = {"c1", "c5"} | ({"c4"} if workers else set())
    assert set(reasons) == expect_skipped
    if workers:
        assert "BrokenProcessPool" in reasons["c4"]
    got = _contents(out)
    assert sorted(got) == sorted({c["clip_id"] for c in clips} - expect_skipped)
    whole = run_extraction([c for c in corpus[0] if c["clip_id"] == "c0"],
                           root / "ref" / "kp.h5", fake_extract, workers=0, progress=False)
    np.testing.assert_array_equal(got["c0"][0], _contents(whole.path)["c0"][0])


def test_by_video_shards_take_whole_videos_and_merge_to_the_unsharded_output(corpus):
    clips, _, root = corpus
    clips = _by_video(clips)
    run_extraction(clips, root / "whole" / "kp.h5", fake_extract_video, workers=0,
                   progress=False, by_video=True)
    out, paths = root / "sharded" / "kp.h5", []
    for i in range(2):
        s = run_extraction(clips, out, fake_extract_video, workers=0, shard=(i, 2),
                           progress=False, by_video=True)
        paths.append(s.path)
        videos = {c["video"] for c in clips if c["clip_id"] in _contents(s.path)}
        assert videos == ({"v0", "v2"} if i == 0 else {"v1"})
    merge_shards(paths, out, order=[c["clip_id"] for c in clips])
    assert out.read_bytes() == (root / "whole" / "kp.h5").read_bytes()


def test_mediapipe_video_pass_equals_per_clip_runs(shared_media):
    from mgpipe.keypoints import extract_mediapipe_video
    from mgpipe.video import DecodeStats

    video = shared_media / "carphone-upper-body.mp4"
    clips = [dict(clip_id="a", video=video, start_frame=0, end_frame=12),
             dict(clip_id="b", video=video, start_frame=8, end_frame=20),      # overlaps a
             dict(clip_id="c", video=video, start_frame=110, end_frame=None),  # to the end
             dict(clip_id="d", video=video, start_frame=500, end_frame=510)]   # past the end
    stats = DecodeStats()
    got = dict(extract_mediapipe_video(clips, stats=stats))
    assert stats.opened == 1 and stats.decoded == 120
    assert isinstance(got["d"], VideoError) and "no frames in [500, 510)" in str(got["d"])
    for c in clips[:3]:
        kp, info = extract_mediapipe(video, start_frame=c["start_frame"], end_frame=c["end_frame"])
        np.testing.assert_array_equal(got[c["clip_id"]][0], kp)
        assert got[c["clip_id"]][1] == info
