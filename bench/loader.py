"""Training input at paper size: HDF5 codecs, and the loader's cost per training step.

Two parts, on real-looking clips written the way the stages write them:
- heatmap  68 x 48 x 56 x 56 uint8, rendered by mgpipe.heatmaps from mgpipe.synth's keypoints
           (data/raw/synth/keypoints/*.npy; random walks of a skeleton when absent);
- rgb      32 x 224 x 224 x 3 (Swin3D) and 16 x 112 x 112 x 3 (R(2+1)D) uint8: crops of the
           real videos in ../shared/media (random square crops and start frames, resized with
           INTER_AREA; synthetic frames when the folder is absent);
- joints   float32 [T, 68, 3] keypoints as keypoints.h5 stores them (gzip 4 + shuffle).

``--codecs``: for each compression (none, gzip 1, lzf, and blosc-lz4 / blosc-zstd / lz4 /
zstd from hdf5plugin when installed) and chunking (one chunk per clip, or per frame), the write
and read+decompress ms per clip in one process and the MB per clip on disk. Files are read
back from the page cache: this is the CPU cost of a loader worker, not disk bandwidth.

Default: the loader benchmark. Per branch, a file of ``--clips`` clips written with the
stage's settings (heatmaps: mgpipe.heatmaps.write_heatmaps_h5; rgb: ``--rgb-codec``, zstd 1
one chunk per clip, the setting recommended for the crop stage; joints: gzip 4 + shuffle as
keypoints.h5), read
through mgpipe.data.H5Clips + ClipDataset + DataLoader (shuffled, as in training) with 1 and 2
workers; ms per batch. One worker's ms per batch / W is the loader's time per batch with W
workers (workers are independent processes; this 2-core machine can not show past 2), and
the cost is that over the step time. Batch per GPU process (assumed, as in the pyskl /
mmaction2 configs): PoseC3D 32, Swin3D 8, R(2+1)D 16, ST-CNN 16.

Step times: measured here (forward + backward of the mgpipe.models network at paper size,
SGD, fp32 for PoseC3D, bf16 autocast for the others) when CUDA is present; otherwise the
``--step-ms`` defaults, which are NOT measured by this script: they are the README's
H200 table (bench/train.py, paper scale, best setting per branch: PoseC3D 166 clips/s fp32,
Swin3D-T 127 compiled bf16, R(2+1)D-18 408 compiled bf16, ST-CNN 640 bf16) at this script's
batch sizes. A100-class GPUs are ~1.5-2x slower per step, which only lowers the cost.

Goal (exit status 1 when missed): each branch's loader cost <= 10% of its step with the
number of workers the script recommends, at most 8 per GPU process.

    python bench/loader.py                 # loader benchmark, about 3 min on 2 busy cores
    python bench/loader.py --codecs        # compression / chunking table
    python bench/loader.py --quick         # smoke run
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BLOSC_NTHREADS", "1")  # one core per loader worker

import h5py  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mgpipe import heatmaps as hm  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media"

# branch: (modality, stored shape, batch per GPU process, default step ms)
BRANCHES = {
    "posec3d": ("heatmap", (68, 48, 56, 56), 32, 32 / 166 * 1e3),
    "swin3d": ("rgb", (32, 224, 224, 3), 8, 8 / 127 * 1e3),
    "r2plus1d": ("rgb", (16, 112, 112, 3), 16, 16 / 408 * 1e3),
    "stcnn": ("joints", (48, 68, 3), 16, 16 / 640 * 1e3),
}
MAX_WORKERS = 8
GOAL = 0.10


# ---- real-looking clips --------------------------------------------------------------------

def synth_keypoints(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` keypoint clips [T, 68, 3] (source pixels): mgpipe.synth's, cycled, else random
    walks of a skeleton (bench/heatmaps.py)."""
    files = sorted(glob.glob(str(ROOT / "data/raw/synth/keypoints/*.npy")))
    clips = [np.load(f).astype(np.float32) for f in files[:n]]
    if not clips:
        sys.path.insert(0, str(ROOT / "bench"))
        from heatmaps import random_walk_clips
        return random_walk_clips(n, np.random.default_rng(seed))
    return [clips[i % len(clips)] for i in range(n)]


