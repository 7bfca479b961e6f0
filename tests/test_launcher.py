"""runtime.launcher: the train stage and every CMPL retraining run under it (here torchrun
with 2 CPU processes, gloo), rank 0 alone writes; the runtime block invalidates nothing;
a killed train stage resumes from last.pt."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
SMALL = {
    "synth": {"subjects": 5, "test_subjects": 1, "val_subjects": 1, "clips_per_subject": 8,
              "classes": 10, "imbalance": 2, "frames": 16},
    "cmpl": {"source": "all", "threshold": 0.0, "min_agree": 1, "class_fraction": None, "selection": "confidence"},
}


def _run(project: Path, *args: str, check: bool = True) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("MGPIPE_LAUNCHED", None)
    p = subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True,
                       env=env, timeout=900)
    if check:
        assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout + p.stderr


def _params(project: Path, **runtime) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for block, values in SMALL.items():
        params[block].update(values)
    params["branches"] = {"stcnn": {**params["branches"]["stcnn"], "epochs": 3}}
    params["runtime"].update(runtime)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = tmp_path_factory.mktemp("launcher")
    shutil.copytree(ROOT / "stages", project / "stages")
    _params(project)
    for name in ("synth", "prepare", "keypoints"):
        _run(project, f"stages/{name}.py")
    return project


def test_no_stage_depends_on_the_runtime_block():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        assert "${" not in stage["cmd"].replace("${key}", ""), (name, stage["cmd"])
        listed = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])]
        assert not any(p == "runtime" or p.startswith("runtime.") for p in listed), name


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed beside python")
def test_train_and_cmpl_run_under_the_launcher(project):
    _params(project, launcher=f"{TORCHRUN} --standalone --nproc_per_node 2")
    log = _run(project, "stages/train.py", "--branch", "stcnn")
    assert "--nproc_per_node 2" in log and "2 train" not in log.split("torchrun")[0]
    assert log.count("(chance") == 1  # rank 0 reports and writes, rank 1 does not
    assert (project / "models/train/stcnn/logits.npz").is_file()
    log = _run(project, "stages/cmpl.py")
    assert "--nproc_per_node 2" in log and "--pseudo" in log
    round1 = project / "models/cmpl/round1/stcnn"
    assert (round1 / "logits.npz").is_file() and (round1 / "last.pt").is_file()
    assert log.count("(chance") == 1 and "deprecated" not in log


@pytest.mark.slow
def test_killed_train_stage_resumes_from_last_checkpoint(project):
    _params(project)  # launcher: python
    out = project / "resume"
    p = subprocess.Popen([sys.executable, "stages/train.py", "--branch", "stcnn", "--out", str(out),
                          "--metrics", str(project / "resume_metrics.json")], cwd=project,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (project / ".resume.work" / "last.pt").exists() and time.monotonic() < deadline \
            and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # no clean-up at all
    p.wait()
    log = _run(project, "stages/train.py", "--branch", "stcnn", "--out", str(out),
               "--metrics", str(project / "resume_metrics.json"))
    assert "resuming after epoch" in log, log[-2000:]
    import platform  # the stage ran with train.cpu_threads and train.portable_kernels applied
    kernels = "avx2" if platform.machine().lower() in ("x86_64", "amd64") else "native"
    assert f"CPU: 1 thread(s), kernels {kernels}" in log, log[-2000:]
    whole = project / "whole"
    _run(project, "stages/train.py", "--branch", "stcnn", "--out", str(whole),
         "--metrics", str(project / "whole_metrics.json"))
    a, b = np.load(out / "logits.npz"), np.load(whole / "logits.npz")
    assert np.array_equal(a["test_logits"], b["test_logits"])


def _stage_train():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stage_train", ROOT / "stages/train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


def test_kernel_env_pins_threads_and_instruction_set(monkeypatch):
    stage = _stage_train()
    monkeypatch.setattr(stage.platform, "machine", lambda: "x86_64")
    assert stage.kernel_env({"cpu_threads": 1, "portable_kernels": True}) == {
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
    assert stage.kernel_env({"cpu_threads": 0, "portable_kernels": False}) == {}
    monkeypatch.setattr(stage.platform, "machine", lambda: "aarch64")  # x86 settings only
    assert stage.kernel_env({"cpu_threads": 4, "portable_kernels": True}) == {
        "OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
