"""Heatmap volumes: vectorised renderers against the reference loop, hand-checked values,
normalisation, torch parity and the HDF5 writer."""
from __future__ import annotations

import math
import zlib

import h5py
import numpy as np
import pytest
import torch

from mgpipe import heatmaps as hm
from mgpipe import layout
from mgpipe.sampling import uniform_indices

SIZE = (32, 32)


def _diff(a, b) -> int:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    b = b.numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _random_clip(rng, T=20, J=68, frame=(640, 480), p_zero=0.1) -> np.ndarray:
    kp = np.zeros((T, J, 3), np.float32)
    kp[..., 0] = rng.uniform(0, frame[0], (T, J))
    kp[..., 1] = rng.uniform(0, frame[1], (T, J))
    kp[..., 2] = rng.uniform(0.05, 1.0, (T, J))
    kp[rng.random((T, J)) < p_zero, 2] = 0
    return kp


def _grid_clip(rng, T, size, J=68, spread=0.2) -> np.ndarray:
    """Grid coordinates [T, J, 3] reaching a bit outside the grid on every side."""
    H, W = size
    kp = np.zeros((T, J, 3), np.float32)
    kp[..., 0] = rng.uniform(-spread * W, (1 + spread) * W, (T, J))
    kp[..., 1] = rng.uniform(-spread * H, (1 + spread) * H, (T, J))
    kp[..., 2] = rng.uniform(0.05, 1.0, (T, J))
    return kp


# ---- vectorised vs reference ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["joint", "limb"])
@pytest.mark.parametrize("size,sigma,frames", [((32, 32), 0.6, 8), ((24, 40), 1.5, 6),
                                               ((17, 17), 2.5, 5)])
def test_matches_reference_on_random_clips(mode, size, sigma, frames):
    rng = np.random.default_rng(zlib.crc32(repr((mode, size, frames)).encode()))
    for _ in range(2):
        kp = _random_clip(rng, T=int(rng.integers(3, 30)))
        kw = dict(size=size, sigma=sigma, mode=mode, frames=frames)
        ref = hm.render_heatmaps_reference(kp, **kw)
        ours = hm.render_heatmaps(kp, **kw)
        K = 68 if mode == "joint" else len(layout.BONES)
        assert ours.shape == (K, frames, *size)
        assert ref.max() > 100  # something was drawn
        assert _diff(ours, ref) <= 1


@pytest.mark.parametrize("mode", ["joint", "limb"])
def test_matches_reference_at_paper_scale(mode):
    rng = np.random.default_rng(7)
    kp = _random_clip(rng, T=60)
    kw = dict(size=(56, 56), sigma=0.6, mode=mode, frames=48)
    assert _diff(hm.render_heatmaps(kp, **kw), hm.render_heatmaps_reference(kp, **kw)) <= 1


@pytest.mark.parametrize("mode", ["joint", "limb"])
def test_off_grid_and_border_keypoints(mode):
    """Grid coordinates off the grid, on its borders and pixel centres, and at exactly
    3 sigma from a pixel (the window's edge)."""
    rng = np.random.default_rng(3)
    H, W = 20, 24
    sigma = 1.0
    kp = _grid_clip(rng, 6, (H, W))
    specials = [(0, 0), (W - 1, H - 1), (-0.5, H - 0.5), (W - 0.5, -0.5), (-3, 5), (W + 2, 5),
                (5, -3.0), (5, H + 2.99), (-1e6, 3), (3, 1e9), (W - 1 + 3.0, 4), (-3.0, -3.0),
                (10, 10), (10.5, 10.5)]
    for j, (x, y) in enumerate(specials):
        kp[:, j, :2] = x, y
    kw = dict(size=(H, W), sigma=sigma, mode=mode, frames=None, normalize=False)
    ref = hm.render_heatmaps_reference(kp, **kw)
    assert _diff(hm.render_heatmaps(kp, **kw), ref) <= 1
    if mode == "joint":
        assert ref[8].max() == 0 and ref[9].max() == 0   # far away: nothing
        assert ref[10, :, 4, W - 1].max() > 0           # exactly 3 sigma off: edge pixel in


