"""Training one branch: a plain loop in the manner of torchvision's references.

One function, :func:`train_branch`, serves the ``train@<branch>`` stages and every CMPL round
(which passes pseudo-labelled test clips as extra training data). Single process, or data
parallel under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU). Checkpoints are plain dicts
that load with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from mgpipe.data import ClipDataset
from mgpipe.io import atomic_path, save_torch_atomic
from mgpipe.losses import class_weights, orthonormal_anchors, total_loss
from mgpipe.metrics import classification_metrics
from mgpipe.models import build_model

DEFAULTS = dict(epochs=10, batch_size=16, lr=1e-3, weight_decay=1e-4, optimizer="adamw",
                momentum=0.9, warmup_epochs=1, seed=0, workers=0, amp=True, compile=False,
                channels_last=False, deterministic=True, sync_bn=True, class_weight="sqrt", ose_weight=0.1,
                embed_dim=64, dropout=0.5, frames=32, motion=True,
                model={}, weights=None, eval_batch_size=32, device="auto")


@dataclass
class BranchData:
    """Everything one branch trains and predicts on. Labels are class indices; test clips
    carry no label (the hidden test labels never reach training)."""
    modality: str
    arrays: dict[str, np.ndarray]
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
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        n = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), n]))
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


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    return world, int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))


def _device(cfg: dict, local_rank: int) -> torch.device:
    if cfg["device"] == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def prefetch_to_device(batches, device: torch.device, host: tuple[int, ...] = ()):
    """Yield each batch (a tuple; its tensors moved to ``device``, except those at the
    positions in ``host``) while the next one is already being copied on a side CUDA
    stream, so host-to-device copies overlap the training step. On CPU the batches pass
    through unchanged."""
    if device.type != "cuda":
        yield from batches
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
            batch_size: int = 32, amp: bool = False, channels_last: bool = False) -> np.ndarray:
    """Logits [N, C] (float32) for every clip of ``dataset``, in its order."""
    model.eval()
    out = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for x, aug, _, _ in prefetch_to_device(loader, device, host=(1,)):  # aug stays on the CPU
        x = dataset.to_input(x, aug)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, _ = model(x)
        out.append(logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _input_channels(data: BranchData, cfg: dict) -> int | None:
    if data.modality == "joints":
        return 5 if cfg["motion"] else 3
    if data.modality == "heatmap":
        return next(iter(data.arrays.values())).shape[0]
    return None


def train_branch(branch: str, data: BranchData, cfg: dict, out_dir: str | Path,
                 on_epoch: Callable[[int, dict], None] | None = None, progress: bool = True
                 ) -> dict:
    """Train ``branch`` on ``data`` with ``cfg`` (keys of ``DEFAULTS``); keep the checkpoint
    with the best validation macro-F1.

    Writes into ``out_dir``: ``best.pt`` and ``last.pt`` (dicts: model, optimizer, epoch,
    metrics, config), ``logits.npz`` (val_ids, val_logits, test_ids, test_logits from the
    best checkpoint; rank 0 only). ``on_epoch(epoch, metrics)`` is called on rank 0 after each
    epoch (DVCLive logging). Returns the best epoch's validation metrics.
    """
    cfg = {**DEFAULTS, **cfg}
    out_dir = Path(out_dir)
    world, rank, local_rank = _dist_info()
    device = _device(cfg, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    amp = bool(cfg["amp"]) and device.type == "cuda"
    channels_last = bool(cfg["channels_last"]) and device.type == "cuda" and data.modality != "joints"

    common = dict(frames=cfg["frames"], motion=cfg["motion"], seed=cfg["seed"],
                  heatmap_mode=data.heatmap_mode)
    train_set = ClipDataset(data.modality, data.arrays, data.train_ids, data.train_labels,
                            train=True, **common)
    val_set = ClipDataset(data.modality, data.arrays, data.val_ids, data.val_labels, **common)
    test_set = ClipDataset(data.modality, data.arrays, data.test_ids, [-1] * len(data.test_ids),
                           **common)
    sampler = GlobalBatchSampler(len(train_set), cfg["batch_size"], cfg["seed"], world, rank)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg["workers"],
                        pin_memory=device.type == "cuda", persistent_workers=cfg["workers"] > 0)

    model = build_model(branch, data.num_classes, _input_channels(data, cfg),
                        embed_dim=cfg["embed_dim"], dropout=cfg["dropout"],
                        weights_path=cfg["weights"], **(cfg["model"] or {})).to(device)
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
    weights = class_weights(counts, cfg["class_weight"]).to(device)
    anchors = (orthonormal_anchors(data.num_classes, cfg["embed_dim"], cfg["seed"]).to(device)
               if cfg["ose_weight"] else None)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                              weight_decay=cfg["weight_decay"], nesterov=True)
    elif cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    else:
        raise ValueError(f"optimizer {cfg['optimizer']!r}: use adamw or sgd")
    steps = max(1, len(sampler) * cfg["epochs"])
    warmup = min(len(sampler) * cfg["warmup_epochs"], steps - 1)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    best, best_metrics = -1.0, {}
    for epoch in range(cfg["epochs"]):
        t0 = time.time()
        net.train()
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # on the device: no sync per step
        for x, aug, y, _ in prefetch_to_device(loader, device, host=(1,)):  # aug: see model_input
            x = train_set.to_input(x, aug)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            # Global-batch denominators, so DDP's gradient average equals one process's.
            denom = torch.stack([weights[y].sum(), torch.tensor(float(len(y)), device=device)])
            if world > 1:
                dist.all_reduce(denom)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits, emb = net(x)
            loss = total_loss(logits, emb, y, weights, anchors, cfg["ose_weight"],
                              denom[0] / world, denom[1] / world)
            opt.zero_grad(set_to_none=True)
            loss.total.backward()
            opt.step()
            sched.step()
            sums += torch.stack([loss.total.detach(), loss.ce.detach(), loss.ose.detach()]).double()
        if world > 1:  # each process holds its share of the global batch loss
            dist.all_reduce(sums)
        sums = sums.cpu()
        if not torch.isfinite(sums).all():
            raise FloatingPointError(
                f"{branch} epoch {epoch + 1}: training loss is {float(sums[0])} (not finite); "
                f"no checkpoint of this epoch was kept. Look for non-finite values in the "
                f"branch's input, or lower branches.{branch}.lr")
        seen = max(1, len(sampler)) * world
        val_logits = predict(model, val_set, device, cfg["eval_batch_size"], amp, channels_last)
        m = classification_metrics(val_logits, np.asarray(data.val_labels))
        m.update(loss=float(sums[0] / seen), ce=float(sums[1] / seen), ose=float(sums[2] / seen),
                 lr=float(sched.get_last_lr()[0]), seconds=round(time.time() - t0, 2))
        improved = m["macro_f1"] > best
        if improved:
            best, best_metrics = m["macro_f1"], {**m, "epoch": epoch}
        if rank == 0:
            ckpt = {"branch": branch, "epoch": epoch, "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "metrics": {k: v for k, v in m.items() if k != "seconds"}, "config": _plain(cfg),
                    "num_classes": data.num_classes, "modality": data.modality}
            save_torch_atomic(ckpt, out_dir / "last.pt")
            if improved:
                save_torch_atomic(ckpt, out_dir / "best.pt")
            if on_epoch:
                on_epoch(epoch, m)
            if progress:
                print(f"{branch} epoch {epoch + 1}/{cfg['epochs']}: loss {m['loss']:.3f} "
                      f"val macro-F1 {m['macro_f1']:.3f} top-1 {m['micro_f1']:.3f} "
                      f"({m['seconds']:.1f}s)", flush=True)
    if world > 1:
        dist.barrier()
    state = torch.load(out_dir / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    if rank == 0:
        val_logits = predict(model, val_set, device, cfg["eval_batch_size"], amp, channels_last)
        test_logits = predict(model, test_set, device, cfg["eval_batch_size"], amp, channels_last)
        with atomic_path(out_dir / "logits.npz", suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, val_ids=np.array(data.val_ids), val_logits=val_logits,
                     test_ids=np.array(data.test_ids), test_logits=test_logits)
    return best_metrics


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
    """params.yaml's train + loss + branches.<branch> blocks as one train_branch config."""
    b = {k: v for k, v in params["branches"][branch].items() if k != "input"}
    return {**params.get("train", {}), **params.get("loss", {}), **b}


