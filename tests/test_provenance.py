"""dvc.yaml's deps are exactly the code each stage runs, and cmpl's round signature follows
the code: an edit to any library file a stage imports reruns that stage (no stale cache)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mgpipe import provenance
from mgpipe.cmpl import run_cmpl
from mgpipe.provenance import code_fingerprint, import_closure, stage_code

ROOT = Path(__file__).resolve().parents[1]


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _script(stage: dict) -> str:
    cmd = stage["do"]["cmd"] if "do" in stage else stage["cmd"]
    return next(w for w in cmd.split() if w.startswith("stages/"))


def test_dvc_deps_are_each_stages_import_closure():
    problems = []
    for name, stage in _stages().items():
        deps = (stage["do"] if "do" in stage else stage)["deps"]
        script = _script(stage)
        listed = {d for d in deps if isinstance(d, str) and d.startswith(("mgpipe/", "stages/"))}
        needed = set(stage_code(ROOT / script))  # incl. scripts it runs (cmpl runs train.py)
        if script not in deps:
            problems.append(f"{name}: {script} not among its deps")
        if listed != needed:
            problems.append(f"{name}: add {sorted(needed - listed)}, remove {sorted(listed - needed)}")
    assert not problems, "dvc.yaml deps differ from the stages' imports:\n" + "\n".join(problems)


def test_import_closure_follows_imports_inside_functions_and_relative(tmp_path, monkeypatch):
    pkg = tmp_path / "mgpipe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from mgpipe import c\n")
    (pkg / "c.py").write_text("import numpy\n")
    (pkg / "unused.py").write_text("")
    (tmp_path / "stage.py").write_text("import os\nfrom mgpipe.a import f\n")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    assert import_closure(tmp_path / "stage.py") == [
        "mgpipe/__init__.py", "mgpipe/a.py", "mgpipe/b.py", "mgpipe/c.py"]
    before = code_fingerprint(import_closure(tmp_path / "stage.py"))
    (pkg / "c.py").write_text("import numpy  # edited\n")
    assert code_fingerprint(import_closure(tmp_path / "stage.py")) != before


def _tiny_cmpl(tmp_path: Path):
    """Two branches' round-0 logits and a manifest, for run_cmpl."""
    rng = np.random.default_rng(0)
    classes = ["a", "b"]
    val = [f"v{i}" for i in range(6)]
    test = [f"t{i}" for i in range(8)]
    m = pd.DataFrame({"clip_id": [f"r{i}" for i in range(6)] + val + test,
                      "split": ["train"] * 6 + ["val"] * 6 + ["test"] * 8,
                      "label": ["a", "b"] * 3 + ["a", "b"] * 3 + [""] * 8})
    m.to_csv(tmp_path / "manifest.csv", index=False)
    round0 = {}
    for b in ("stcnn", "posec3d"):
        d = tmp_path / "r0" / b
        d.mkdir(parents=True)
        np.savez(d / "logits.npz", val_ids=np.array(val), val_logits=rng.normal(size=(6, 2)) * 4,
                 test_ids=np.array(test), test_logits=np.tile([[5.0, -5.0]], (8, 1)))
        round0[b] = d / "logits.npz"
    return classes, round0


def test_cmpl_redoes_a_round_when_its_code_changes(tmp_path):
    classes, round0 = _tiny_cmpl(tmp_path)
    trained = []

    def retrain(branch, pseudo, out):
        trained.append(branch)
        out.mkdir(parents=True, exist_ok=True)
        (out / "logits.npz").write_bytes(round0[branch].read_bytes())

    cfg = {"rounds": 1, "threshold": 0.5, "min_agree": 1, "class_fraction": None}
    args = (cfg, ["stcnn", "posec3d"], round0, tmp_path / "manifest.csv", classes,
            tmp_path / "cmpl", {}, retrain)
    run_cmpl(*args, log=lambda *_: None, code="v1")
    assert trained == ["stcnn", "posec3d"]
    run_cmpl(*args, log=lambda *_: None, code="v1")   # same code: reused
    assert trained == ["stcnn", "posec3d"]
    run_cmpl(*args, log=lambda *_: None, code="v2")   # code edited: redone
    assert trained == ["stcnn", "posec3d"] * 2
    done = json.loads((tmp_path / "cmpl" / "round1" / "done.json").read_text())
    assert done["summary"]["kept"] == {"stcnn": 8, "posec3d": 8}