@pytest.mark.parametrize("mode", ["joint", "limb"])
def test_scores_zero_and_non_finite(mode):
    rng = np.random.default_rng(4)
    kp = _grid_clip(rng, 5, SIZE)
    kp[:, :30, 2] = 0                      # a block of missing joints
    kp[1, 40, 0] = np.nan                   # broken detector output, score > 0
    kp[2, 41, 1] = np.inf
    kp[3, 42, 2] = np.nan
    kp[4, 43] = 10, 12, 1.7                 # scores above 1 saturate
    kw = dict(size=SIZE, sigma=1.0, mode=mode, frames=None, normalize=False)
    ref = hm.render_heatmaps_reference(kp, **kw)
    ours = hm.render_heatmaps(kp, **kw)
    assert _diff(ours, ref) <= 1
    if mode == "joint":
        assert ours[:30].max() == 0
        assert ours[40, 1].max() == ours[41, 2].max() == ours[42, 3].max() == 0
        assert ours[43, 4].max() == 255
    else:
        dead = [i for i, (a, b) in enumerate(layout.BONES) if a < 30 or b < 30]
        assert ours[dead].max() == 0        # a bone with a score-0 end is empty


@pytest.mark.parametrize("mode", ["joint", "limb"])
def test_all_zero_clip(mode):
    kp = np.zeros((12, 68, 3), np.float32)
    for fn in (hm.render_heatmaps, hm.render_heatmaps_reference):
        out = fn(kp, size=SIZE, mode=mode, frames=8)
        assert out.dtype == np.uint8 and out.shape[1:] == (8, *SIZE) and out.max() == 0


def test_one_pixel_limbs_are_points():
    """A bone with both ends at one point is the joint Gaussian there, at the min score."""
    rng = np.random.default_rng(5)
    kp = _grid_clip(rng, 4, SIZE, spread=0)
    kp[:, 1, :2] = kp[:, 0, :2]                    # bone (0, 1): zero length
    kp[:, 2, :2] = kp[:, 0, :2] + [1e-4, -1e-4]   # bone (1, 2): almost zero
    kp[:, 1, 2], kp[:, 0, 2], kp[:, 2, 2] = 0.9, 0.5, 0.7
    kw = dict(size=SIZE, sigma=1.2, frames=None, normalize=False)
    limbs = hm.render_heatmaps(kp, mode="limb", **kw)
    assert _diff(limbs, hm.render_heatmaps_reference(kp, mode="limb", **kw)) <= 1
    point = kp.copy()
    point[:, 0, 2] = 0.5
    joints = hm.render_heatmaps(point, mode="joint", **kw)
    b01 = layout.BONES.index((0, 1))
    b12 = layout.BONES.index((1, 2))
    assert _diff(limbs[b01], joints[0]) <= 1
    point[:, 0, 2] = 0.7
    assert _diff(limbs[b12], hm.render_heatmaps(point, mode="joint", **kw)[0]) <= 1


@pytest.mark.parametrize("T,frames", [(3, 10), (60, 7), (1, 4), (9, None)])
def test_frame_sampling(T, frames):
    rng = np.random.default_rng(T)
    kp = _random_clip(rng, T=T)
    for mode in ("joint", "limb"):
        kw = dict(size=(16, 16), sigma=0.8, mode=mode, frames=frames)
        ours = hm.render_heatmaps(kp, **kw)
        assert ours.shape[1] == (frames or T)
        assert _diff(ours, hm.render_heatmaps_reference(kp, **kw)) <= 1
    # each output frame is the render of its sampled source frame
    idx = uniform_indices(T, frames) if frames else np.arange(T)
    whole = hm.render_heatmaps(kp, size=(16, 16), sigma=0.8, frames=None)
    assert np.array_equal(hm.render_heatmaps(kp, size=(16, 16), sigma=0.8, frames=frames),
                          whole[:, idx])


# ---- hand-checked values -------------------------------------------------------------------

