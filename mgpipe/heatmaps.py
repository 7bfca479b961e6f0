"""PoseC3D-style heatmap volumes from 68-keypoint skeletons (SPEC section 5).

A clip's keypoints [T, 68, 3] (x, y, score in source pixels) become a uint8 volume
[K, T', H, W]: frames sampled uniformly to T', coordinates mapped into the H x W grid through
the skeleton's box over the clip, and per channel (a joint, or a bone in limb mode) a Gaussian
exp(-d^2 / 2 sigma^2) scaled by the score, inside a +-3 sigma window, quantised round(v * 255).

Grid convention: pixel (i, j) has its centre at x = j, y = i (as PoseC3D); the window of a
point (x, y) holds the pixels with ceil(x - 3s) <= j <= floor(x + 3s), same for rows; a bone's
window is the bounding box of its segment grown by 3 sigma the same way.

Three renderers, same result within 1/255:
- ``render_joints`` / ``render_limbs`` (numpy, the CPU path): all windows of a clip at once,
  scattered into the zeroed volume: joints as separable patches [N, w, w] (one fixed window
  size), bones as a ragged list of their windows' pixels (sizes differ). Each (channel,
  frame) map holds exactly one Gaussian here (one person), so scattering equals PoseC3D's max
  over overlaps, and the work is proportional to the windows, not to K x T x H x W.
- ``render_joints_torch`` / ``render_limbs_torch``: the same algorithm in torch, for a GPU
  (batches of clips: ``render_heatmaps_batch``). On CPU, numpy is the faster path: these
  ops touch a few thousand elements each, where torch's per-op and threading costs dominate.
- ``render_heatmaps_reference``: the per-frame, per-keypoint loop of PoseC3D's
  GeneratePoseTarget; for tests and the benchmark only.
"""
from __future__ import annotations

import math
import os
from collections import deque
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from . import layout
from .io import H5_COMPRESSION, H5_LEVEL, atomic_path, h5_filter  # noqa: F401 (re-exported)
from .sampling import uniform_indices

DEFAULT_SIZE = (56, 56)
DEFAULT_SIGMA = 0.6
DEFAULT_FRAMES = 48
DEFAULT_MARGIN = 0.1
MODES = ("joint", "limb")
# A bone shorter than this (squared grid pixels) is drawn as a point at its start.
_MIN_LEN2 = 1e-6
# Grid coordinates beyond this are detector glitches, treated as missing: it bounds every
# segment, so float32 keeps sub-millipixel precision and _FAR stays far from all of them.
_MAX_COORD = 1e4
# Where padded window positions are moved: far enough that exp(-d^2 / 2 sigma^2) is 0.
_FAR = 1e6


# ---- coordinates ---------------------------------------------------------------------------

def _valid(kp: np.ndarray) -> np.ndarray:
    """Mask [...] of keypoints [..., 3] with score > 0 and finite coordinates."""
    return (kp[..., 2] > 0) & np.isfinite(kp[..., 0]) & np.isfinite(kp[..., 1])


def skeleton_box(kp: np.ndarray, aspect: float = 1.0, margin: float = DEFAULT_MARGIN,
                 min_extent: float = 1.0) -> tuple[float, float, float, float] | None:
    """Box (x0, y0, width, height) in source pixels around all keypoints with score > 0.

    kp: [..., 3]. The tight box is grown by ``margin`` of its size on every side, then its
    shorter side is extended about the centre so width / height == ``aspect`` (the grid's
    W / H), which keeps the skeleton's aspect ratio. None when no keypoint is valid.
    """
    kp = np.asarray(kp, np.float32)
    ok = _valid(kp)
    if not ok.any():
        return None
    # per-column reductions: numpy's axis-0 min over [N, 2] is several times slower
    x, y = kp[..., 0][ok], kp[..., 1][ok]
    lo_x, hi_x, lo_y, hi_y = (float(v) for v in (x.min(), x.max(), y.min(), y.max()))
    w = max(hi_x - lo_x, min_extent) * (1 + 2 * margin)
    h = max(hi_y - lo_y, min_extent) * (1 + 2 * margin)
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    return (lo_x + hi_x) / 2 - w / 2, (lo_y + hi_y) / 2 - h / 2, w, h


