"""PoseC3D input: heatmaps read from heatmaps.h5 (stored) against heatmaps drawn from
keypoints per batch with keypoint-space augmentation (``branches.posec3d.render``).

Both are timed as the training loader makes them (``ClipDataset.batch`` on ``H5Clips``, one
process), beside one training step of the PoseC3D model on the batch, so the table says what
drawing costs against what a step costs. Data: moving 68-keypoint skeletons (``--clips``),
written to temporary HDF5 files the way the keypoints and heatmaps stages write them.

Goal (exit 1 when missed): drawing a batch, augmentation included, costs at most
``--max-share`` (default 0.5) of one training step on this machine, i.e. one loader worker
per training process hides it. Prints ms per clip for reading, drawing and the step.

    python bench/render.py [--clips 256] [--size 32] [--frames 16] [--mode joint]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mgpipe.data import ClipDataset, H5Clips  # noqa: E402
from mgpipe.heatmaps import render_clip  # noqa: E402
from mgpipe.io import h5_filter  # noqa: E402
from mgpipe.models import build_model  # noqa: E402


def skeletons(n: int, t: int = 60, seed: int = 0) -> list[np.ndarray]:
    """n clips [t, 68, 3] of a body with moving arms, in 640x480 pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.uniform(200, 440, (68, 2))
        wave = np.sin(np.linspace(0, rng.uniform(2, 8), t))[:, None, None]
        kp = base + 40 * wave * rng.normal(size=(1, 68, 2))
        out.append(np.concatenate([kp, np.ones((t, 68, 1))], -1).astype(np.float32))
    return out


def write_files(folder: Path, clips: list[np.ndarray], cfg: dict) -> tuple[Path, Path]:
    kp_path, hm_path = folder / "keypoints.h5", folder / "heatmaps.h5"
    with h5py.File(kp_path, "w") as kf, h5py.File(hm_path, "w") as hf:
        for i, kp in enumerate(clips):
            kf.create_group(f"c{i}").create_dataset("kp", data=kp)
            vol, _ = render_clip(kp, (640, 480), tuple(cfg["size"]), cfg["sigma"], cfg["mode"],
                                 cfg["frames"], cfg["margin"])
            hf.create_dataset(f"c{i}", data=vol, chunks=vol.shape, **h5_filter())
    return kp_path, hm_path


def time_batches(ds: ClipDataset, batch: int, epochs: int = 2) -> float:
    """Seconds per clip to make every training batch of ``ds``."""
    t0, n = time.perf_counter(), 0
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for s in range(0, len(ds), batch):
            idx = list(range(s, min(s + batch, len(ds))))
            ds.batch(idx)
            n += len(idx)
    return (time.perf_counter() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--mode", default="joint", choices=["joint", "limb"])
    ap.add_argument("--max-share", type=float, default=0.5)
    args = ap.parse_args()
    cfg = dict(mode=args.mode, sigma=0.8, size=[args.size, args.size], frames=args.frames,
               margin=0.1)
    augment = dict(flip=True, rotate=15, shear=0.1, joint_dropout=0.05)
    clips = skeletons(args.clips)
    ids, labels = [f"c{i}" for i in range(len(clips))], [i % 10 for i in range(len(clips))]
    with tempfile.TemporaryDirectory() as tmp:
        kp_path, hm_path = write_files(Path(tmp), clips, cfg)
        stored = ClipDataset("heatmap", H5Clips(hm_path, ids, "heatmap"), ids, labels,
                             train=True, heatmap_mode=args.mode)
        drawn = ClipDataset("heatmap", H5Clips(kp_path, ids, "joints"), ids, labels,
                            train=True, augment=augment, render=cfg)
        read_s = time_batches(stored, args.batch)
        draw_s = time_batches(drawn, args.batch)
        x, aug, y, _ = drawn.batch(list(range(args.batch)))
        model = build_model("posec3d", 10, x.shape[1], embed_dim=64, dropout=0.3,
                            base_channels=8, stage_blocks=[1, 1, 1], stem_stride=2)
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        inp = drawn.to_input(x, aug)
        steps = []
        for _ in range(4):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(inp)[0], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps.append(time.perf_counter() - t0)
        step_s = float(np.median(steps[1:])) / args.batch
    share = draw_s / step_s
    print(f"PoseC3D input, {args.clips} clips, {args.mode} {args.frames}x{args.size}x{args.size}, "
          f"torch threads {torch.get_num_threads()} (ms per clip)")
    print(f"  stored  (read heatmaps.h5, image-space augmentation later): {read_s * 1e3:7.2f}")
    print(f"  drawn   (keypoints.h5 + keypoint-space augmentation + render): {draw_s * 1e3:7.2f}")
    print(f"  training step of the demo-size PoseC3D:                      {step_s * 1e3:7.2f}")
    print(f"  drawing / step = {share:.2f} (goal <= {args.max_share}); "
          f"drawing / reading = {draw_s / read_s:.1f}x")
    ok = share <= args.max_share
    print("PASS" if ok else "FAIL: drawing heatmaps would slow training; use loader workers "
          "(runtime.loader_workers) or stored heatmaps")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