def test_single_keypoint_by_hand():
    sigma, score = 2.0, 0.8
    kp = np.zeros((1, 68, 3), np.float32)
    kp[0, 5] = 10, 12, score                      # x = 10, y = 12 in grid pixels
    for fn in (hm.render_heatmaps, hm.render_heatmaps_reference):
        v = fn(kp, size=SIZE, sigma=sigma, frames=None, normalize=False)[5, 0].astype(int)
        assert v.max() == v[12, 10] == round(255 * score)
        at_sigma = round(255 * score * math.exp(-0.5))
        assert v[12, 12] == v[12, 8] == v[14, 10] == v[10, 10] == at_sigma
        assert v[12, 16] == round(255 * score * math.exp(-4.5))   # 3 sigma: still in
        assert v[12, 17] == 0 and v[12, 3] == 0                    # past 3 sigma: out
        window = np.zeros_like(v, bool)
        window[12 - 6:12 + 7, 10 - 6:10 + 7] = True                # the +-3 sigma window
        assert v[~window].max() == 0
        assert (v > 0).sum() == sum(round(204 * math.exp(-(dx * dx + dy * dy) / 8)) > 0
                                    for dx in range(-6, 7) for dy in range(-6, 7))
        assert np.count_nonzero(fn(kp, size=SIZE, sigma=sigma, frames=None,
                                   normalize=False)[np.arange(68) != 5]) == 0


def test_single_keypoint_through_normalisation_lands_in_the_centre():
    """One valid keypoint anywhere in the source frame maps to the grid's centre pixel."""
    kp = np.zeros((5, 68, 3), np.float32)
    kp[:, 20] = 612.3, 48.9, 1.0
    v = hm.render_heatmaps(kp, size=(33, 33), sigma=1.0, frames=5)
    assert v[20, :, 16, 16].tolist() == [255] * 5
    assert v[20, 0, 16, 17] == round(255 * math.exp(-0.5))


def test_limb_by_hand():
    """A horizontal bone: full score along it, Gaussian falloff across it, end caps round."""
    kp = np.zeros((1, 68, 3), np.float32)
    kp[0, 0] = 5, 10, 1.0
    kp[0, 1] = 20, 10, 0.6
    v = hm.render_heatmaps(kp, size=SIZE, sigma=1.0, mode="limb", frames=None,
                           normalize=False)[layout.BONES.index((0, 1)), 0].astype(int)
    s = 0.6 * 255
    assert v[10, 5:21].tolist() == [round(s)] * 16
    assert v[11, 12] == v[9, 12] == round(s * math.exp(-0.5))
    assert v[10, 21] == v[10, 4] == round(s * math.exp(-0.5))
    assert v[11, 21] == round(s * math.exp(-1.0))
    assert v[10, 24] == 0 and v[14, 12] == 0   # past the 3 sigma box


# ---- normalisation -------------------------------------------------------------------------

def test_normalize_to_box_keeps_aspect_and_margin():
    rng = np.random.default_rng(9)
    kp = _random_clip(rng, T=30, frame=(1280, 720))
    kp[..., 0] = kp[..., 0] * 0.2 + 300   # a tall, narrow skeleton
    for size in [(56, 56), (32, 48)]:
        H, W = size
        g = hm.normalize_to_box(kp, size, margin=0.1)
        ok = kp[..., 2] > 0
        assert (g[~ok] == 0).all()
        gx, gy = g[..., 0][ok], g[..., 1][ok]
        assert gx.min() > 0 and gx.max() < W - 1 and gy.min() > 0 and gy.max() < H - 1
        # the longer (vertical) extent spans the grid less the margins: 1 / 1.2 of it
        assert (gy.max() - gy.min()) == pytest.approx(H / 1.2, rel=1e-4)
        # same scale on both axes: distances are preserved up to one factor
        i, j = np.flatnonzero(ok.ravel())[:2]
        src = kp.reshape(-1, 3)[[i, j], :2]
        dst = g.reshape(-1, 3)[[i, j], :2]
        scale = (gy.max() - gy.min()) / (kp[..., 1][ok].max() - kp[..., 1][ok].min())
        assert np.linalg.norm(dst[0] - dst[1]) == pytest.approx(
            scale * np.linalg.norm(src[0] - src[1]), rel=1e-4)


def test_normalize_to_box_degenerate_clips():
    z = np.zeros((4, 68, 3), np.float32)
    assert (hm.normalize_to_box(z, SIZE) == 0).all()
    assert hm.skeleton_box(z) is None
    nan = np.full((4, 68, 3), np.nan, np.float32)
    assert (hm.normalize_to_box(nan, SIZE) == 0).all()