def _to_grid(kp: np.ndarray, box, size: tuple[int, int]) -> np.ndarray:
    """Keypoints [..., 3] in source pixels -> grid coords through ``box`` (see
    ``normalize_to_box``); invalid keypoints, or all when box is None, become zeros."""
    out = np.zeros(kp.shape, np.float32)
    if box is None:
        return out
    x0, y0, bw, _ = box
    scale = size[1] / bw
    ok = _valid(kp)
    out[..., 0] = np.where(ok, (kp[..., 0] - np.float32(x0)) * np.float32(scale) - 0.5, 0)
    out[..., 1] = np.where(ok, (kp[..., 1] - np.float32(y0)) * np.float32(scale) - 0.5, 0)
    out[..., 2] = np.where(ok, kp[..., 2], 0)
    return out


def normalize_to_box(kp: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE,
                     margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Map keypoints [T, J, 3] (source pixels) into the H x W grid of ``size`` = (H, W).

    The skeleton's box over the whole clip (``skeleton_box``) maps onto the grid, box edges
    onto pixel edges (-0.5 and W - 0.5), so valid keypoints land inside [0, W) x [0, H) with
    the margin to spare. Scores pass through; keypoints with score <= 0 (or non-finite)
    become (0, 0, 0). A clip with no valid keypoint returns zeros. float32 [T, J, 3].
    """
    kp = np.asarray(kp, np.float32)
    return _to_grid(kp, skeleton_box(kp, size[1] / size[0], margin), size)


def prepare_coords(kp: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE,
                   frames: int | None = DEFAULT_FRAMES, margin: float = DEFAULT_MARGIN,
                   normalize: bool = True, indices: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Sample and normalise one clip: kp [T, J, 3] -> (grid coords [T', J, 3], indices [T']).

    The box comes from the whole clip, then ``frames`` frames are taken with
    ``uniform_indices`` (all frames when None), or the given ``indices`` (training's random
    frame per segment). ``normalize=False`` takes kp as grid coords.
    """
    kp = np.asarray(kp, np.float32)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"expected keypoints [T, J, 3], got shape {kp.shape}")
    if indices is not None:
        idx = np.asarray(indices, np.int64)
    else:
        idx = uniform_indices(len(kp), frames) if frames else np.arange(len(kp), dtype=np.int64)
    if not normalize:
        return kp[idx], idx
    # box from the whole clip, mapping only the sampled frames
    return _to_grid(kp[idx], skeleton_box(kp, size[1] / size[0], margin), size), idx


def _clamp(a, lo, hi):
    return np.minimum(np.maximum(a, lo), hi)  # np.clip's Python wrapper costs more here


def _clean(coords: np.ndarray) -> np.ndarray:
    """float32 copy with non-finite or absurdly far (> _MAX_COORD) keypoints zeroed (score 0)
    and scores clipped to [0, 1]."""
    c = np.array(coords, np.float32)
    ok = (np.abs(c[..., 0]) <= _MAX_COORD) & (np.abs(c[..., 1]) <= _MAX_COORD)
    c[~(ok & np.isfinite(c[..., 2]))] = 0
    c[..., 2] = _clamp(c[..., 2], np.float32(0), np.float32(1))
    return c


