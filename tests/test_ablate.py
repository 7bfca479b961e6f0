"""`mgpipe ablate`: grid files, overrides, statistics (hand-checked), and a small grid of real
DVC experiments in a fresh copy of the project (run cache reuse, resume, tables)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_project, edit_params
from sklearn.metrics import f1_score

import mgpipe.ablate as ablate
from mgpipe.ablate import (GridError, Planned, Setting, apply_overrides, level, load_grid,
                           markdown_table, override_args, plan, prerequisites)
from mgpipe.stats import macro_f1_rows, paired_bootstrap, seed_spread

ROOT = Path(__file__).resolve().parents[1]


# ---- statistics --------------------------------------------------------------------------------

def test_macro_f1_by_hand():
    # class 0: tp 1, 2 true, 1 predicted -> 2/3; class 1: tp 2, 2 true, 3 predicted -> 4/5
    assert macro_f1_rows([[0, 0, 1, 1]], [[0, 1, 1, 1]], 3)[0] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # no prediction (-1) is wrong; class 2 is never a label so it is not averaged
    assert macro_f1_rows([[0, 0, 1, 1]], [[0, -1, 1, 2]], 3)[0] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, (20, 50))
    p = np.where(rng.random((20, 50)) < 0.5, y, rng.integers(-1, 6, (20, 50)))
    ref = [f1_score(a, b, labels=np.unique(a), average="macro", zero_division=0) for a, b in zip(y, p)]
    np.testing.assert_allclose(macro_f1_rows(y, p, 6), ref, atol=1e-12)


def test_seed_spread_leaves_out_unknown_labels():
    s = seed_spread(np.array([0, 1, -1]), np.array([[0, 1, 0], [1, 0, 1]]), 2)
    assert s["values"] == [1.0, 0.0] and s["mean"] == 0.5
    assert s["sd"] == pytest.approx(np.std([1.0, 0.0], ddof=1))


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    same = paired_bootstrap(y, np.stack([y, y]), np.stack([y, y]), 4, resamples=300)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "p": 1.0}
    noisy = np.where(rng.random(200) < 0.5, y, (y + 1) % 4)
    better = paired_bootstrap(y, y[None], noisy[None], 4, resamples=500)
    assert better["diff"] > 0.3 and better["low"] > 0 and better["p"] < 0.01
    worse = paired_bootstrap(y, noisy[None], y[None], 4, resamples=500)
    assert worse["diff"] == pytest.approx(-better["diff"]) and worse["high"] < 0
    # a tiny difference on a few clips is not significant
    one_off = y.copy()
    one_off[0] = (y[0] + 1) % 4
    assert paired_bootstrap(y, y[None], one_off[None], 4, resamples=500)["p"] > 0.05
    # same seed, same numbers
    assert paired_bootstrap(y, y[None], noisy[None], 4, resamples=500) == better


# ---- grid files and overrides ------------------------------------------------------------------

def _grid(tmp_path, text: str) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(text)
    return p


def test_default_grid_is_valid_and_covers_the_issue():
    g = load_grid(ROOT / "ablations.yaml")
    assert len(g.seeds) >= 3 and g.baseline == "baseline"
    sets = {s.name: s.set for s in g.settings}
    assert {"cmpl-off", "cmpl-2-rounds", "cmpl-source-all", "class-weight-none", "ose-off",
            "temperature-off", "fusion-fit"} <= set(sets)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    from mgpipe.params import validate_params
    for p in plan(g, params):
        validate_params(p.params)


@pytest.mark.parametrize("text, match", [
    ("settings: []", "no settings"),
    ("settings: [{set: {a: 1}}]", "needs a name"),
    ("settings: [{name: a}, {name: a}]", "repeat"),
    ("settings: [{name: 'a b'}]", "use letters"),
    ("settings: [{name: a, compare: b}]", "not a setting"),
    ("settings: [{name: a, set: {train.seed: 3}}]", "list seeds"),
    ("settings: [{name: a}]\nseeds: [1, 1]", "distinct"),
    ("settings: [{name: a}]\nround: first", "round"),
    ("settings: [{name: a, sett: {}}]", "unknown keys"),
    ("setting: [{name: a}]", "unknown keys"),
])
def test_bad_grids_say_what_is_wrong(tmp_path, text, match):
    with pytest.raises(GridError, match=match):
        load_grid(_grid(tmp_path, text))


def test_overrides_as_dvc_applies_them():
    params = {"a": {"b": 1, "c": {"d": 2}}, "e": [1]}
    out = apply_overrides(params, {"a.c.d": 5, "a.x.y": "none", "e": [2, 3]}, ["a.b"])
    assert out == {"a": {"c": {"d": 5}, "x": {"y": "none"}}, "e": [2, 3]}
    assert params == {"a": {"b": 1, "c": {"d": 2}}, "e": [1]}  # not modified
    # a mapping set onto a mapping merges into it (Hydra); onto anything else replaces it
    assert apply_overrides(params, {"a.c": {"z": 1}, "e": {"f": 1}}, []) == \
        {"a": {"b": 1, "c": {"d": 2, "z": 1}}, "e": {"f": 1}}
    args = override_args({"fuse.weights": {"stcnn": 2.0}, "loss.class_weight": "none",
                          "fuse.temperature": False, "loss.ose_weight": 0.0}, ["branches.swin3d"])
    assert args == ["~branches.swin3d", "++fuse.weights={stcnn: 2.0}", "++loss.class_weight=none",
                    "++fuse.temperature=false", "++loss.ose_weight=0.0"]
    for a in args[1:]:  # DVC parses each value as YAML: the same value comes back
        k, v = a.removeprefix("++").split("=", 1)
        assert yaml.safe_load(v) == {"fuse.weights": {"stcnn": 2.0}, "loss.class_weight": "none",
                                     "fuse.temperature": False, "loss.ose_weight": 0.0}[k]


@pytest.mark.parametrize("grid_file", ["ablations.yaml", "ablations-utd.yaml"])
def test_shipped_grids_apply_with_dvcs_own_parser(tmp_path, grid_file):
    """Every experiment of the shipped grids: DVC's own -S parser accepts its overrides on
    params.yaml (a profile adds keys params.yaml lacks) and gives the params `plan` expects,
    which is how finished experiments are recognised."""
    from dvc.utils.hydra import apply_overrides as dvc_apply
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for p in plan(load_grid(ROOT / grid_file), params):
        f = tmp_path / "params.yaml"
        f.write_text((ROOT / "params.yaml").read_text())
        dvc_apply(str(f), p.overrides)
        assert yaml.safe_load(f.read_text()) == p.params, p.name


def test_levels_order_and_prerequisites(tmp_path):
    assert level(Setting("x", {"fuse.weights": "fit"})) == "fuse"
    assert level(Setting("x", {"cmpl.rounds": 2, "fuse.temperature": False})) == "cmpl"
    assert level(Setting("x", {"loss.ose_weight": 0.0, "cmpl.rounds": 0})) == "train"
    assert level(Setting("x", {}, ["branches.swin3d"])) == "train"
    g = load_grid(_grid(tmp_path, """
