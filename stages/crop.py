"""crop: saliency-guided RGB crops of every clip into data/processed/rgb.h5.

Per clip a square box around the moving hands, face and arms (weighted by motion energy),
fixed over the clip; `rgb.frames` frames sampled uniformly, resized to `rgb.size`; uint8
[T, H, W, 3], one dataset per clip. Clips without keypoints fall back to the whole frame
(recorded in the dataset's attributes and the summary). Skeleton-only datasets (no video)
get an empty file: the RGB branches are then left out. Also writes crop_sheet.png.
SIGTERM or Ctrl-C ends the workers, writes nothing and exits with 128 + the signal number.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from mgpipe.crop import crop_clip, crop_sheet
from mgpipe.io import atomic_path, read_manifest, write_csv_atomic
from mgpipe.params import load_params
from mgpipe.signals import run_interruptible, worker_pool
from mgpipe.video import read_frames


def _job(args):
    row, kp, cfg = args
    try:
        rgb, attrs = crop_clip(row["video"], int(row["start_frame"]), int(row["frames"]), kp,
                               (int(row["width"]), int(row["height"])), cfg["frames"],
                               cfg["size"], cfg.get("margin", 0.3))
        return row["clip_id"], rgb, attrs, ""
    except Exception as e:  # a corrupt video must not kill a run of thousands
        return row["clip_id"], None, None, f"{type(e).__name__}: {e}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/interim/manifest.csv")
    ap.add_argument("--keypoints", default="data/interim/keypoints.h5")
    ap.add_argument("--out", default="data/processed/rgb.h5")
    args = ap.parse_args(argv)
    return run_interruptible("crop", lambda: crop(args),
                             f"{args.out} not written, rerun to start over")


def crop(args) -> int:
    cfg = load_params(args.params)["rgb"]
    workers = cfg.get("workers") or 1
    m = read_manifest(args.manifest)
    out = Path(args.out)
    with_video = m[m.video != ""]
    kps = {}
    with h5py.File(args.keypoints, "r") as f:
        for cid in with_video.clip_id:
            kps[cid] = f[cid]["kp"][()] if cid in f else None
    skipped, sheet, fallbacks = [], [], 0
    # The pool closes first: an interruption ends the workers, then the temp file goes.
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as h5, \
            (worker_pool(workers) if workers > 1 else nullcontext()) as pool:
        h5.attrs.update(frames=cfg["frames"], size=cfg["size"], has_rgb=len(with_video) > 0)
        jobs = [(r, kps[r["clip_id"]], cfg) for r in with_video.to_dict("records")]
        spread = np.linspace(0, len(jobs) - 1, min(6, len(jobs))).round().astype(int)
        sheet_ids = set(with_video.clip_id.iloc[spread])
        results = pool.map(_job, jobs, chunksize=4) if pool else map(_job, jobs)
        for cid, rgb, attrs, err in tqdm(results, total=len(jobs), desc="crop", unit="clip"):
            if err:
                skipped.append({"clip_id": cid, "stage": "crop", "reason": err})
                continue
            fallbacks += bool(attrs["fallback"])
            ds = h5.create_dataset(cid, data=rgb, chunks=rgb.shape, compression="gzip", track_times=False,
                                   compression_opts=1)
            ds.attrs.update(attrs)
            if cid in sheet_ids:
                row = with_video.set_index("clip_id").loc[cid]
                mid = int(attrs["frame_indices"][len(attrs["frame_indices"]) // 2])
                frame = read_frames(row.video, np.array([mid]), start=int(row.start_frame))[0]
                sheet.append((cid, frame, attrs["box"], rgb))
    write_csv_atomic(out.with_name("rgb_skipped.csv"),
                     pd.DataFrame(skipped, columns=["clip_id", "stage", "reason"]))
    crop_sheet(sheet, out.with_name("crop_sheet.png"))
    if with_video.empty:
        print("crop: the dataset has no video (skeleton only): wrote an empty rgb.h5; "
              "leave the RGB branches out of params.yaml's branches")
    else:
        print(f"crop: {len(jobs) - len(skipped)} clips, {fallbacks} whole-frame fallbacks, "
              f"{len(skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
