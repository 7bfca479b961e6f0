"""Loader items and batched augmentation (mgpipe.data) on small hand-checked cases."""
import numpy as np
import pytest
import torch

from mgpipe import layout
from mgpipe.data import RGB_MEAN, RGB_STD, ClipDataset, model_input, normalize_joints
from mgpipe.sampling import uniform_indices

IDENTITY = [0, 1, 0, 1, 0, 0]


def aug(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def column_ramp(n=1, c=1, t=2, h=4, w=4):
    """Heatmap-shaped uint8 batch whose value is the column index (bilinear is exact on it)."""
    x = torch.arange(w, dtype=torch.uint8).expand(n, c, t, h, w)
    return x.contiguous()


def test_identity_heatmap_and_rgb_are_plain_conversions():
    hm = torch.randint(0, 256, (2, 3, 4, 5, 6), dtype=torch.uint8)
    out = model_input(hm, aug(IDENTITY, IDENTITY), "heatmap")
    assert torch.equal(out, hm.float() / 255)
    rgb = torch.randint(0, 256, (2, 4, 5, 6, 3), dtype=torch.uint8)
    out = model_input(rgb, aug(IDENTITY, IDENTITY), "rgb")
    want = (rgb.numpy().astype(np.float32) / 255 - RGB_MEAN) / RGB_STD
    assert out.shape == (2, 3, 4, 5, 6)
    np.testing.assert_allclose(out.numpy(), want.transpose(0, 4, 1, 2, 3), atol=1e-6)


def test_crop_samples_the_box_and_flip_mirrors():
    x = column_ramp(n=3) * 10  # value = 10 * column, W = 4
    # clip 0: left half of the frame (scale 0.5, shift -0.5), resized back to 4 columns;
    # clip 1: whole frame mirrored; clip 2: identity.
    out = model_input(x, aug([0, 0.5, -0.5, 1, 0, 0], [1, 1, 0, 1, 0, 0], IDENTITY), "heatmap")
    out = out * 255
    # output column j samples input column x0 + (j + 0.5) * s * W / W - 0.5, x0 = 0, s = 0.5
    cols = np.clip((np.arange(4) + 0.5) * 0.5 - 0.5, 0, 3)
    np.testing.assert_allclose(out[0, 0, 0, 0].numpy(), 10 * cols, atol=1e-3)
    np.testing.assert_allclose(out[1, 0, 0, 0].numpy(), [30, 20, 10, 0], atol=1e-3)
    np.testing.assert_allclose(out[2, 0, 0, 0].numpy(), [0, 10, 20, 30], atol=1e-4)


def test_heatmap_flip_swaps_left_and_right_channels():
    k = layout.NUM_KEYPOINTS
    x = torch.zeros(1, k, 1, 3, 3, dtype=torch.uint8)
    left, right = layout.FLIP_PAIRS[0]
    x[0, left, 0, 1, 0] = 255  # a left-side joint at the left edge
    flip = torch.as_tensor(layout.flip_index())
    out = model_input(x, aug([1, 1, 0, 1, 0, 0]), "heatmap", flip)
    assert out[0, right, 0, 1, 2] == pytest.approx(1.0, abs=1e-5)  # right side, right edge
    assert out[0, left].abs().max() < 1e-5


def test_time_shift_repeats_edge_frames():
    x = torch.arange(4, dtype=torch.uint8).view(1, 1, 4, 1, 1).expand(2, 1, 4, 2, 2).contiguous()
    out = model_input(x, aug([0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 0, -1]), "heatmap") * 255
    assert out[0, 0, :, 0, 0].round().tolist() == [1, 2, 3, 3]
    assert out[1, 0, :, 0, 0].round().tolist() == [0, 0, 1, 2]


def test_joints_flip_scale_shift_and_motion():
    x = torch.zeros(1, 2, layout.NUM_KEYPOINTS, 3)
    a, b = layout.FLIP_PAIRS[0]
    x[0, :, a] = torch.tensor([[0.5, 0.2, 1.0], [0.7, 0.2, 1.0]])  # moves right by 0.2
    out = model_input(x, aug([1, 2, 0.1, 2, -0.1, 0]), "joints", motion=True)
    assert out.shape == (1, 5, 2, layout.NUM_KEYPOINTS)
    # mirrored onto the partner joint: x -> -x, then * 2 + 0.1; y * 2 - 0.1
    np.testing.assert_allclose(out[0, :2, :, b].T.numpy(), [[-0.9, 0.3], [-1.3, 0.3]], atol=1e-6)
    np.testing.assert_allclose(out[0, 3:, 1, b].numpy(), [-0.4, 0.0], atol=1e-6)
    assert out[0, :, :, a].abs().max() == 0  # unseen after the swap: all channels zero
    plain = model_input(x, aug(IDENTITY), "joints", motion=False)
    assert torch.equal(plain, x.permute(0, 3, 1, 2))


def test_dataset_items_are_stored_arrays_with_seeded_augmentation():
    rng = np.random.default_rng(0)
    arrays = {f"c{i}": rng.integers(0, 255, (3, 4, 8, 8), dtype=np.uint8) for i in range(3)}
    ds = ClipDataset("heatmap", arrays, list(arrays), [0, 1, 2], train=True, seed=5)
    x, a, y, pos = ds[1]
    assert x.dtype == torch.uint8 and np.array_equal(x.numpy(), arrays["c1"]) and (y, pos) == (1, 1)
    assert torch.equal(ds[1][1], a)  # same (seed, epoch, position) -> same augmentation
    ds.set_epoch(1)
    assert not torch.equal(ds[1][1], a)
    plain = ClipDataset("heatmap", arrays, list(arrays), [0, 1, 2])
    assert plain[1][1].tolist() == IDENTITY


def test_joint_items_are_normalised_and_sampled():
    kp = np.random.default_rng(1).uniform(10, 200, (40, layout.NUM_KEYPOINTS, 3)).astype(np.float32)
    ds = ClipDataset("joints", {"a": kp}, ["a"], [0], frames=8)
    x, a, _, _ = ds[0]
    assert x.shape == (8, layout.NUM_KEYPOINTS, 3)
    np.testing.assert_allclose(x.numpy(), normalize_joints(kp)[uniform_indices(40, 8)], atol=0)
    batch = ds.to_input(x[None], a[None])
    assert batch.shape == (1, 5, 8, layout.NUM_KEYPOINTS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_augmentation_matches_cpu():
    rng = np.random.default_rng(2)
    arrays = {f"c{i}": rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8) for i in range(8)}
    ds = ClipDataset("rgb", arrays, list(arrays), list(range(8)), train=True)
    items = [ds[i] for i in range(8)]
    x, a = torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])
    cpu = ds.to_input(x, a)
    gpu = ds.to_input(x.cuda(), a.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
