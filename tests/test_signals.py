"""SIGTERM, SIGINT and SIGKILL on stages with worker pools: clean exit, finished work kept,
no process left behind (SPEC section 12). Each test runs a real process tree."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

from mgpipe.keypoints import count_clips, run_extraction, work_path
from mgpipe.signals import Interrupted, raise_on_signals

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
WAIT = 60.0  # seconds: generous, for a loaded 2-core machine; each wait ends as soon as it can


def slow_extract(clip):
    """extract_fn for the tests: leaves ``start.<clip_id>.<pid>`` in clip['log'], sleeps
    clip['sleep'] seconds, returns a tiny person. Top-level so spawned workers import it."""
    (Path(clip["log"]) / f"start.{clip['clip_id']}.{os.getpid()}").touch()
    time.sleep(float(clip["sleep"]))
    kp = np.full((3, 68, 3), 1.0 + int(clip["clip_id"][1:]), np.float32)
    return kp, dict(source=clip["clip_id"], fps=25.0, width=64, height=48, detector="slow",
                    detector_version="1")


# The keypoints stage's pattern, around slow_extract: clips from a JSON file, 2 workers.
DRIVER = textwrap.dedent("""
    import json, sys
    from mgpipe.keypoints import count_clips, run_extraction, work_path
    from mgpipe.signals import Interrupted, raise_on_signals
    from test_signals import slow_extract

    if __name__ == "__main__":
        clips, out, start_method = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
        try:
            with raise_on_signals():
                s = run_extraction(clips, out, slow_extract, workers=2, progress=False,
                                   start_method=start_method)
        except Interrupted as e:
            print(f"driver: interrupted by {e.name}; {count_clips(work_path(out))} finished "
                  f"clips kept in {work_path(out)}", file=sys.stderr)
            sys.exit(e.exit_code)
        print("done", s.done, "reused", s.reused)
