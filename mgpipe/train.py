"""Training one branch: a plain loop in the manner of torchvision's video reference.

:func:`train_branch` serves the ``train@<branch>`` stages and every CMPL round (which passes
pseudo-labelled test clips as extra training data): set-up, then per epoch
:func:`train_one_epoch`, :func:`evaluate` and :func:`save_checkpoint`. Single process, or
data parallel under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU; every collective goes
through :mod:`mgpipe.distributed`, which checks its tensor is on the training device).
Checkpoints are plain dicts that load with ``torch.load(..., weights_only=True)``;
``last.pt`` also holds the optimizer, scheduler and RNG states, so a killed run resumes
where it stopped and ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from mgpipe import distributed, layout

from mgpipe.data import ClipBatches, ClipDataset
from mgpipe.io import atomic_path, save_torch_atomic
from mgpipe.losses import class_weights, orthonormal_anchors, total_loss
from mgpipe.metrics import classification_metrics
from mgpipe.models import build_model

# Keys of a train_branch config that change speed, not results (params.yaml's runtime
# block): left out of the resume signature.
RUNTIME_KEYS = ("workers", "device", "compile", "channels_last", "eval_batch_size")
DEFAULTS = dict(epochs=10, batch_size=16, lr=1e-3, weight_decay=1e-4, optimizer="adamw",
                momentum=0.9, warmup_epochs=1, seed=0, workers=0, amp=True, compile=False,
                channels_last=False, deterministic=True, sync_bn=True, class_weight="sqrt", ose_weight=0.1,
                embed_dim=64, dropout=0.5, frames=32, motion=True,
                model={}, weights=None, eval_batch_size=32, device="auto",
                augment=None, render=None, test_flip=False, init=None, cpu_threads=0,
                portable_kernels=False)


@dataclass
class BranchData:
    """Everything one branch trains and predicts on. Labels are class indices; test clips
    carry no label (the hidden test labels never reach training)."""
    modality: str
    arrays: Mapping[str, np.ndarray]  # a dict, or mgpipe.data.H5Clips (read per clip)
    num_classes: int
    train_ids: list[str]
    train_labels: list[int]
    val_ids: list[str]
    val_labels: list[int]
    test_ids: list[str] = field(default_factory=list)
    heatmap_mode: str = "joint"   # heatmap channels: joints or limbs (decides the flip)
    missing: dict[str, list[str]] = field(default_factory=dict)  # split -> clips skipped earlier


class GlobalBatchSampler:
    """Shuffled batches of ``batch_size`` clips over all processes; process ``rank`` of
    ``world`` takes every ``world``-th clip of each global batch. The global batches are the
    same for any ``world``, so data-parallel training sees what one process would."""

    def __init__(self, n: int, batch_size: int, seed: int, world: int = 1, rank: int = 0):
        self.n, self.batch_size, self.seed, self.world, self.rank = n, batch_size, seed, world, rank
        self.epoch = 0
        self.drop_last = n >= 2 * batch_size  # a last batch of 1 clip upsets BatchNorm

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for b in range(len(self)):
            batch = perm[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.rank::self.world].tolist()


class _AllReduceBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics span every process (a SyncBatchNorm that also runs
    on CPU with gloo, where torch's own is not supported). The all-reduce is differentiable,
    so gradients match one process seeing the whole batch."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        n = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = distributed.all_reduce_autograd(torch.cat([x.sum(dims), (x * x).sum(dims), n]))
        c = x.shape[1]
        total = stats[-1]
        mean, var = stats[:c] / total, stats[c:2 * c] / total - (stats[:c] / total) ** 2
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var * total / (total - 1))
            self.num_batches_tracked += 1
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """BatchNorm layers that share batch statistics across processes: torch's SyncBatchNorm
    on GPU, our all-reduce BatchNorm on CPU."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and child.momentum is not None:
            bn = _AllReduceBatchNorm(child.num_features, child.eps, child.momentum,
                                     child.affine, child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            setattr(model, name, bn)
        else:
            sync_batchnorm(child, device)
    return model


def bound_heap(modality: str) -> bool:
    """Serve allocations from mmap, returned to the OS when freed, above a fixed threshold
    that suits ``modality``'s training. glibc otherwise raises its mmap threshold after the
    first large free and serves big buffers from a heap that fragments: a training process's
    RSS then grows with every batch (bench/scale.py, CPU, 500 -> 2000 clips: PoseC3D 1.44x
    without this, 1.45x at 32 MiB, 1.01x at 1 MiB).
    Heatmaps and RGB: 1 MiB (every batch-sized buffer). Joints: 32 MiB, because ST-CNN's CPU
    activations (2-9 MB, the same sizes every step, RSS 1.08x at 32 MiB) would otherwise be
    mmapped and page-faulted afresh each step, which doubled its CPU epoch (UTD-MHAD: 11.2 s
    at 1 MiB, 5.9 s at 32 MiB, 5.2 s without; PoseC3D pays 10.9 s against 7.4 s, for flat
    memory). Process-wide; call it once in the process that trains. False off glibc."""
    threshold = (32 << 20) if modality == "joints" else (1 << 20)
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _device(cfg: dict, local_rank: int) -> torch.device:
    if cfg["device"] == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def prefetch_to_device(batches, device: torch.device, host: tuple[int, ...] = ()):
    """Yield each batch (a tuple; its tensors moved to ``device``, except those at the
    positions in ``host``) while the next one is already being copied on a side CUDA
    stream, so host-to-device copies overlap the training step. On CPU the tensors are
    the batch's own (``.to`` of a tensor already there returns it)."""
    if device.type != "cuda":
        for batch in batches:
            yield tuple(t.to(device) if torch.is_tensor(t) and i not in host else t
                        for i, t in enumerate(batch))
        return
    stream = torch.cuda.Stream(device)

    def move(batch):
        with torch.cuda.stream(stream):
            return tuple(t.to(device, non_blocking=True)
                         if torch.is_tensor(t) and i not in host else t
                         for i, t in enumerate(batch))

    it = iter(batches)
    ahead = next(it, None)
    ahead = move(ahead) if ahead is not None else None
    while ahead is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
        batch = ahead
        for t in batch:  # memory made on the side stream is used on the main one
            if torch.is_tensor(t) and t.is_cuda:
                t.record_stream(torch.cuda.current_stream(device))
        ahead = next(it, None)
        ahead = move(ahead) if ahead is not None else None
        yield batch


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: ClipDataset, device: torch.device,
            batch_size: int = 32, amp: bool = False, channels_last: bool = False,
            test_flip: bool = False) -> np.ndarray:
    """Logits [N, C] (float32) for every clip of ``dataset``, in its order; with
    ``test_flip`` the mean of the logits of each clip and its mirror image (left and right
    swapped), test-time augmentation."""
    model.eval()
    out = []
    batches = [list(range(i, min(i + batch_size, len(dataset))))
               for i in range(0, len(dataset), batch_size)]
    loader = DataLoader(ClipBatches(dataset), batch_size=None, sampler=batches)
    for x, aug, _, _ in prefetch_to_device(loader, device, host=(1,)):  # aug stays on the CPU
        views = [aug]
        if test_flip:
            flipped = aug.clone()
            flipped[:, 0] = 1 - flipped[:, 0]
            views.append(flipped)
        logits = 0
        for view in views:
            inp = dataset.to_input(x, view)
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = logits + model(inp)[0].float()
        out.append((logits / len(views)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _input_channels(data: BranchData, cfg: dict) -> int | None:
    if data.modality == "joints":
        return 5 if cfg["motion"] else 3
    if data.modality == "heatmap" and cfg.get("render") is not None:  # drawn per batch
        mode = cfg["render"].get("mode", "joint")
        return layout.NUM_KEYPOINTS if mode == "joint" else len(layout.BONES)
    if data.modality == "heatmap":  # K, from one clip's stored shape (metadata, when a file)
        first = next(iter(data.arrays))
        shape_of = getattr(data.arrays, "shape", None)
        return (shape_of(first) if callable(shape_of) else data.arrays[first].shape)[0]
    return None


@dataclass
class Criterion:
    """The loss of one branch: class weights [C] and OSE anchors [C, D] (None: no OSE) on
    the training device."""
    weights: torch.Tensor
    anchors: torch.Tensor | None
    ose_weight: float


def train_one_epoch(net: torch.nn.Module, loader: DataLoader, dataset: ClipDataset,
                    opt: torch.optim.Optimizer, sched, criterion: Criterion,
                    device: torch.device, amp: bool = False, channels_last: bool = False
                    ) -> torch.Tensor:
    """One pass over ``loader``; returns the summed (total, ce, ose) loss [3] float64 of
    this process's share of each global batch, on ``device`` (no host sync per step)."""
    net.train()
    world = distributed.world_info()[0]
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, aug, y, _ in prefetch_to_device(loader, device, host=(1,)):  # aug: see model_input
        x = dataset.to_input(x, aug)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        # Global-batch denominators, so DDP's gradient average equals one process's.
        denom = torch.stack([criterion.weights[y].sum(),
                             torch.full((), float(len(y)), device=device)])
        distributed.all_reduce(denom, device, "loss denominators")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, emb = net(x)
        loss = total_loss(logits, emb, y, criterion.weights, criterion.anchors,
                          criterion.ose_weight, denom[0] / world, denom[1] / world)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
        sched.step()
        sums += torch.stack([loss.total.detach(), loss.ce.detach(), loss.ose.detach()]).double()
    return sums


def evaluate(model: torch.nn.Module, dataset: ClipDataset, labels: Sequence[int],
             device: torch.device, batch_size: int = 32, amp: bool = False,
             channels_last: bool = False, test_flip: bool = False) -> tuple[dict, np.ndarray]:
    """Validation metrics (``classification_metrics``) and the logits [N, C] they come from."""
    logits = predict(model, dataset, device, batch_size, amp, channels_last, test_flip)
    return classification_metrics(logits, np.asarray(labels)), logits


def rng_states() -> dict:
    """This process's RNG states (torch, CUDA, numpy, random) as checkpoint-safe types."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      *map(float, np_state[2:])],
            "random": _plain(random.getstate())}


def set_rng_states(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    version, state, gauss = s["random"]
    random.setstate((version, tuple(state), gauss))


def save_checkpoint(path: Path, model, opt, sched, epoch: int, metrics: dict, best: dict,
                    history: list, rng: list, signature: str, extra: dict) -> None:
    """``path`` atomically: everything a run needs to go on after ``epoch`` (0-based)."""
    save_torch_atomic({**extra, "epoch": epoch, "model": model.state_dict(),
                       "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                       "metrics": metrics, "best": best, "history": history, "rng": rng,
                       "signature": signature}, path)


def load_checkpoint(path: Path, signature: str, device: torch.device) -> dict | None:
    """``last.pt`` if it belongs to this run (same signature), else None (start afresh)."""
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated file from a kill during an old-style save
        print(f"{path}: not resumable ({type(e).__name__}: {e}); training from the start")
        return None
    return ckpt if ckpt.get("signature") == signature and "scheduler" in ckpt else None


def run_signature(branch: str, data: BranchData, cfg: dict, tag: str = "") -> str:
    """What a checkpoint must match to be resumed: the branch, every config key that changes
    results, the clips and labels, and ``tag`` (e.g. the code's fingerprint)."""
    blob = json.dumps({"branch": branch, "tag": tag, "modality": data.modality,
                       "classes": data.num_classes,
                       "cfg": {k: v for k, v in _plain(cfg).items() if k not in RUNTIME_KEYS},
                       "train": [list(data.train_ids), list(map(int, data.train_labels))],
                       "val": [list(data.val_ids), list(map(int, data.val_labels))],
                       "test": list(data.test_ids)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()


def make_optimizer(model: torch.nn.Module, cfg: dict, steps_per_epoch: int):
    """AdamW or SGD (Nesterov) and a per-step schedule: linear warm-up, then cosine to 0."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                              weight_decay=cfg["weight_decay"], nesterov=True)
    elif cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    else:
        raise ValueError(f"optimizer {cfg['optimizer']!r}: use adamw or sgd")
    steps = max(1, steps_per_epoch * cfg["epochs"])
    warmup = min(steps_per_epoch * cfg["warmup_epochs"], steps - 1)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def train_branch(branch: str, data: BranchData, cfg: dict, out_dir: str | Path,
                 on_epoch: Callable[[int, dict], None] | None = None, progress: bool = True,
                 resume: bool = True, tag: str = "") -> dict:
    """Train ``branch`` on ``data`` with ``cfg`` (keys of ``DEFAULTS``); keep the checkpoint
    with the best validation macro-F1.

    Writes into ``out_dir`` (rank 0 only): ``best.pt`` and ``last.pt`` (dicts: model,
    optimizer, scheduler, epoch, metrics, history, RNG states per rank, config),
    ``logits.npz`` (val_ids, val_logits, test_ids, test_logits from the best checkpoint).
    With ``resume``, a ``last.pt`` of the same run (``run_signature`` of branch, config
    less runtime keys, clips, labels and ``tag``) is continued after its epoch.
    ``on_epoch(epoch, metrics)`` is called on rank 0 after each epoch (DVCLive logging;
    replayed for the epochs a resumed run skips). Returns the best epoch's validation metrics.
    """
    cfg = {**DEFAULTS, **cfg}
    out_dir = Path(out_dir)
    world, rank, local_rank = distributed.world_info()
    device = _device(cfg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    distributed.init(device)
    if cfg["cpu_threads"]:  # results depend on it (stages/train.py also pins the kernels)
        torch.set_num_threads(int(cfg["cpu_threads"]))
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    random.seed(cfg["seed"])
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    amp = bool(cfg["amp"]) and device.type == "cuda"
    channels_last = bool(cfg["channels_last"]) and device.type == "cuda" and data.modality != "joints"
    evaluate_on = dict(device=device, batch_size=cfg["eval_batch_size"], amp=amp,
                       channels_last=channels_last, test_flip=bool(cfg["test_flip"]))

    common = dict(frames=cfg["frames"], motion=cfg["motion"], seed=cfg["seed"],
                  heatmap_mode=data.heatmap_mode, augment=cfg["augment"], render=cfg["render"])
    train_set = ClipDataset(data.modality, data.arrays, data.train_ids, data.train_labels,
                            train=True, **common)
    val_set = ClipDataset(data.modality, data.arrays, data.val_ids, data.val_labels, **common)
    test_set = ClipDataset(data.modality, data.arrays, data.test_ids, [-1] * len(data.test_ids),
                           **common)
    sampler = GlobalBatchSampler(len(train_set), cfg["batch_size"], cfg["seed"], world, rank)
    # the sampler yields each global batch's share; ClipBatches reads it as one batch
    loader = DataLoader(ClipBatches(train_set), batch_size=None, sampler=sampler,
                        num_workers=cfg["workers"], pin_memory=device.type == "cuda",
                        persistent_workers=cfg["workers"] > 0)

    model = build_model(branch, data.num_classes, _input_channels(data, cfg),
                        embed_dim=cfg["embed_dim"], dropout=cfg["dropout"],
                        weights_path=cfg["weights"], **(cfg["model"] or {})).to(device)
    if cfg["init"]:  # fine-tuning (CMPL): start from a whole checkpoint of this branch
        model.load_state_dict(torch.load(cfg["init"], map_location="cpu", weights_only=True)["model"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    net = model
    if world > 1:
        if cfg["sync_bn"]:
            model = sync_batchnorm(model, device)
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)
    if cfg["compile"]:
        net = torch.compile(net)

    counts = np.bincount(np.asarray(data.train_labels, np.int64), minlength=data.num_classes)
    criterion = Criterion(class_weights(counts, cfg["class_weight"]).to(device),
                          orthonormal_anchors(data.num_classes, cfg["embed_dim"], cfg["seed"]).to(device)
                          if cfg["ose_weight"] else None, cfg["ose_weight"])
    opt, sched = make_optimizer(model, cfg, len(sampler))

    signature = run_signature(branch, data, cfg, tag)
    start, best, history = 0, {}, []
    last = load_checkpoint(out_dir / "last.pt", signature, device) if resume else None
    if last is not None:
        model.load_state_dict(last["model"])
        opt.load_state_dict(last["optimizer"])
        sched.load_state_dict(last["scheduler"])
        set_rng_states(last["rng"][rank] if len(last["rng"]) == world else last["rng"][0])
        start, best, history = last["epoch"] + 1, last["best"], last["history"]
        if rank == 0:
            print(f"{branch}: resuming after epoch {start}/{cfg['epochs']} from {out_dir / 'last.pt'}",
                  flush=True)
            for epoch, m in enumerate(history):
                if on_epoch:
                    on_epoch(epoch, m)
    extra = {"branch": branch, "config": _plain(cfg), "num_classes": data.num_classes,
             "modality": data.modality}
    for epoch in range(start, cfg["epochs"]):
        t0 = time.time()
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        sums = train_one_epoch(net, loader, train_set, opt, sched, criterion, device, amp,
                               channels_last)
        distributed.all_reduce(sums, device, "epoch loss")  # each process: its share
        sums = sums.cpu()
        if not torch.isfinite(sums).all():
            raise FloatingPointError(
                f"{branch} epoch {epoch + 1}: training loss is {float(sums[0])} (not finite); "
                f"no checkpoint of this epoch was kept. Look for non-finite values in the "
                f"branch's input, or lower branches.{branch}.lr")
        seen = max(1, len(sampler)) * world
        m, _ = evaluate(model, val_set, data.val_labels, **evaluate_on)
        m.update(loss=float(sums[0] / seen), ce=float(sums[1] / seen), ose=float(sums[2] / seen),
                 lr=float(sched.get_last_lr()[0]), seconds=round(time.time() - t0, 2))
        improved = m["macro_f1"] > best.get("macro_f1", -1.0)
        if improved:
            best = {**m, "epoch": epoch}
        kept = {k: v for k, v in m.items() if k != "seconds"}  # identical runs, identical bytes
        history.append(kept)
        rng = distributed.all_gather_objects(rng_states())
        if rank == 0:
            if improved:
                save_torch_atomic({**extra, "epoch": epoch, "model": model.state_dict(),
                                   "metrics": kept}, out_dir / "best.pt")
            save_checkpoint(out_dir / "last.pt", model, opt, sched, epoch, kept,
                            {k: v for k, v in best.items() if k != "seconds"}, history, rng,
                            signature, extra)
            if on_epoch:
                on_epoch(epoch, m)
            if progress:
                print(f"{branch} epoch {epoch + 1}/{cfg['epochs']}: loss {m['loss']:.3f} "
                      f"val macro-F1 {m['macro_f1']:.3f} top-1 {m['micro_f1']:.3f} "
                      f"({m['seconds']:.1f}s)", flush=True)
    distributed.barrier(device)
    state = torch.load(out_dir / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    if rank == 0:
        _, val_logits = evaluate(model, val_set, data.val_labels, **evaluate_on)
        test_logits = predict(model, test_set, **evaluate_on)
        with atomic_path(out_dir / "logits.npz", suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, val_ids=np.array(data.val_ids), val_logits=val_logits,
                     test_ids=np.array(data.test_ids), test_logits=test_logits)
    return best


def _plain(obj):
    """Config as plain Python types (checkpoints must load with weights_only=True)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def branch_config(params: dict, branch: str) -> dict:
    """params.yaml's train + loss + branches.<branch> blocks, and the runtime block's
    speed settings, as one train_branch config."""
    b = {k: v for k, v in params["branches"][branch].items() if k != "input"}
    rt = params.get("runtime", {})
    speed = {"workers": rt.get("loader_workers", 0), "device": rt.get("device", "auto"),
             "compile": rt.get("compile", False), "channels_last": rt.get("channels_last", False),
             "eval_batch_size": rt.get("eval_batch_size", 32)}
    return {**params.get("train", {}), **speed, **params.get("loss", {}), **b}


def branch_data(branch: str, manifest, classes: Sequence[str], input_path: str | Path,
                pseudo: dict[str, int] | None = None, render: bool = False) -> BranchData:
    """The clips a branch trains on, from the manifest and its input HDF5 file; ``pseudo``
    maps test clip ids to pseudo-label indices (CMPL) that join the training set.
    ``render``: the heatmap branch draws its volumes from keypoints per batch, so its input
    is the keypoints file (``branches.posec3d.render``).

    Clips an earlier stage skipped (absent from ``input_path``) are left out of every split
    and listed in ``BranchData.missing``; fusion predicts such test clips from the other
    branches. Raises ValueError when no training clip is left."""
    import h5py

    from mgpipe.data import MODALITY_OF, H5Clips

    modality = MODALITY_OF[branch]
    stored = "joints" if render else modality  # what the input file holds
    if render and modality != "heatmap":
        raise ValueError(f"branches.{branch}.render: only the heatmap branch (posec3d) draws "
                         f"its input from keypoints")
    index = {c: i for i, c in enumerate(classes)}
    if not Path(input_path).is_file():
        raise FileNotFoundError(f"{input_path}: input of branch {branch} not found; run the stage "
                                f"that writes it (dvc repro) or fix branches.{branch}.input")
    with h5py.File(input_path, "r") as f:
        any_clip = next(iter(f), None)
        if render and any_clip is not None and not (isinstance(f[any_clip], h5py.Group)
                                                    and "kp" in f[any_clip]):
            raise ValueError(f"{input_path}: branches.{branch}.render draws heatmaps from "
                             f"keypoints, but this file holds no keypoints; set "
                             f"branches.{branch}.input: data/interim/keypoints.h5")

        def has(cid: str) -> bool:
            return cid in f and (stored != "joints" or "kp" in f[cid])

        split = {s: manifest[manifest.split == s] for s in ("train", "val", "test")}
        kept = {s: t[[has(c) for c in t.clip_id]] for s, t in split.items()}
        missing = {s: sorted(set(split[s].clip_id) - set(kept[s].clip_id)) for s in split}
        pseudo = {c: y for c, y in (pseudo or {}).items() if has(c)}
        heatmap_mode = "joint"
        first = next((c for c in kept["train"].clip_id), None)
        if modality == "heatmap" and not render and first is not None:
            heatmap_mode = str(f[first].attrs.get("mode", "joint"))
    tr, va, te = kept["train"], kept["val"], kept["test"]
    if tr.empty:
        raise ValueError(f"{input_path}: none of the {len(split['train'])} training clips is in "
                         f"the file; check the skipped-clip files of the earlier stages")
    ids = list(tr.clip_id) + list(va.clip_id) + list(te.clip_id)
    arrays = H5Clips(input_path, ids, stored)  # read per clip: memory bounded by the loader
    return BranchData(
        modality=modality, arrays=arrays, num_classes=len(classes),
        train_ids=list(tr.clip_id) + list(pseudo),
        train_labels=[index[x] for x in tr.label] + list(pseudo.values()),
        val_ids=list(va.clip_id), val_labels=[index[x] for x in va.label],
        test_ids=list(te.clip_id), heatmap_mode=heatmap_mode, missing=missing)
