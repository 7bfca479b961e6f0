"""crop: saliency-guided RGB crops of every clip into data/processed/rgb.h5.

Per clip a square box around the moving hands, face and arms (weighted by motion energy),
fixed over the clip; `rgb.frames` frames sampled uniformly, resized to `rgb.size`; uint8
[T, H, W, 3], one dataset per clip. Clips without keypoints fall back to the whole frame
(recorded in the dataset's attributes and the summary). Skeleton-only datasets (no video)
get an empty file: the RGB branches are then left out. Also writes crop_sheet.png.
Clips are grouped by source video: a worker cuts all of a video's clips in one sequential
decoding pass (each frame decoded once), holding only the sampled frames of the clips open
at the current frame, and writes them to a scratch file; rgb.h5 is then assembled in
manifest order. A clip that fails is skipped with its reason, the others go on. The
summary gives the frames decoded against the frames in the clips' ranges.
SIGTERM or Ctrl-C ends the workers, writes nothing and exits with 128 + the signal number.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import OrderedDict
from contextlib import ExitStack, nullcontext
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from mgpipe.crop import crop_sheet, crop_video
from mgpipe.io import atomic_path, h5_filter, read_manifest, write_csv_atomic
from mgpipe.params import load_params
from mgpipe.signals import run_interruptible, worker_pool
from mgpipe.video import DecodeStats


def _job(args):
    """One source video: all its clips cropped in one decoding pass into the scratch HDF5
    file ``scratch`` (a dataset per clip, as rgb.h5 stores it). Returns ({clip_id: reason}
    of clips that failed, contact-sheet items, whole-frame fallbacks, DecodeStats)."""
    video, rows, cfg, sheet_ids, scratch = args
    clips = [dict(clip_id=r["clip_id"], start=int(r["start_frame"]), frames=int(r["frames"]),
                  kp=r["kp"], frame_size=(int(r["width"]), int(r["height"]))) for r in rows]
    errors, sheet, fallbacks, stats = {}, [], 0, DecodeStats()
    try:
        with h5py.File(scratch, "w") as h5:
            for cid, rgb, attrs, full, err in crop_video(
                    video, clips, cfg["frames"], cfg["size"], cfg.get("margin", 0.3),
                    full_frame=sheet_ids, stats=stats):
                if err is not None:  # a corrupt clip or video must not kill a run of thousands
                    errors[cid] = f"{type(err).__name__}: {err}"
                    continue
                ds = h5.create_dataset(cid, data=rgb, chunks=rgb.shape, track_times=False,
                                       **h5_filter())  # zstd 1: see mgpipe.io.H5_COMPRESSION
                ds.attrs.update(attrs)
                fallbacks += bool(attrs["fallback"])
                if full is not None:
                    sheet.append((cid, full, attrs["box"], rgb))
    except Exception as e:  # noqa: BLE001 - the scratch file is lost: skip what is not failed
        for c in clips:
            errors.setdefault(c["clip_id"], f"{type(e).__name__}: {e}")
        sheet, fallbacks = [], 0
    return errors, sheet, fallbacks, stats


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
    params = load_params(args.params)
    cfg = params["rgb"]
    workers = params["runtime"]["crop_workers"] or 1
    m = read_manifest(args.manifest)
    out = Path(args.out)
    with_video = m[m.video != ""]
    kps = {}
    with h5py.File(args.keypoints, "r") as f:
        for cid in with_video.clip_id:
            kps[cid] = f[cid]["kp"][()] if cid in f else None
    out.parent.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict]] = {}  # video -> its clips; videos in order of first clip
    for r in with_video.to_dict("records"):
        groups.setdefault(r["video"], []).append({**r, "kp": kps[r["clip_id"]]})
    order = list(with_video.clip_id)
    spread = np.linspace(0, len(order) - 1, min(6, len(order))).round().astype(int)
    sheet_ids = {order[i] for i in spread}
    errors, where, sheet, fallbacks, stats = {}, {}, [], 0, DecodeStats()
    # The pool closes first: an interruption ends the workers, then the temp files go.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-scratch-") as scratch, \
            atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as h5:
        with (worker_pool(workers) if workers > 1 else nullcontext()) as pool:
            jobs = [(video, rows, cfg, sheet_ids, str(Path(scratch) / f"{n:06d}.h5"))
                    for n, (video, rows) in enumerate(groups.items())]
            results = pool.map(_job, jobs) if pool else map(_job, jobs)
            with tqdm(total=len(order), desc="crop", unit="clip") as bar:
                for (video, rows, _, _, path), (errs, items, fb, st) in zip(jobs, results):
                    errors.update(errs)
                    where.update((r["clip_id"], path) for r in rows)
                    sheet += items
                    fallbacks += fb
                    stats.add(st)
                    bar.update(len(rows))
        h5.attrs.update(frames=cfg["frames"], size=cfg["size"], has_rgb=len(with_video) > 0)
        with ExitStack() as stack:  # rgb.h5 in manifest order, whatever order videos ran in
            opened: OrderedDict = OrderedDict()
            for cid in order:
                if cid in errors:
                    continue
                path = where[cid]
                if path not in opened:
                    if len(opened) >= 16:
                        opened.popitem(last=False)[1].close()
                    opened[path] = stack.enter_context(h5py.File(path, "r"))
                opened[path].copy(opened[path][cid], h5, name=cid)
    skipped = [{"clip_id": cid, "stage": "crop", "reason": errors[cid]} for cid in order
               if cid in errors]
    sheet.sort(key=lambda item: order.index(item[0]))
    write_csv_atomic(out.with_name("rgb_skipped.csv"),
                     pd.DataFrame(skipped, columns=["clip_id", "stage", "reason"]))
    crop_sheet(sheet, out.with_name("crop_sheet.png"))
    if with_video.empty:
        print("crop: the dataset has no video (skeleton only): wrote an empty rgb.h5; "
              "leave the RGB branches out of params.yaml's branches")
    else:
        span = int(with_video.frames.clip(lower=0).sum())
        print(f"crop: {len(order) - len(skipped)} clips, {fallbacks} whole-frame fallbacks, "
              f"{len(skipped)} skipped; decoded {stats.decoded} frames in {stats.opened} passes "
              f"over {len(groups)} videos ({'each frame at most once' if stats.opened <= len(groups) else 'frames decoded more than once'}; "
              f"{span} frames in the clips' ranges, {stats.converted} converted to pixels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
