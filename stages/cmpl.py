"""cmpl: cross-modal pseudo-labelling rounds on the unlabelled test subjects.

`cmpl.rounds` rounds (0 = off): each branch is retrained on train + the test clips that the
other modalities label confidently (see mgpipe/cmpl.py), from scratch or, with
`cmpl.finetune`, from its previous round's best.pt for `cmpl.finetune_epochs` epochs at its
lr times `cmpl.finetune_lr`. Each retraining runs
stages/train.py under `runtime.launcher` (e.g. torchrun on 8 GPUs; rank 0 writes), as the
train stages do; a killed retraining resumes from its last.pt. Finished rounds are
kept in models/.cmpl.work (then copied to models/cmpl): a rerun after an interruption, or with
more rounds, resumes from the last finished round whose params, inputs and code (this script and
the mgpipe modules it imports) are unchanged. Never reads the hidden test labels.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mgpipe.cmpl import run_cmpl
from mgpipe.io import write_json_atomic
from mgpipe.params import load_params
from mgpipe.provenance import code_fingerprint, stage_code
from mgpipe.signals import run_interruptible

RUNS = ["train.py"]  # stage scripts this one runs (mgpipe.provenance.stage_code reads it)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--interim", default="data/interim")
    ap.add_argument("--models", default="models/train", help="round-0 models (train stages)")
    ap.add_argument("--out", default="models/cmpl")
    args = ap.parse_args(argv)
    started = time.time()
    params = load_params(args.params)
    branches = list(params["branches"])
    manifest_path = Path(args.interim) / "manifest.csv"
    classes = json.loads((Path(args.interim) / "classes.json").read_text())
    round0 = {b: Path(args.models) / b / "logits.npz" for b in branches}
    missing = [str(p) for p in round0.values() if not p.is_file()]
    if missing:
        ap.error(f"missing round-0 logits {missing}; run the train stages first (dvc repro)")

    train_script = Path(__file__).resolve().with_name(RUNS[0])

    cfg = params["cmpl"]

    def retrain(branch: str, pseudo: dict[str, int], out: Path, init: Path | None = None) -> None:
        # the round's pseudo_<branch>.csv (written by run_cmpl) holds ``pseudo``
        cmd = [sys.executable, str(train_script), "--branch", branch, "--params", args.params,
               "--interim", args.interim, "--out", str(out),
               "--metrics", str(out / "metrics.json"),
               "--pseudo", str(out.parent / f"pseudo_{branch}.csv")]
        if init is not None:  # cmpl.finetune: run_cmpl passes the previous round's best.pt
            cmd += ["--init", str(init), "--epochs", str(cfg["finetune_epochs"]),
                    "--lr-scale", str(cfg["finetune_lr"])]
        proc = subprocess.Popen(cmd)  # the train script applies runtime.launcher itself
        try:
            code = proc.wait()
        except BaseException:  # interrupted: the retraining (and its ranks) end with us
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        if code != 0:
            raise SystemExit(f"cmpl: retraining {branch} failed (exit {code}): {' '.join(cmd)}")

    train_params = {k: params.get(k) for k in ("train", "loss", "branches")}
    # the code a round runs is part of its signature: edit it and the round is redone
    script = Path(__file__).resolve()
    code = code_fingerprint(stage_code(script))  # this script, train.py, their imports
    # Rounds run in a hidden folder beside the output that DVC leaves alone (it deletes a
    # stage's outputs before running it): finished rounds survive a kill or a change of
    # cmpl.rounds, and the output, copied from it, stays one DVC's run cache can restore.
    out = Path(args.out)
    work = out.parent / f".{out.name}.work"
    summaries = run_cmpl(cfg, branches, round0, manifest_path, classes,
                         work, train_params, retrain, code=code)
    copy_into_place(work, out)
    for s in summaries:
        print(f"cmpl: round {s['round']}: kept {s['kept']}")
    print(f"cmpl: finished in {time.time() - started:.1f} s", flush=True)
    return 0


def copy_into_place(work: Path, out: Path) -> None:
    """``out`` becomes a copy of ``work`` (a temporary copy renamed into place); the hidden
    work folders of the retrainings inside are left out."""
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work, tmp, ignore=shutil.ignore_patterns(".*.work", ".*.old"))
    index = tmp / "rounds.json"  # its logits paths point into work: make them point into out
    rounds = json.loads(index.read_text())
    rounds["logits"] = {r: {b: str(out / Path(p).relative_to(work)) if Path(p).is_relative_to(work)
                            else p for b, p in d.items()} for r, d in rounds["logits"].items()}
    write_json_atomic(index, rounds)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


if __name__ == "__main__":
    sys.exit(run_interruptible("cmpl", main, "finished rounds are kept in models/.cmpl.work "
                               "(round<r>/done.json); rerun to resume after them"))