def heatmap_clips(n: int, shape=(68, 48, 56, 56), sigma: float = hm.DEFAULT_SIGMA):
    """Rendered volumes uint8 [K, T, H, W] (joint mode), yielded one at a time."""
    k, t, h, w = shape
    for kp in synth_keypoints(n):
        yield hm.render_clip(kp, (160, 120), (h, w), sigma, "joint", t)[0]


_FRAMES: dict = {}


def _video_frames() -> list[np.ndarray]:
    """All frames of the videos in ../shared/media (RGB uint8), decoded once."""
    if "v" not in _FRAMES:
        import cv2
        vids = []
        for f in sorted(glob.glob(str(MEDIA / "*.mp4")) + glob.glob(str(MEDIA / "*.avi"))):
            cap, frames = cv2.VideoCapture(f), []
            while True:
                ok, fr = cap.read()
                if not ok:
                    break
                if max(fr.shape[:2]) > 720:  # the 1080p clip: keep memory small
                    fr = cv2.resize(fr, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
                frames.append(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB))
            cap.release()
            if len(frames) >= 16:
                vids.append(np.stack(frames))
        _FRAMES["v"] = vids
    return _FRAMES["v"]


def rgb_clips(n: int, frames: int, size: int, seed: int = 0):
    """Crops uint8 [T, S, S, 3] of the real videos: a random square (60-100% of the shorter
    side) and start frame per clip, frames sampled with stride 1-2, resized to ``size``."""
    import cv2
    rng = np.random.default_rng(seed)
    vids = _video_frames()
    for i in range(n):
        if not vids:  # no media: smooth moving gradients with noise (compresses worse)
            yy, xx = np.mgrid[:size, :size]
            base = (xx[None] + yy[None] + np.arange(frames)[:, None, None] * 3) % 256
            noise = rng.integers(0, 24, (frames, size, size, 3))
            yield (base[..., None] + noise).astype(np.uint8)
            continue
        v = vids[i % len(vids)]
        stride = int(rng.integers(1, 3))
        span = min(len(v), frames * stride)
        t0 = int(rng.integers(0, len(v) - span + 1))
        idx = np.clip(t0 + np.arange(frames) * span // frames, 0, len(v) - 1)
        H, W = v.shape[1:3]
        side = int(min(H, W) * rng.uniform(0.6, 1.0))
        y0, x0 = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
        yield np.stack([cv2.resize(v[j, y0:y0 + side, x0:x0 + side], (size, size),
                                   interpolation=cv2.INTER_AREA) for j in idx])


# ---- codecs --------------------------------------------------------------------------------

def codec_settings() -> list[tuple[str, dict]]:
    """(name, h5py create_dataset kwargs) per compression; hdf5plugin's when installed."""
    out = [("none", {}), ("gzip 1", dict(compression="gzip", compression_opts=1)),
           ("lzf", dict(compression="lzf"))]
    try:
        import hdf5plugin as hp
    except ImportError:
        print("(hdf5plugin not installed: no blosc / lz4 / zstd rows)")
        return out
    out += [("blosc-lz4 5", dict(hp.Blosc(cname="lz4", clevel=5, shuffle=hp.Blosc.NOSHUFFLE))),
            ("blosc-lz4 5 bitshuf", dict(hp.Blosc(cname="lz4", clevel=5,
                                                  shuffle=hp.Blosc.BITSHUFFLE))),
            ("blosc-zstd 1", dict(hp.Blosc(cname="zstd", clevel=1, shuffle=hp.Blosc.NOSHUFFLE))),
            ("lz4", dict(hp.LZ4())), ("zstd 1", dict(hp.Zstd(clevel=1)))]
    return out


def frame_chunks(shape, modality: str) -> tuple[int, ...]:
    """One frame per chunk: heatmap [K, 1, H, W], rgb [1, H, W, 3]."""
    return (shape[0], 1, *shape[2:]) if modality == "heatmap" else (1, *shape[1:])


def sweep(modality: str, clips: list[np.ndarray], tmp: str) -> list[tuple]:
    rows = []
    raw = clips[0].nbytes
    for name, kw in codec_settings():
        for chunking in ("clip", "frame"):
            chunks = clips[0].shape if chunking == "clip" else frame_chunks(clips[0].shape, modality)
            path = os.path.join(tmp, "sweep.h5")
            t0 = time.perf_counter()
            with h5py.File(path, "w") as f:
                for i, c in enumerate(clips):
                    f.create_dataset(f"c{i:04d}", data=c, chunks=chunks, track_times=False, **kw)
            t_w = (time.perf_counter() - t0) / len(clips)
            size = os.path.getsize(path) / len(clips)
            best = float("inf")
            for _ in range(2):  # best of 2 passes (the first also warms the page cache)
                t0 = time.perf_counter()
                with h5py.File(path, "r") as f:
                    for i, c in enumerate(clips):
                        a = f[f"c{i:04d}"][()]
                best = min(best, (time.perf_counter() - t0) / len(clips))
            with h5py.File(path, "r") as f:  # lossless
                assert all(np.array_equal(f[f"c{i:04d}"][()], c) for i, c in enumerate(clips))
            del a
            os.remove(path)
            rows.append((name, chunking, t_w * 1e3, best * 1e3, size / 1e6, raw / size))
    return rows


def run_codecs(args) -> int:
    sets = [("heatmap", "68x48x56x56", list(heatmap_clips(args.codec_clips))),
            ("rgb", "32x224x224x3", list(rgb_clips(args.codec_clips // 2, 32, 224))),
            ("rgb", "16x112x112x3", list(rgb_clips(args.codec_clips, 16, 112, seed=1)))]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for modality, label, clips in sets:
            rows = sweep(modality, clips, tmp)
            print(f"\n{modality} {label} uint8, {len(clips)} clips, raw "
                  f"{clips[0].nbytes / 1e6:.2f} MB/clip; one process, ms per clip:")
            print(f"{'codec':<20} {'chunks':<6} {'write ms':>9} {'read ms':>8} {'MB/clip':>8} "
                  f"{'ratio':>6}")
            for name, ch, tw, tr, mb, ratio in rows:
                print(f"{name:<20} {ch:<6} {tw:>9.2f} {tr:>8.2f} {mb:>8.3f} {ratio:>6.1f}")
    return 0


# ---- loader --------------------------------------------------------------------------------

def rgb_options(name: str) -> dict:
    return dict(codec_settings())[name]


def write_branch_file(branch: str, path: str, n: int, rgb_codec: str) -> list[str]:
    modality, shape, _, _ = BRANCHES[branch]
    ids = [f"c{i:04d}" for i in range(n)]
    if modality == "heatmap":
        hm.write_heatmaps_h5(path, ((c, v, {}) for c, v in zip(ids, heatmap_clips(n, shape))))
        return ids
    with h5py.File(path, "w") as f:
        if modality == "rgb":
            kw = rgb_options(rgb_codec)
            for c, v in zip(ids, rgb_clips(n, shape[0], shape[1])):
                f.create_dataset(c, data=v, chunks=v.shape, track_times=False, **kw)
        else:  # as mgpipe.keypoints writes keypoints.h5
            for c, kp in zip(ids, synth_keypoints(n)):
                f.create_group(c).create_dataset("kp", data=kp, compression="gzip",
                                                 compression_opts=4, shuffle=True,
                                                 track_times=False)
    return ids


def time_loader(branch: str, path: str, ids: list[str], workers: int, batches: int,
                batched: bool = True) -> float:
    """ms per batch of a shuffled training DataLoader over H5Clips, after 2 warm-up batches:
    as mgpipe.train builds it (``batched``: ClipBatches, each batch read into one tensor), or
    per item + default_collate (the previous loader, the baseline)."""
    import torch
    from torch.utils.data import DataLoader

    from mgpipe.data import ClipBatches, ClipDataset, H5Clips
    from mgpipe.train import GlobalBatchSampler
    modality, shape, batch, _ = BRANCHES[branch]
    ds = ClipDataset(modality, H5Clips(path, ids, modality), ids, [0] * len(ids), train=True,
                     frames=shape[0])
    prefetch = 2 if workers else None
    if batched:
        loader = DataLoader(ClipBatches(ds), batch_size=None,
                            sampler=GlobalBatchSampler(len(ds), batch, seed=0),
                            num_workers=workers, prefetch_factor=prefetch)
    else:
        g = torch.Generator().manual_seed(0)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, generator=g,
                            drop_last=True, prefetch_factor=prefetch)
    it = iter(loader)
    warm = 2
    n = min(batches, len(loader) - warm)
    for _ in range(warm):
        next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    dt = (time.perf_counter() - t0) / n
    del it
    return dt * 1e3


def time_reads(branch: str, path: str, ids: list[str]) -> float:
    """ms per clip to read (decompress) through H5Clips in this process, best of 2 passes."""
    from mgpipe.data import H5Clips
    store = H5Clips(path, ids, BRANCHES[branch][0])
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for c in ids:
            store[c]
        best = min(best, (time.perf_counter() - t0) / len(ids))
    return best * 1e3


def measure_step(branch: str) -> float | None:
    """ms per training step (forward + backward + SGD) of the paper-size model on CUDA."""
    import torch
    if not torch.cuda.is_available():
        return None
    from mgpipe.data import model_input
    from mgpipe.models import build_model
    modality, shape, batch, _ = BRANCHES[branch]
    dev = torch.device("cuda")
    model = build_model(branch, 32, 5 if modality == "joints" else
                        (shape[0] if modality == "heatmap" else None)).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if modality == "heatmap":
        x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=dev)
    elif modality == "rgb":
        x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, device=dev)
    else:
        x = torch.randn(batch, *shape, device=dev)
    aug = torch.tensor([[0, 1, 0, 1, 0, 0]] * batch, dtype=torch.float32)
    y = torch.randint(0, 32, (batch,), device=dev)
    amp = modality != "heatmap"  # PoseC3D is fastest in fp32 (README)

    def step():
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            out = model(model_input(x, aug, modality))
            logits = out[0] if isinstance(out, (tuple, list)) else out
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def run_loader(args) -> int:
    steps = dict(zip(BRANCHES, args.step_ms)) if args.step_ms else {}
    failed = []
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for branch in args.branches:
            modality, shape, batch, default_ms = BRANCHES[branch]
            n = max(args.clips if modality != "rgb" or shape[1] < 224 else args.clips // 2,
                    batch * 4)
            path = os.path.join(tmp, f"{branch}.h5")
            t0 = time.perf_counter()
            ids = write_branch_file(branch, path, n, args.rgb_codec)
            mb = os.path.getsize(path) / n / 1e6
            print(f"{branch}: {n} clips {modality} {'x'.join(map(str, shape))}, "
                  f"{mb:.3f} MB/clip, written in {time.perf_counter() - t0:.1f} s", flush=True)
            t = {w: time_loader(branch, path, ids, w, args.batches) for w in (0, 1, 2)}
            t_items = time_loader(branch, path, ids, 1, args.batches, batched=False)
            print(f"  1 worker: {t[1]:.1f} ms/batch read into one batch tensor, {t_items:.1f} "
                  f"per item + collate (previous loader): {t_items / t[1]:.2f}x", flush=True)
            t_read = time_reads(branch, path, ids[:2 * batch])
            measured = measure_step(branch)
            step = measured or steps.get(branch, default_ms)
            src = "measured (CUDA)" if measured else "ASSUMED (--step-ms; not measured here)"
            per_worker = t[1]
            rec = next((w for w in range(1, MAX_WORKERS + 1) if per_worker / w <= GOAL * step),
                       None)
            w_use = rec or MAX_WORKERS
            cost = per_worker / w_use / step
            # disk bandwidth the recommended loader needs (reads were from the page cache)
            mbps = mb * batch / (step / 1e3)
            rows.append((branch, batch, t_read, t[0], t[1], t[2], step, src, rec, cost, mbps))
            if cost > GOAL:
                failed.append(branch)
            os.remove(path)
    print(f"\n{'branch':<9} {'batch':>5} {'read ms/clip':>12} {'ms/batch 0w':>11} {'1w':>7} "
          f"{'2w':>7} {'step ms':>8}  {'workers':>7} {'loader/step':>11} {'disk MB/s':>9}  "
          f"step source")
    for branch, batch, tr, t0, t1, t2, step, src, rec, cost, mbps in rows:
        print(f"{branch:<9} {batch:>5} {tr:>12.2f} {t0:>11.1f} {t1:>7.1f} {t2:>7.1f} "
              f"{step:>8.1f}  {(rec or f'>{MAX_WORKERS}'):>7} {cost:>10.1%} {mbps:>9.0f}  {src}")
    print(f"\nread ms/clip: H5Clips alone (decompress into a new array), one process. "
          f"ms/batch: a shuffled training DataLoader with 0 (in this process), 1 and 2 workers "
          f"(1-2 w include the copy of each batch into shared memory). loader/step = (1w "
          f"ms/batch / workers) / step ms; workers: the fewest (<= {MAX_WORKERS} per GPU "
          f"process) for loader/step <= {GOAL:.0%}. 2w was measured on this "
          f"{os.cpu_count()}-CPU shared machine: 2w/1w shows how far it scales here. Reads "
          f"come from the page cache; disk MB/s is the read rate per GPU process that the "
          f"step rate needs.")
    if failed:
        print(f"GOAL MISSED: loader > {GOAL:.0%} of a step for {', '.join(failed)}")
        return 1
    print(f"goal met: every branch's loader <= {GOAL:.0%} of its step")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", action="store_true", help="the compression / chunking table")
    ap.add_argument("--codec-clips", type=int, default=24, help="heatmap clips per codec row")
    ap.add_argument("--clips", type=int, default=256,
                    help="clips per branch file (half for Swin3D's 32x224^2)")
    ap.add_argument("--batches", type=int, default=6, help="timed batches per measurement")
    ap.add_argument("--branches", nargs="+", default=list(BRANCHES), choices=list(BRANCHES))
    ap.add_argument("--step-ms", type=float, nargs=4, metavar=tuple(BRANCHES),
                    help="step ms per branch when there is no CUDA (default: the README's "
                         "H200 rates at these batches: " +
                         ", ".join(f"{b} {v[3]:.0f}" for b, v in BRANCHES.items()) + ")")
    ap.add_argument("--rgb-codec", default="zstd 1",
                    help="rgb.h5 compression for the RGB branches, a --codecs row name (zstd 1: "
                         "the setting recommended for the crop stage; 'gzip 1': its old one)")
    ap.add_argument("--tmp", default=None, help="folder for the temporary files")
    ap.add_argument("--quick", action="store_true", help="smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.codec_clips, args.clips, args.batches = 4, 8, 1
    print(f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}), {os.cpu_count()} CPUs"
          f" (a shared machine: timings are noisy)")
    return run_codecs(args) if args.codecs else run_loader(args)


if __name__ == "__main__":
    sys.exit(main())
