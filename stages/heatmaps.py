"""heatmaps: PoseC3D-style heatmap volumes for every clip into data/processed/heatmaps.h5.

For each keypoint (`heatmaps.mode: joint`, K = 68) or bone (`limb`, K = number of bones), a
Gaussian of `heatmaps.sigma` grid pixels scaled by the keypoint score, in the clip's skeleton
box, `heatmaps.frames` frames sampled uniformly, `heatmaps.size` [H, W]; uint8
[K, T, H, W], one gzip-compressed chunk per clip, with the sampled frame indices and the
source frame size as attributes. Rendering is vectorised (see bench/heatmaps.py). Clips the
keypoints stage skipped, or that fail to render, are recorded in heatmaps_skipped.csv.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import pandas as pd
from tqdm import tqdm

from mgpipe.heatmaps import render_clip, write_heatmaps_h5
from mgpipe.io import SKIP_COLUMNS, read_manifest, read_skips, write_csv_atomic
from mgpipe.params import load_params
from mgpipe.signals import run_interruptible


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/interim/manifest.csv")
    ap.add_argument("--keypoints", default="data/interim/keypoints.h5")
    ap.add_argument("--out", default="data/processed/heatmaps.h5")
    args = ap.parse_args(argv)
    cfg = load_params(args.params)["heatmaps"]
    m = read_manifest(args.manifest)
    size = tuple(int(s) for s in cfg["size"])
    kp_skips = read_skips([Path(args.keypoints).with_name("keypoints_skipped.csv")])
    skipped = []

    def items(kp_file: h5py.File):
        for r in tqdm(m.itertuples(), total=len(m), desc="heatmaps", unit="clip"):
            if r.clip_id not in kp_file:
                why = kp_skips.get(r.clip_id, "not in the keypoints file")
                skipped.append({"clip_id": r.clip_id, "stage": "heatmaps",
                                "reason": f"no keypoints ({why})"})
                continue
            try:
                kp = kp_file[r.clip_id]["kp"][()]
                vol, attrs = render_clip(kp, (r.width, r.height), size, float(cfg["sigma"]),
                                         cfg["mode"], int(cfg["frames"]))
            except Exception as e:  # noqa: BLE001 - one bad clip must not stop thousands
                skipped.append({"clip_id": r.clip_id, "stage": "heatmaps",
                                "reason": f"{type(e).__name__}: {e}"})
                continue
            yield r.clip_id, vol, attrs

    with h5py.File(args.keypoints, "r") as kp_file:
        n = write_heatmaps_h5(args.out, items(kp_file),
                              file_attrs={"mode": cfg["mode"], "sigma": float(cfg["sigma"]),
                                          "frames": int(cfg["frames"]), "size": size})
    write_csv_atomic(Path(args.out).with_name("heatmaps_skipped.csv"),
                     pd.DataFrame(skipped, columns=SKIP_COLUMNS))
    print(f"heatmaps: {n} clips ({cfg['mode']}, {int(cfg['frames'])}x{size[0]}x{size[1]}) "
          f"-> {args.out}; {len(skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(run_interruptible("heatmaps", main, "no output written (files appear only when "
                               "complete); rerun"))