""")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def _start(args, tmp_path) -> subprocess.Popen:
    """Run python ``args`` in its own session (a signal to the group, like Ctrl-C, reaches the
    tree, not pytest), output to files: an orphan holding a pipe cannot block the test."""
    out, err = (open(tmp_path / f"std{n}.txt", "w") for n in ("out", "err"))
    with out, err:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), stdout=out,
                                stderr=err, start_new_session=True)
    proc.tmp_path = tmp_path
    return proc


def _finish(proc: subprocess.Popen) -> str:
    """Wait for ``proc``; its stderr."""
    proc.wait(timeout=WAIT)
    return (proc.tmp_path / "stderr.txt").read_text()


def _stdout(proc: subprocess.Popen) -> str:
    return (proc.tmp_path / "stdout.txt").read_text()


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (a zombie waiting to be reaped is dead)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(procs, timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (alive := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _wait_for(what: str, cond, proc: subprocess.Popen, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}:\n"
                        f"{_finish(proc)}")
        result = cond()
        if result:
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    """Every process below ``proc``: workers and the multiprocessing resource tracker."""
    return psutil.Process(proc.pid).children(recursive=True)


@pytest.fixture
def tree_reaper():
    """Collects processes a test starts; kills any left at the end (a failing test must not
    leave orphans either)."""
    procs: list[psutil.Process] = []
    yield procs
    for p in _alive(procs):
        p.kill()


def _clips(tmp_path, sleeps) -> list[dict]:
    log = tmp_path / "log"
    log.mkdir(exist_ok=True)
    return [{"clip_id": f"c{i}", "signature": f"s{i}", "sleep": s, "log": str(log)}
            for i, s in enumerate(sleeps)]


def _started(tmp_path) -> dict[str, set[int]]:
    """clip_id -> pids of the workers that started it."""
    out: dict[str, set[int]] = {}
    for p in (tmp_path / "log").glob("start.*"):
        _, cid, pid = p.name.split(".")
        out.setdefault(cid, set()).add(int(pid))
    return out


def _finished_in_partial(out: Path) -> set[str]:
    """Clips written to the work file of a running extraction (read without HDF5's lock;
    retried if caught mid-write)."""
    try:
        with h5py.File(work_path(out), "r", locking=False) as f:
            return {k for k in f if "signature" in f[k].attrs}
    except (OSError, KeyError):
        return set()


def _run_driver_until_busy(tmp_path, tree_reaper, start_method="spawn"):
    """The driver over 6 clips: c0, c1 quick, c2..c5 a minute each. Returns (process, output
    path, descendants) once c0 and c1 are in the work file and both workers are busy."""
    clips = _clips(tmp_path, [0, 0, 60, 60, 60, 60])
    (tmp_path / "clips.json").write_text(json.dumps(clips))
    out = tmp_path / "kp.h5"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = _start([str(driver), str(tmp_path / "clips.json"), str(out), start_method], tmp_path)
    tree_reaper.append(psutil.Process(proc.pid))
    _wait_for("two slow clips to start", lambda: {"c2", "c3"} <= set(_started(tmp_path)), proc)
    _wait_for("c0 and c1 in the work file", lambda: {"c0", "c1"} <= _finished_in_partial(out), proc)
    tree = _descendants(proc)
    tree_reaper.extend(tree)
    workers = set().union(*_started(tmp_path).values())
    assert workers <= {p.pid for p in tree} and len(workers) == 2
    return proc, out, tree


def test_sigterm_ends_workers_and_keeps_finished_clips(tmp_path, tree_reaper):
    proc, out, tree = _run_driver_until_busy(tmp_path, tree_reaper)
    assert len(tree) >= 3  # two workers and the resource tracker
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert time.monotonic() - t0 < 15, "the clean-up should take seconds"
    assert "Traceback" not in err, err
    assert f"driver: interrupted by SIGTERM; 2 finished clips kept in {work_path(out)}" in err
    assert _wait_gone(tree, 10) == []
    assert not out.exists() and count_clips(work_path(out)) == 2

    # The rerun reuses c0 and c1 and does the rest.
    for p in (tmp_path / "log").iterdir():
        p.unlink()
    s = run_extraction(_clips(tmp_path, [0] * 6), out, slow_extract, workers=0, progress=False)
    assert (s.done, s.reused) == (4, 2)
    assert set(_started(tmp_path)) == {"c2", "c3", "c4", "c5"}
    assert count_clips(out) == 6 and not work_path(out).exists()


def test_sigint_to_the_group_gives_one_message_and_no_tracebacks(tmp_path, tree_reaper):
    """Ctrl-C in a terminal signals every process of the group: workers ignore it, the
    parent ends them and says so once."""
    proc, out, tree = _run_driver_until_busy(tmp_path, tree_reaper)
    os.killpg(proc.pid, signal.SIGINT)
    err = _finish(proc)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.count("interrupted by SIGINT") == 1, err
    assert _wait_gone(tree, 10) == []
    assert count_clips(work_path(out)) == 2


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_sigkill_takes_the_workers_along(tmp_path, tree_reaper, start_method):
    """SIGKILL runs no handler: the workers must notice their parent's death themselves
    (with forkserver, their parent is the fork server, which they keep alive)."""
    proc, out, tree = _run_driver_until_busy(tmp_path, tree_reaper, start_method)
    proc.kill()
    proc.wait(timeout=WAIT)
    assert _wait_gone(tree, 10) == [], "workers or resource tracker outlived a SIGKILLed parent"


def test_watchdog_fallback_without_prctl(tmp_path, tree_reaper):
    """Where prctl is unavailable, a thread polling the parent pid ends the worker."""
    child = ("import sys, time, mgpipe.signals as s; s._set_pdeathsig = lambda sig: False; "
             "s.init_worker(int(sys.argv[1]), poll_interval=0.1); time.sleep(120)")
    parent = ("import os, subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())]); "
              "print(p.pid, flush=True); time.sleep(120)")
    proc = _start(["-c", parent], tmp_path)
    tree_reaper.append(psutil.Process(proc.pid))
    worker = psutil.Process(int(_wait_for("the child's pid", lambda: _stdout(proc).strip(), proc)))
    tree_reaper.append(worker)
    time.sleep(1.0)  # let it reach the sleep
    assert _alive([worker]) == [worker]
    proc.kill()
    proc.wait(timeout=WAIT)
    assert _wait_gone([worker], 10) == []


def test_raise_on_signals_restores_handlers_and_ignores_repeats():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        with raise_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises in the main thread at once
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a repeat during the clean-up
                time.sleep(0.05)
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert str(info.value) == "interrupted by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


class _SignalledInDel:
    """Receives SIGTERM while Python runs its ``__del__``, which swallows exceptions."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # the handler runs here, inside __del__
            pass


