"""fuse: temperature-scaled soft-voting fusion and every metric, before and after CMPL.

Per branch a temperature T_b fitted on the validation subjects (minimum NLL); fused
probability sum_b w_b softmax(z_b / T_b) with `fuse.weights` (equal, fit on validation, or
a {branch: w} map). With `fuse.chance_gate`, a branch whose validation macro-F1 is not above
chance (permutation test, p >= 0.05) gets weight 0 and the others share its weight (all
branches at chance: none gated). The only stage that reads the hidden test labels. Writes:
  metrics/metrics.json      macro-F1 (headline), micro-F1 (= top-1), top-5; test and val;
                            per branch and fused; after CMPL and before (round 0); per
                            branch, the clips it had no prediction for and why (coverage);
                            per round (fusion.round<r>) the weights used, the gated branches
                            and each branch's chance test
  metrics/cmpl.json         per round and branch: pseudo-labels kept, per-class counts, their
                            precision against the hidden labels, test F1 before/after
  metrics/predictions.csv   clip_id, predicted label, the branches that saw the clip, fused
                            probability per class (empty: no branch saw it; counted wrong)
  metrics/confusion.json, metrics/per_class_f1.json   DVC plot data
  metrics/confusion.png, metrics/per_class_f1.png, metrics/cmpl_rounds.png
  models/predict/           the last round's models and fusion, for `mgpipe predict`
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mgpipe import report
from mgpipe.bundle import clip_lengths, write_bundle
from mgpipe.evaluate import clip_table, coverage, evaluate_rounds
from mgpipe.io import read_manifest, read_skips, write_csv_atomic, write_json_atomic
from mgpipe.metrics import predicted_classes
from mgpipe.params import load_params
from mgpipe.signals import run_interruptible


def skip_files(branch_input: str, interim: Path) -> list[Path]:
    """The skipped-clip CSVs that explain a clip missing from a branch's input file: the
    one beside the input (e.g. heatmaps_skipped.csv), then the keypoints stage's, then
    prepare's."""
    files = [interim / "keypoints_skipped.csv", interim / "skipped.csv"]
    if branch_input:
        p = Path(branch_input)
        files.insert(0, p.with_name(f"{p.stem}_skipped.csv"))
    return files


