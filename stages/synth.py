"""synth: generate the embedded synthetic micro-gesture dataset (SPEC section 3).

Reads params.yaml's `synth` block and `dataset.name`. Writes into --out (default
data/raw/synth), in the layout `synth.layout` names:

- clips (default), read by dataset.name: synth: videos/*.mp4 (one per clip),
  keypoints/*.npy (ground truth in the 68 layout, with detector-like noise), labels.csv,
  classes.json and contact_sheet.png (a few frames per class, to look at);
- imigue, read by dataset.name: imigue: the iMiGUE release's layout, one long video per
  subject holding its clips between idle stretches: <id>/<id>.mp4, <id>/<id>_openpose.xlsx
  (137 OpenPose points a frame), <id>/<id>_label.csv, train/val/test_list.txt, classes.json,
  contact_sheet.png. Point dataset.root at --out to read it.

When it generates: the dataset is made only for the dataset that reads its layout:
dataset.name: synth with synth.layout: clips, or dataset.name: imigue with synth.layout:
imigue. With any other dataset (including dataset.name: imigue with layout clips: your own
iMiGUE copy) it writes only a note, in seconds. dataset.name: synth with layout imigue is
an error (the synth reader reads the clips layout). --force generates in any case.
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

READER = {"clips": "synth", "imigue": "imigue"}   # synth.layout -> the dataset.name reading it


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--out", default="data/raw/synth", help="output folder (default: %(default)s)")
    ap.add_argument("--force", action="store_true",
                    help="generate even when params.yaml's dataset.name does not read "
                         "synth.layout")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    out = Path(args.out)
    name = params["dataset"]["name"]
    lay = params["synth"].get("layout", "clips")
    if name == "synth" and lay != "clips" and not args.force:
        print(f"synth: error: dataset.name: synth reads the clips layout, but synth.layout is "
              f"{lay!r}; set synth.layout: clips, or dataset.name: {READER.get(lay, lay)} to read "
              f"the {lay} layout", file=sys.stderr)
        return 2
    if name != READER.get(lay) and not args.force:
        # dvc.yaml always lists this stage; only the configured dataset's data is made
        write_text_atomic(out / "NOT_GENERATED.txt",
                          f"dataset.name is {name!r}: the synthetic dataset is generated only "
                          f"for dataset.name: synth (synth.layout: clips) or dataset.name: "
                          f"imigue with synth.layout: imigue (or with --force).\n")
        print(f"synth: skipped (dataset.name: {name}, synth.layout: {lay}); nothing generated")
        return 0
    try:
        cfg = SynthConfig.from_params(params["synth"])
    except (TypeError, ValueError) as e:
        print(f"synth: bad `synth` params: {e}", file=sys.stderr)
        return 2
    (out / "NOT_GENERATED.txt").unlink(missing_ok=True)
    summary = generate(cfg, out)
    print("synth: " + json.dumps(summary, default=str)[:400])
    return 0


if __name__ == "__main__":
    sys.exit(run_interruptible("synth", main, "rerun to generate the dataset again"))