def test_a_signal_swallowed_by_del_is_delivered_again():
    t0 = time.monotonic()
    with pytest.raises(Interrupted):
        with raise_on_signals():
            _SignalledInDel()  # collected at once
            time.sleep(10)
    assert time.monotonic() - t0 < 5


# ---- the real stages ---------------------------------------------------------------------------

def _loaded_mediapipe(p: psutil.Process) -> bool:
    try:
        return any("_framework_bindings" in m.path for m in p.memory_maps())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@pytest.mark.shared
def test_keypoints_stage_sigterm_mid_extraction(shared_media, tmp_path, tree_reaper):
    """`stages/keypoints.py`, MediaPipe in 2 workers on real clips: SIGTERM while both are
    extracting ends everything within seconds, with the stage's one-line message."""
    makeup, ntu = shared_media / "makeup-upper-body.avi", shared_media / "ntu-drink-water.avi"
    rows = ["clip_id,video,start_frame,end_frame"] + [
        f"m{i},{makeup},{i},164" for i in range(3)] + [f"n{i},{ntu},{i},103" for i in range(3)]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "params.yaml").write_text(
        "keypoints:\n  backend: mediapipe\n  model_complexity: 1\nruntime:\n  keypoint_workers: 2\n")
    out = tmp_path / "kp" / "keypoints.h5"
    proc = _start(["stages/keypoints.py", "--params", str(tmp_path / "params.yaml"),
                   "--manifest", str(tmp_path / "manifest.csv"), "--out", str(out)], tmp_path)
    tree_reaper.append(psutil.Process(proc.pid))

    def busy_workers():
        workers = [p for p in _descendants(proc) if "spawn_main" in " ".join(p.cmdline())]
        return len(workers) == 2 and all(map(_loaded_mediapipe, workers))

    _wait_for("both workers to run MediaPipe", busy_workers, proc)
    time.sleep(1.0)  # into the clips (each takes several seconds)
    tree = _descendants(proc)
    tree_reaper.extend(tree)
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc)
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("keypoints: interrupted by SIGTERM; ") and last.endswith(
        f"finished clips kept in {work_path(out)}, rerun to resume"), err
    assert _wait_gone(tree, 10) == []
    assert not out.exists() and work_path(out).exists()


def _write_video(path: Path, frames: int = 60, size=(320, 240)) -> None:
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (size[1], size[0], 3), np.uint8))
    w.release()


def test_crop_stage_sigterm_ends_its_pool(tmp_path, tree_reaper):
    """`stages/crop.py` with 2 (forked) workers: SIGTERM mid-run ends them, leaves no output
    and no temporary file."""
    video = tmp_path / "v.avi"
    _write_video(video)
    rows = ["clip_id,video,start_frame,frames,width,height"] + [
        f"c{i:03d},{video},0,60,320,240" for i in range(400)]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    h5py.File(tmp_path / "kp.h5", "w").close()  # no keypoints: whole-frame crops
    (tmp_path / "params.yaml").write_text("rgb:\n  frames: 8\n  size: 48\nruntime:\n  crop_workers: 2\n")
    out = tmp_path / "out" / "rgb.h5"
    proc = _start(["stages/crop.py", "--params", str(tmp_path / "params.yaml"),
                   "--manifest", str(tmp_path / "manifest.csv"),
                   "--keypoints", str(tmp_path / "kp.h5"), "--out", str(out)], tmp_path)
    tree_reaper.append(psutil.Process(proc.pid))
    _wait_for("2 crop workers", lambda: len(_descendants(proc)) >= 2, proc)
    _wait_for("crops under way", lambda: any((tmp_path / "out").glob(".rgb.h5.*")), proc)
    time.sleep(1.0)
    tree = _descendants(proc)
    tree_reaper.extend(tree)
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc)
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    assert f"crop: interrupted by SIGTERM; {out} not written, rerun to start over" in err
    assert _wait_gone(tree, 10) == []
    assert list((tmp_path / "out").iterdir()) == []


