"""Decoding many clips of one long video: the per-clip reader (``read_frames``: each clip
decodes from frame 0) against the grouped pass (``read_clips``: one sequential pass for all).

Writes a synthetic video (``--frames`` frames at ``--size``, mp4v as the synthetic generator
writes) into a temp folder, places ``--clips`` clips of ``--length`` frames at seeded random
starts (some overlap), samples ``--sample`` frames per clip as the crop stage does, and for
``--clips`` and ``--scale`` x as many clips times both readers, checks they give identical
frames, and prints the time ratio and the frames each decoded. Exits 1 when the grouped
pass decodes any source frame more than once, differs from the per-clip reader, or is not
faster. ``--old-max N`` times the per-clip reader on N evenly spread clips and scales its
time to all clips (its cost is per clip), to keep runs short; the decoded counts are exact.

    .venv/bin/python bench/decode.py                # 100 and 400 clips of 50 over 6000 frames
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mgpipe.sampling import uniform_indices  # noqa: E402
from mgpipe.video import DecodeStats, read_clips, read_frames  # noqa: E402


def write_video(path: Path, frames: int, width: int, height: int, fps: float = 25.0) -> None:
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (30, 40, 3), np.uint8), (width, height))
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for i in range(frames):
        f = base.copy()
        cv2.circle(f, ((7 * i) % width, height // 2), max(3, height // 10), (255, 255, 255), -1)
        cv2.putText(f, str(i), (3, height // 3), cv2.FONT_HERSHEY_SIMPLEX, height / 160,
                    (0, 0, 0), 1)
        vw.write(f)
    vw.release()


def run(video: Path, frames: int, n_clips: int, length: int, sample: int, old_max: int,
        seed: int) -> bool:
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.integers(0, frames - length + 1, n_clips))
    clips = [(int(s), int(s) + length, uniform_indices(length, sample)) for s in starts]
    new_stats = DecodeStats()
    t = time.perf_counter()
    new = dict(read_clips(video, clips, new_stats))
    t_new = time.perf_counter() - t
    pick = np.unique(np.linspace(0, n_clips - 1, min(old_max, n_clips)).round().astype(int))
    old_stats = DecodeStats()
    t = time.perf_counter()
    old = {int(k): read_frames(video, clips[k][2], clips[k][0], clips[k][1], old_stats)
           for k in pick}
    t_old = (time.perf_counter() - t) * n_clips / len(pick)
    # exact count for all clips: read_frames decodes start + min(max index + 1, length)
    old_decoded = sum(s + min(int(i.max()) + 1, e - s) for s, e, i in clips)
    same = all(isinstance(new[k], np.ndarray) and np.array_equal(old[k], new[k]) for k in old)
    last = max(s + min(int(i.max()) + 1, e - s) for s, e, i in clips)
    once = new_stats.opened == 1 and new_stats.decoded <= last
    in_ranges = n_clips * length
    timed = "" if len(pick) == n_clips else f" (timed on {len(pick)} clips, scaled)"
    print(f"{n_clips} clips x {length} frames over {frames} frames ({in_ranges} frames in the "
          f"clips' ranges, {sample} sampled per clip):")
    print(f"  per-clip read_frames: {t_old:8.2f} s{timed}, decoded {old_decoded} frames")
    print(f"  grouped read_clips  : {t_new:8.2f} s, decoded {new_stats.decoded} frames in "
          f"{new_stats.opened} pass ({new_stats.converted} converted to pixels)")
    print(f"  speed-up {t_old / t_new:.1f}x, decoded {old_decoded / new_stats.decoded:.1f}x "
          f"fewer frames; identical frames: {same}; each frame at most once: {once}")
    return same and once and t_new < t_old


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=6000)
    ap.add_argument("--size", default="160x120", help="WxH of the generated video")
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--scale", type=int, default=4, help="also run with this many times the clips")
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--sample", type=int, default=8, help="frames sampled per clip (rgb.frames)")
    ap.add_argument("--old-max", type=int, default=30,
                    help="time the per-clip reader on at most this many clips")
    ap.add_argument("--video", help="use this video instead of generating one")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.video:
            video = Path(args.video)
            cap = cv2.VideoCapture(str(video))
            frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            cap.release()
        else:
            w, h = (int(x) for x in args.size.split("x"))
            video, frames = Path(tmp) / "long.mp4", args.frames
            t = time.perf_counter()
            write_video(video, frames, w, h)
            print(f"wrote a {frames}-frame {w}x{h} mp4v video in {time.perf_counter() - t:.1f} s")
        ok = True
        for n in sorted({args.clips, args.clips * args.scale}):
            ok &= run(video, frames, n, args.length, args.sample, args.old_max, args.seed)
    print("PASS" if ok else "FAIL: the grouped pass decoded a frame twice, differed or was not faster")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
