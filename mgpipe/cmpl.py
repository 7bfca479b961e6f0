"""Cross-modal pseudo-labelling rounds (SPEC section 7), resumable round by round.

Round r (1..R): every branch's round r-1 model predicts the val and test clips;
probabilities are calibrated with the branch's temperature (fitted on validation); each branch
gets the pseudo-labels that the other branches' fused prediction (or all branches') gives with
enough confidence (a fixed `cmpl.threshold`, or per-class thresholds fitted on validation to
reach `cmpl.target_precision`) and agreement, capped per class (`cmpl.selection`); then each
branch is retrained on train + its pseudo-labelled clips with the same `train_branch` as
round 0: from scratch, or (`cmpl.finetune`) from its round r-1 best.pt.

Nothing here reads the hidden test labels: the report that scores pseudo-labels against them
lives in the evaluation code (stages/fuse.py). Validation labels fit the temperatures and
the thresholds.

Layout of ``out_dir`` (models/cmpl):
    round<r>/<branch>/{best.pt,last.pt,logits.npz}   retrained models
    round<r>/pseudo_<branch>.csv                      clip_id, label, confidence
    round<r>/started.json                             signature (a killed round resumes)
    round<r>/done.json                                signature, temperatures, thresholds, counts
    rounds.json                                       logits file per round and branch
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mgpipe.fusion import aligned, calibrated_probs, fit_temperature
from mgpipe.io import read_manifest, write_csv_atomic, write_json_atomic
from mgpipe.metrics import predicted_classes
from mgpipe.pseudo import fit_class_thresholds, select_pseudo_labels, source_probs


def load_logits(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _sha1(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def round_signature(cfg: dict, train_params: dict, round0: dict[str, Path], manifest: Path,
                    round_index: int, code: str = "") -> str:
    """Changes when anything round ``round_index`` depends on changes: params other than
    the number of rounds, round-0 models, the manifest, and ``code`` (a fingerprint of the
    code that runs the round, ``provenance.code_fingerprint``)."""
    c = {k: v for k, v in cfg.items() if k != "rounds"}
    blob = json.dumps({"cmpl": c, "train": train_params, "round": round_index,
                       "round0": {b: _sha1(p) for b, p in sorted(round0.items())},
                       "manifest": _sha1(manifest), "code": code}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def calibrate(logits: dict[str, dict], val_ids: list[str], val_labels: np.ndarray,
              test_ids: list[str]) -> tuple[dict, dict, dict]:
    """Per branch: temperature fitted on the validation clips it has, its calibrated test
    probabilities [len(test_ids), C] and its calibrated val probabilities [len(val_ids), C]
    with the same temperature (NaN rows: clips the branch skipped)."""
    temps, probs, val_probs = {}, {}, {}
    for b, z in logits.items():
        val = aligned(z["val_ids"], z["val_logits"], val_ids)
        seen = ~np.isnan(val).any(1)
        temps[b] = fit_temperature(val[seen], val_labels[seen])
        probs[b] = calibrated_probs(aligned(z["test_ids"], z["test_logits"], test_ids), temps[b])
        val_probs[b] = calibrated_probs(val, temps[b])
    return temps, probs, val_probs


def branch_thresholds(val_probs: dict[str, np.ndarray], val_labels: np.ndarray, target: str,
                      cfg: dict, num_classes: int) -> np.ndarray:
    """Confidence thresholds [C] for branch ``target``'s pseudo-labels: ``cmpl.threshold``
    for every class, or with ``fit`` :func:`mgpipe.pseudo.fit_class_thresholds` on the
    validation clips, whose source prediction is fused exactly as the test one (same
    temperatures, ``cmpl.source`` and ``cmpl.weights``)."""
    threshold = cfg.get("threshold", 0.9)
    if threshold != "fit":
        return np.full(num_classes, float(threshold))
    fused = source_probs(val_probs, target, cfg.get("source", "others"), cfg.get("weights"))
    return fit_class_thresholds(fused.max(1), predicted_classes(fused), val_labels, num_classes,
                                float(cfg.get("target_precision", 0.9)),
                                int(cfg.get("min_support", 5)))


def pseudo_labels_for_round(logits: dict[str, dict], val_ids: list[str], val_labels: np.ndarray,
                            test_ids: list[str], cfg: dict, train_counts: np.ndarray
                            ) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    """Pseudo-labels per branch (DataFrames of clip_id, label index, confidence) from the
    previous round's logits, the temperatures used and the thresholds per branch (a list per
    class, None = inf: no pseudo-label of that class). A branch only gets test clips it has
    the input of (it cannot train on the others)."""
    temps, probs, val_probs = calibrate(logits, val_ids, val_labels, test_ids)
    num_classes = len(train_counts)
    out, thresholds = {}, {}
    for b in logits:
        has = set(map(str, logits[b]["test_ids"]))
        thr = branch_thresholds(val_probs, val_labels, b, cfg, num_classes)
        idx, lab, conf = select_pseudo_labels(
            probs, b, cfg.get("source", "others"), thr, int(cfg.get("min_agree", 2)),
            cfg.get("max_per_class"), cfg.get("class_fraction"), train_counts, cfg.get("weights"),
            candidates=np.array([c in has for c in test_ids]),
            selection=cfg.get("selection", "confidence"), quota=float(cfg.get("quota", 2.0)))
        out[b] = pd.DataFrame({"clip_id": np.asarray(test_ids, dtype=object)[idx], "label": lab,
                               "confidence": np.round(conf, 6)})
        thresholds[b] = [float(t) if np.isfinite(t) else None for t in thr]
    return out, temps, thresholds


def run_cmpl(cfg: dict, branches: list[str], round0: dict[str, Path], manifest_path: Path,
             classes: list[str], out_dir: Path, train_params: dict,
             retrain: Callable[..., None], log=print, code: str = "") -> list[dict]:
    """Run ``cfg['rounds']`` rounds; reuse finished rounds whose signature matches (same
    params, round-0 models, manifest and ``code`` fingerprint).

    round0: branch -> round-0 logits.npz; retrain(branch, {clip_id: label}, out_dir) trains
    one branch from scratch with extra pseudo-labelled clips and writes its logits.npz (and
    best.pt). With ``cfg['finetune']`` it is called as retrain(branch, pseudo, out_dir, init)
    instead, init = the branch's previous model to start from: the best.pt beside its round
    r-1 logits (round 1: the round-0 logits' folder, models/train/<b>).
    Returns one summary per round (no test labels involved): round, temperatures,
    thresholds ({branch: [C] floats, None = inf}), kept ({branch: count}).
    """
    out_dir = Path(out_dir)
    rounds = int(cfg.get("rounds", 0))
    m = read_manifest(manifest_path)
    index = {c: i for i, c in enumerate(classes)}
    val = m[m.split == "val"]
    val_ids, val_labels = list(val.clip_id), np.array([index[x] for x in val.label], np.int64)
    test_ids = list(m[m.split == "test"].clip_id)
    train_counts = np.bincount([index[x] for x in m[m.split == "train"].label],
                               minlength=len(classes))
    paths = {0: dict(round0)}
    summaries = []
    for r in range(1, rounds + 1):
        rdir = out_dir / f"round{r}"
        sig = round_signature(cfg, train_params, round0, manifest_path, r, code)
        done = rdir / "done.json"
        if done.is_file() and json.loads(done.read_text()).get("signature") == sig:
            log(f"cmpl: round {r} already done (same params, inputs and code), reused")
            summaries.append(json.loads(done.read_text())["summary"])
            paths[r] = {b: rdir / b / "logits.npz" for b in branches}
            continue
        started = rdir / "started.json"
        if not (started.is_file() and json.loads(started.read_text()).get("signature") == sig):
            shutil.rmtree(rdir, ignore_errors=True)  # a stale round: redo it
        # a half-finished round of the same signature is kept: its retrainings resume
        write_json_atomic(started, {"signature": sig})
        logits = {b: load_logits(paths[r - 1][b]) for b in branches}
        pseudo, temps, thresholds = pseudo_labels_for_round(logits, val_ids, val_labels,
                                                            test_ids, cfg, train_counts)
        kept = {}
        for b in branches:
            p = pseudo[b]
            write_csv_atomic(rdir / f"pseudo_{b}.csv",
                             p.assign(label=[classes[i] for i in p.label]))
            kept[b] = len(p)
            if len(p) == 0:  # same data, same seed: retraining would give the same model
                log(f"cmpl: round {r}/{rounds}, {b}: no test clip passes; keeping the round "
                    f"{r - 1} model")
                shutil.copytree(Path(paths[r - 1][b]).parent, rdir / b, dirs_exist_ok=True)
                continue
            labels = dict(zip(p.clip_id, p.label.astype(int)))
            if cfg.get("finetune"):
                init = Path(paths[r - 1][b]).parent / "best.pt"
                if not init.is_file():
                    raise FileNotFoundError(f"cmpl.finetune: {b} has no round {r - 1} model "
                                            f"{init} to start from")
                log(f"cmpl: round {r}/{rounds}, {b}: {len(p)} pseudo-labelled test clips; "
                    f"fine-tuning {init}")
                retrain(b, labels, rdir / b, init)
            else:
                log(f"cmpl: round {r}/{rounds}, {b}: {len(p)} pseudo-labelled test clips; "
                    f"retraining")
                retrain(b, labels, rdir / b)
        summary = {"round": r, "temperatures": temps, "thresholds": thresholds, "kept": kept}
        write_json_atomic(done, {"signature": sig, "summary": summary})
        summaries.append(summary)
        paths[r] = {b: rdir / b / "logits.npz" for b in branches}
    for stale in out_dir.glob("round*"):  # rounds beyond cmpl.rounds from an earlier run
        if stale.is_dir() and stale.name[5:].isdigit() and int(stale.name[5:]) > rounds:
            shutil.rmtree(stale)
    write_json_atomic(out_dir / "rounds.json",
                      {"rounds": rounds, "branches": branches,
                       "logits": {str(r): {b: str(p) for b, p in d.items()} for r, d in paths.items()}})
    return summaries
