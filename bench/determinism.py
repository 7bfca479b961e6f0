"""Which settings decide whether CPU training reproduces bit for bit, and what pinning costs.

Trains each branch (demo model sizes, small random clips with a learnable class signal) for
a few epochs with ``train_branch`` once per *variant*, each variant in a FRESH subprocess
with its own environment (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_CBWR, OMP/MKL thread
counts are read when torch loads), then compares every variant's ``last.pt`` model tensors
and ``logits.npz`` bitwise with the reference run's (1 thread, nothing pinned) and times its
epochs. The reference runs twice: if those two runs differ, the same-machine guarantee is
broken and the script exits 1.

Variants (all 1 thread unless named otherwise):
  ref, ref_again     nothing pinned (this machine's best ISA), 1 thread
  threads2           2 threads (OMP_NUM_THREADS=MKL_NUM_THREADS=2, torch.set_num_threads(2))
  threads2_again     the same again (are 2-thread runs repeatable?)
  aten_default       ATEN_CPU_CAPABILITY=default: ATen's scalar (non-vectorised) kernels
  onednn_sse41       ONEDNN_MAX_CPU_ISA=SSE41: oneDNN's SSE4.1 kernels
  isa_sse41          both of the above: a stand-in for a machine with another ISA
  mkldnn_off         torch.backends.mkldnn.enabled = False (ATen's own conv kernels)
  mkl_cbwr           MKL_CBWR=COMPATIBLE (MKL's conditional numerical reproducibility)
  pinned_avx2        ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_CBWR=AVX2
                     (the pin that would make an AVX-512 machine compute as this one)
  aten_avx2, onednn_avx2, mkl_cbwr_avx2   the three parts of pinned_avx2 one at a time

    python bench/determinism.py                            # all branches, 6 epochs
    python bench/determinism.py --branches stcnn --epochs 2 --variants ref ref_again threads2
    python bench/determinism.py --probe                    # which oneDNN / MKL calls run

Each 1-thread variant runs as its own process, ``--jobs`` of them at a time; the 2-thread
variants run alone. Timings are wall seconds per epoch (training + validation), the mean of
the epochs after the first, and the process's CPU seconds per epoch (less disturbed by other
work on the machine); the ratios are against ``ref``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

BRANCHES = ("stcnn", "posec3d", "r2plus1d", "swin3d")
# environment keys this script controls: removed from the parent's environment first
CONTROLLED = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR",
              "OMP_NUM_THREADS", "MKL_NUM_THREADS", "ONEDNN_VERBOSE", "DNNL_VERBOSE",
              "MKL_VERBOSE", "MKL_ENABLE_INSTRUCTIONS")
VARIANTS: dict[str, dict] = {
    "ref": dict(threads=1, env={}),
    "ref_again": dict(threads=1, env={}),
    "threads2": dict(threads=2, env={}),
    "threads2_again": dict(threads=2, env={}),
    "aten_default": dict(threads=1, env={"ATEN_CPU_CAPABILITY": "default"}),
    "onednn_sse41": dict(threads=1, env={"ONEDNN_MAX_CPU_ISA": "SSE41"}),
    "isa_sse41": dict(threads=1, env={"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
    "mkldnn_off": dict(threads=1, env={}, mkldnn=False),
    "mkl_cbwr": dict(threads=1, env={"MKL_CBWR": "COMPATIBLE"}),
    "pinned_avx2": dict(threads=1, env={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                        "MKL_CBWR": "AVX2"}),
    # the three parts of pinned_avx2 one at a time
    "aten_avx2": dict(threads=1, env={"ATEN_CPU_CAPABILITY": "avx2"}),
    "onednn_avx2": dict(threads=1, env={"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "mkl_cbwr_avx2": dict(threads=1, env={"MKL_CBWR": "AVX2"}),
}
CLASSES = 4


# ---- data: small clips with a learnable class signal ---------------------------------------

def make_data(branch: str, n: int, seed: int = 0):
    """BranchData of ``n`` clips (CLASSES classes): 2/3 train, 1/3 val; test = half the val
    clips. Shapes as the demo stores them (params.yaml: heatmaps 16 x 32 x 32, rgb 8 x 48 x 48)."""
    from mgpipe.train import BranchData

    rng = np.random.default_rng(seed)
    labels = [i % CLASSES for i in range(n)]
    arrays = {}
    if branch == "stcnn":
        modality = "joints"
        base = rng.uniform(50, 150, (68, 2))
        t = np.arange(40)[:, None]
        for i, c in enumerate(labels):  # which keypoint group oscillates is the class
            kp = np.zeros((40, 68, 3), np.float32)
            kp[..., :2] = base + rng.normal(0, 1.0, (40, 68, 2))
            kp[..., 2] = 1
            group = [range(0, 17), range(17, 26), range(26, 47), range(47, 68)][c]
            kp[:, list(group), 1] += np.sin(t / 3 + rng.uniform(0, 6)) * 15
            arrays[f"c{i:03d}"] = kp
    elif branch == "posec3d":
        modality = "heatmap"
        yy, xx = np.mgrid[:32, :32]
        for i, c in enumerate(labels):  # blobs in the class's block of channels
            v = rng.integers(0, 20, (68, 16, 32, 32), dtype=np.uint8)
            for j in range(c * 17, c * 17 + 17):
                cx, cy = rng.uniform(6, 26, 2)
                v[j] = np.maximum(v[j], (np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 4) * 255)
                                  .astype(np.uint8)[None])
            arrays[f"c{i:03d}"] = v
    else:
        modality = "rgb"
        for i, c in enumerate(labels):  # a bright square moving in the class's quadrant
            v = rng.integers(0, 120, (8, 48, 48, 3), dtype=np.uint8)
            oy, ox = 24 * (c // 2), 24 * (c % 2)
            for f in range(8):
                y, x = oy + 4 + f, ox + 4 + f
                v[f, y:y + 8, x:x + 8] = 255
            arrays[f"c{i:03d}"] = v
    ids = list(arrays)
    tr = [k for k in range(n) if k % 3]
    va = [k for k in range(n) if k % 3 == 0]
    return BranchData(modality, arrays, CLASSES, [ids[k] for k in tr], [labels[k] for k in tr],
                      [ids[k] for k in va], [labels[k] for k in va], [ids[k] for k in va[::2]])


def branch_cfg(branch: str, epochs: int) -> dict:
    """params.yaml's settings of the branch (train, loss, branches.<branch>, demo model
    sizes), for ``epochs`` epochs in batches of 8, on the CPU, deterministic."""
    from mgpipe.models import DEMO_PROFILE
    from mgpipe.params import load_params
    from mgpipe.train import branch_config

    root = Path(__file__).resolve().parents[1]
    try:
        cfg = branch_config(load_params(root / "params.yaml"), branch)
    except Exception:  # params.yaml mid-edit or without the branch: the demo profile
        cfg = {"model": DEMO_PROFILE[branch]}
    cfg.update(epochs=epochs, batch_size=8, warmup_epochs=min(1, cfg.get("warmup_epochs", 1)),
               device="cpu", workers=0, deterministic=True, compile=False, channels_last=False)
    if branch == "posec3d":
        cfg["frames"] = 16
    return cfg


# ---- one variant, in this (fresh) process ---------------------------------------------------

def apply_settings(name: str) -> dict:
    import torch

    v = VARIANTS[name]
    torch.set_num_threads(v["threads"])
    if "mkldnn" in v:
        torch.backends.mkldnn.enabled = v["mkldnn"]
    return {"threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_enabled": torch.backends.mkldnn.enabled,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "env": {k: os.environ[k] for k in CONTROLLED if k in os.environ}}


def run_variant(name: str, out: Path, branches, epochs: int, clips: int) -> None:
    import torch

    from mgpipe.train import bound_heap, train_branch

    info = apply_settings(name)
    info["deterministic_algorithms"] = {}
    info["seconds"] = {}
    out.mkdir(parents=True, exist_ok=True)
    for b in branches:
        data = make_data(b, clips)
        bound_heap(data.modality)  # as stages/train.py
        secs, cpu = [], [time.process_time()]

        def on_epoch(epoch, m):
            secs.append(m["seconds"])
            cpu.append(time.process_time())

        t0 = time.perf_counter()
        train_branch(b, data, branch_cfg(b, epochs), out / b, progress=False, resume=False,
                     on_epoch=on_epoch)
        info["seconds"][b] = {"epochs": secs, "cpu": np.diff(cpu).tolist(),
                              "total": time.perf_counter() - t0}
        info["deterministic_algorithms"][b] = torch.are_deterministic_algorithms_enabled()
    (out / "info.json").write_text(json.dumps(info, indent=1))


def run_probe(branches, clips: int) -> None:
    """One training step per branch (batch of 4) with oneDNN/MKL verbose logging on."""
    import torch

    from mgpipe.data import ClipDataset
    from mgpipe.models import build_model
    from mgpipe.train import _input_channels, DEFAULTS

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as train.deterministic
    for b in branches:
        data = make_data(b, clips)
        cfg = {**DEFAULTS, **branch_cfg(b, 1)}
        ds = ClipDataset(data.modality, data.arrays, data.train_ids, data.train_labels,
                         train=True, frames=cfg["frames"], motion=cfg["motion"])
        x, aug, y, _ = ds.batch([0, 1, 2, 3])
        model = build_model(b, CLASSES, _input_channels(data, cfg), embed_dim=cfg["embed_dim"],
                            **(cfg["model"] or {}))
        print(f"@@PROBE {b}", flush=True)
        logits, _ = model(ds.to_input(x, aug))
        torch.nn.functional.cross_entropy(logits, y).backward()
        print(f"@@END {b}", flush=True)


def probe(branches, clips: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    env.update(ONEDNN_VERBOSE="1", MKL_VERBOSE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    p = subprocess.run([sys.executable, __file__, "--probe-worker", "--branches", *branches,
                        "--clips", str(clips)], env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr)
    current, calls = None, {}
    for line in p.stdout.splitlines():
        if line.startswith("@@PROBE"):
            current = line.split()[1]
            calls[current] = Counter()
        elif line.startswith("@@END"):
            current = None
        elif current and line.startswith("onednn_verbose") and ",exec," in line:
            f = line.split(",")
            i = f.index("exec")
            # ..., exec, cpu, <primitive>, <impl>, <prop kind>, ...
            calls[current][f"oneDNN {f[i + 2]} {f[i + 3]}"] += 1
        elif current and line.startswith("MKL_VERBOSE") and "(" in line:
            fn = re.match(r"MKL_VERBOSE\s+(\w+)", line)
            if fn and fn.group(1) != "oneMKL":
                calls[current][f"MKL {fn.group(1)}"] += 1
    print("library calls of one training step (forward + backward, batch 4, 1 thread):")
    for b, c in calls.items():
        listed = ", ".join(f"{k} x{n}" for k, n in sorted(c.items())) or "none (ATen's own kernels only)"
        print(f"  {b:9s} {listed}")


# ---- comparison ------------------------------------------------------------------------------

def compare(ref: Path, other: Path) -> dict:
    import torch

    a = torch.load(ref / "last.pt", weights_only=True)
    b = torch.load(other / "last.pt", weights_only=True)
    same_w, max_w, rel_w = True, 0.0, 0.0
    for k, t in a["model"].items():
        u = b["model"][k]
        if not torch.equal(t, u):
            same_w = False
        if t.dtype.is_floating_point:
            d = (t.double() - u.double()).abs()
            max_w = max(max_w, float(d.max()) if d.numel() else 0.0)
            rel_w = max(rel_w, float(d.norm() / (t.double().norm() + 1e-12)))
    la, lb = np.load(ref / "logits.npz"), np.load(other / "logits.npz")
    same_l, max_l = True, 0.0
    for k in ("val_logits", "test_logits"):
        same_l &= la[k].tobytes() == lb[k].tobytes()
        max_l = max(max_l, float(np.abs(la[k].astype(np.float64) - lb[k]).max()))
    ha, hb = a["history"], b["history"]
    first_loss = next((e + 1 for e, (x, y) in enumerate(zip(ha, hb)) if x["loss"] != y["loss"]), None)
    first_f1 = next((e + 1 for e, (x, y) in enumerate(zip(ha, hb)) if x["macro_f1"] != y["macro_f1"]), None)
    return dict(identical=same_w and same_l, weights_identical=same_w, logits_identical=same_l,
                max_logit_diff=max_l, max_weight_diff=max_w, max_rel_weight_diff=rel_w,
                first_epoch_loss_differs=first_loss, first_epoch_f1_differs=first_f1,
                f1=(ha[-1]["macro_f1"], hb[-1]["macro_f1"]))


def per_epoch(info: dict, branch: str, key: str = "epochs") -> float:
    """Mean seconds of the epochs after the first (wall: "epochs"; process CPU: "cpu")."""
    s = info["seconds"][branch][key]
    return float(np.mean(s[1:] if len(s) > 1 else s))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--branches", nargs="+", default=list(BRANCHES), choices=BRANCHES)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--clips", type=int, default=48, help="clips per branch (2/3 train)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="ref and ref_again are always run")
    ap.add_argument("--jobs", type=int, default=2, help="1-thread variants run at a time")
    ap.add_argument("--keep", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--probe", action="store_true",
                    help="only list the oneDNN / MKL calls one training step of each branch makes")
    ap.add_argument("--variant", help=argparse.SUPPRESS)       # worker: one variant
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--probe-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.variant:
        run_variant(args.variant, Path(args.out), args.branches, args.epochs, args.clips)
        return 0
    if args.probe_worker:
        run_probe(args.branches, args.clips)
        return 0
    if args.probe:
        probe(args.branches, args.clips)
        return 0

    names = ["ref", "ref_again"] + [v for v in args.variants if v not in ("ref", "ref_again")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="determinism-"))
    base_env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}

    def start(name):
        v = VARIANTS[name]
        env = {**base_env, **v["env"], "OMP_NUM_THREADS": str(v["threads"]),
               "MKL_NUM_THREADS": str(v["threads"])}
        out = root / name
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, __file__, "--variant", name, "--out", str(out), "--epochs",
               str(args.epochs), "--clips", str(args.clips), "--branches", *args.branches]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def wait(name, p):
        text, _ = p.communicate()
        if p.returncode:
            sys.exit(f"variant {name} failed ({p.returncode}):\n{text[-3000:]}")
        print(f"  {name} done", flush=True)

    t0 = time.perf_counter()
    print(f"runs in {root}; {len(names)} variants x {args.branches}, {args.epochs} epochs, "
          f"{args.clips} clips", flush=True)
    single = [n for n in names if VARIANTS[n]["threads"] == 1]
    multi = [n for n in names if VARIANTS[n]["threads"] > 1]
    for i in range(0, len(single), max(1, args.jobs)):  # pairs of 1-thread processes
        group = [(n, start(n)) for n in single[i:i + max(1, args.jobs)]]
        for n, p in group:
            wait(n, p)
    for n in multi:  # a multi-thread run alone on the machine
        wait(n, start(n))

    infos = {n: json.loads((root / n / "info.json").read_text()) for n in names}
    r = infos["ref"]
    print(f"\ntorch threads/ISA of ref: {r['threads']} thread(s), ATen {r['cpu_capability']}, "
          f"mkldnn {r['mkldnn_enabled']}, float32 matmul precision "
          f"{r['float32_matmul_precision']!r}, deterministic algorithms "
          f"{all(r['deterministic_algorithms'].values())}")
    print(f"{'variant':15s} {'ATen ISA':8s} {'branch':9s} {'identical':9s} {'max|dlogit|':>11s} "
          f"{'max|dW|/|W|':>11s} {'parts@ep':>8s} {'F1 ref->var':>13s} {'s/epoch':>8s} {'ratio':>6s} "
          f"{'cpu s/ep':>8s} {'cpu ratio':>9s}")
    results, broken = [], False
    for n in names:
        for b in args.branches:
            c = compare(root / "ref" / b, root / n / b)
            s, sr = per_epoch(infos[n], b), per_epoch(r, b)
            u, ur = per_epoch(infos[n], b, "cpu"), per_epoch(r, b, "cpu")
            row = dict(variant=n, branch=b, cpu_capability=infos[n]["cpu_capability"],
                       threads=infos[n]["threads"], seconds_per_epoch=s, ratio=s / sr,
                       cpu_seconds_per_epoch=u, cpu_ratio=u / ur, **c)
            results.append(row)
            if n == "ref_again" and not c["identical"]:
                broken = True
            parts = f"{c['first_epoch_loss_differs']}/{c['first_epoch_f1_differs']}" \
                if not c["identical"] else "-"
            print(f"{n:15s} {row['cpu_capability']:8s} {b:9s} {'yes' if c['identical'] else 'NO':9s} "
                  f"{c['max_logit_diff']:11.3g} {c['max_rel_weight_diff']:11.3g} {parts:>8s} "
                  f"{c['f1'][0]:6.3f}->{c['f1'][1]:.3f} {s:8.2f} {s / sr:6.2f} {u:8.2f} {u / ur:9.2f}")
    print("parts@ep: first epoch whose training loss / validation macro-F1 differs from ref's "
          f"(1-based, None: never); s/epoch: wall seconds, mean of epochs 2..{args.epochs}; "
          "cpu s/ep: the process's CPU seconds (steadier than wall time on a shared machine, "
          "but a 2-thread run counts both threads' time); "
          f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    if broken:
        print("FAIL: the reference run twice is not bit-identical (same machine, same threads)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