settings:
  - {name: fit, set: {fuse.weights: fit}}
  - {name: base}
  - {name: two, set: {cmpl.rounds: 2}}
  - {name: noose, set: {loss.ose_weight: 0.0}}
baseline: base
seeds: [0, 1]
prefix: t
"""))
    planned = plan(g, {"train": {"seed": 0}})
    assert planned[0].name == "t-base-s0" and planned[0].overrides == ["++train.seed=0"]
    assert planned[0].params == {"train": {"seed": 0}}
    # baseline first, then what retrains, then fuse-only (cheap), then cmpl-only settings
    assert [p.name for p in planned] == ["t-base-s0", "t-base-s1", "t-noose-s0", "t-noose-s1",
                                         "t-fit-s0", "t-fit-s1", "t-two-s0", "t-two-s1"]
    # what reuses a baseline's trainings waits for that seed's baseline
    assert prerequisites(planned, "base") == {"t-two-s0": "t-base-s0", "t-two-s1": "t-base-s1",
                                              "t-fit-s0": "t-base-s0", "t-fit-s1": "t-base-s1"}


def test_a_dead_queue_worker_does_not_hang_the_grid(monkeypatch):
    """A worker that died leaves its experiment "Running" with no worker alive: the queued
    one gets workers again, the orphan is marked lost and removed from the queue (so the
    next call reruns it), and the call returns instead of polling for ever."""
    calls, polls = [], []

    def queue_states(repo, env):
        polls.append(1)
        if len(polls) > 50:
            raise AssertionError("run_experiments kept polling an orphaned experiment")
        states = {"t-a-s0": "Running"}
        if not any(c[:3] == ["dvc", "queue", "start"] for c in calls):
            states["t-b-s0"] = "Queued"  # runs once workers are started again
        else:
            states["t-b-s0"] = "Success"
        return states, 0

    def run(cmd, **kw):
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ablate, "queue_states", queue_states)
    monkeypatch.setattr(ablate.subprocess, "run", run)
    todo = [Planned(Setting("a", {}), 0, "t-a-s0", [], {}),
            Planned(Setting("b", {}), 0, "t-b-s0", [], {})]
    logs = []
    out = ablate.run_experiments(Path("."), todo, "a", 2, {}, log=lambda *a, **k: logs.append(a[0]),
                                 poll=0, orphan_after=0)
    assert out == {"t-a-s0": "Lost", "t-b-s0": "Success"}
    assert ["dvc", "queue", "remove", "t-a-s0"] in calls
    assert any("t-a-s0 shows Running but no queue worker is alive" in m for m in logs)
    assert not any(c[:3] == ["dvc", "exp", "run"] for c in calls)  # waited for, not requeued


def test_runs_merge_with_the_journal(tmp_path):
    j = tmp_path / "runs.jsonl"
    j.write_text(json.dumps({"started": "b", "n": 2}) + "\n" + json.dumps({"started": "a", "n": 9})
                 + "\n" + '{"started": "c", "n"')  # torn last line: skipped
    runs = ablate.merge_runs([{"started": "a", "n": 1}], j)
    assert runs == [{"started": "a", "n": 1}, {"started": "b", "n": 2}]
    assert ablate.merge_runs([], tmp_path / "none.jsonl") == []


def test_markdown_table_rows():
    summary = {
        "base": {"overrides": [], "compare": "base", "seeds": [0, 1],
                 "test_macro_f1": {"fused": {"mean": 0.5, "sd": 0.1, "values": [0.4, 0.6]},
                                   "a": {"mean": 0.4, "sd": 0.0, "values": [0.4, 0.4]}},
                 "val_fused_macro_f1": {"mean": 0.7, "sd": 0.0}},
        "x": {"overrides": ["++cmpl.rounds=0"], "compare": "base", "seeds": [0],
              "test_macro_f1": {"fused": {"mean": 0.6, "sd": 0.0, "values": [0.6]}},
              "vs_reference": {"fused": {"diff": 0.1, "low": -0.05, "high": 0.2, "p": 0.2}}},
    }
    text = markdown_table(summary, ["a"])
    assert "| base | (params.yaml) | 2 | 0.500 +- 0.100 | reference | 0.400 +- 0.000 | 0.700 +- 0.000 |" in text
    assert "| x | `cmpl.rounds=0` | 1 | 0.600 +- 0.000 | +0.100 [-0.050, +0.200] p=0.200 (vs base) | - | - |" in text
    assert ablate.p_text(0.0) == "p<0.001" and ablate.p_text(0.0015) == "p=0.002"


# ---- a real grid of DVC experiments ------------------------------------------------------------

TINY = {
    "synth": {"subjects": 6, "test_subjects": 2, "val_subjects": 1, "clips_per_subject": 10,
              "frames": 20},
    "branches": {"stcnn": {"epochs": 3}, "posec3d": {"epochs": 2}},
    "cmpl": {"threshold": 0.2, "selection": "confidence"},
}

GRID = """
prefix: t
out: metrics/abl
seeds: [0, 1]
resamples: 200
settings:
  - name: baseline
  - name: cmpl-off
    set: {cmpl.rounds: 0}
  - name: temperature-off
    set: {fuse.temperature: false}
