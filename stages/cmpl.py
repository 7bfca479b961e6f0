"""cmpl: cross-modal pseudo-labelling rounds on the unlabelled test subjects.

`cmpl.rounds` rounds (0 = off): each branch is retrained from scratch on train + the test
clips that the other modalities label confidently (see mgpipe/cmpl.py). Finished rounds are
kept in models/cmpl (a persistent output): a rerun after an interruption, or with more
rounds, resumes from the last finished round whose params, inputs and code (this script and
the mgpipe modules it imports) are unchanged. Never reads the hidden test labels.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mgpipe.cmpl import run_cmpl
from mgpipe.io import read_manifest
from mgpipe.params import load_params
from mgpipe.provenance import code_fingerprint, import_closure
from mgpipe.signals import run_interruptible
from mgpipe.train import branch_config, branch_data, train_branch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--interim", default="data/interim")
    ap.add_argument("--models", default="models/train", help="round-0 models (train stages)")
    ap.add_argument("--out", default="models/cmpl")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    branches = list(params["branches"])
    manifest_path = Path(args.interim) / "manifest.csv"
    manifest = read_manifest(manifest_path)
    classes = json.loads((Path(args.interim) / "classes.json").read_text())
    round0 = {b: Path(args.models) / b / "logits.npz" for b in branches}
    missing = [str(p) for p in round0.values() if not p.is_file()]
    if missing:
        ap.error(f"missing round-0 logits {missing}; run the train stages first (dvc repro)")

    def retrain(branch: str, pseudo: dict[str, int], out: Path) -> None:
        data = branch_data(branch, manifest, classes, params["branches"][branch]["input"], pseudo)
        train_branch(branch, data, branch_config(params, branch), out)

    train_params = {k: params.get(k) for k in ("train", "loss", "branches")}
    # the code a round runs is part of its signature: edit it and the round is redone
    script = Path(__file__).resolve()
    code = code_fingerprint([script] + import_closure(script))
    summaries = run_cmpl(params["cmpl"], branches, round0, manifest_path, classes,
                         Path(args.out), train_params, retrain, code=code)
    for s in summaries:
        print(f"cmpl: round {s['round']}: kept {s['kept']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_interruptible("cmpl", main, "finished rounds are kept in models/cmpl "
                               "(round<r>/done.json); rerun to resume after them"))
