"""End-to-end: the DVC pipeline on a small synthetic dataset, in a copy of the project.

Checks what a user relies on: `dvc repro` runs from a fresh clone, a second `dvc repro` does
nothing, and a params change reruns exactly the stages that depend on it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# A small synthetic set so the suite stays fast; `make demo` runs the params.yaml default.
SMALL_SYNTH = {"subjects": 7, "test_subjects": 2, "val_subjects": 1, "clips_per_subject": 12,
               "frames": 24}


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh clone: the project's tracked files in a new git repo, with a small synth."""
    dst = tmp_path_factory.mktemp("clone") / "mgpipe"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith(("data/", "models/", "metrics/")) or f == "dvc.lock":
            continue  # outputs the pipeline must produce itself
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["synth"].update(SMALL_SYNTH)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        subprocess.run(cmd, cwd=dst, check=True)
    return dst


def test_repro_runs_every_stage_then_is_a_noop(project):
    out = _run(["dvc", "repro"], project)
    assert {"synth", "prepare"} <= _ran(out)
    m = pd.read_csv(project / "data/interim/manifest.csv", keep_default_na=False)
    assert len(m) == 7 * 12
    assert m.groupby("subject").split.nunique().max() == 1
    assert (project / "data/raw/synth/contact_sheet.png").is_file()
    again = _run(["dvc", "repro"], project)
    assert _ran(again) == set(), again


def test_seed_change_reruns_synth_and_prepare(project):
    _run(["dvc", "repro"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synth"]["seed"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(["dvc", "repro", "prepare"], project)) == {"synth", "prepare"}
    params["prepare"]["on_bad_clip"] = "skip"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(["dvc", "repro", "prepare"], project)) == {"prepare"}
