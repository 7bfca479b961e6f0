"""How the pipeline scales: the iMiGUE-format synthetic set at N and factor x N clips.

Runs every stage as a user's `dvc repro` would (the stage scripts, in order, in a scratch
project per size) and measures each stage's wall time and peak RSS (the largest single
process of the stage: ``os.wait4``'s ru_maxrss, which covers its reaped workers). Goals,
checked on the ratio of the large run to the small one (measured in the same run):

    time of every stage and in all      <= 4.4 x  (for 4 x the clips)
    peak RSS of a training process      <= 1.2 x  (clips stream from HDF5; nothing per clip)
    crop decodes each source frame      <= once   (counted by the stage)

Exit status 1 when a goal is missed. Training is shortened (``--epochs``) and uses the
demo-size models: what is measured is how cost grows with the data, not accuracy.

    python bench/scale.py                    # N = 500, 4N = 2000 clips
    python bench/scale.py --n 100 --factor 2 # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BRANCHES = ("stcnn", "posec3d", "r2plus1d", "swin3d")
CLIPS_PER_VIDEO = 50  # iMiGUE: 18,499 clips in 359 videos, about 52 a video


def params_for(n_clips: int, epochs: int) -> dict:
    """The committed params, switched to the synthetic iMiGUE layout with ``n_clips`` clips
    (videos of CLIPS_PER_VIDEO clips; 30% of the videos test, 20% val)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    videos = max(5, round(n_clips / CLIPS_PER_VIDEO))
    p["synth"].update(layout="imigue", subjects=videos, clips_per_subject=n_clips // videos,
                      test_subjects=max(1, round(0.3 * videos)),
                      val_subjects=max(1, round(0.2 * videos)))
    p["dataset"].update(name="imigue", root="data/raw/synth")
    for b in p["branches"].values():
        b.update(epochs=epochs, warmup_epochs=0)
    p["cmpl"]["rounds"] = 1
    return p


def run_stage(project: Path, args: list[str], log) -> dict:
    """One stage script: wall seconds, peak RSS (MiB) of its largest process, its output."""
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, *args], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    log.write(f"$ python {' '.join(args)}\n{out}\n")
    if proc.returncode != 0:
        raise SystemExit(f"bench/scale: {' '.join(args)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"seconds": seconds, "rss_mib": usage.ru_maxrss / 1024, "out": out}


STAGES = [("synth", ["stages/synth.py"]), ("prepare", ["stages/prepare.py"]),
          ("keypoints", ["stages/keypoints.py"]), ("crop", ["stages/crop.py"]),
          ("heatmaps", ["stages/heatmaps.py"])] + \
         [(f"train@{b}", ["stages/train.py", "--branch", b]) for b in BRANCHES] + \
         [("cmpl", ["stages/cmpl.py"]), ("fuse", ["stages/fuse.py"])]


def decode_counts(crop_out: str, manifest: Path) -> tuple[int, int, int, int] | None:
    """(frames decoded, passes, videos, frames up to each video's last clip end summed) from
    the crop stage's summary line and the manifest: decoding each source frame at most once
    means decoded <= that sum, with one pass per video."""
    import pandas as pd

    m = re.search(r"decoded (\d+) frames in (\d+) passes over (\d+) videos", crop_out)
    if not m:
        return None
    t = pd.read_csv(manifest, dtype={"video": str}, keep_default_na=False)
    t = t[t.video != ""]
    needed = int(t.groupby("video").end_frame.max().clip(lower=0).sum())
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), needed


def measure(n_clips: int, epochs: int, workdir: Path) -> dict:
    project = workdir / f"n{n_clips}"
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(ROOT / "stages", project / "stages")
    (project / "params.yaml").write_text(yaml.safe_dump(params_for(n_clips, epochs), sort_keys=False))
    results = {}
    with open(project / "bench.log", "w") as log:
        for name, args in STAGES:
            r = run_stage(project, args, log)
            results[name] = r
            print(f"  n={n_clips:5d} {name:16s} {r['seconds']:8.1f} s {r['rss_mib']:8.0f} MiB",
                  flush=True)
    clips = sum(1 for _ in open(project / "data/interim/manifest.csv")) - 1
    return {"clips": clips, "stages": results, "project": str(project)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="clips of the small run (default: %(default)s)")
    ap.add_argument("--factor", type=int, default=4, help="the large run has factor x n clips")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per branch (default: %(default)s)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mgpipe-scale-"))
    small = measure(args.n, args.epochs, work)
    large = measure(args.n * args.factor, args.epochs, work)
    f = large["clips"] / small["clips"]
    time_goal = 4.4 * f / 4
    print(f"\n{small['clips']} -> {large['clips']} clips ({f:.2f}x); goals: time <= {time_goal:.2f}x, "
          f"training peak RSS <= 1.2x, crop decodes each frame at most once\n")
    print(f"{'stage':16s} {'time small':>10s} {'time large':>10s} {'ratio':>6s} "
          f"{'RSS small':>10s} {'RSS large':>10s} {'ratio':>6s}")
    missed = []
    for name, _ in STAGES:
        a, b = small["stages"][name], large["stages"][name]
        tr, rr = b["seconds"] / a["seconds"], b["rss_mib"] / a["rss_mib"]
        print(f"{name:16s} {a['seconds']:9.1f}s {b['seconds']:9.1f}s {tr:6.2f} "
              f"{a['rss_mib']:8.0f}Mi {b['rss_mib']:8.0f}Mi {rr:6.2f}")
        if tr > time_goal:
            missed.append(f"{name}: time grew {tr:.2f}x")
        if name.startswith(("train@", "cmpl")) and rr > 1.2:
            missed.append(f"{name}: peak RSS grew {rr:.2f}x")
    total = [sum(r["seconds"] for r in run["stages"].values()) for run in (small, large)]
    print(f"{'all stages':16s} {total[0]:9.1f}s {total[1]:9.1f}s {total[1] / total[0]:6.2f}")
    if total[1] / total[0] > time_goal:
        missed.append(f"all stages: time grew {total[1] / total[0]:.2f}x")
    for run in (small, large):
        counts = decode_counts(run["stages"]["crop"]["out"],
                               Path(run["project"]) / "data/interim/manifest.csv")
        if counts is None:
            missed.append(f"crop (n={run['clips']}): no decode count in its output")
            continue
        decoded, passes, videos, needed = counts
        print(f"crop, {run['clips']} clips: decoded {decoded} frames in {passes} passes over "
              f"{videos} videos; the videos have {needed} frames up to their last clip's end "
              f"({decoded / max(1, needed):.3f} decodes per source frame)")
        if decoded > needed or passes > videos:
            missed.append(f"crop (n={run['clips']}): {decoded} frames decoded in {passes} "
                          f"passes for {needed} frames of {videos} videos")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"small": {**small, "stages": {k: {x: v[x] for x in ("seconds", "rss_mib")}
                                            for k, v in small["stages"].items()}},
             "large": {**large, "stages": {k: {x: v[x] for x in ("seconds", "rss_mib")}
                                            for k, v in large["stages"].items()}}}, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    if missed:
        print("\nMISSED: " + "; ".join(missed))
        return 1
    print("\nall goals met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