def _quantize(v: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 round(v * 255), half up."""
    return (v * np.float32(255) + np.float32(0.5)).astype(np.uint8)


# ---- numpy renderers -----------------------------------------------------------------------

def _axis(lo: np.ndarray, hi: np.ndarray, r: np.float32, n: int, w: int):
    """Window along one axis for N items, padded to w: pixel positions [N, w] (int64) from
    ceil(lo - r), and the same as float32 with the positions past floor(hi + r) or outside
    [0, n) moved _FAR away, so the Gaussian there underflows to 0 with no mask pass."""
    start = _clamp(np.ceil(lo - r), 0, n)
    stop = _clamp(np.floor(hi + r), -1, n - 1)
    pos = start[:, None] + np.arange(w, dtype=np.float32)
    return pos.astype(np.int64), np.where(pos <= stop[:, None], pos, np.float32(_FAR))


def _scatter(out_flat: np.ndarray, base: np.ndarray, rows: np.ndarray, cols: np.ndarray,
             v: np.ndarray, W: int) -> None:
    """Quantise values v [N, h, w] in [0, 255] (round half up) and write them at rows
    [N, h] x cols [N, w] of the maps starting at flat offsets base [N]. Zeros are skipped:
    they include every padded or out-of-grid position, whose index may alias a neighbour."""
    v += np.float32(0.5)
    q = v.astype(np.uint8)
    keep = q > 0
    idx = (base[:, None] + rows * W)[:, :, None] + cols[:, None, :]
    out_flat[idx[keep]] = q[keep]


def _log255(s: np.ndarray) -> np.ndarray:
    """ln(255 s): folds score and the uint8 scale into the exponent (s > 0)."""
    return np.log(s * np.float32(255))


def render_joints(coords: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE,
                  sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """Joint heatmaps from grid coords [..., T, J, 3] -> uint8 [..., J, T, H, W].

    Separable: the window patch is 255 s gy[:, None] gx[None, :] with
    g = exp(-d^2 / 2 sigma^2) along each axis, all N = T x J windows at once.
    """
    c = _clean(coords)
    H, W = size
    lead, (T, J) = c.shape[:-3], c.shape[-3:-1]
    # items in output order (lead, joint, frame): item i's map starts at i * H * W
    items = np.swapaxes(c, -2, -3).reshape(-1, 3)
    out = np.zeros(items.shape[0] * H * W, np.uint8)
    live = np.flatnonzero(items[:, 2] > 0)
    if live.size:
        x, y, s = items[live].T
        r = np.float32(3 * sigma)
        w = int(math.floor(2 * r)) + 1  # most integers a closed interval of length 2r holds
        k = np.float32(0.5 / sigma ** 2)
        cols, xs = _axis(x, x, r, W, w)
        rows, ys = _axis(y, y, r, H, w)
        dx, dy = xs - x[:, None], ys - y[:, None]
        gx = np.exp(-(dx * dx) * k)
        gy = np.exp(_log255(s)[:, None] - (dy * dy) * k)
        _scatter(out, live * (H * W), rows, cols, gy[:, :, None] * gx[:, None, :], W)
    return out.reshape(*lead, J, T, H, W)


def _limb_items(c: np.ndarray, bones: Sequence[tuple[int, int]]):
    """Bone endpoints for all (lead, bone, frame) items: a, b [N, 2] and min score [N]."""
    bi = np.asarray(bones, np.int64).reshape(-1, 2)
    ends = np.moveaxis(c[..., bi, :], -3, -4)  # [..., B, T, 2 ends, 3]
    ends = ends.reshape(-1, 2, 3)
    return ends[:, 0, :2], ends[:, 1, :2], np.minimum(ends[:, 0, 2], ends[:, 1, 2]), len(bi)


def _limb_windows(a, b, r, H: int, W: int):
    """Windows of bones a -> b [N, 2]: first column/row x0, y0 (clamped to the grid) and
    widths ww, heights wh (<= 0: off the grid); the box of the segment grown by r."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    x0 = _clamp(np.ceil(lo[:, 0] - r), 0, W)
    y0 = _clamp(np.ceil(lo[:, 1] - r), 0, H)
    ww = _clamp(np.floor(hi[:, 0] + r), -1, W - 1) - x0 + 1
    wh = _clamp(np.floor(hi[:, 1] + r), -1, H - 1) - y0 + 1
    return x0, y0, ww, wh


def render_limbs(coords: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE,
                 sigma: float = DEFAULT_SIGMA,
                 bones: Sequence[tuple[int, int]] = layout.BONES) -> np.ndarray:
    """Limb heatmaps from grid coords [..., T, J, 3] -> uint8 [..., len(bones), T, H, W].

    Per bone, exp(-d^2 / 2 sigma^2) of the distance d to the segment, scaled by the smaller
    end score, over the segment's box grown by 3 sigma. Windows differ in size, so they are
    laid out ragged, no padding: one entry per window row, then one per pixel (np.repeat),
    with per-row terms computed once per row.
    """
    c = _clean(coords)
    H, W = size
    lead, T = c.shape[:-3], c.shape[-3]
    a, b, s, B = _limb_items(c, bones)
    out = np.zeros(a.shape[0] * H * W, np.uint8)
    x0, y0, ww, wh = _limb_windows(a, b, np.float32(3 * sigma), H, W)
    live = np.flatnonzero((s > 0) & (ww > 0) & (wh > 0))
    if not live.size:
        return out.reshape(*lead, B, T, H, W)
    q = np.float32(math.sqrt(0.5) / sigma)  # distances times q: exp(-(d q)^2)
    ax, ay = a[live, 0], a[live, 1]
    ex, ey = b[live, 0] - ax, b[live, 1] - ay
    inv = 1 / np.maximum(ex * ex + ey * ey, np.float32(_MIN_LEN2))
    x0, y0 = x0[live], y0[live]
    ww, wh = ww[live].astype(np.int64), wh[live].astype(np.int64)

    # rows: dy, and the part of the projection t = (d . e) / |e|^2 that comes from dy
    per_row = lambda v: np.repeat(v, wh)  # noqa: E731
    row = np.arange(int(wh.sum())) - per_row(np.cumsum(wh) - wh)
    dy = row.astype(np.float32) + per_row(y0 - ay)
    row_t = dy * per_row(ey * inv)
    row_py = dy * q
    row_off = per_row(live * (H * W) + x0.astype(np.int64)) + (per_row(y0).astype(np.int64)
                                                               + row) * W
    # pixels
    row_w = per_row(ww)
    per_px = lambda v: np.repeat(v, row_w)  # noqa: E731
    col = np.arange(int(row_w.sum())) - per_px(np.cumsum(row_w) - row_w)
    dx = col.astype(np.float32) + per_px(per_row(x0 - ax))
    t = dx * per_px(per_row(ex * inv)) + per_px(row_t)
    np.maximum(t, 0, out=t)
    np.minimum(t, 1, out=t)  # nearest point of the segment: a + t e
    px = dx * q - t * per_px(per_row(ex * q))
    t *= per_px(per_row(ey * q))
    py = np.subtract(per_px(row_py), t, out=t)
    px *= px
    py *= py
    px += py
    v = np.subtract(per_px(per_row(_log255(s[live]))), px, out=px)
    np.exp(v, out=v)
    v += np.float32(0.5)
    # no padding: every index is a pixel of its own item's window, written once
    out[per_px(row_off) + col] = v.astype(np.uint8)
    return out.reshape(*lead, B, T, H, W)


# ---- torch renderers (same algorithm; GPU when the tensors are on one) ---------------------

def _torch_clean(coords, device):
    import torch
    c = torch.as_tensor(coords, dtype=torch.float32, device=device).clone()
    ok = (c[..., :2].abs() <= _MAX_COORD).all(-1) & torch.isfinite(c[..., 2])
    c[~ok] = 0
    c[..., 2].clamp_(0, 1)
    return c


def _torch_axis(lo, hi, r: float, n: int, w: int):
    import torch
    start = torch.clamp(torch.ceil(lo - r), 0, n)
    stop = torch.clamp(torch.floor(hi + r), -1, n - 1)
    pos = start[:, None] + torch.arange(w, dtype=torch.float32, device=lo.device)
    return pos, pos <= stop[:, None]


def _torch_scatter(out_flat, base, ys, xs, patch, W: int) -> None:
    import torch
    q = (patch * 255 + 0.5).to(torch.uint8)
    idx = base[:, None, None] + ys.long()[:, :, None] * W + xs.long()[:, None, :]
    # zeros go to the spare last slot: no host sync for a boolean mask, no clobbering
    idx = torch.where(q > 0, idx, out_flat.numel() - 1)
    out_flat.index_put_((idx.reshape(-1),), q.reshape(-1))


def render_joints_torch(coords, size: tuple[int, int] = DEFAULT_SIZE,
                        sigma: float = DEFAULT_SIGMA, device=None):
    """``render_joints`` in torch: coords [..., T, J, 3] -> uint8 tensor [..., J, T, H, W]."""
    import torch
    c = _torch_clean(coords, device)
    H, W = size
    lead, (T, J) = c.shape[:-3], c.shape[-3:-1]
    items = c.transpose(-2, -3).reshape(-1, 3)
    n = items.shape[0]
    out = torch.zeros(n * H * W + 1, dtype=torch.uint8, device=c.device)
    if n:
        x, y, s = items.unbind(1)
        r = float(np.float32(3 * sigma))
        w = int(math.floor(2 * r)) + 1
        k = float(np.float32(-0.5 / sigma ** 2))
        xs, okx = _torch_axis(x, x, r, W, w)
        ys, oky = _torch_axis(y, y, r, H, w)
        gx = torch.exp((xs - x[:, None]) ** 2 * k) * okx
        gy = torch.exp((ys - y[:, None]) ** 2 * k) * oky * s[:, None]
        base = torch.arange(n, device=c.device) * (H * W)
        _torch_scatter(out, base, ys, xs, gy[:, :, None] * gx[:, None, :], W)
    return out[:-1].reshape(*lead, J, T, H, W)


def render_limbs_torch(coords, size: tuple[int, int] = DEFAULT_SIZE,
                       sigma: float = DEFAULT_SIGMA,
                       bones: Sequence[tuple[int, int]] = layout.BONES, device=None):
    """``render_limbs`` in torch: coords [..., T, J, 3] -> uint8 tensor [..., B, T, H, W].

    Same ragged layout; its two sizes (rows, pixels) are the only host syncs.
    """
    import torch
    c = _torch_clean(coords, device)
    dev = c.device
    H, W = size
    lead, T = c.shape[:-3], c.shape[-3]
    bi = torch.as_tensor(np.asarray(bones, np.int64).reshape(-1, 2), device=dev)
    B = bi.shape[0]
    ends = c[..., bi, :].movedim(-3, -4).reshape(-1, 2, 3)  # [N, 2 ends, 3]
    a, b = ends[:, 0, :2], ends[:, 1, :2]
    s = torch.minimum(ends[:, 0, 2], ends[:, 1, 2])
    out = torch.zeros(a.shape[0] * H * W, dtype=torch.uint8, device=dev)
    r = float(np.float32(3 * sigma))
    q = float(np.float32(math.sqrt(0.5) / sigma))
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    x0 = torch.clamp(torch.ceil(lo[:, 0] - r), 0, W)
    y0 = torch.clamp(torch.ceil(lo[:, 1] - r), 0, H)
    ww = torch.clamp(torch.floor(hi[:, 0] + r), -1, W - 1) - x0 + 1
    wh = torch.clamp(torch.floor(hi[:, 1] + r), -1, H - 1) - y0 + 1
    live = (s > 0) & (ww > 0) & (wh > 0)
    wh = torch.where(live, wh, 0).long()  # dead bones get no rows
    ww = ww.long()
    n_rows = int(wh.sum())
    if not n_rows:
        return out.reshape(*lead, B, T, H, W)
    ax, ay = a[:, 0], a[:, 1]
    ex, ey = b[:, 0] - ax, b[:, 1] - ay
    inv = 1 / torch.clamp(ex * ex + ey * ey, min=_MIN_LEN2)
    ri = torch.repeat_interleave(torch.arange(len(wh), device=dev), wh, output_size=n_rows)
    row = torch.arange(n_rows, device=dev) - (torch.cumsum(wh, 0) - wh)[ri]
    dy = row.float() + (y0 - ay)[ri]
    row_w = ww[ri]
    n_px = int(row_w.sum())
    pr = torch.repeat_interleave(torch.arange(n_rows, device=dev), row_w, output_size=n_px)
    col = torch.arange(n_px, device=dev) - (torch.cumsum(row_w, 0) - row_w)[pr]
    it = ri[pr]
    dx = col.float() + (x0 - ax)[it]
    t = torch.clamp(dx * (ex * inv)[it] + (dy * (ey * inv)[ri])[pr], 0, 1)
    px = dx * q - t * (ex * q)[it]
    py = (dy * q)[pr] - t * (ey * q)[it]
    v = torch.exp(torch.log(s * 255)[it] - (px * px + py * py))
    idx = it * (H * W) + (y0.long()[it] + row[pr]) * W + x0.long()[it] + col
    out[idx] = (v + 0.5).to(torch.uint8)
    return out.reshape(*lead, B, T, H, W)


# ---- public entry points -------------------------------------------------------------------

def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _render(coords, size, sigma, mode, bones, device):
    if device is None:
        return (render_joints(coords, size, sigma) if mode == "joint"
                else render_limbs(coords, size, sigma, bones))
    if mode == "joint":
        return render_joints_torch(coords, size, sigma, device)
    return render_limbs_torch(coords, size, sigma, bones, device)


def render_heatmaps(kp: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE,
                    sigma: float = DEFAULT_SIGMA, mode: str = "joint",
                    frames: int | None = DEFAULT_FRAMES,
                    bones: Sequence[tuple[int, int]] = layout.BONES, device=None, *,
                    margin: float = DEFAULT_MARGIN, normalize: bool = True):
    """Heatmap volume of one clip.

    kp: float32 [T, J, 3] (x, y, score) in source pixels (grid pixels if ``normalize`` is
    False), T >= 1. size: (H, W). sigma: in grid pixels. frames: T' sampled uniformly
    (None: all). margin: the box's margin (``skeleton_box``).
    Returns uint8 [K, T', H, W], K = J (joint) or len(bones) (limb): a numpy array when
    ``device`` is None, else a torch tensor on ``device`` (e.g. "cuda").
    """
    _check_mode(mode)
    coords, _ = prepare_coords(kp, size, frames, margin, normalize)
    return _render(coords, size, sigma, mode, bones, device)


def render_heatmaps_batch(kps: Sequence[np.ndarray], size: tuple[int, int] = DEFAULT_SIZE,
                          sigma: float = DEFAULT_SIGMA, mode: str = "joint",
                          frames: int = DEFAULT_FRAMES,
                          bones: Sequence[tuple[int, int]] = layout.BONES, device=None, *,
                          margin: float = DEFAULT_MARGIN, normalize: bool = True):
    """Several clips (any lengths) in one call: uint8 [N, K, frames, H, W], numpy or torch
    as in ``render_heatmaps``. On a GPU this amortises launches over the batch."""
    _check_mode(mode)
    if not frames:
        raise ValueError("a batch needs a fixed number of frames")
    coords = np.stack([prepare_coords(kp, size, frames, margin, normalize)[0] for kp in kps])
    return _render(coords, size, sigma, mode, bones, device)


# ---- reference loop ------------------------------------------------------------------------

def _paint_point(arr: np.ndarray, x, y, score, sigma: float) -> None:
    """PoseC3D's generate_a_heatmap for one point, max into arr [H, W] (float32)."""
    if not score > 0:
        return
    H, W = arr.shape
    r = np.float32(3 * sigma)
    x0, x1 = max(math.ceil(x - r), 0), min(math.floor(x + r), W - 1) + 1
    y0, y1 = max(math.ceil(y - r), 0), min(math.floor(y + r), H - 1) + 1
    if x0 >= x1 or y0 >= y1:
        return
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    patch = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / np.float32(2 * sigma ** 2)) * score
    arr[y0:y1, x0:x1] = np.maximum(arr[y0:y1, x0:x1], patch)