def branch_data(branch: str, manifest, classes: Sequence[str], input_path: str | Path,
                pseudo: dict[str, int] | None = None) -> BranchData:
    """The clips a branch trains on, from the manifest and its input HDF5 file; ``pseudo``
    maps test clip ids to pseudo-label indices (CMPL) that join the training set.

    Clips an earlier stage skipped (absent from ``input_path``) are left out of every split
    and listed in ``BranchData.missing``; fusion predicts such test clips from the other
    branches. Raises ValueError when no training clip is left."""
    import h5py

    from mgpipe.data import MODALITY_OF, read_h5_clips

    modality = MODALITY_OF[branch]
    index = {c: i for i, c in enumerate(classes)}
    if not Path(input_path).is_file():
        raise FileNotFoundError(f"{input_path}: input of branch {branch} not found; run the stage "
                                f"that writes it (dvc repro) or fix branches.{branch}.input")
    with h5py.File(input_path, "r") as f:
        def has(cid: str) -> bool:
            return cid in f and (modality != "joints" or "kp" in f[cid])

        split = {s: manifest[manifest.split == s] for s in ("train", "val", "test")}
        kept = {s: t[[has(c) for c in t.clip_id]] for s, t in split.items()}
        missing = {s: sorted(set(split[s].clip_id) - set(kept[s].clip_id)) for s in split}
        pseudo = {c: y for c, y in (pseudo or {}).items() if has(c)}
        heatmap_mode = "joint"
        first = next((c for c in kept["train"].clip_id), None)
        if modality == "heatmap" and first is not None:
            heatmap_mode = str(f[first].attrs.get("mode", "joint"))
    tr, va, te = kept["train"], kept["val"], kept["test"]
    if tr.empty:
        raise ValueError(f"{input_path}: none of the {len(split['train'])} training clips is in "
                         f"the file; check the skipped-clip files of the earlier stages")
    ids = list(tr.clip_id) + list(va.clip_id) + list(te.clip_id)
    arrays = read_h5_clips(input_path, ids, modality)
    return BranchData(
        modality=modality, arrays=arrays, num_classes=len(classes),
        train_ids=list(tr.clip_id) + list(pseudo),
        train_labels=[index[x] for x in tr.label] + list(pseudo.values()),
        val_ids=list(va.clip_id), val_labels=[index[x] for x in va.label],
        test_ids=list(te.clip_id), heatmap_mode=heatmap_mode, missing=missing)
