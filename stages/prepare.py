"""prepare: dataset on disk -> manifest, classes, hidden test labels, provided keypoints.

Reads the `dataset`, `split` and `prepare` blocks of params.yaml. Writes into --out
(default data/interim): manifest.csv, classes.json, test_labels.csv, skipped.csv and
provided_keypoints.h5 (the dataset's own keypoints in the 68 layout, non-finite ones made
unseen; empty when it has none).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import pandas as pd

from mgpipe import layout
from mgpipe.datasets import DatasetError, load_dataset
from mgpipe.io import atomic_path, write_csv_atomic, write_json_atomic
from mgpipe.manifest import build_manifest
from mgpipe.params import load_params
from mgpipe.signals import run_interruptible


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--out", default="data/interim", help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    out = Path(args.out)
    cleaned = {"keypoints": 0, "clips": 0}
    try:
        ds = load_dataset(params["dataset"])
        with atomic_path(out / "provided_keypoints.h5", suffix=".h5") as tmp:
            with h5py.File(tmp, "w") as h5:
                h5.attrs.update(source=ds.name, layout="mgpipe-68", num_keypoints=layout.NUM_KEYPOINTS)

                def keep(clip_id, kp):
                    kp, n = layout.clean_keypoints(kp)
                    cleaned["keypoints"] += n
                    cleaned["clips"] += n > 0
                    g = h5.create_group(clip_id)
                    g.create_dataset("kp", data=kp.astype("float32"), compression="gzip", track_times=False,
                                     compression_opts=4, shuffle=True)

                prepared = build_manifest(ds, params.get("split", {}),
                                          params.get("prepare", {}).get("on_bad_clip", "error"),
                                          on_keypoints=keep)
                h5.attrs["has_keypoints"] = ds.keypoints is not None
    except DatasetError as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    m = prepared.manifest
    write_csv_atomic(out / "manifest.csv", m)
    write_csv_atomic(out / "test_labels.csv", prepared.test_labels)
    write_csv_atomic(out / "skipped.csv", prepared.skipped)
    write_json_atomic(out / "classes.json", prepared.classes)
    counts = m[m.split != "test"].groupby("split").size().to_dict()
    print(f"prepare: {ds.name}: {len(m)} clips, {m.subject.nunique()} subjects, "
          f"{len(prepared.classes)} classes; train {counts.get('train', 0)}, "
          f"val {counts.get('val', 0)}, test {(m.split == 'test').sum()}; "
          f"skipped {len(prepared.skipped)}")
    if cleaned["keypoints"]:
        print(f"prepare: cleaned {cleaned['keypoints']} non-finite keypoints in "
              f"{cleaned['clips']} clips of the dataset's own keypoints (NaN/inf or a negative "
              f"score; now unseen: x, y, score 0)")
    if len(prepared.skipped):
        print(pd.DataFrame(prepared.skipped).head(10).to_string(index=False))
    for w in prepared.warnings:
        print(f"prepare: warning: {w}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_interruptible("prepare", main, "no output written (files appear only when "
                               "complete); rerun"))
