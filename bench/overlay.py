"""Cost of ``mgpipe predict --render`` (mgpipe.overlay.render_clip) per frame, split into
what it cannot avoid and what the drawing adds, on the real clips of ../shared/media:

    decode    reading the clip's frames (cv2, sequential)
    copy      decode + resize to the output size + mp4v encode, nothing drawn
    render    render_clip: the same plus skeleton, crop box, banner (and with --timeline a
              timeline strip), the frame-count check and the rename

Keypoints come from MediaPipe Holistic once per clip (not timed). Prints ms per frame; one
process, the threads OpenCV picks.

    python bench/overlay.py [--media ../shared/media] [--repeat 3] [--timeline]
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

from mgpipe import overlay  # noqa: E402
from mgpipe.keypoints import extract_mediapipe  # noqa: E402


def decode(video: Path) -> int:
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def copy(video: Path, out: Path) -> int:
    cap = cv2.VideoCapture(str(video))
    ok, f = cap.read()
    h, w = f.shape[:2]
    _, vw, vh = overlay.output_geometry(w, h)
    bh = overlay.banner_height(float(np.clip(min(vw, vh) / 480, 0.6, 2.5)))
    canvas = np.zeros((bh + vh, vw, 3), np.uint8)
    wr = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*overlay.FOURCC), 25, (vw, bh + vh))
    n = 0
    while ok:
        canvas[bh:] = cv2.resize(f, (vw, vh), interpolation=cv2.INTER_LINEAR)
        wr.write(canvas)
        n += 1
        ok, f = cap.read()
    wr.release()
    cap.release()
    return n


def best(fn, repeat: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t0)
    return min(times), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--media", default=str(Path(__file__).resolve().parents[2] / "shared/media"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeline", action="store_true", help="draw a timeline strip too")
    args = ap.parse_args()
    videos = sorted(p for p in Path(args.media).iterdir() if p.suffix in (".mp4", ".avi"))
    classes = ["touch_nose", "rub_eyes", "touch_chin", "lean"]
    top = [(c, p) for c, p in zip(classes, (0.6, 0.2, 0.1))]
    print(f"{'clip':28s} {'source':>10s} {'output':>10s} {'frames':>6s} {'decode':>7s} "
          f"{'copy':>7s} {'render':>7s}  (ms per frame, best of {args.repeat})")
    with tempfile.TemporaryDirectory() as tmp:
        for v in videos:
            kp, _ = extract_mediapipe(v)
            segs = [(s, s + 20, classes[(s // 20) % 4], 0.8) for s in range(0, len(kp), 20)] \
                if args.timeline else None
            td, n = best(lambda: decode(v), args.repeat)
            tc, _ = best(lambda: copy(v, Path(tmp) / "copy.mp4"), args.repeat)
            tr, _ = best(lambda: overlay.render_clip(Path(tmp) / "r.mp4", kp, top, classes=classes,
                                                     video=v, crop_margin=0.3, segments=segs,
                                                     title=v.stem).frames, args.repeat)
            info = overlay.render_clip(Path(tmp) / "r.mp4", kp, top, classes=classes, video=v,
                                       segments=segs)
            cap = cv2.VideoCapture(str(v))
            src = "x".join(str(int(cap.get(p))) for p in (cv2.CAP_PROP_FRAME_WIDTH,
                                                           cv2.CAP_PROP_FRAME_HEIGHT))
            cap.release()
            print(f"{v.name:28s} {src:>10s} {info.width}x{info.height:<5d} {n:6d} "
                  f"{1000 * td / n:7.2f} {1000 * tc / n:7.2f} {1000 * tr / n:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