def gate_lines(res: dict) -> list[str]:
    """What the chance gate did in one round (evaluate_round's result), for the log."""
    gate, r = res["gate"], res["round"]
    lines = []
    for b, t in gate["chance"].items():
        if gate["gated"][b]:
            lines.append(f"fuse: round {r}: {b} gated (weight 0): val macro-F1 "
                         f"{t['macro_f1']:.3f} is not above chance (95th percentile of shuffled "
                         f"labels {t['chance_p95']:.3f}, p = {t['p_value']:.4f}, "
                         f"{t['clips']} val clips)")
    if gate["note"]:
        lines.append(f"fuse: round {r}: {gate['note']} (fuse.chance_gate)")
    fell = gate["fallback_clips"]
    if fell["test"] or fell["val"]:
        lines.append(f"fuse: round {r}: {fell['test']} test and {fell['val']} val clips are "
                     f"predicted only by branches of fusion weight 0 (gated); fused from those "
                     f"branches instead of left unpredicted")
    if any(gate["gated"].values()) or gate["note"]:
        lines.append(f"fuse: round {r}: fusion weights " + ", ".join(
            f"{b} {w:.3f}" for b, w in res["weight"].items()))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--interim", default="data/interim")
    ap.add_argument("--cmpl", default="models/cmpl")
    ap.add_argument("--out", default="metrics")
    ap.add_argument("--bundle", default="models/predict")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = params["fuse"]
    interim, out = Path(args.interim), Path(args.out)
    manifest = read_manifest(interim / "manifest.csv")
    classes = json.loads((interim / "classes.json").read_text())
    rounds = json.loads((Path(args.cmpl) / "rounds.json").read_text())
    results, truth, test_ids = evaluate_rounds(
        rounds, manifest, classes, interim / "test_labels.csv", args.cmpl,
        cfg.get("weights", "equal"), bool(cfg.get("temperature", True)),
        bool(cfg.get("chance_gate", True)))
    first, last = results[0], results[-1]
    for res in results:
        for line in gate_lines(res):
            print(line, flush=True)

    def summary(res: dict) -> dict:
        return {"fused": res["test"]["fused"],
                "branch": {b: v for b, v in res["test"].items() if b != "fused"}}

    ids = {"val": list(manifest[manifest.split == "val"].clip_id), "test": test_ids}
    cover = {b: coverage(ids, {"val": last["val_probs"][b], "test": p}, read_skips(
                 skip_files(params["branches"].get(b, {}).get("input", ""), interim)))
             for b, p in last["test_probs"].items()}
    write_json_atomic(out / "metrics.json", {
        "test_clips": len(test_ids),
        "test": summary(last),
        "test_before_cmpl": summary(first),
        "val": {"fused": last["val"]["fused"],
                "branch": {b: v for b, v in last["val"].items() if b != "fused"}},
        "cmpl_rounds": rounds["rounds"],
        "temperature": last["temperature"],
        "weight": last["weight"],
        "coverage": cover,
        "fusion": {f"round{res['round']}": {
            "weight": res["weight"], **{k: v for k, v in res["gate"].items() if k != "note"}}
            for res in results},
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
    train = manifest[manifest.split == "train"]
    write_bundle(args.bundle, classes, rounds, last["calibration"], last["gate"]["gated"], params,
                 clip_lengths(train.frames, train.fps))  # predict --window's default
    report.cmpl_rounds_png(cmpl_rows, out / "cmpl_rounds.png")

    probs = last["fused_test_probs"]
    pred = predicted_classes(probs)  # -1: no branch has the clip (counted wrong)
    table = pd.DataFrame({
        "clip_id": test_ids,
        "predicted": [classes[i] if i >= 0 else "" for i in pred],
        "branches": [" ".join(b for b, p in last["test_probs"].items() if not np.isnan(p[j]).any())
                     for j in range(len(test_ids))]})
    for i, c in enumerate(classes):
        table[f"p_{c}"] = np.round(probs[:, i], 5)
    write_csv_atomic(out / "predictions.csv", table)
    write_csv_atomic(out / "test_by_clip.csv", clip_table(results, truth, test_ids, classes))

    known = truth >= 0
    write_json_atomic(out / "confusion.json", report.confusion_rows(truth[known], pred[known], classes))
    report.confusion_matrix_png(truth[known], pred[known], classes, out / "confusion.png",
                                title=f"Fused, test subjects, after {rounds['rounds']} CMPL round(s)")
    index = {c: i for i, c in enumerate(classes)}
    support = np.bincount([index[x] for x in manifest[manifest.split == "train"].label],
                          minlength=len(classes))
    f1 = {b: report.per_class_f1(truth[known], predicted_classes(p[known]), len(classes))
          for b, p in last["test_probs"].items()}
    f1["fused"] = report.per_class_f1(truth[known], pred[known], len(classes))
    write_json_atomic(out / "per_class_f1.json", report.per_class_f1_rows(f1, classes, support))
    report.per_class_f1_png(f1, classes, support, out / "per_class_f1.png")
    t = last["test"]
    for b, c in cover.items():
        if c["test_missing"] or c["val_missing"]:
            print(f"fuse: {b} has no prediction for {c['test_missing']} test and "
                  f"{c['val_missing']} val clips: {c['test_missing_reasons'] or c['val_missing_reasons']}")
    if t["fused"]["unpredicted"]:
        print(f"fuse: {t['fused']['unpredicted']} test clips have no prediction from any branch; "
              f"they count as wrong")
    print("fuse: test macro-F1 " + ", ".join(f"{b} {v['macro_f1']:.3f}" for b, v in t.items())
          + f" (after {rounds['rounds']} CMPL rounds; before: fused "
          f"{first['test']['fused']['macro_f1']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(run_interruptible("fuse", main, "each file is written whole, but some may be "
                               "from the previous run; rerun"))
