"""heatmaps: PoseC3D-style heatmap volumes for every clip into data/processed/heatmaps.h5.

For each keypoint (`heatmaps.mode: joint`, K = 68) or bone (`limb`, K = number of bones), a
Gaussian of `heatmaps.sigma` grid pixels scaled by the keypoint score, in the clip's skeleton
box, `heatmaps.frames` frames sampled uniformly, `heatmaps.size` [H, W]; uint8
[K, T, H, W], one zstd-compressed chunk per clip (lossless; reading needs hdf5plugin, which
mgpipe.data imports), with the sampled frame indices and the source frame size as
attributes. Rendering is vectorised and zstd writes 6-8x faster than gzip (see
bench/heatmaps.py, bench/loader.py --codecs). Clips the keypoints stage skipped, or that
fail to render, are recorded in heatmaps_skipped.csv.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import h5py
import pandas as pd
from tqdm import tqdm

from mgpipe.heatmaps import (H5_COMPRESSION, H5_LEVEL, map_ordered, render_clip, render_encoded,
                             write_heatmaps_h5)
from mgpipe.io import SKIP_COLUMNS, read_manifest, read_skips, write_csv_atomic
from mgpipe.params import load_params
from mgpipe.signals import run_interruptible, worker_pool


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/interim/manifest.csv")
    ap.add_argument("--keypoints", default="data/interim/keypoints.h5")
    ap.add_argument("--out", default="data/processed/heatmaps.h5")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes that render and compress (default: runtime.heatmap_workers, "
                         "else one per core; 1: in this process). The output is byte-identical "
                         "whatever the number")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = params["heatmaps"]
    workers = args.workers
    if workers is None:
        workers = (params.get("runtime") or {}).get("heatmap_workers") or 0
    workers = workers or os.cpu_count() or 1
    m = read_manifest(args.manifest)
    size = tuple(int(s) for s in cfg["size"])
    sigma, mode, frames = float(cfg["sigma"]), cfg["mode"], int(cfg["frames"])
    kp_skips = read_skips([Path(args.keypoints).with_name("keypoints_skipped.csv")])
    skipped = []

    def skip(clip_id: str, reason: str) -> None:
        skipped.append({"clip_id": clip_id, "stage": "heatmaps", "reason": reason})

    def jobs(kp_file: h5py.File):
        for r in m.itertuples():
            if r.clip_id not in kp_file:
                why = kp_skips.get(r.clip_id, "not in the keypoints file")
                skip(r.clip_id, f"no keypoints ({why})")
                continue
            try:
                kp = kp_file[r.clip_id]["kp"][()]
            except Exception as e:  # noqa: BLE001 - one bad clip must not stop thousands
                skip(r.clip_id, f"{type(e).__name__}: {e}")
                continue
            yield (r.clip_id, kp, (r.width, r.height), size, sigma, mode, frames,
                   H5_COMPRESSION, H5_LEVEL)

    def items(results):
        # Workers render and compress (the costly part: compression is ~3x the rendering);
        # this process only copies each clip's compressed chunk into the file, in manifest order.
        for clip_id, vol, attrs, error in tqdm(results, total=len(m), desc="heatmaps",
                                               unit="clip"):
            if error is not None:
                skip(clip_id, error)
                continue
            yield clip_id, vol, attrs

    def render_here(job):  # one process: no encoding round trip
        clip_id, kp, source_size = job[:3]
        try:
            vol, attrs = render_clip(kp, source_size, size, sigma, mode, frames)
            return clip_id, vol, attrs, None
        except Exception as e:  # noqa: BLE001
            return clip_id, None, None, f"{type(e).__name__}: {e}"

    file_attrs = {"mode": mode, "sigma": sigma, "frames": frames, "size": size}
    # The pool closes first: an interruption ends the workers, then the temp file goes.
    with h5py.File(args.keypoints, "r") as kp_file, \
            (worker_pool(workers) if workers > 1 else nullcontext()) as pool:
        results = (map_ordered(pool, render_encoded, jobs(kp_file), 4 * workers) if pool
                   else map(render_here, jobs(kp_file)))
        n = write_heatmaps_h5(args.out, items(results), file_attrs=file_attrs)
    write_csv_atomic(Path(args.out).with_name("heatmaps_skipped.csv"),
                     pd.DataFrame(skipped, columns=SKIP_COLUMNS))
    print(f"heatmaps: {n} clips ({mode}, {frames}x{size[0]}x{size[1]}, {workers} "
          f"process{'es' if workers > 1 else ''}) -> {args.out}; {len(skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(run_interruptible("heatmaps", main, "no output written (files appear only when "
                               "complete); rerun"))
