"""Benchmark the heatmap renderers and the compressed HDF5 size per clip.

Compares, in one run and on the same clips: the PoseC3D-style reference loop, our numpy
renderer, our torch renderer on CPU, and, when CUDA is available, our torch renderer on the
GPU beside a plain full-grid broadcast torch renderer (the SPEC section 11 baseline). Clips
are random walks of a 68-joint upper-body skeleton (about 60 frames, a few score-0 joints).
Then writes 68 x 48 x 56 x 56 joint volumes with each compression setting and reports bytes
per clip, write and read time, on mgpipe.synth's keypoints when data/raw/synth has them.

    python bench/heatmaps.py               # default run, under two minutes on 2 CPU cores
    python bench/heatmaps.py --quick       # smoke run
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mgpipe import heatmaps as hm  # noqa: E402
from mgpipe import layout  # noqa: E402


# ---- realistic keypoints -------------------------------------------------------------------

def _template() -> np.ndarray:
    """A seated person facing the camera in a 640 x 480 frame: [68, 2] source pixels."""
    p = np.zeros((68, 2), np.float32)
    pose = {0: (320, 140), 1: (328, 128), 2: (334, 127), 3: (340, 128), 4: (312, 128),
            5: (306, 127), 6: (300, 128), 7: (352, 135), 8: (288, 135), 9: (330, 160),
            10: (310, 160), 11: (390, 220), 12: (250, 220), 13: (420, 320), 14: (220, 320),
            15: (400, 400), 16: (240, 400), 17: (410, 425), 18: (230, 425), 19: (400, 430),
            20: (240, 430), 21: (390, 420), 22: (250, 420), 23: (370, 470), 24: (270, 470)}
    for i, xy in pose.items():
        p[i] = xy
    p[layout.NECK] = (p[11] + p[12]) / 2
    for base, wrist, side in ((layout.LEFT_HAND, 15, 1), (layout.RIGHT_HAND, 16, -1)):
        p[base] = p[wrist]
        for f in range(5):  # thumb .. pinky fanned out below the wrist
            ang = np.deg2rad(90 - side * (f - 2) * 18)
            d = np.array([np.cos(ang), np.sin(ang)], np.float32)
            dist = 0.0
            for seg, step in enumerate((22, 12, 9, 7)):
                dist += step * (0.8 if f == 0 else 1.0)
                p[base + 1 + 4 * f + seg] = p[wrist] + d * dist
    return p


def random_walk_clips(n: int, rng: np.random.Generator, length: int = 60) -> list[np.ndarray]:
    """``n`` clips [T ~ length, 68, 3] of a jittering, drifting skeleton with one hand
    wandering toward the face, varied scale and position, and some score-0 joints."""
    tpl = _template()
    clips = []
    for _ in range(n):
        T = int(rng.integers(length * 2 // 3, length * 4 // 3 + 1))
        scale = rng.uniform(0.5, 1.2)
        shift = rng.uniform(-80, 80, 2)
        noise = np.zeros((T, 68, 2), np.float32)
        for t in range(1, T):  # mean-reverting per-joint random walk, in pixels
            noise[t] = 0.85 * noise[t - 1] + rng.normal(0, 1.5, (68, 2))
        drift = np.cumsum(rng.normal(0, 1.0, (T, 1, 2)), axis=0)
        xy = tpl[None] + noise + drift
        left = rng.random() < 0.5
        hand = layout.LEFT_HAND if left else layout.RIGHT_HAND
        arm = ([15, 17, 19, 21] if left else [16, 18, 20, 22]) + list(range(hand, hand + 21))
        reach = 0.5 * (1 - np.cos(np.linspace(0, 2 * np.pi, T)))[:, None, None]
        move = reach * (tpl[0] - tpl[arm[0]]) * rng.uniform(0.3, 0.9)
        xy[:, arm] += move
        xy[:, [13 if left else 14]] += move * 0.5  # the elbow follows halfway
        xy = (xy - 320) * scale + 320 + shift
        score = rng.uniform(0.5, 1.0, (T, 68)).astype(np.float32)
        score[rng.random((T, 68)) < 0.03] = 0
        if rng.random() < 0.5:  # a hand lost for a stretch of frames
            t0 = int(rng.integers(0, T // 2))
            lost = layout.RIGHT_HAND if hand == layout.LEFT_HAND else layout.LEFT_HAND
            score[t0:t0 + T // 4, lost:lost + 21] = 0
        clips.append(np.concatenate([xy, score[..., None]], -1).astype(np.float32))
    return clips


def synth_clips(limit: int) -> list[np.ndarray]:
    """mgpipe.synth's keypoints from data/raw/synth/keypoints/*.npy ([T, 68, 3]), if any."""
    try:
        import mgpipe.synth  # noqa: F401
    except Exception:
        return []
    out = []
    for f in sorted(glob.glob(str(ROOT / "data/raw/synth/keypoints/*.npy")))[:limit]:
        a = np.load(f)
        if a.ndim == 3 and a.shape[1:] == (68, 3) and len(a):
            out.append(a.astype(np.float32))
    return out


