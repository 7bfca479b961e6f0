"""heatmaps: PoseC3D-style heatmap volumes for every clip into data/processed/heatmaps.h5.

For each keypoint (`heatmaps.mode: joint`, K = 68) or bone (`limb`, K = number of bones), a
Gaussian of `heatmaps.sigma` grid pixels scaled by the keypoint score, in the clip's skeleton
box, `heatmaps.frames` frames sampled uniformly, `heatmaps.size` [H, W]; uint8
[K, T, H, W], one gzip-compressed chunk per clip, with the sampled frame indices and the
source frame size as attributes. Rendering is vectorised (see bench/heatmaps.py).
"""
from __future__ import annotations

import argparse
import sys

import h5py
import pandas as pd
from tqdm import tqdm

from mgpipe.heatmaps import render_clip, write_heatmaps_h5
from mgpipe.params import load_params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/interim/manifest.csv")
    ap.add_argument("--keypoints", default="data/interim/keypoints.h5")
    ap.add_argument("--out", default="data/processed/heatmaps.h5")
    args = ap.parse_args(argv)
    cfg = load_params(args.params)["heatmaps"]
    m = pd.read_csv(args.manifest, keep_default_na=False)
    size = tuple(int(s) for s in cfg["size"])

    def items(kp_file: h5py.File):
        for r in tqdm(m.itertuples(), total=len(m), desc="heatmaps", unit="clip"):
            if r.clip_id not in kp_file:  # skipped by the keypoints stage (keypoints_skipped.csv)
                continue
            kp = kp_file[r.clip_id]["kp"][()]
            vol, attrs = render_clip(kp, (r.width, r.height), size, float(cfg["sigma"]),
                                     cfg["mode"], int(cfg["frames"]))
            yield r.clip_id, vol, attrs

    with h5py.File(args.keypoints, "r") as kp_file:
        n = write_heatmaps_h5(args.out, items(kp_file),
                              file_attrs={"mode": cfg["mode"], "sigma": float(cfg["sigma"]),
                                          "frames": int(cfg["frames"]), "size": size})
    print(f"heatmaps: {n} clips ({cfg['mode']}, {int(cfg['frames'])}x{size[0]}x{size[1]}) "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
