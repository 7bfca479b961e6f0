"""keypoints: 68-point keypoints for every clip of the manifest into data/interim/keypoints.h5.

Backends (params `keypoints.backend`):
  mediapipe  MediaPipe Holistic 0.10.21 (models from the wheel, no network), video mode,
             in `runtime.keypoint_workers` processes; resumable: an interrupted run keeps finished
             clips in keypoints.h5.partial and a rerun does not redo them. A task is one source
             video: all its clips in one decoding pass.
  provided   the keypoints the dataset brings (synthetic ground truth, UTD-MHAD, iMiGUE
             OpenPose), from prepare's provided_keypoints.h5.
Clips with no person in any frame, or that fail to decode, are recorded in
keypoints_skipped.csv, not fatal. SIGTERM or Ctrl-C ends the workers and exits with 128 +
the signal number, keeping finished clips in keypoints.h5.partial for the rerun.

A large corpus splits over machines: run `--shard i/n` for i in 0..n-1 (any scheduler),
then `--merge` combines the shard files into keypoints.h5 (mediapipe shards take whole videos).
"""
from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from mgpipe.io import read_manifest, write_csv_atomic
from mgpipe.keypoints import (clip_signature, count_clips, extract_mediapipe_video, merge_shards,
                              mediapipe_model_problem, parse_shard, run_extraction, shard_path,
                              work_path)
from mgpipe.params import load_params
from mgpipe.signals import run_interruptible


def provided_clip(clip: dict, path: str) -> tuple[np.ndarray, dict]:
    """``extract_fn`` of the provided backend: the clip's keypoints from prepare's file."""
    with h5py.File(path, "r") as f:
        kp = f[clip["clip_id"]]["kp"][()]
        source = str(f.attrs.get("source", "dataset"))
    info = dict(source=clip.get("video") or source, fps=clip["fps"], width=clip["width"],
                height=clip["height"], detector=f"provided:{source}", detector_version="")
    return kp, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifest", default="data/interim/manifest.csv")
    ap.add_argument("--provided", default="data/interim/provided_keypoints.h5")
    ap.add_argument("--out", default="data/interim/keypoints.h5")
    ap.add_argument("--shard", help="i/n: process only shard i of n (0-based)")
    ap.add_argument("--merge", action="store_true", help="merge the shard files into --out")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = params["keypoints"]
    out = Path(args.out)
    if args.merge:
        shards = sorted(glob.glob(str(shard_path(out, 0, 1)).replace("-0-of-1", "-*-of-*")))
        if not shards:
            ap.error(f"no shard files beside {out}; run with --shard i/n first")
        order = list(read_manifest(args.manifest).clip_id)
        n = merge_shards(shards, out, order=order)  # same bytes as an unsharded run
        print(f"keypoints: merged {n} clips from {len(shards)} shards")
        return 0
    clips = read_manifest(args.manifest).to_dict("records")
    backend = cfg.get("backend", "provided")
    if backend == "provided":
        with h5py.File(args.provided, "r") as f:
            if not f.attrs.get("has_keypoints", False):
                print(f"keypoints: the dataset brings no keypoints ({args.provided}); set "
                      f"keypoints.backend: mediapipe", file=sys.stderr)
                return 2
            for c in clips:  # content hash: a clip is redone exactly when its keypoints change
                c["signature"] = "provided:" + hashlib.sha1(f[c["clip_id"]]["kp"][()].tobytes()).hexdigest()
        extract_fn, workers = functools.partial(provided_clip, path=args.provided), 0
    elif backend == "mediapipe":
        problem = mediapipe_model_problem(int(cfg["model_complexity"]))
        if problem:
            print(f"keypoints: {problem}", file=sys.stderr)
            return 2
        opts = dict(model_complexity=int(cfg.get("model_complexity", 1)),
                    min_detection_confidence=float(cfg.get("min_detection_confidence", 0.5)))
        missing = [c["clip_id"] for c in clips if not c["video"]]
        if missing:
            print(f"keypoints: mediapipe needs video, and {len(missing)} clips have none "
                  f"(e.g. {missing[0]}); use keypoints.backend: provided", file=sys.stderr)
            return 2
        digests: dict = {}  # one read per video, however many clips it holds
        for c in clips:
            c["signature"] = clip_signature(c["video"], c["start_frame"], c["end_frame"],
                                            digests=digests, backend="mediapipe", **opts)
        # One task per source video: its clips in one decoding pass (a long video with many
        # clips is decoded once, not once per clip).
        extract_fn = functools.partial(extract_mediapipe_video, **opts)
        workers = int(params["runtime"]["keypoint_workers"]) or None
    else:
        ap.error(f"keypoints.backend: {backend!r}; use provided or mediapipe")
    shard = parse_shard(args.shard) if args.shard else None
    partial = work_path(out, shard)
    return run_interruptible(
        "keypoints", lambda: extract(clips, out, extract_fn, workers, shard, backend,
                                     by_video=backend == "mediapipe"),
        lambda: f"{count_clips(partial)} finished clips kept in {partial}, rerun to resume")


def extract(clips, out: Path, extract_fn, workers, shard, backend: str, by_video=False) -> int:
    summary = run_extraction(clips, out, extract_fn, workers, shard=shard, by_video=by_video)
    skipped = pd.DataFrame(summary.skipped, columns=["clip_id", "reason"])
    skipped.insert(1, "stage", "keypoints")
    write_csv_atomic(out.with_name("keypoints_skipped.csv"), skipped)
    print(f"keypoints ({backend}): {summary.done} extracted, {summary.reused} reused, "
          f"{len(summary.skipped)} skipped, {summary.seconds:.1f}s -> {summary.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