def test_bad_mode_and_shape():
    kp = np.zeros((4, 68, 3), np.float32)
    with pytest.raises(ValueError):
        hm.render_heatmaps(kp, mode="bones")
    with pytest.raises(ValueError):
        hm.render_heatmaps(kp[0])


def test_custom_bones():
    rng = np.random.default_rng(2)
    kp = _random_clip(rng, T=6, J=5, p_zero=0)
    bones = [(0, 1), (1, 2), (3, 4)]
    kw = dict(size=SIZE, sigma=1.0, mode="limb", frames=4, bones=bones)
    ours = hm.render_heatmaps(kp, **kw)
    assert ours.shape == (3, 4, *SIZE)
    assert _diff(ours, hm.render_heatmaps_reference(kp, **kw)) <= 1


# ---- torch ---------------------------------------------------------------------------------

def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("mode", ["joint", "limb"])
def test_torch_matches_numpy(device, mode):
    rng = np.random.default_rng(11)
    kps = [_random_clip(rng, T=int(rng.integers(5, 40))) for _ in range(3)]
    kps[1][:, 26:47, 2] = 0
    kw = dict(size=(28, 36), sigma=0.9, mode=mode, frames=10)
    for kp in kps:
        t = hm.render_heatmaps(kp, device=device, **kw)
        assert isinstance(t, torch.Tensor) and t.device.type == device
        assert _diff(t.cpu(), hm.render_heatmaps(kp, **kw)) <= 1
    batch = hm.render_heatmaps_batch(kps, device=device, **kw)
    assert _diff(batch.cpu(), hm.render_heatmaps_batch(kps, **kw)) <= 1
    g = _grid_clip(rng, 6, (28, 36))
    kw.update(frames=None, normalize=False)
    assert _diff(hm.render_heatmaps(g, device=device, **kw).cpu(),
                 hm.render_heatmaps_reference(g, **kw)) <= 1


def test_batch_equals_single_clips():
    rng = np.random.default_rng(12)
    kps = [_random_clip(rng, T=T) for T in (5, 17, 40)]
    for mode in ("joint", "limb"):
        batch = hm.render_heatmaps_batch(kps, size=SIZE, mode=mode, frames=6)
        for kp, v in zip(kps, batch):
            assert np.array_equal(v, hm.render_heatmaps(kp, size=SIZE, mode=mode, frames=6))


# ---- HDF5 ----------------------------------------------------------------------------------

def test_h5_round_trip(tmp_path):
    rng = np.random.default_rng(13)
    items = []
    for i in range(3):
        kp = _random_clip(rng, T=15 + i)
        vol, attrs = hm.render_clip(kp, (640, 480), size=SIZE, sigma=0.6, frames=8)
        items.append((f"clip_{i}", vol, attrs))
    path = tmp_path / "out" / "heatmaps.h5"
    n = hm.write_heatmaps_h5(path, iter(items), file_attrs={"mode": "joint", "size": SIZE})
    assert n == 3 and path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["heatmaps.h5"]   # no temp left over
    with h5py.File(path) as f:
        assert tuple(f.attrs["size"]) == SIZE
        ds = f["clip_1"]
        assert ds.chunks == ds.shape == (68, 8, *SIZE)
        assert "32015" in ds._filters   # zstd (hdf5plugin), one chunk per clip
    for clip_id, vol, attrs in items:
        got, got_attrs = hm.read_heatmaps_h5(path, clip_id)
        assert np.array_equal(got, vol)
        assert np.array_equal(got_attrs["frame_indices"], attrs["frame_indices"])
        assert got_attrs["mode"] == "joint" and got_attrs["sigma"] == pytest.approx(0.6)
        assert tuple(got_attrs["source_size"]) == (640, 480)
    for comp, level in (("lzf", None), ("gzip", 1), (None, None)):
        other = tmp_path / f"{comp}.h5"
        hm.write_heatmaps_h5(other, iter(items), compression=comp, compression_opts=level)
        assert np.array_equal(hm.read_heatmaps_h5(other, "clip_2")[0], items[2][1])
    with pytest.raises(ValueError, match="unknown compression"):
        hm.write_heatmaps_h5(tmp_path / "bad.h5", iter(items), compression="zip")


