"""synth: generate the embedded synthetic micro-gesture dataset (SPEC section 3).

Reads params.yaml's `synth` block. Writes into --out (default data/raw/synth): videos/*.mp4,
keypoints/*.npy (ground truth in the 68 layout, with detector-like noise), labels.csv,
classes.json and contact_sheet.png (a few frames per class, to look at). With another
dataset configured (dataset.name is not synth) it writes only a note, in seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mgpipe.io import write_text_atomic
from mgpipe.params import load_params
from mgpipe.signals import run_interruptible
from mgpipe.synth import SynthConfig, generate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--out", default="data/raw/synth", help="output folder (default: %(default)s)")
    ap.add_argument("--force", action="store_true",
                    help="generate even when params.yaml's dataset.name is not synth")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    out = Path(args.out)
    if params["dataset"]["name"] != "synth" and not args.force:
        # dvc.yaml always lists this stage; only the configured dataset's data is made
        write_text_atomic(out / "NOT_GENERATED.txt",
                          f"dataset.name is {params['dataset']['name']!r}: the synthetic dataset "
                          f"is generated only for dataset.name: synth (or with --force).\n")
        print(f"synth: skipped (dataset.name: {params['dataset']['name']}); nothing generated")
        return 0
    try:
        cfg = SynthConfig.from_params(params["synth"])
    except (TypeError, ValueError) as e:
        print(f"synth: bad `synth` params: {e}", file=sys.stderr)
        return 2
    summary = generate(cfg, out)
    print("synth: " + json.dumps(summary, default=str)[:400])
    return 0


if __name__ == "__main__":
    sys.exit(run_interruptible("synth", main, "rerun to generate the dataset again"))
