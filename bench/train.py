"""Training throughput per branch: the real loader vs tensors already in memory.

For each branch, clips/s of training steps fed (a) by the DataLoader over ClipDataset (the
stored arrays, moved to the device and augmented there per batch, as train_branch runs it)
and (b) by the same batches already augmented on the device (the model alone), in one run;
prints the loader's cost as a ratio (goal: the loader costs < 10%), and how much of it is
the augmentation itself (stored batches already on the device, augmented in the step). On a GPU it also compares fp32 / bf16 autocast /
channels-last / torch.compile, and reports peak memory per branch.

    python bench/train.py                      # demo scale, CPU
    python bench/train.py --scale paper        # paper-scale shapes (run on a GPU)
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from mgpipe.data import ClipDataset
from mgpipe.losses import total_loss
from mgpipe.models import build_model
from mgpipe.train import prefetch_to_device

# (modality, stored array shape per clip, model size params) per branch and scale
SHAPES = {
    "demo": {
        "stcnn": ("joints", (40, 68, 3), dict(channels=(32, 64, 64), strides=(1, 2, 1)), dict(frames=32)),
        "posec3d": ("heatmap", (68, 16, 32, 32), dict(base_channels=8, stage_blocks=(1, 1, 1), stem_stride=2), {}),
        "r2plus1d": ("rgb", (8, 48, 48, 3), dict(widths=(16, 32, 64, 128), layers=(1, 1, 1, 1)), {}),
        "swin3d": ("rgb", (8, 48, 48, 3), dict(hidden_dim=24, depths=(1, 1, 1), num_heads=(1, 2, 4),
                                               window_size=(4, 3, 3), patch_size=(2, 8, 8)), {}),
    },
    "paper": {
        "stcnn": ("joints", (120, 68, 3), {}, dict(frames=48)),
        "posec3d": ("heatmap", (68, 48, 56, 56), {}, {}),
        "r2plus1d": ("rgb", (16, 112, 112, 3), {}, {}),
        "swin3d": ("rgb", (32, 224, 224, 3), {}, {}),
    },
}


def fake_arrays(modality: str, shape, n: int, rng) -> dict[str, np.ndarray]:
    """Arrays with the stored dtype and shape (joints in pixels, others uint8)."""
    if modality == "joints":
        a = rng.uniform(20, 300, (n, *shape)).astype(np.float32)
        a[..., 2] = rng.uniform(0.3, 1, (n, *shape[:-1]))
        return {f"c{i}": a[i] for i in range(n)}
    return {f"c{i}": rng.integers(0, 255, shape, dtype=np.uint8) for i in range(n)}


def step_fn(model, opt, device, amp, channels_last, to_input=None):
    """One training step on a batch (x, y); with ``to_input``, x is a loader batch
    (stored arrays, augmentation) that is moved and augmented on ``device`` first."""
    def step(x, y):
        if to_input is not None:
            x = to_input(x[0].to(device, non_blocking=True), x[1])  # augmentation stays on the host
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, emb = model(x)
        loss = total_loss(logits, emb, y, None, None, 0.0).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def timed(fn, batches, device, warmup: int = 2) -> float:
    """clips/s of ``fn`` over an iterable of (x, y) batches; the first ``warmup`` batches
    (allocation, torch.compile) are not timed. Fetching each batch is timed."""
    it = iter(batches)
    for _ in range(warmup):
        fn(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for x, y in it:
        fn(x, y)
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["demo", "paper"], default="demo")
    ap.add_argument("--branches", default="stcnn,posec3d,r2plus1d,swin3d")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each; medians are shown")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (GPU; slow to start)")
    ap.add_argument("--only", default=None,
                    help="comma-separated variants to run, e.g. bf16+cl+compile (default: all)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f", {torch.get_num_threads()} threads"))
    print(f"{'branch':9} {'variant':22} {'clips/s':>9} {'x model-only':>13} {'peak MiB':>9}")
    for branch in args.branches.split(","):
        modality, shape, size, extra = SHAPES[args.scale][branch]
        n = args.batch * (args.steps + 2)
        arrays = fake_arrays(modality, shape, n, rng)
        ids = list(arrays)
        ds = ClipDataset(modality, arrays, ids, rng.integers(0, 12, n), train=True,
                         frames=extra.get("frames", 32), motion=True)
        in_ch = 5 if modality == "joints" else (shape[0] if modality == "heatmap" else None)
        variants = [("fp32", False, False, False)]
        if device.type == "cuda":
            variants += [("bf16", True, False, False), ("bf16+channels-last", True, True, False)]
            if args.compile:
                variants.append(("bf16+cl+compile", True, True, True))
        for name, amp, cl, comp in variants:
            if (cl and modality == "joints" and not comp) or (args.only and name not in args.only.split(",")):
                continue
            cl = cl and modality != "joints"  # joints are [N, C, T, V]: no channels-last
            torch.manual_seed(0)
            model = build_model(branch, 12, in_ch, embed_dim=64, **size).to(device)
            if cl:
                model = model.to(memory_format=torch.channels_last_3d)
            net = torch.compile(model) if comp else model
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            step = step_fn(net, opt, device, amp, cl)
            loader_step = step_fn(net, opt, device, amp, cl, ds.to_input)
            loader = DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True,
                                num_workers=args.workers, pin_memory=device.type == "cuda",
                                persistent_workers=args.workers > 0)
            # model only: the augmented batches, made once and kept on the device
            real = [(ds.to_input(x.to(device), aug), y.to(device))
                    for x, aug, y, _ in loader]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            # stored batches already on the device: the step augments them (no loading)
            stored = [((x.to(device), aug), y.to(device)) for x, aug, y, _ in loader]
            # alternate the three and keep the medians: short runs on a shared machine are noisy
            runs = np.array([(timed(step, real, device),
                              timed(loader_step, stored, device),
                              timed(loader_step, (((x, aug), y) for x, aug, y, _
                                                  in prefetch_to_device(loader, device, host=(1,))),
                                    device))
                             for _ in range(args.repeats)])
            model_only, with_aug, with_loader = np.median(runs, axis=0)
            peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            print(f"{branch:9} {name + ' model only':22} {model_only:9.1f} {1.0:13.2f} {peak:9.0f}")
            print(f"{branch:9} {name + ' augment only':22} {with_aug:9.1f} "
                  f"{with_aug / model_only:13.2f}")
            print(f"{branch:9} {name + ' real loader':22} {with_loader:9.1f} "
                  f"{with_loader / model_only:13.2f}   loader cost {100 * (1 - with_loader / model_only):.0f}%"
                  f" (augmentation {100 * (1 - with_aug / model_only):.0f}%)")


if __name__ == "__main__":
    main()
