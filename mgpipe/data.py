"""Training data: clips from the HDF5 stage outputs as tensors, with augmentation that fits
each modality. No video is decoded during training.

Inputs per branch:
    joints   keypoints.h5  /<clip>/kp  float32 [T0, 68, 3] -> [C, T, 68]
    heatmap  heatmaps.h5   /<clip>     uint8 [K, T, H, W]   -> float [K, T, H, W]
    rgb      rgb.h5        /<clip>     uint8 [T, H, W, 3]   -> float [3, T, H, W] (normalised)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mgpipe import layout
from mgpipe.sampling import uniform_indices

# Kinetics-400 statistics, as torchvision's video models expect.
RGB_MEAN = np.array([0.43216, 0.394666, 0.37645], np.float32)
RGB_STD = np.array([0.22803, 0.22145, 0.216989], np.float32)

MODALITY_OF = {"stcnn": "joints", "posec3d": "heatmap", "r2plus1d": "rgb", "swin3d": "rgb"}


def read_h5_clips(path: str | Path, clip_ids: Sequence[str], modality: str) -> dict[str, np.ndarray]:
    """All listed clips of one stage output as arrays (in memory). A clip missing from the
    file raises KeyError naming the file: the stage that wrote it recorded it as skipped."""
    out = {}
    with h5py.File(path, "r") as f:
        for cid in clip_ids:
            if cid not in f:
                raise KeyError(f"{path}: no clip {cid!r}; rerun the stage that writes it "
                               f"(dvc repro) or check data/interim/skipped.csv")
            node = f[cid]
            out[cid] = (node["kp"] if modality == "joints" else node)[()]
    return out


def normalize_joints(kp: np.ndarray, min_score: float = 0.05) -> np.ndarray:
    """Keypoints [T, 68, 3] in pixels -> [T, 68, 3] with x, y centred on the clip's skeleton
    box and scaled by its larger side / 2 (so roughly in [-1, 1]); unseen joints are 0."""
    seen = kp[..., 2] > min_score
    out = np.zeros_like(kp, dtype=np.float32)
    if not seen.any():
        return out
    xy = kp[..., :2][seen]
    lo, hi = xy.min(0), xy.max(0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1.0)
    out[..., :2] = np.where(seen[..., None], (kp[..., :2] - centre) / half, 0)
    out[..., 2] = np.where(seen, kp[..., 2], 0)
    return out


def sample_indices(n: int, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """``length`` indices over ``n`` frames: segment centres (``uniform_indices``), or (with
    ``rng``) a random frame inside each of ``length`` equal segments (temporal jitter)."""
    if rng is None:
        return uniform_indices(n, length)
    edges = np.arange(length + 1) * n / length
    idx = edges[:-1] + rng.random(length) * (edges[1:] - edges[:-1])
    return np.clip(np.floor(idx).astype(np.int64), 0, n - 1)


def joints_tensor(kp: np.ndarray, frames: int, motion: bool, rng=None, flip=False,
                  scale: float = 1.0, shift=(0.0, 0.0)) -> torch.Tensor:
    """[T0, 68, 3] pixels -> [C, frames, 68], C = 3 (x, y, score) or 5 (+ dx, dy motion)."""
    x = normalize_joints(kp)[sample_indices(len(kp), frames, rng)]
    seen = x[..., 2:3] > 0
    if flip:
        x = x[:, layout.flip_index()]
        x[..., 0] = -x[..., 0]
        seen = x[..., 2:3] > 0
    x[..., :2] = np.where(seen, x[..., :2] * scale + np.asarray(shift, np.float32), 0)
    chans = [x]
    if motion:
        d = np.zeros_like(x[..., :2])
        both = seen[1:] & seen[:-1]
        d[1:] = np.where(both, x[1:, :, :2] - x[:-1, :, :2], 0)
        chans.append(d)
    return torch.from_numpy(np.concatenate(chans, -1).transpose(2, 0, 1).copy())


def _temporal_shift(t: int, rng) -> np.ndarray:
    return np.clip(np.arange(t) + rng.integers(-1, 2), 0, t - 1)


def _random_resized_crop(x: torch.Tensor, rng, min_scale: float) -> torch.Tensor:
    """x [C, T, H, W] -> same size, from a random square-ish crop covering >= min_scale."""
    _, t, h, w = x.shape
    s = np.sqrt(rng.uniform(min_scale, 1.0))
    ch, cw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = x[:, :, y0:y0 + ch, x0:x0 + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


class ClipDataset(Dataset):
    """(input tensor, label index or -1, position) for a list of clips of one modality.

    ``arrays``: clip_id -> array as stored by the stage (see module docstring);
    ``labels``: class index per clip (-1 = unknown, e.g. test clips);
    ``train``: random augmentation (flip with left/right swap, temporal jitter, crops).
    Randomness comes from a generator seeded by (seed, epoch, position), so a run is
    reproducible whatever the number of loader workers.
    """

    def __init__(self, modality: str, arrays: dict[str, np.ndarray], clip_ids: Sequence[str],
                 labels: Sequence[int], train: bool = False, frames: int = 32,
                 motion: bool = True, flip: bool = True, seed: int = 0,
                 heatmap_mode: str = "joint"):
        if modality not in ("joints", "heatmap", "rgb"):
            raise ValueError(f"unknown modality {modality!r}")
        self.modality, self.arrays = modality, arrays
        self.clip_ids, self.labels = list(clip_ids), np.asarray(labels, np.int64)
        self.train, self.frames, self.motion, self.flip, self.seed = train, frames, motion, flip, seed
        self.epoch = 0
        self.channel_flip = (layout.flip_index() if heatmap_mode == "joint"
                             else layout.flip_bone_index())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, i: int):
        a = self.arrays[self.clip_ids[i]]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        flip = bool(self.train and self.flip and rng.random() < 0.5)
        if self.modality == "joints":
            scale = rng.uniform(0.9, 1.1) if rng is not None else 1.0
            shift = rng.uniform(-0.05, 0.05, 2) if rng is not None else (0.0, 0.0)
            x = joints_tensor(a, self.frames, self.motion, rng, flip, scale, shift)
        elif self.modality == "heatmap":
            if rng is not None:
                a = a[:, _temporal_shift(a.shape[1], rng)]
            x = torch.from_numpy(np.ascontiguousarray(a)).float().div_(255)
            if flip:
                x = x[self.channel_flip].flip(-1)
            if rng is not None:
                x = _random_resized_crop(x, rng, 0.8)
        else:
            if rng is not None:
                a = a[_temporal_shift(a.shape[0], rng)]
            x = (a.astype(np.float32) / 255 - RGB_MEAN) / RGB_STD
            x = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))
            if flip:
                x = x.flip(-1)
            if rng is not None:
                x = _random_resized_crop(x, rng, 0.7)
        return x, int(self.labels[i]), i
