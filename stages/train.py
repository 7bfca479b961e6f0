"""train@<branch>: train one branch on its modality, keep the best checkpoint on the
validation subjects, write val/test logits and metrics.

Reads params `train`, `loss` and `branches.<branch>` (what is trained) and `runtime` (how
fast: launcher, device, loader workers; no stage depends on it). With
`runtime.launcher: "torchrun --standalone --nproc_per_node 8"` the stage re-runs itself
under that launcher (DDP on 8 GPUs; rank 0 writes). The run trains in a hidden folder
beside its output (`models/train/.<branch>.work`) and moves it into place when it finishes:
DVC deletes a stage's outputs before running it, the work folder survives, so a killed run
resumes from its last.pt when rerun with the same params, data and code, and the output stays
an ordinary one that DVC's run cache can restore (`dvc exp run` of a setting that only
changes cmpl or fuse does not retrain). CMPL rounds call this script with `--pseudo`
(pseudo-labelled test clips join the training set), and with `--init/--epochs/--lr-scale`
to fine-tune the previous round's model.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mgpipe.io import read_manifest, write_json_atomic
from mgpipe.metrics import chance_macro_f1
from mgpipe.params import load_params
from mgpipe.provenance import code_fingerprint, stage_code
from mgpipe.signals import run_interruptible
from mgpipe.train import bound_heap, branch_config, branch_data, train_branch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--branch", required=True, help="stcnn | posec3d | r2plus1d | swin3d")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--interim", default="data/interim", help="manifest and classes folder")
    ap.add_argument("--out", default=None, help="default: models/train/<branch>")
    ap.add_argument("--metrics", default=None, help="default: metrics/train/<branch>.json")
    ap.add_argument("--pseudo", default=None,
                    help="CSV of pseudo-labelled test clips (clip_id, label) to train on too (CMPL)")
    ap.add_argument("--init", default=None,
                    help="checkpoint (best.pt of this branch) to start from instead of scratch")
    ap.add_argument("--epochs", type=int, default=None, help="override the branch's epochs")
    ap.add_argument("--lr-scale", type=float, default=None, help="multiply the branch's lr")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    if args.branch not in params.get("branches", {}):
        ap.error(f"branch {args.branch!r} is not in params.yaml's branches block")
    problem = no_video_problem(params["branches"][args.branch]["input"])
    if problem:
        print(f"train@{args.branch}: error: {problem}", file=sys.stderr)
        return 2
    env = kernel_env(params["train"])
    if any(os.environ.get(k) != v for k, v in env.items()):  # torch reads them at import
        script = str(Path(__file__).resolve())
        os.execve(sys.executable, [sys.executable, script, *(sys.argv[1:] if argv is None else argv)],
                  {**os.environ, **env})
    launcher = launch_command(params["runtime"]["launcher"])
    if launcher and not os.environ.get("MGPIPE_LAUNCHED"):  # re-run under the launcher
        cmd = launcher + [str(Path(__file__).resolve())] + list(sys.argv[1:] if argv is None else argv)
        print(f"train@{args.branch}: {shlex.join(cmd)}", flush=True)
        try:
            os.execvpe(cmd[0], cmd, {**os.environ, "MGPIPE_LAUNCHED": "1"})
        except OSError as e:
            ap.error(f"runtime.launcher: cannot run {cmd[0]!r} ({e.strerror}); install it or "
                     f"set runtime.launcher to python")
    return run_interruptible(f"train@{args.branch}", lambda: train(args, params),
                             "its logits.npz is not written; rerun to resume from its last.pt "
                             "(in the hidden .<branch>.work folder beside the output)")


def work_dir(out: Path) -> Path:
    """Where a run of output ``out`` trains until it finishes: ``<parent>/.<name>.work``
    (ignored by git and DVC)."""
    return out.parent / f".{out.name}.work"


def move_into_place(work: Path, out: Path) -> None:
    """The finished ``work`` folder becomes ``out`` (replacing an old one) by renames."""
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old)
    else:
        os.replace(work, out)


def kernel_env(train: dict) -> dict[str, str]:
    """Environment that makes CPU training compute the same bits on any machine (with the
    same torch build): ``train.cpu_threads`` threads (0: leave torch's default, one per core)
    and, with ``train.portable_kernels`` on x86, ATen and oneDNN held to AVX2 kernels and MKL
    to its vendor-independent code path. bench/determinism.py measures each factor."""
    env = {}
    threads = int(train.get("cpu_threads", 1))
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if train.get("portable_kernels", True) and platform.machine().lower() in ("x86_64", "amd64"):
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", MKL_CBWR="COMPATIBLE")
    return env


def no_video_problem(input_path: str | Path) -> str:
    """Why a branch cannot train on ``input_path`` at all: it is the empty rgb.h5 the crop
    stage writes for a dataset without video (attribute has_rgb false); "" otherwise."""
    import h5py

    path = Path(input_path)
    try:
        with h5py.File(path, "r") as f:
            if bool(f.attrs.get("has_rgb", True)):
                return ""
    except OSError:  # absent or unreadable: branch_data says so
        return ""
    return (f"the dataset has no video ({path} holds no RGB clips), so the RGB branches cannot "
            f"train; remove them: dvc exp run -S '~branches.r2plus1d' -S '~branches.swin3d' "
            f"(or delete them from params.yaml's branches block)")


def launch_command(launcher: str) -> list[str]:
    """``runtime.launcher`` as the argv prefix that runs a stage script; [] when it is a plain
    Python interpreter (the script runs in this process)."""
    words = shlex.split(launcher)
    return [] if Path(words[0]).name.startswith("python") and len(words) == 1 else words


def read_pseudo(path: str | Path, classes: list[str]) -> dict[str, int]:
    """A CMPL round's pseudo_<branch>.csv -> {clip_id: class index}."""
    t = pd.read_csv(path, dtype={"clip_id": str, "label": str}, keep_default_na=False)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(t.label) - set(index))
    if unknown:
        raise ValueError(f"{path}: labels {unknown[:5]} are not in classes.json")
    return {c: index[y] for c, y in zip(t.clip_id, t.label)}