def test_sigterm_ends_a_training_stage_cleanly(tmp_path):
    """Every stage script runs under run_interruptible: SIGTERM mid-training exits with 143
    and one line, and leaves no temporary checkpoint behind (the default action would kill
    the process between the temporary file and its rename)."""
    import pandas as pd
    import yaml

    from test_train import toy_joints

    arrays, labels = toy_joints(n_per_class=8)
    ids = list(arrays)
    with h5py.File(tmp_path / "kp.h5", "w") as f:
        for cid in ids:
            f.create_group(cid).create_dataset("kp", data=arrays[cid])
    split = ["val" if i % 4 == 0 else "test" if i % 4 == 1 else "train" for i in range(len(ids))]
    pd.DataFrame({"clip_id": ids, "subject": ids, "split": split,
                  "label": [("abc"[y] if s != "test" else "") for y, s in zip(labels, split)]}
                 ).to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"branches": {"stcnn": {
        "input": str(tmp_path / "kp.h5"), "epochs": 100000, "batch_size": 4,
        "model": {"channels": [8], "strides": [1]}}}}))
    out = tmp_path / "models"
    p = subprocess.Popen([sys.executable, "stages/train.py", "--branch", "stcnn", "--params",
                          str(tmp_path / "params.yaml"), "--interim", str(tmp_path), "--out",
                          str(out), "--metrics", str(tmp_path / "m.json")],
                         cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    work = tmp_path / ".models.work"  # where it trains until it finishes
    deadline = time.monotonic() + WAIT
    while not (work / "last.pt").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)
    assert (work / "last.pt").exists(), p.communicate()
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=WAIT)
    assert p.returncode == 143, err
    assert "train@stcnn: interrupted by SIGTERM; its logits.npz is not written" in err
    assert "Traceback" not in err
    assert sorted(x.name for x in work.iterdir()) in (["best.pt", "last.pt"], ["last.pt"])
    assert not out.exists()  # the output appears only when the run finishes


STAGE_UNDER_DVC = textwrap.dedent("""
    import sys, time
    from mgpipe.signals import run_interruptible

    def work():
        print("ready", flush=True)
        time.sleep(600)
        return 0

    sys.exit(run_interruptible("toy", work, "kept what it had"))
""")

PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    env = dict(os.environ)
    if sys.argv[2] == "dvc":
        env["DVC_STAGE"] = "toy"  # what DVC sets for every stage command
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env,
                             stdout=open(sys.argv[3], "w"), stderr=open(sys.argv[4], "w"))
    print(child.pid, flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("under", ["dvc", "shell"])
def test_a_stage_ends_when_dvc_dies(tmp_path, tree_reaper, under):
    """`kill <dvc pid>` (or DVC killed for memory) must not leave the stage running under
    pid 1, racing the rerun for its work folder: under DVC (DVC_STAGE set) the stage gets
    SIGTERM and ends cleanly. Started from a shell, it outlives the shell (nohup)."""
    out, err = tmp_path / "child.out", tmp_path / "child.err"
    parent = _start(["-c", PARENT, STAGE_UNDER_DVC, under, str(out), str(err)], tmp_path)
    tree_reaper.append(psutil.Process(parent.pid))
    pid = int(_wait_for("the child's pid", lambda: _stdout(parent).strip(), parent))
    child = psutil.Process(pid)
    tree_reaper.append(child)
    _wait_for("the stage to start", lambda: "ready" in out.read_text(), parent)
    parent.kill()
    parent.wait(timeout=WAIT)
    if under == "dvc":
        assert not _wait_gone([child], WAIT), "the stage outlived DVC"
        assert "toy: interrupted by SIGTERM; kept what it had" in err.read_text()
    else:
        time.sleep(1.0)
        assert _alive([child]), "a stage started by hand died with its shell"