# ---- the SPEC section 11 GPU baseline ------------------------------------------------------

def dense_torch_joints(coords, size, sigma):
    """Plain full-grid broadcast: every pixel of every (clip, joint, frame) map, at once.
    coords [N, T, J, 3] tensor -> uint8 [N, J, T, H, W]."""
    import torch
    H, W = size
    c = coords.transpose(1, 2)[..., None, None, :]  # [N, J, T, 1, 1, 3]
    ys = torch.arange(H, device=coords.device, dtype=torch.float32)[:, None]
    xs = torch.arange(W, device=coords.device, dtype=torch.float32)[None, :]
    dx, dy = xs - c[..., 0], ys - c[..., 1]
    r = 3 * sigma
    v = torch.exp(-(dx * dx + dy * dy) / (2 * sigma ** 2)) * c[..., 2]
    v = v * ((dx.abs() <= r) & (dy.abs() <= r))
    return (v * 255 + 0.5).to(torch.uint8)


# ---- timing --------------------------------------------------------------------------------

def _rate(fn, n_clips: int, min_time: float, sync=None) -> float:
    """clips/s of ``fn`` (which renders ``n_clips``): best of repeats over ``min_time`` s
    (at least 3), as timeit does, so other load on a shared machine shows less."""
    fn()  # warm-up (allocations, torch kernels)
    if sync:
        sync()
    best, reps, t_end = float("inf"), 0, time.perf_counter() + min_time
    while reps < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return n_clips / best


def _each(render, clips, **kw):
    """A job rendering the clips one by one, dropping each volume as a stage would after
    writing it (keeping them all alive would time fresh-page faults, not rendering)."""
    def job():
        for k in clips:
            render(k, **kw)
    return job


def bench_render(args, clips) -> list[tuple]:
    import torch
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.no_cuda
    scales = [("paper", (56, 56), 48), ("demo", (32, 32), 16)]
    rows = []
    for name, size, frames in scales:
        for mode in ("joint", "limb"):
            kw = dict(size=size, sigma=args.sigma, mode=mode, frames=frames)
            ref_clips = clips[:args.ref_clips]
            r_ref = _rate(_each(hm.render_heatmaps_reference, ref_clips, **kw),
                          len(ref_clips), args.min_time)
            r_np = _rate(_each(hm.render_heatmaps, clips, **kw), len(clips), args.min_time)
            r_tc = _rate(_each(hm.render_heatmaps, clips, device="cpu", **kw), len(clips),
                         args.min_time)
            # agreement on the reference clips (uint8 units)
            diff = 0
            for k in ref_clips:
                ref = hm.render_heatmaps_reference(k, **kw).astype(np.int16)
                diff = max(diff, int(np.abs(ref - hm.render_heatmaps(k, **kw)).max()),
                           int(np.abs(ref - hm.render_heatmaps(k, device="cpu", **kw).numpy())
                               .max()))
            label = f"{name} {mode} {68 if mode == 'joint' else len(layout.BONES)}x{frames}x" \
                    f"{size[0]}x{size[1]}"
            rows += [(label, "reference loop", r_ref, 1.0, "")]
            rows += [(label, "ours numpy", r_np, r_np / r_ref, f"max|diff| {diff}")]
            rows += [(label, "ours torch cpu", r_tc, r_tc / r_ref, "")]
            if cuda:
                rows += bench_cuda(args, clips, label, kw, r_ref)
    return rows