def _paint_segment(arr: np.ndarray, a, b, score, sigma: float) -> None:
    """PoseC3D's generate_a_limb_heatmap for one bone a -> b, max into arr [H, W]."""
    if not score > 0:
        return
    H, W = arr.shape
    r = np.float32(3 * sigma)
    x0 = max(math.ceil(min(a[0], b[0]) - r), 0)
    x1 = min(math.floor(max(a[0], b[0]) + r), W - 1) + 1
    y0 = max(math.ceil(min(a[1], b[1]) - r), 0)
    y1 = min(math.floor(max(a[1], b[1]) + r), H - 1) + 1
    if x0 >= x1 or y0 >= y1:
        return
    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    d2_a = (xs - a[0]) ** 2 + (ys - a[1]) ** 2
    d2_b = (xs - b[0]) ** 2 + (ys - b[1]) ** 2
    d2_ab = (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2
    if d2_ab < _MIN_LEN2:
        d2 = d2_a
    else:
        coeff = (d2_a - d2_b + d2_ab) / 2 / d2_ab
        px = xs - (a[0] + coeff * (b[0] - a[0]))
        py = ys - (a[1] + coeff * (b[1] - a[1]))
        d2 = np.where(coeff <= 0, d2_a, np.where(coeff >= 1, d2_b, px ** 2 + py ** 2))
    patch = np.exp(-d2 / np.float32(2 * sigma ** 2)) * score
    arr[y0:y1, x0:x1] = np.maximum(arr[y0:y1, x0:x1], patch)


def render_heatmaps_reference(kp: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE,
                              sigma: float = DEFAULT_SIGMA, mode: str = "joint",
                              frames: int | None = DEFAULT_FRAMES,
                              bones: Sequence[tuple[int, int]] = layout.BONES, device=None, *,
                              margin: float = DEFAULT_MARGIN,
                              normalize: bool = True) -> np.ndarray:
    """``render_heatmaps`` as a plain loop over frames x keypoints (bones), one window at a
    time like PoseC3D's GeneratePoseTarget. Slow; for tests and benchmarks. numpy only."""
    _check_mode(mode)
    c, _ = prepare_coords(kp, size, frames, margin, normalize)
    c = _clean(c)
    H, W = size
    T, J = c.shape[:2]
    if mode == "joint":
        out = np.zeros((J, T, H, W), np.float32)
        for t in range(T):
            for j in range(J):
                x, y, s = c[t, j]
                _paint_point(out[j, t], x, y, s, sigma)
    else:
        out = np.zeros((len(bones), T, H, W), np.float32)
        for t in range(T):
            for i, (ja, jb) in enumerate(bones):
                _paint_segment(out[i, t], c[t, ja, :2], c[t, jb, :2],
                               min(c[t, ja, 2], c[t, jb, 2]), sigma)
    return _quantize(out)


# ---- HDF5 output ---------------------------------------------------------------------------

def render_clip(kp: np.ndarray, source_size: tuple[int, int], size: tuple[int, int] = DEFAULT_SIZE,
                sigma: float = DEFAULT_SIGMA, mode: str = "joint",
                frames: int | None = DEFAULT_FRAMES, margin: float = DEFAULT_MARGIN,
                bones: Sequence[tuple[int, int]] = layout.BONES) -> tuple[np.ndarray, dict]:
    """``render_heatmaps`` plus the attributes ``write_heatmaps_h5`` stores with the clip.

    source_size: (width, height) of the source frames, in pixels. Attributes: the sampled
    frame indices, source size, mode, sigma, margin, the skeleton box (x, y, w, h source
    pixels; zeros when the clip has no valid keypoint) and, in limb mode, the bones.
    """
    vol = render_heatmaps(kp, size, sigma, mode, frames, bones, margin=margin)
    idx = uniform_indices(len(kp), frames) if frames else np.arange(len(kp), dtype=np.int64)
    box = skeleton_box(kp, aspect=size[1] / size[0], margin=margin)
    attrs = {"frame_indices": idx, "source_size": np.asarray(source_size, np.int64),
             "mode": mode, "sigma": float(sigma), "margin": float(margin),
             "box_xywh": np.asarray(box if box else (0, 0, 0, 0), np.float64)}
    if mode == "limb":
        attrs["bones"] = np.asarray(bones, np.int64).reshape(-1, 2)  # channel k = bone k
    return vol, attrs


def _register_filters() -> None:
    """Make hdf5plugin's filters (zstd) readable in this process, when it is installed."""
    try:
        import hdf5plugin  # noqa: F401 - registers the filters with HDF5 on import
    except ImportError:  # pragma: no cover
        pass


class EncodedVolume(NamedTuple):
    """A volume compressed as the single chunk heatmaps.h5 stores, made where it was rendered
    (a worker process) so the writer only copies bytes: ``write_heatmaps_h5`` accepts it in
    place of an array, and the file is byte-identical to writing the array."""
    shape: tuple[int, ...]
    chunk: bytes
    filter_mask: int
    compression: str | None
    level: int | None


def encode_volume(vol: np.ndarray, compression: str | None = H5_COMPRESSION,
                  level: int | None = H5_LEVEL) -> EncodedVolume:
    """uint8 ``vol`` compressed by HDF5's own filter pipeline (an in-memory file), as the one
    chunk ``write_heatmaps_h5`` would store."""
    import h5py

    vol = np.ascontiguousarray(vol, np.uint8)
    with h5py.File(f"encode-{os.getpid()}-{id(vol)}.h5", "w", driver="core",
                   backing_store=False) as f:
        ds = f.create_dataset("v", data=vol, chunks=vol.shape, **h5_filter(compression, level))
        mask, chunk = ds.id.read_direct_chunk((0,) * vol.ndim)
    return EncodedVolume(tuple(vol.shape), bytes(chunk), int(mask), compression, level)


def render_encoded(job: tuple) -> tuple[str, EncodedVolume | None, dict | None, str | None]:
    """A worker's job for the heatmaps stage: (clip_id, kp, source_size, size, sigma, mode,
    frames, compression, level) -> (clip_id, EncodedVolume, attrs, None), or
    (clip_id, None, None, "Error: message") when the clip fails to render."""
    clip_id, kp, source_size, size, sigma, mode, frames, compression, level = job
    try:
        vol, attrs = render_clip(kp, source_size, size, sigma, mode, frames)
        return clip_id, encode_volume(vol, compression, level), attrs, None
    except Exception as e:  # noqa: BLE001 - one bad clip must not stop thousands
        return clip_id, None, None, f"{type(e).__name__}: {e}"


def map_ordered(pool, fn, jobs: Iterable, window: int) -> Iterator:
    """``map(fn, jobs)`` on an executor, results in order, at most ``window`` jobs in flight
    (``Executor.map`` would consume every job, e.g. every clip's keypoints, up front)."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def write_heatmaps_h5(path: str | os.PathLike,
                      items: Iterable[tuple[str, np.ndarray, dict[str, Any]]], *,
                      compression: str | None = H5_COMPRESSION,
                      compression_opts: int | None = H5_LEVEL,
                      file_attrs: dict[str, Any] | None = None) -> int:
    """Write heatmap volumes to ``path``, one dataset per clip; returns the number written.

    items: (clip_id, uint8 [K, T, H, W] or its ``EncodedVolume``, attrs) triples, consumed one
    at a time so a whole dataset never sits in memory. Each volume is a single chunk (a clip is always read
    whole), compressed losslessly with ``compression`` at level ``compression_opts``
    (``h5_filter``; zstd 1 by default, see ``H5_COMPRESSION``: reading it needs hdf5plugin
    imported, which ``mgpipe.data`` and ``read_heatmaps_h5`` do).
    The file appears under ``path`` only once complete.
    """
    import h5py

    options = h5_filter(compression, compression_opts)
    n = 0
    with atomic_path(path, suffix=".h5") as tmp:
        # no chunk cache: each chunk goes to the file when written, whether it was compressed
        # here or by a worker (EncodedVolume), so the layout and the bytes are the same
        with h5py.File(tmp, "w", rdcc_nbytes=0) as f:
            f.attrs.update(file_attrs or {})
            for clip_id, vol, attrs in items:
                if isinstance(vol, EncodedVolume):  # compressed by a worker: copy the chunk
                    if (vol.compression, vol.level) != (compression, compression_opts):
                        raise ValueError(f"{clip_id}: encoded with {vol.compression} "
                                         f"{vol.level}, the file is {compression} "
                                         f"{compression_opts}")
                    ds = f.create_dataset(str(clip_id), shape=vol.shape, dtype=np.uint8,
                                          chunks=vol.shape, track_times=False, **options)
                    ds.id.write_direct_chunk((0,) * len(vol.shape), vol.chunk, vol.filter_mask)
                else:
                    vol = np.ascontiguousarray(vol, np.uint8)
                    ds = f.create_dataset(str(clip_id), data=vol, chunks=vol.shape,
                                          track_times=False, **options)
                ds.attrs.update(attrs)
                n += 1
    return n


def read_heatmaps_h5(path: str | os.PathLike, clip_id: str) -> tuple[np.ndarray, dict]:
    """One clip's volume uint8 [K, T, H, W] and its attributes."""
    import h5py

    _register_filters()

    with h5py.File(path, "r") as f:
        ds = f[clip_id]
        return ds[()], dict(ds.attrs)
