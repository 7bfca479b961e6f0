"""fuse: temperature-scaled soft-voting fusion and every metric, before and after CMPL.

Per branch a temperature T_b fitted on the validation subjects (minimum NLL); fused
probability sum_b w_b softmax(z_b / T_b) with `fuse.weights` (equal, fit on validation, or
a {branch: w} map). The only stage that reads the hidden test labels. Writes:
  metrics/metrics.json      macro-F1 (headline), micro-F1 (= top-1), top-5; test and val;
                            per branch and fused; after CMPL and before (round 0)
  metrics/cmpl.json         per round and branch: pseudo-labels kept, per-class counts, their
                            precision against the hidden labels, test F1 before/after
  metrics/predictions.csv   clip_id, predicted label, fused probability per class
  metrics/confusion.json, metrics/per_class_f1.json   DVC plot data
  metrics/confusion.png, metrics/per_class_f1.png, metrics/cmpl_rounds.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mgpipe import report
from mgpipe.evaluate import evaluate_rounds
from mgpipe.io import write_csv_atomic, write_json_atomic
from mgpipe.params import load_params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--interim", default="data/interim")
    ap.add_argument("--cmpl", default="models/cmpl")
    ap.add_argument("--out", default="metrics")
    args = ap.parse_args(argv)
    cfg = load_params(args.params).get("fuse", {})
    interim, out = Path(args.interim), Path(args.out)
    manifest = pd.read_csv(interim / "manifest.csv", keep_default_na=False)
    classes = json.loads((interim / "classes.json").read_text())
    rounds = json.loads((Path(args.cmpl) / "rounds.json").read_text())
    results, truth, test_ids = evaluate_rounds(
        rounds, manifest, classes, interim / "test_labels.csv", args.cmpl,
        cfg.get("weights", "equal"), bool(cfg.get("temperature", True)))
    first, last = results[0], results[-1]

    def summary(res: dict) -> dict:
        return {"fused": res["test"]["fused"],
                "branch": {b: v for b, v in res["test"].items() if b != "fused"}}

    write_json_atomic(out / "metrics.json", {
        "test": summary(last),
        "test_before_cmpl": summary(first),
        "val": {"fused": last["val"]["fused"],
                "branch": {b: v for b, v in last["val"].items() if b != "fused"}},
        "cmpl_rounds": rounds["rounds"],
        "temperature": last["temperature"],
        "weight": last["weight"],
    })
    cmpl_rows = []
    for prev, res in zip(results, results[1:]):
        cmpl_rows.append({"round": res["round"], "fused_f1_before": prev["test"]["fused"]["macro_f1"],
                          "fused_f1_after": res["test"]["fused"]["macro_f1"], "branches": {
            b: {"kept": res["pseudo"][b]["kept"], "precision": res["pseudo"][b]["precision"],
                "per_class_kept": dict(zip(classes, res["pseudo"][b]["per_class_kept"])),
                "per_class_precision": dict(zip(classes, res["pseudo"][b]["per_class_precision"])),
                "f1_before": prev["test"][b]["macro_f1"], "f1_after": res["test"][b]["macro_f1"]}
            for b in res["pseudo"]}})
    write_json_atomic(out / "cmpl.json", {"rounds": cmpl_rows})
    report.cmpl_rounds_png(cmpl_rows, out / "cmpl_rounds.png")

    probs = last["fused_test_probs"]
    pred = probs.argmax(1)
    table = pd.DataFrame({"clip_id": test_ids, "predicted": [classes[i] for i in pred]})
    for i, c in enumerate(classes):
        table[f"p_{c}"] = np.round(probs[:, i], 5)
    write_csv_atomic(out / "predictions.csv", table)

    known = truth >= 0
    write_json_atomic(out / "confusion.json", report.confusion_rows(truth[known], pred[known], classes))
    report.confusion_matrix_png(truth[known], pred[known], classes, out / "confusion.png",
                                title=f"Fused, test subjects, after {rounds['rounds']} CMPL round(s)")
    index = {c: i for i, c in enumerate(classes)}
    support = np.bincount([index[x] for x in manifest[manifest.split == "train"].label],
                          minlength=len(classes))
    f1 = {b: report.per_class_f1(truth[known], p[known].argmax(1), len(classes))
          for b, p in last["test_probs"].items()}
    f1["fused"] = report.per_class_f1(truth[known], pred[known], len(classes))
    write_json_atomic(out / "per_class_f1.json", report.per_class_f1_rows(f1, classes, support))
    report.per_class_f1_png(f1, classes, support, out / "per_class_f1.png")
    t = last["test"]
    print("fuse: test macro-F1 " + ", ".join(f"{b} {v['macro_f1']:.3f}" for b, v in t.items())
          + f" (after {rounds['rounds']} CMPL rounds; before: fused "
          f"{first['test']['fused']['macro_f1']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
