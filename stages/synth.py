"""synth: generate the embedded synthetic micro-gesture dataset (SPEC section 3).

Reads params.yaml's `synth` block. Writes into --out (default data/raw/synth): videos/*.mp4,
keypoints/*.npy (ground truth in the 68 layout, with detector-like noise), labels.csv,
classes.json and contact_sheet.png (a few frames per class, to look at).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mgpipe.params import load_params
from mgpipe.synth import SynthConfig, generate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--out", default="data/raw/synth", help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        cfg = SynthConfig.from_params(load_params(args.params)["synth"])
    except (TypeError, ValueError) as e:
        print(f"synth: bad `synth` params: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    summary = generate(cfg, out)
    print("synth: " + json.dumps(summary, default=str)[:400])
    return 0


if __name__ == "__main__":
    sys.exit(main())