def test_h5_zstd_is_lossless_and_deterministic_on_paper_size_volumes(tmp_path):
    """Paper-size volumes (68 x 48 x 56 x 56) of real-looking clips read back equal, the mgpipe
    data loader reads them (it registers the filter), and the same clips give the same bytes."""
    from mgpipe.data import H5Clips
    rng = np.random.default_rng(3)
    items = [(f"c{i}", *hm.render_clip(_random_clip(rng, T=50, p_zero=0.3), (640, 480)))
             for i in range(2)]
    for name in ("a.h5", "b.h5"):
        hm.write_heatmaps_h5(tmp_path / name, iter(items))
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    store = H5Clips(tmp_path / "a.h5", ["c0", "c1"], "heatmap")
    for cid, vol, _ in items:
        assert vol.shape == (68, 48, 56, 56) and vol.any()
        assert np.array_equal(store[cid], vol)


def test_h5_appears_only_when_complete(tmp_path):
    path = tmp_path / "heatmaps.h5"
    vol = np.zeros((2, 3, 4, 4), np.uint8)

    def items(fail: bool):
        for i in range(3):
            assert not path.exists()      # nothing under the final name while writing
            if fail and i == 2:
                raise KeyboardInterrupt   # an interrupted stage
            yield f"c{i}", vol, {}

    with pytest.raises(KeyboardInterrupt):
        hm.write_heatmaps_h5(path, items(fail=True))
    assert list(tmp_path.iterdir()) == []
    assert hm.write_heatmaps_h5(path, items(fail=False)) == 3
    assert list(tmp_path.iterdir()) == [path]


def test_h5_output_is_byte_identical_across_writes(tmp_path):
    """No timestamps in the file: rerunning a stage on the same input gives the same bytes,
    so DVC keeps everything downstream cached."""
    import time

    vol = np.zeros((68, 4, 8, 8), np.uint8)
    vol[3, 1, 2, 2] = 200
    hm.write_heatmaps_h5(tmp_path / "a.h5", [("c0", vol, {"mode": "joint"})])
    time.sleep(1.1)
    hm.write_heatmaps_h5(tmp_path / "b.h5", [("c0", vol, {"mode": "joint"})])
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()


def test_stage_output_is_byte_identical_whatever_the_workers(tmp_path):
    """stages/heatmaps.py renders and compresses in worker processes: the same bytes as in one
    process, clips in manifest order, skips recorded (no keypoints, a clip that fails)."""
    import importlib.util
    import shutil
    from pathlib import Path

    import pandas as pd
    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("stage_heatmaps", root / "stages/heatmaps.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["heatmaps"].update(frames=6, size=[16, 16])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rng = np.random.default_rng(5)
    ids = [f"c{i:02d}" for i in range(9)]
    with h5py.File(tmp_path / "kp.h5", "w") as f:
        for i, cid in enumerate(ids):
            if i == 3:
                continue  # no keypoints
            kp = _random_clip(rng, T=12)
            f.create_group(cid).create_dataset("kp", data=kp if i != 5 else kp[:0])  # 5 fails
    pd.DataFrame({"clip_id": ids, "width": 640, "height": 480}).to_csv(tmp_path / "m.csv",
                                                                       index=False)
    outs = []
    for w in (1, 2):
        out = tmp_path / f"w{w}" / "heatmaps.h5"
        assert stage.main(["--params", str(tmp_path / "params.yaml"), "--manifest",
                           str(tmp_path / "m.csv"), "--keypoints", str(tmp_path / "kp.h5"),
                           "--out", str(out), "--workers", str(w)]) == 0
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    skips = pd.read_csv(outs[1].with_name("heatmaps_skipped.csv"))
    assert list(skips.clip_id) == ["c03", "c05"]
    with h5py.File(outs[1]) as f:
        assert list(f) == [c for c in ids if c not in ("c03", "c05")]
        assert f["c00"].shape == (68, 6, 16, 16)
    shutil.rmtree(tmp_path / "w1")