"""


def _env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                GIT_AUTHOR_NAME="mgpipe-test", GIT_AUTHOR_EMAIL="test@mgpipe.invalid",
                GIT_COMMITTER_NAME="mgpipe-test", GIT_COMMITTER_EMAIL="test@mgpipe.invalid",
                DVC_NO_ANALYTICS="1", PYTHONPATH=str(ROOT))


def _sh(cmd: list[str], cwd: Path) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert p.returncode == 0, f"{cmd}: {p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


@pytest.mark.slow
def test_a_small_grid_runs_as_dvc_experiments_and_resumes(tmp_path):
    project = copy_project(tmp_path / "mgpipe")
    edit_params(project, TINY, drop_branches=("r2plus1d", "swin3d"))
    (project / "grid.yaml").write_text(GRID)
    _sh(["git", "init", "-q"], project)
    _sh(["git", "add", "-A"], project)
    _sh(["git", "commit", "-qm", "clone"], project)
    _sh(["dvc", "repro", "-q"], project)
    _sh(["git", "add", "-A"], project)
    _sh(["git", "commit", "-qm", "repro"], project)

    out = _sh([sys.executable, "-m", "mgpipe", "ablate", "grid.yaml", "-j", "2"], project)
    assert "6 experiments (3 settings x 2 seeds); 0 finished; 6 to run" in out, out
    doc = json.loads((project / "metrics/abl.json").read_text())
    assert all(doc["experiments"].values()), doc["experiments"]
    s = doc["settings"]
    for name in ("baseline", "cmpl-off", "temperature-off"):
        f = s[name]["test_macro_f1"]
        assert set(f) == {"fused", "stcnn", "posec3d"} and len(f["fused"]["values"]) == 2
        assert all(0 <= v <= 1 for v in f["fused"]["values"])
    assert "vs_reference" not in s["baseline"]
    vs = s["cmpl-off"]["vs_reference"]["fused"]
    assert vs["low"] <= vs["diff"] <= vs["high"] and 0 <= vs["p"] <= 1
    # seeds change training: the two seeds' ST-CNN predictions differ
    assert len(set(s["baseline"]["test_macro_f1"]["stcnn"]["values"])) == 2
    logs = doc["stage_logs"]
    # settings that only change cmpl or fuse restore the trainings from DVC's run cache
    for seed in (0, 1):
        assert {"train@stcnn", "train@posec3d"} <= set(logs[f"t-temperature-off-s{seed}"]["run_cache"]) | \
            set(logs[f"t-temperature-off-s{seed}"]["unchanged"]), logs[f"t-temperature-off-s{seed}"]
        assert "cmpl" in set(logs[f"t-temperature-off-s{seed}"]["run_cache"]) | \
            set(logs[f"t-temperature-off-s{seed}"]["unchanged"])
        assert not {"train@stcnn", "train@posec3d"} & set(logs[f"t-cmpl-off-s{seed}"]["ran"])
    assert "train@stcnn" in logs["t-baseline-s1"]["ran"]  # seed 1 is not in dvc.lock: trained
    assert doc["run_cache"]["stages_from_run_cache"] >= 4
    assert (project / "metrics/abl.md").read_text().count("\n| ") == 4  # header + 3 settings
    assert (project / "metrics/abl.png").stat().st_size > 1000
    exps = _sh(["dvc", "exp", "list", "--name-only"], project).split()
    assert {f"t-{n}-s{k}" for n in ("baseline", "cmpl-off", "temperature-off") for k in (0, 1)} <= set(exps)
    # rerun: nothing left to run, the same table
    table = (project / "metrics/abl.md").read_text()
    again = _sh([sys.executable, "-m", "mgpipe", "ablate", "grid.yaml", "-j", "2"], project)
    assert "6 finished; 0 to run" in again
    assert (project / "metrics/abl.md").read_text() == table
    # `dvc exp apply` restores an experiment's snapshot of the tables, with older `runs`: the
    # journal (git-ignored) brings this grid's records back on the next call
    assert len(doc["runs"]) == 1 and doc["runs"][0]["jobs"] == 2
    (project / "metrics/abl.json").write_text(json.dumps({**doc, "runs": []}))
    _sh([sys.executable, "-m", "mgpipe", "ablate", "grid.yaml", "--collect"], project)
    assert json.loads((project / "metrics/abl.json").read_text())["runs"] == doc["runs"]
    # a change to stage code (here a comment) makes every experiment stale: `--collect` has
    # nothing current; `--collect --any-code` gives the same table, naming the older commit
    with open(project / "mgpipe/signals.py", "a") as f:
        f.write("# a change that leaves results alone\n")
    _sh(["git", "commit", "-qam", "signals"], project)
    stale = _sh([sys.executable, "-m", "mgpipe", "ablate", "grid.yaml", "--collect", "--dry-run"],
                project)
    assert "0 finished; 6 to run" in stale, stale
    _sh([sys.executable, "-m", "mgpipe", "ablate", "grid.yaml", "--collect", "--any-code"], project)
    collected = (project / "metrics/abl.md").read_text()
    assert collected.startswith(table.rstrip("\n")) and "Run at older stage code" in collected
    assert len(json.loads((project / "metrics/abl.json").read_text())["older_code"]) == 6
