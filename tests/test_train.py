"""The training loop: it learns, it is deterministic, checkpoints load with
weights_only=True, and DDP over 2 CPU processes trains what 1 process does."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from mgpipe.train import BranchData, GlobalBatchSampler, prefetch_to_device, train_branch

TINY = dict(epochs=20, batch_size=8, lr=3e-3, warmup_epochs=0, frames=16, embed_dim=16,
            ose_weight=0.1, model={"channels": [16, 16], "strides": [1, 2]}, dropout=0.0)


def toy_joints(n_per_class=12, classes=3, seed=0):
    """Skeleton clips [T, 68, 3] whose class is which hand oscillates (or both)."""
    rng = np.random.default_rng(seed)
    arrays, labels = {}, []
    base = rng.uniform(50, 150, (68, 2))
    for c in range(classes):
        for k in range(n_per_class):
            t = np.arange(30)[:, None]
            kp = np.zeros((30, 68, 3), np.float32)
            kp[..., :2] = base + rng.normal(0, 1.0, (30, 68, 2))
            kp[..., 2] = 1
            amp = np.sin(t / 3 + rng.uniform(0, 6)) * 15
            if c in (0, 2):
                kp[:, 26:47, 1] += amp
            if c in (1, 2):
                kp[:, 47:68, 1] += amp
            arrays[f"c{c}_{k}"] = kp
            labels.append(c)
    return arrays, labels


def toy_data():
    arrays, labels = toy_joints()
    ids = list(arrays)
    val = [i for i in range(len(ids)) if i % 4 == 0]
    tr = [i for i in range(len(ids)) if i % 4]
    return BranchData("joints", arrays, 3, [ids[i] for i in tr], [labels[i] for i in tr],
                      [ids[i] for i in val], [labels[i] for i in val], [ids[i] for i in val[:3]])


def test_global_batches_split_across_processes():
    one = list(GlobalBatchSampler(20, 4, seed=1))
    two = [list(GlobalBatchSampler(20, 4, seed=1, world=2, rank=r)) for r in (0, 1)]
    assert len(two[0]) == len(two[1]) == len(one)
    for b, (a, c) in enumerate(zip(*two)):
        assert sorted(a + c) == sorted(one[b])


def test_learns_is_deterministic_and_checkpoints_load(tmp_path):
    m1 = train_branch("stcnn", toy_data(), TINY, tmp_path / "a", progress=False)
    m2 = train_branch("stcnn", toy_data(), TINY, tmp_path / "b", progress=False)
    assert m1["macro_f1"] > 0.6, m1          # chance is 1/3
    assert m1 == {**m2, "seconds": m1["seconds"]}
    la, lb = np.load(tmp_path / "a/logits.npz"), np.load(tmp_path / "b/logits.npz")
    assert np.array_equal(la["val_logits"], lb["val_logits"])
    assert la["test_logits"].shape == (3, 3) and list(la["test_ids"])[:1] == ["c0_0"]
    ckpt = torch.load(tmp_path / "a/best.pt", weights_only=True)
    assert ckpt["branch"] == "stcnn" and ckpt["epoch"] == m1["epoch"]
    assert set(ckpt) >= {"model", "metrics", "config"}
    last = torch.load(tmp_path / "a/last.pt", weights_only=True)
    assert set(last) >= {"model", "optimizer", "scheduler", "rng", "history", "signature"}
    assert last["epoch"] == TINY["epochs"] - 1 and len(last["history"]) == TINY["epochs"]


def _ddp_worker(rank, port, out, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train_branch("stcnn", toy_data(), TINY, out, progress=False)
    if rank == 0:
        q.put("done")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    single = tmp_path / "single"
    train_branch("stcnn", toy_data(), TINY, single, progress=False)
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(_free_port(), tmp_path / "ddp", q), nprocs=2,
                       start_method="spawn")
    a = torch.load(single / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "ddp/last.pt", weights_only=True)["model"]
    for k in a:
        if a[k].dtype.is_floating_point and "running" not in k:
            rel = (a[k] - b[k]).norm() / (a[k].norm() + 1e-8)
            assert rel < 0.02, (k, float(rel))  # unsynchronised BatchNorm gives ~0.7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
@pytest.mark.parametrize("branch", ["stcnn", "posec3d", "r2plus1d", "swin3d"])
def test_cuda_amp_channels_last_training(tmp_path, branch):
    """The GPU path: bf16 autocast, channels-last for volumes, checkpoints that load on CPU."""
    from mgpipe.models import DEMO_PROFILE

    rng = np.random.default_rng(0)
    shapes = {"stcnn": ("joints", (30, 68, 3)), "posec3d": ("heatmap", (68, 8, 32, 32)),
              "r2plus1d": ("rgb", (8, 48, 48, 3)), "swin3d": ("rgb", (8, 48, 48, 3))}
    modality, shape = shapes[branch]
    arrays = {f"c{i}": (rng.uniform(0, 100, shape).astype(np.float32) if modality == "joints"
                        else rng.integers(0, 255, shape, dtype=np.uint8)) for i in range(24)}
    ids = list(arrays)
    data = BranchData(modality, arrays, 3, ids[:16], [i % 3 for i in range(16)], ids[16:],
                      [i % 3 for i in range(8)], ids[16:20])
    cfg = dict(epochs=2, batch_size=8, amp=True, channels_last=True, embed_dim=16,
               model=DEMO_PROFILE[branch], frames=16)
    m = train_branch(branch, data, cfg, tmp_path, progress=False)
    assert 0 <= m["macro_f1"] <= 1 and np.isfinite(m["loss"])
    ckpt = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())


# Swin3D with stochastic depth: its drop paths draw from the global RNG
TINY_SWIN = dict(hidden_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[2, 2, 2],
                 patch_size=[2, 4, 4], stochastic_depth_prob=0.3)


def tiny_rgb_data() -> BranchData:
    """12 random 4 x 16 x 16 RGB clips, 3 classes: 8 train, 4 val (also the test clips)."""
    rng = np.random.default_rng(0)
    arrays = {f"r{i}": rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8) for i in range(12)}
    ids, labels = list(arrays), [i % 3 for i in range(12)]
    return BranchData("rgb", arrays, 3, ids[:8], labels[:8], ids[8:], labels[8:], ids[8:])


def test_drop_path_retrain_in_one_process_is_repeatable(tmp_path):
    """CMPL retrains branches one after another in one process; stochastic depth draws from
    the global RNG, so the seed must be reset per run for a retrain to repeat the stage."""
    data = tiny_rgb_data()
    cfg = dict(epochs=2, batch_size=4, embed_dim=8, warmup_epochs=0, dropout=0.0,
               model=TINY_SWIN)
    train_branch("swin3d", data, cfg, tmp_path / "a", progress=False)
    train_branch("stcnn", toy_data(), {**TINY, "epochs": 1}, tmp_path / "other", progress=False)
    torch.rand(1000)  # whatever else the process drew in between
    train_branch("swin3d", data, cfg, tmp_path / "b", progress=False)
    la, lb = np.load(tmp_path / "a/logits.npz"), np.load(tmp_path / "b/logits.npz")
    assert np.array_equal(la["val_logits"], lb["val_logits"])
    a = torch.load(tmp_path / "a/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prefetch_passes_tensors_through_on_cpu():
    batches = [(torch.ones(3) * i, i) for i in range(4)]
    out = list(prefetch_to_device(batches, torch.device("cpu")))
    assert all(a[0] is b[0] and a[1] == b[1] for a, b in zip(out, batches))


class _Killed(Exception):
    pass


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    """A run killed after epoch 2 of 5 and rerun continues from last.pt (model, optimizer,
    scheduler, RNG states) and ends bit-identical to an uninterrupted run; a changed config
    starts afresh instead of resuming."""
    data = tiny_rgb_data()
    # dropout and stochastic depth draw from the global RNG: its state must be restored too
    cfg = dict(epochs=5, batch_size=4, embed_dim=8, warmup_epochs=1, dropout=0.3,
               model=TINY_SWIN)
    whole = train_branch("swin3d", data, cfg, tmp_path / "whole", progress=False)

    def kill_after_second(epoch, m):
        if epoch == 1:
            raise _Killed
    with pytest.raises(_Killed):
        train_branch("swin3d", data, cfg, tmp_path / "cut", on_epoch=kill_after_second,
                     progress=False)
    assert torch.load(tmp_path / "cut/last.pt", weights_only=True)["epoch"] == 1
    seen = []
    resumed = train_branch("swin3d", data, cfg, tmp_path / "cut",
                           on_epoch=lambda e, m: seen.append(e), progress=False)
    assert seen == [0, 1, 2, 3, 4]  # epochs 0-1 replayed from the checkpoint's history
    assert {k: v for k, v in resumed.items() if k != "seconds"} == \
        {k: v for k, v in whole.items() if k != "seconds"}
    a = torch.load(tmp_path / "whole/last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut/last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    la, lb = np.load(tmp_path / "whole/logits.npz"), np.load(tmp_path / "cut/logits.npz")
    assert np.array_equal(la["test_logits"], lb["test_logits"])
    # a different config is another run: it trains from epoch 0 instead of resuming
    seen.clear()
    train_branch("swin3d", data, {**cfg, "lr": 2e-3, "epochs": 2}, tmp_path / "cut",
                 on_epoch=lambda e, m: seen.append(e), progress=False)
    assert seen == [0, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_prefetch_yields_every_batch_on_the_gpu():
    batches = [(torch.full((1 << 20,), float(i)).pin_memory(), i) for i in range(5)]
    out = [(x.sum().item(), x.device.type, i) for x, i in
           prefetch_to_device(iter(batches), torch.device("cuda"))]
    assert out == [(float(i << 20), "cuda", i) for i in range(5)]
    kept = [x.device.type for _, x in prefetch_to_device([(torch.ones(2), torch.ones(2))] * 2,
                                                         torch.device("cuda"), host=(1,))]
    assert kept == ["cpu", "cpu"]
