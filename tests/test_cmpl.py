"""CMPL rounds (mgpipe/cmpl.py) with a fake retraining: fine-tuning starts each round from the
previous round's best.pt, and the thresholds fitted on validation reach the round summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgpipe.cmpl import run_cmpl
from mgpipe.fusion import calibrated_probs

BRANCHES = ["stcnn", "posec3d"]
CLASSES = ["a", "b"]
VAL_LABELS = ["a", "b", "a", "b", "a", "b"]
# stcnn's source is posec3d (cmpl.source: others): its val predictions, by margin,
# class a: clip 0 (4, right), clip 1 (3, wrong), clip 2 (2, right);
# class b: clip 5 (3.5, right), clip 3 (2, right), clip 4 (1, wrong)
POSEC3D_VAL = [[4, 0], [3, 0], [2, 0], [0, 2], [0, 1], [0, 3.5]]
# posec3d's source is stcnn, wrong on every val clip
STCNN_VAL = [[0, 2], [2, 0], [0, 1], [3, 0], [0, 2], [1, 0]]


def _project(tmp_path: Path) -> dict[str, Path]:
    """Round-0 models (logits.npz and best.pt) of two branches and a manifest."""
    val = [f"v{i}" for i in range(6)]
    test = [f"t{i}" for i in range(8)]
    pd.DataFrame({"clip_id": [f"r{i}" for i in range(6)] + val + test,
                  "split": ["train"] * 6 + ["val"] * 6 + ["test"] * 8,
                  "label": ["a", "b"] * 3 + VAL_LABELS + [""] * 8}
                 ).to_csv(tmp_path / "manifest.csv", index=False)
    round0 = {}
    for b, v in (("stcnn", STCNN_VAL), ("posec3d", POSEC3D_VAL)):
        d = tmp_path / "r0" / b
        d.mkdir(parents=True)
        np.savez(d / "logits.npz", val_ids=np.array(val), val_logits=np.array(v, float),
                 test_ids=np.array(test), test_logits=np.tile([[5.0, -5.0]], (8, 1)))
        (d / "best.pt").write_text(f"{b} round 0")
        round0[b] = d / "logits.npz"
    return round0


class FakeRetrain:
    """Records (branch, out folder, init) and writes a model: the round-0 logits again."""

    def __init__(self, round0: dict[str, Path]):
        self.round0, self.calls = round0, []

    def __call__(self, branch, pseudo, out, *init):
        assert len(init) <= 1
        self.calls.append((branch, out, init[0] if init else None))
        out.mkdir(parents=True, exist_ok=True)
        (out / "logits.npz").write_bytes(self.round0[branch].read_bytes())
        (out / "best.pt").write_text(f"{branch} in {out}")


def _run(tmp_path, cfg, retrain, round0):
    return run_cmpl(cfg, BRANCHES, round0, tmp_path / "manifest.csv", CLASSES,
                    tmp_path / "cmpl", {}, retrain, log=lambda *_: None)


FIXED = {"rounds": 2, "threshold": 0.5, "min_agree": 1, "selection": "balanced", "quota": 2.0,
         "class_fraction": 0.5}


def test_finetune_starts_each_round_from_the_previous_best(tmp_path):
    round0 = _project(tmp_path)
    retrain = FakeRetrain(round0)
    _run(tmp_path, dict(FIXED, finetune=True), retrain, round0)
    out = tmp_path / "cmpl"
    assert retrain.calls == [
        ("stcnn", out / "round1/stcnn", tmp_path / "r0/stcnn/best.pt"),
        ("posec3d", out / "round1/posec3d", tmp_path / "r0/posec3d/best.pt"),
        ("stcnn", out / "round2/stcnn", out / "round1/stcnn/best.pt"),
        ("posec3d", out / "round2/posec3d", out / "round1/posec3d/best.pt")]
    # from scratch: no init is passed (a 3-argument callback works); the changed
    # params redo both rounds
    calls = []
    _run(tmp_path, dict(FIXED, finetune=False),
         lambda b, pseudo, o: calls.append(b) or FakeRetrain(round0)(b, pseudo, o), round0)
    assert calls == BRANCHES * 2


def test_finetune_needs_the_previous_model(tmp_path):
    round0 = _project(tmp_path)
    (tmp_path / "r0/posec3d/best.pt").unlink()
    with pytest.raises(FileNotFoundError, match="posec3d.*best.pt"):
        _run(tmp_path, dict(FIXED, finetune=True), FakeRetrain(round0), round0)


def test_fitted_thresholds_reach_the_summary(tmp_path):
    round0 = _project(tmp_path)
    retrain = FakeRetrain(round0)
    cfg = {"rounds": 2, "threshold": "fit", "target_precision": 0.9, "min_support": 3,
           "min_agree": 1, "selection": "balanced", "quota": 2.0, "finetune": True}
    summaries = _run(tmp_path, cfg, retrain, round0)
    s = summaries[0]
    t = s["temperatures"]["posec3d"]
    conf = lambda margin: float(calibrated_probs(np.array([[margin, 0.0]]), t).max())
    # stcnn, from posec3d: class a 1/1 at clip 0, then 1/2 -> clip 0's confidence;
    # class b 1/1, 2/2 at clip 3, then 2/3 -> clip 3's
    assert s["thresholds"]["stcnn"] == pytest.approx([conf(4), conf(2)])
    # posec3d, from stcnn: never right on validation -> no threshold (None = inf)
    assert s["thresholds"]["posec3d"] == [None, None]
    assert s["kept"] == {"stcnn": 8, "posec3d": 0}
    done = json.loads((tmp_path / "cmpl/round1/done.json").read_text())
    assert done["summary"] == json.loads(json.dumps(s))
    # posec3d kept its round-0 model (copied with its best.pt), so round 2 has none to
    # fine-tune either; stcnn fine-tunes its round-1 model
    assert (tmp_path / "cmpl/round1/posec3d/best.pt").read_text() == "posec3d round 0"
    assert retrain.calls == [
        ("stcnn", tmp_path / "cmpl/round1/stcnn", tmp_path / "r0/stcnn/best.pt"),
        ("stcnn", tmp_path / "cmpl/round2/stcnn", tmp_path / "cmpl/round1/stcnn/best.pt")]
    assert summaries[1]["thresholds"] == s["thresholds"]
    p = pd.read_csv(tmp_path / "cmpl/round1/pseudo_stcnn.csv")
    assert len(p) == 8 and set(p.label) == {"a"}