def train(args, params: dict) -> int:
    started = time.time()
    out = Path(args.out or f"models/train/{args.branch}")
    metrics_path = Path(args.metrics or f"metrics/train/{args.branch}.json")
    manifest = read_manifest(Path(args.interim) / "manifest.csv")
    classes = json.loads((Path(args.interim) / "classes.json").read_text())
    input_path = params["branches"][args.branch]["input"]
    try:
        pseudo = read_pseudo(args.pseudo, classes) if args.pseudo else None
        data = branch_data(args.branch, manifest, classes, input_path, pseudo,
                           render=params["branches"][args.branch].get("render") is not None)
    except (FileNotFoundError, ValueError) as e:
        print(f"train@{args.branch}: error: {e}", file=sys.stderr)
        return 2
    left_out = {s: ids for s, ids in data.missing.items() if ids}
    if left_out:  # skipped by an earlier stage: recorded in its *_skipped.csv
        print(f"train@{args.branch}: left out (not in {input_path}, skipped by an earlier stage; "
              f"see data/interim/*_skipped.csv, data/processed/*_skipped.csv): "
              + "; ".join(f"{len(v)} {s} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                          for s, v in left_out.items()), flush=True)
    cfg = branch_config(params, args.branch)
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    if args.lr_scale is not None:
        cfg["lr"] = cfg["lr"] * args.lr_scale
    if args.init:
        cfg["init"] = str(args.init)
    bound_heap(data.modality)  # RSS that does not creep up batch after batch (see its docstring)
    rank = int(os.environ.get("RANK", 0))
    live = None
    if rank == 0:
        from dvclive import Live

        live = Live(dir=str(metrics_path.with_suffix("")), save_dvc_exp=False, dvcyaml=None,
                    report=None)

    def log_epoch(epoch: int, m: dict) -> None:
        for k in ("loss", "ce", "ose", "lr"):
            live.log_metric(f"train/{k}", m[k])
        for k in ("macro_f1", "micro_f1", "top5"):
            live.log_metric(f"val/{k}", m[k])
        live.next_step()

    import torch

    print(f"train@{args.branch}: {len(data.train_ids)} train, {len(data.val_ids)} val, "
          f"{len(data.test_ids)} test clips, {data.num_classes} classes; CPU: "
          f"{torch.get_num_threads()} thread(s), kernels {os.environ.get('ATEN_CPU_CAPABILITY', 'native')}",
          flush=True)
    script = Path(__file__).resolve()
    code = code_fingerprint(stage_code(script))  # a resumed run has the same code
    if args.init:  # the starting model is part of what a resumed run must match
        code += hashlib.sha1(Path(args.init).read_bytes()).hexdigest()
    work = work_dir(out)
    try:
        best = train_branch(args.branch, data, cfg, work, on_epoch=log_epoch if live else None,
                            tag=code)
    except FloatingPointError as e:
        print(f"train@{args.branch}: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:  # e.g. a weights file that does not fit
        print(f"train@{args.branch}: error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        move_into_place(work, out)
        live.end()
        # DVCLive's own summary holds the last epoch; ours (below) holds the best one.
        (metrics_path.with_suffix("") / "metrics.json").unlink(missing_ok=True)
        # How far above chance: val labels shuffled against the best model's predictions.
        val_logits = np.load(out / "logits.npz")["val_logits"]
        chance = chance_macro_f1(val_logits.argmax(1), np.asarray(data.val_labels))
        val = {k: best[k] for k in ("macro_f1", "micro_f1", "top5")}
        val.update(chance_macro_f1=chance["chance_mean"], chance_p95=chance["chance_p95"],
                   p_value=chance["p_value"])
        write_json_atomic(metrics_path, {"val": val, "best_epoch": best["epoch"],
                                         "clips_left_out": {s: len(v) for s, v in data.missing.items()}})
        print(f"train@{args.branch}: val macro-F1 {val['macro_f1']:.3f} (chance "
              f"{chance['chance_mean']:.3f}, 95th percentile {chance['chance_p95']:.3f}, "
              f"p = {chance['p_value']:.4f})", flush=True)
        if not args.pseudo:  # the time `mgpipe ablate` counts as saved when DVC restores it
            print(f"train@{args.branch}: finished in {time.time() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
