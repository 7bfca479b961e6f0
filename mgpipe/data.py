"""Training data: clips from the HDF5 stage outputs as tensors, with augmentation that fits
each modality. No video is decoded during training.

Inputs per branch (stored -> loader item -> model input):
    joints   keypoints.h5  /<clip>/kp  float32 [T0, 68, 3] -> [T, 68, 3] -> [C, T, 68]
    heatmap  heatmaps.h5   /<clip>     uint8 [K, T, H, W]   -> as stored -> float [K, T, H, W]
    rgb      rgb.h5        /<clip>     uint8 [T, H, W, 3]   -> as stored -> float [3, T, H, W]

Training reads each clip from its file when the loader needs it (``H5Clips``): a process
holds the clips in flight, not the dataset. The loader only reads, indexes and batches;
flips, crops and time shifts are applied to a whole batch by ``model_input`` on the
training device (the GPU when there is one), so reading and moving uint8 clips is all the
loader costs.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate, get_worker_info

from mgpipe import layout
from mgpipe.augment import apply_keypoint_aug, augment_config, draw_keypoint_aug
from mgpipe.sampling import uniform_indices

try:  # registers HDF5's zstd filter (heatmaps.h5 is zstd-compressed; mgpipe.heatmaps.H5_COMPRESSION)
    import hdf5plugin  # noqa: F401
except ImportError:  # pragma: no cover - gzip files still read; zstd ones say what is missing
    pass

# Kinetics-400 statistics, as torchvision's video models expect.
RGB_MEAN = np.array([0.43216, 0.394666, 0.37645], np.float32)
RGB_STD = np.array([0.22803, 0.22145, 0.216989], np.float32)

MODALITY_OF = {"stcnn": "joints", "posec3d": "heatmap", "r2plus1d": "rgb", "swin3d": "rgb"}


def _read_clip(f, path, cid: str, modality: str) -> np.ndarray:
    if cid not in f:
        raise KeyError(f"{path}: no clip {cid!r}; the file is older than the manifest: "
                       f"rerun the stage that writes it (dvc repro)")
    node = f[cid]
    return (node["kp"] if modality == "joints" else node)[()]


def read_h5_clips(path: str | Path, clip_ids: Sequence[str], modality: str) -> dict[str, np.ndarray]:
    """All listed clips of one stage output as arrays, in memory: small sets only (tests,
    tools); training reads through ``H5Clips``, whose memory does not grow with the number of
    clips. A clip missing from the file raises KeyError naming the file."""
    with h5py.File(path, "r") as f:
        return {cid: _read_clip(f, path, cid, modality) for cid in clip_ids}


class H5Clips(Mapping):
    """Read-only mapping clip_id -> array, read from a stage's HDF5 output one clip per access.

    Nothing is kept between accesses, so a process holds only the clips it is using (the
    loader's batches in flight), whatever the number of clips: iMiGUE's 18.5k clips are
    189 GB of paper-size heatmaps, far beyond one training process's RAM, let alone one per
    GPU. Each access returns a new array equal to what ``read_h5_clips`` returns.

    The HDF5 file is opened on first access in each process and reopened after a fork (the
    owner's pid is checked on every access), so an h5py handle never crosses into DataLoader
    workers; pickling (spawned workers) drops it too. ``modality`` as in ``ClipDataset``:
    "joints" reads ``/<clip>/kp``, the others ``/<clip>``. Keys are ``clip_ids`` (in order,
    duplicates dropped); whether they are in the file is checked when a clip is read.
    """

    def __init__(self, path: str | Path, clip_ids: Sequence[str], modality: str):
        if modality not in ("joints", "heatmap", "rgb"):
            raise ValueError(f"unknown modality {modality!r}")
        self.path, self.modality = str(path), modality
        self._ids = list(dict.fromkeys(clip_ids))
        self._keys = frozenset(self._ids)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            # an inherited handle (after fork) belongs to the parent: never use or close it
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getitem__(self, cid: str) -> np.ndarray:
        if cid not in self._keys:
            raise KeyError(cid)
        return _read_clip(self._h5(), self.path, cid, self.modality)

    def __contains__(self, cid) -> bool:
        return cid in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def read_into(self, cid: str, out: np.ndarray) -> None:
        """Read one clip straight into ``out`` (C-contiguous, the clip's shape and dtype):
        decompressed into the caller's buffer, no intermediate array."""
        if cid not in self._keys:
            raise KeyError(cid)
        f = self._h5()
        if cid not in f or self.modality == "joints":
            out[...] = _read_clip(f, self.path, cid, self.modality)
            return
        f[cid].read_direct(out)

    def shape(self, cid: str) -> tuple[int, ...]:
        """The stored shape of one clip, read from the file's metadata (no data)."""
        if cid not in self._keys:
            raise KeyError(cid)
        f = self._h5()
        if cid not in f:
            _read_clip(f, self.path, cid, self.modality)  # raises the KeyError naming the file
        node = f[cid]
        return tuple((node["kp"] if self.modality == "joints" else node).shape)

    def close(self) -> None:
        """Close this process's handle (it reopens on the next access)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._pid = None

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}

    def __repr__(self) -> str:
        return f"H5Clips({self.path!r}, {len(self)} clips, {self.modality!r})"


def normalize_joints(kp: np.ndarray, min_score: float = 0.05) -> np.ndarray:
    """Keypoints [T, 68, 3] in pixels -> [T, 68, 3] with x, y centred on the clip's skeleton
    box and scaled by its larger side / 2 (so roughly in [-1, 1]); unseen joints are 0, and
    so are joints with a non-finite coordinate or score."""
    seen = (kp[..., 2] > min_score) & np.isfinite(kp).all(-1)
    out = np.zeros_like(kp, dtype=np.float32)
    if not seen.any():
        return out
    xy = kp[..., :2][seen]
    lo, hi = xy.min(0), xy.max(0)
    centre, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1.0)
    with np.errstate(invalid="ignore"):  # unseen rows may hold NaN; np.where drops them
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


RENDER_DEFAULTS = dict(mode="joint", sigma=0.8, size=[32, 32], frames=16, margin=0.1)


def augmented_joints(kp: np.ndarray, frames: int, rng: np.random.Generator | None,
                     cfg: dict) -> np.ndarray:
    """Keypoints [T0, 68, 3] in pixels -> normalised joints [frames, 68, 3] (see
    ``normalize_joints``), sampled (a random frame per segment when ``rng``), then augmented
    in keypoint space (``mgpipe.augment``) about the skeleton box's centre, shifts in units
    of its half side."""
    aug = draw_keypoint_aug(rng, cfg, kp.shape[1])
    joints = normalize_joints(kp)[sample_indices(len(kp), frames, rng)]
    return apply_keypoint_aug(joints, aug, (0.0, 0.0), 1.0) if rng is not None else joints


def draw_heatmaps(kp: np.ndarray, cfg: dict, rng: np.random.Generator | None,
                  augment: dict | None) -> np.ndarray:
    """Keypoints [T0, 68, 3] in pixels -> a heatmap volume uint8 [K, frames, H, W], drawn
    here rather than read from heatmaps.h5: frames sampled (a random frame per segment when
    ``rng``, else the segment centres), mapped into the grid through the clip's skeleton
    box, augmented in keypoint space when ``rng`` and ``augment``, then rendered. Without
    ``rng`` it equals the heatmaps stage's volume for the same settings (``cfg``: mode,
    sigma, size (H, W), frames, margin)."""
    from mgpipe.heatmaps import _render, prepare_coords

    h, w = cfg["size"]
    idx = sample_indices(len(kp), cfg["frames"], rng)
    coords, _ = prepare_coords(kp, (h, w), margin=cfg["margin"], indices=idx)
    if rng is not None and augment is not None:
        aug = draw_keypoint_aug(rng, augment, kp.shape[1])
        centre = ((w - 1) / 2, (h - 1) / 2)
        coords = apply_keypoint_aug(coords, aug, centre, float(max(h, w)))
    return _render(coords, (h, w), cfg["sigma"], cfg["mode"], layout.BONES, None)


def _draw_aug(rng, modality: str, flip_ok: bool, min_crop: float) -> np.ndarray:
    """Augmentation parameters of one clip (see ``model_input``); identity when rng is None."""
    aug = np.array([0, 1, 0, 1, 0, 0], np.float32)
    if rng is None:
        return aug
    aug[0] = float(flip_ok and rng.random() < 0.5)
    if modality == "joints":  # isotropic scale and a small shift, in normalised units
        aug[1] = aug[3] = rng.uniform(0.9, 1.1)
        aug[[2, 4]] = rng.uniform(-0.05, 0.05, 2)
        return aug
    aug[5] = rng.integers(-1, 2)  # temporal shift by -1, 0 or +1 frame
    s = np.sqrt(rng.uniform(min_crop, 1.0))  # side of a square crop, fraction of the frame
    y0, x0 = rng.uniform(0, 1 - s, 2)
    # the crop as an affine map of normalised [-1, 1] output coords to input coords
    aug[1:5] = s, 2 * x0 + s - 1, s, 2 * y0 + s - 1
    return aug


def model_input(x: torch.Tensor, aug: torch.Tensor, modality: str,
                channel_flip: torch.Tensor | None = None, motion: bool = True) -> torch.Tensor:
    """A batch as ``ClipDataset`` stores it -> the model's float input, augmented per clip.

    Runs on whatever device ``x`` is on, so augmentation happens on the GPU in one batched
    pass and the loader only moves the stored (uint8) arrays.
    x:   joints [N, T, 68, 3] normalised; heatmap uint8 [N, K, T, H, W]; rgb uint8 [N, T, H, W, 3]
    aug: [N, 6] float = (flip, scale_x, shift_x, scale_y, shift_y, time_shift); identity
         (0, 1, 0, 1, 0, 0). Joints: x' = x * scale + shift. Images: the output samples the
         input at (scale * u + shift) in normalised coords u in [-1, 1] (a crop, resized),
         mirrored when flipped; time_shift moves frames by whole frames (edges repeat).
    channel_flip: heatmap channel permutation applied to flipped clips (left/right swap).
    Which steps run is decided on a host copy of ``aug``: keep ``aug`` on the CPU (the
    training loop does) and a GPU batch needs no device-to-host synchronisation.
    Returns joints [N, C, T, 68] (C = 3, or 5 with motion), heatmap [N, K, T, H, W],
    rgb [N, 3, T, H, W] normalised with ``RGB_MEAN`` / ``RGB_STD``.
    """
    host = aug.detach().to("cpu", torch.float32)  # no copy when already on the CPU
    any_flip = bool((host[:, 0] > 0.5).any())
    any_shift = bool(host[:, 5].round().any())
    any_crop = not torch.equal(host[:, 1:5], torch.tensor([1.0, 0, 1, 0]).expand(len(host), 4))
    aug = aug.to(x.device, torch.float32, non_blocking=True)
    flip = aug[:, 0] > 0.5
    if modality == "joints":
        return _joints_input(x.float(), aug, flip if any_flip else None, motion)
    if modality not in ("heatmap", "rgb"):
        raise ValueError(f"unknown modality {modality!r}")
    # Time shift and (heatmaps) the left/right channel swap: one gather on the uint8 batch.
    n, t = x.shape[0], x.shape[2 if modality == "heatmap" else 1]
    rows = torch.arange(n, device=x.device)
    shift = aug[:, 5].round().long()
    times = (torch.arange(t, device=x.device) + shift[:, None]).clamp_(0, t - 1)
    swap = modality == "heatmap" and channel_flip is not None and any_flip
    if modality == "heatmap" and (swap or any_shift):
        k = x.shape[1]
        chans = torch.arange(k, device=x.device).expand(n, k)
        if swap:
            chans = torch.where(flip[:, None], channel_flip.to(x.device)[None], chans)
        x = x[rows[:, None, None], chans[:, :, None], times[:, None, :]]
    elif modality == "rgb" and any_shift:
        x = x[rows[:, None], times]
    if modality == "heatmap":
        x = x.float().div_(255)
    else:
        mean = torch.as_tensor(RGB_MEAN, device=x.device).view(1, 3, 1, 1, 1)
        std = torch.as_tensor(RGB_STD, device=x.device).view(1, 3, 1, 1, 1)
        x = (x.permute(0, 4, 1, 2, 3).float().div_(255) - mean) / std
    n, c, t, h, w = x.shape
    if any_flip or any_crop:
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = torch.where(flip, -aug[:, 1], aug[:, 1])
        theta[:, 0, 2] = aug[:, 2]
        theta[:, 1, 1] = aug[:, 3]
        theta[:, 1, 2] = aug[:, 4]
        grid = F.affine_grid(theta, [n, c * t, h, w], align_corners=False)
        x = F.grid_sample(x.reshape(n, c * t, h, w), grid, mode="bilinear",
                          padding_mode="border", align_corners=False).view(n, c, t, h, w)
    return x.contiguous()


def _joints_input(x: torch.Tensor, aug: torch.Tensor, flip: torch.Tensor | None, motion: bool):
    """[N, T, 68, 3] normalised joints -> [N, C, T, 68]; unseen joints (score 0) stay 0.
    ``flip``: [N] bool, clips to mirror (None: none is)."""
    if flip is not None:
        mirrored = x[:, :, torch.as_tensor(layout.flip_index(), device=x.device)]
        mirrored[..., 0] = -mirrored[..., 0]
        x = torch.where(flip.view(-1, 1, 1, 1), mirrored, x)
    seen = x[..., 2:3] > 0
    scale = aug[:, [1, 3]].view(-1, 1, 1, 2)
    shift = aug[:, [2, 4]].view(-1, 1, 1, 2)
    xy = torch.where(seen, x[..., :2] * scale + shift, torch.zeros_like(x[..., :2]))
    chans = [xy, x[..., 2:3]]
    if motion:
        d = torch.zeros_like(xy)
        both = seen[:, 1:] & seen[:, :-1]
        d[:, 1:] = torch.where(both, xy[:, 1:] - xy[:, :-1], torch.zeros_like(d[:, 1:]))
        chans.append(d)
    return torch.cat(chans, -1).permute(0, 3, 1, 2).contiguous()


class ClipDataset(Dataset):
    """(stored input, augmentation, label index or -1, position) per clip of one modality.

    ``arrays``: clip_id -> array as stored by the stage (see module docstring): a dict in
    memory, or an ``H5Clips`` that reads each clip from the file when it is needed;
    ``labels``: class index per clip (-1 = unknown, e.g. test clips);
    ``train``: random augmentation (flip with left/right swap, temporal jitter, crops).
    Items stay as stored (uint8 for heatmaps and RGB) with their augmentation parameters;
    ``to_input`` applies them to a whole batch once it is on the GPU. Randomness comes from
    a generator seeded by (seed, epoch, position), so a run is reproducible whatever the
    number of loader workers.
    """

    def __init__(self, modality: str, arrays: Mapping[str, np.ndarray], clip_ids: Sequence[str],
                 labels: Sequence[int], train: bool = False, frames: int = 32,
                 motion: bool = True, flip: bool = True, seed: int = 0,
                 heatmap_mode: str = "joint", augment: dict | None = None,
                 render: dict | None = None):
        if modality not in ("joints", "heatmap", "rgb"):
            raise ValueError(f"unknown modality {modality!r}")
        if render is not None and modality != "heatmap":
            raise ValueError("render (heatmaps drawn from keypoints) is for the heatmap modality")
        self.modality, self.arrays = modality, arrays
        self.clip_ids, self.labels = list(clip_ids), np.asarray(labels, np.int64)
        self.train, self.frames, self.motion, self.seed = train, frames, motion, seed
        # keypoint-space augmentation (mgpipe.augment) replaces the batch-level one where it
        # applies: joints, and heatmaps drawn from keypoints
        self.augment = augment_config(augment)
        self.render = None if render is None else {**RENDER_DEFAULTS, **render}
        keypoint_space = self.augment is not None and (modality == "joints" or render is not None)
        self.flip = flip and not keypoint_space and (self.augment or {}).get("flip", True)
        self.keypoint_aug = self.augment if keypoint_space else None
        if self.render is not None:
            heatmap_mode = self.render["mode"]
        self.epoch = 0
        self.channel_flip = torch.as_tensor(layout.flip_index() if heatmap_mode == "joint"
                                            else layout.flip_bone_index())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, i: int):
        """(stored input, augmentation [6], label, position); ``to_input`` makes the model's
        input of a batch of them, on the device the batch is on."""
        a = self.arrays[self.clip_ids[i]]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        if self.render is not None:
            x = torch.from_numpy(draw_heatmaps(a, self.render, rng, self.keypoint_aug))
            return x, torch.from_numpy(_draw_aug(None, "heatmap", False, 1.0)), int(self.labels[i]), i
        if self.modality == "joints" and self.keypoint_aug is not None:
            x = torch.from_numpy(augmented_joints(a, self.frames, rng, self.keypoint_aug))
            return x, torch.from_numpy(_draw_aug(None, "joints", False, 1.0)), int(self.labels[i]), i
        aug = _draw_aug(rng, self.modality, self.flip, 0.8 if self.modality == "heatmap" else 0.7)
        if self.modality == "joints":
            x = torch.from_numpy(normalize_joints(a)[sample_indices(len(a), self.frames, rng)])
        else:
            x = torch.from_numpy(a)
        return x, torch.from_numpy(aug), int(self.labels[i]), i

    def batch(self, indices: Sequence[int]):
        """The collated batch of ``indices``: what ``default_collate`` makes of their items,
        but heatmap and RGB clips are read straight into one batch tensor (in a loader
        worker, in shared memory, as ``default_collate`` allocates it), one copy of each clip
        fewer than reading clips and stacking them: at paper size the copies, not the
        decompression, dominate a loader worker's time."""
        if self.modality == "joints" or self.render is not None or not indices:
            return default_collate([self[i] for i in indices])
        first = self.clip_ids[indices[0]]
        shape = (self.arrays.shape(first) if isinstance(self.arrays, H5Clips)
                 else self.arrays[first].shape)
        x = _batch_tensor((len(indices), *shape), torch.uint8)
        augs = np.empty((len(indices), 6), np.float32)
        min_crop = 0.8 if self.modality == "heatmap" else 0.7
        for k, i in enumerate(indices):
            cid, dest = self.clip_ids[i], x[k].numpy()
            if isinstance(self.arrays, H5Clips):
                got = self.arrays.shape(cid)
                if got != shape:
                    raise ValueError(f"{self.arrays.path}: clip {cid} has shape {got}, the "
                                     f"batch {shape}; rerun its stage")
                self.arrays.read_into(cid, dest)
            else:
                dest[...] = self.arrays[cid]
            rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
            augs[k] = _draw_aug(rng, self.modality, self.flip, min_crop)
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return x, torch.from_numpy(augs), torch.as_tensor(self.labels[list(indices)]), idx

    def to_input(self, x: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        """``model_input`` of a collated batch with this dataset's modality settings."""
        flip = self.channel_flip if self.modality == "heatmap" else None
        return model_input(x, aug, self.modality, flip, self.motion)


class ClipBatches(Dataset):
    """``clips`` a batch at a time, for a ``DataLoader(..., batch_size=None, sampler=S)``
    whose sampler ``S`` yields lists of positions: item = ``clips.batch(positions)``."""

    def __init__(self, clips: ClipDataset):
        self.clips = clips

    def __getitem__(self, indices: Sequence[int]):
        return self.clips.batch(indices)

    def __len__(self) -> int:
        return len(self.clips)


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor; in a DataLoader worker its memory is shared (as default_collate
    allocates it), so handing it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(math.prod(shape), device=proto.device)
    return proto.new(storage).resize_(shape)
