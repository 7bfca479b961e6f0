"""The grouped reader (one sequential pass per video) gives exactly the per-clip reader's
frames, decodes each frame once, yields clips as they close, and fails per clip."""
import cv2
import numpy as np
import pytest

import mgpipe.video as video_mod
from mgpipe.sampling import uniform_indices
from mgpipe.video import DecodeStats, VideoError, read_clips, read_frames


def _write(path, frames=240, size=(64, 48)):
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (h, w, 3), np.uint8)
    for i in range(frames):
        f = base.copy()
        cv2.circle(f, ((5 * i) % w, h // 2), 6, (255, 255, 255), -1)
        cv2.putText(f, str(i), (2, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        vw.write(f)
    vw.release()
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("video") / "long.mp4")


def _clips(n_frames):
    """Overlapping, nested, disjoint, touching, past-the-end and open-ended clips."""
    n = n_frames
    return [(0, 40, uniform_indices(40, 8)), (20, 60, uniform_indices(40, 8)),
            (30, 35, uniform_indices(5, 8)), (60, 100, uniform_indices(40, 4)),
            (n // 2, n // 2 + 30, np.array([29, 0, 5, 5, 12])),
            (n - 10, n + 5, uniform_indices(15, 6)), (n - 20, None, np.arange(12)),
            (10, 200, uniform_indices(190, 16)), (0, 40, uniform_indices(40, 8))]


def _assert_same_as_per_clip(path, clips):
    stats = DecodeStats()
    got = dict(read_clips(path, clips, stats))
    assert sorted(got) == list(range(len(clips)))
    for k, (start, end, idx) in enumerate(clips):
        ref = read_frames(path, idx, start=start, end=end)
        assert isinstance(got[k], np.ndarray), got[k]
        assert got[k].dtype == np.uint8 and np.array_equal(got[k], ref), k
    return stats


def test_grouped_pass_equals_per_clip_reader_on_generated_video(generated):
    cap = cv2.VideoCapture(str(generated))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    stats = _assert_same_as_per_clip(generated, _clips(n))
    assert stats.opened == 1 and stats.decoded <= n  # each frame decoded at most once


@pytest.mark.parametrize("name", ["carphone-upper-body.mp4", "makeup-upper-body.avi"])
def test_grouped_pass_equals_per_clip_reader_on_real_video(shared_media, name):
    path = shared_media / name
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    stats = _assert_same_as_per_clip(path, _clips(n))
    assert stats.opened == 1 and stats.decoded <= n


def test_clips_are_yielded_as_soon_as_their_last_frame_decodes(generated):
    """Memory stays bounded: a clip leaves the pass (with its frames) when its last sampled
    frame is decoded, not at the end of the video."""
    clips = [(0, 20, uniform_indices(20, 4)), (100, 120, uniform_indices(20, 4)),
             (5, 15, uniform_indices(10, 2))]
    stats, at = DecodeStats(), {}
    for k, frames in read_clips(generated, clips, stats):
        at[k] = stats.decoded
    stops = [s + int(i.max()) + 1 for s, _, i in clips]
    assert at == {k: stops[k] for k in range(3)}
    sampled = {s + int(i) for s, _, idx in clips for i in idx}  # shared frames convert once
    assert stats.decoded == max(stops) and stats.converted == len(sampled) == 8


def test_bad_clips_fail_alone(generated):
    clips = [(0, 10, uniform_indices(10, 4)), (5000, 5010, uniform_indices(10, 4)),
             (7, 7, np.arange(2)), (20, 30, uniform_indices(10, 4))]
    got = dict(read_clips(generated, clips))
    assert isinstance(got[0], np.ndarray) and isinstance(got[3], np.ndarray)
    assert isinstance(got[1], VideoError) and "no frame decoded in [5000, 5010)" in str(got[1])
    assert isinstance(got[2], VideoError)


def test_missing_or_corrupt_video_fails_every_clip(tmp_path):
    clips = [(0, 10, np.arange(3)), (5, 15, np.arange(3))]
    got = dict(read_clips(tmp_path / "missing.mp4", clips))
    assert all(isinstance(e, FileNotFoundError) and "missing.mp4" in str(e) for e in got.values())
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    got = dict(read_clips(junk, clips))
    assert sorted(got) == [0, 1] and all(isinstance(e, Exception) for e in got.values())


def test_a_video_failing_mid_way_fails_only_the_clips_not_finished(generated, monkeypatch):
    real = video_mod.scan_frames

    def failing(cap, want, stop=None, stats=None):
        for i, frame in real(cap, want, stop, stats):
            if i >= 50:
                raise RuntimeError("decoder error at frame 50")
            yield i, frame

    monkeypatch.setattr(video_mod, "scan_frames", failing)
    clips = [(0, 40, uniform_indices(40, 4)), (30, 80, uniform_indices(50, 4)),
             (100, 120, uniform_indices(20, 4))]
    got = dict(read_clips(generated, clips))
    assert np.array_equal(got[0], read_frames(generated, clips[0][2], 0, 40))
    assert isinstance(got[1], RuntimeError) and isinstance(got[2], RuntimeError)