def bench_cuda(args, clips, label, kw, r_ref) -> list[tuple]:
    import torch
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    batch = [clips[i % len(clips)] for i in range(args.gpu_batch)]
    coords = np.stack([hm.prepare_coords(k, kw["size"], kw["frames"])[0] for k in batch])
    ct = torch.as_tensor(coords, device=dev)
    size, sigma = kw["size"], kw["sigma"]
    rows = []
    if kw["mode"] == "joint":
        ours = lambda: hm.render_joints_torch(ct, size, sigma)  # noqa: E731
        dense = lambda: dense_torch_joints(ct, size, sigma)  # noqa: E731
        diff = int((ours().short() - dense().short()).abs().max())
        r_dense = _rate(dense, len(batch), args.min_time, sync)
        rows.append((label, f"dense torch cuda b{len(batch)}", r_dense, r_dense / r_ref,
                     "SPEC 11 baseline"))
    else:
        ours = lambda: hm.render_limbs_torch(ct, size, sigma)  # noqa: E731
        diff = None
    r_ours = _rate(ours, len(batch), args.min_time, sync)
    cpu = torch.as_tensor(hm.render_heatmaps_batch(batch[:8], **kw)).short()
    diff_np = int((ours()[:8].cpu().short() - cpu).abs().max())
    note = f"max|diff| np {diff_np}" + ("" if diff is None else f", dense {diff}")
    rows.append((label, f"ours torch cuda b{len(batch)}", r_ours, r_ours / r_ref, note))
    full = lambda: hm.render_heatmaps_batch(batch, device=dev, **kw).cpu()  # noqa: E731
    r_full = _rate(full, len(batch), args.min_time, sync)
    rows.append((label, "ours cuda +prep +copy", r_full, r_full / r_ref,
                 "from raw kp, to host"))
    return rows


def bench_bytes(args, clips, source: str) -> list[tuple]:
    """Bytes per clip on disk and write/read ms per clip, per compression setting."""
    vols = [hm.render_clip(k, (640, 480), (56, 56), args.sigma, "joint", 48) for k in clips]
    rows = []
    settings = [("gzip", 1), ("gzip", 4), ("gzip", 9), ("lzf", None)]
    import h5py
    with tempfile.TemporaryDirectory() as tmp:
        for comp, level in settings:
            path = os.path.join(tmp, f"hm_{comp}{level}.h5")
            t0 = time.perf_counter()
            hm.write_heatmaps_h5(path, ((f"c{i}", v, a) for i, (v, a) in enumerate(vols)),
                                 compression=comp, compression_opts=level)
            t_w = (time.perf_counter() - t0) / len(vols)
            t0 = time.perf_counter()
            with h5py.File(path, "r") as f:
                for i in range(len(vols)):
                    f[f"c{i}"][()]
            t_r = (time.perf_counter() - t0) / len(vols)
            name = comp + ("" if level is None else f" {level}")
            rows.append((name, os.path.getsize(path) / len(vols), t_w * 1e3, t_r * 1e3))
    raw = vols[0][0].nbytes
    print(f"\nbytes per clip, 68x48x56x56 joint volumes, sigma {args.sigma}, {len(vols)} clips "
          f"of {source} keypoints (raw {raw / 1e6:.2f} MB, goal <= 0.30 MB):")
    print(f"{'compression':<12} {'MB/clip':>8} {'write ms/clip':>14} {'read ms/clip':>13}")
    for name, b, tw, tr in rows:
        print(f"{name:<12} {b / 1e6:>8.3f} {tw:>14.1f} {tr:>13.1f}")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24, help="clips rendered per timing (ours)")
    ap.add_argument("--ref-clips", type=int, default=4, help="clips for the reference loop")
    ap.add_argument("--bytes-clips", type=int, default=24, help="clips for the size test")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--sigma", type=float, default=hm.DEFAULT_SIGMA)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: ops here are a few thousand elements, where "
                         "intra-op threads only add sync, badly so on a busy 2-core box)")
    ap.add_argument("--gpu-batch", type=int, default=64, help="clips per GPU call")
    ap.add_argument("--no-cuda", action="store_true", help="skip the GPU rows")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.clips, args.ref_clips, args.bytes_clips, args.min_time = 4, 1, 4, 0.2
        args.gpu_batch = min(args.gpu_batch, 8)

    import torch
    rng = np.random.default_rng(args.seed)
    clips = random_walk_clips(args.clips, rng)
    print(f"numpy {np.__version__}, torch {torch.__version__} ({args.threads} threads), "
          f"{os.cpu_count()} CPUs" + (f", {torch.cuda.get_device_name()}"
                                      if torch.cuda.is_available() and not args.no_cuda
                                      else ", no CUDA"))
    print(f"clips: random walks of a 68-joint skeleton, {min(len(c) for c in clips)}-"
          f"{max(len(c) for c in clips)} frames, sigma {args.sigma}")
    rows = bench_render(args, clips)
    print(f"\n{'volume':<26} {'renderer':<24} {'clips/s':>10} {'x ref':>8}  note")
    for label, name, rate, ratio, note in rows:
        print(f"{label:<26} {name:<24} {rate:>10.1f} {ratio:>8.1f}  {note}")

    real = synth_clips(args.bytes_clips)
    source = "mgpipe.synth (data/raw/synth/keypoints)" if real else "random-walk"
    bench_bytes(args, real or random_walk_clips(args.bytes_clips, rng), source)


if __name__ == "__main__":
    main()
