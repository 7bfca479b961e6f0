"""The NCCL path, guarded on CPU: no collective is ever handed a tensor that would be on the
host on a GPU run.

On a CPU-only machine every tensor is on the CPU, so a tensor made without naming the
device (``torch.zeros(3)``, the bug that stopped GPU training at epoch 1) is
indistinguishable from one made on the training device. ``HostTensorTracker`` (a torch
function mode) tells them apart: it marks tensors that factories make without a device, and
every tensor computed from one, and clears the mark on ``.to(device)``. The collectives are
wrapped to fail on a marked tensor, and a real 2-process DDP run (gloo) trains through them.
"""
from __future__ import annotations

import ast
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.tensor, torch.arange,
             torch.linspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.as_tensor}
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single")


def _marked(t) -> bool:
    return torch.is_tensor(t) and getattr(t, "_mg_host", False)


def _mark(out, value: bool) -> None:
    for t in tree_flatten(out)[0]:
        if torch.is_tensor(t):
            try:
                t._mg_host = value
            except (AttributeError, RuntimeError):  # e.g. a tensor without a __dict__
                pass


def _names_device(args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    for a in args[1:]:
        if isinstance(a, torch.device) or torch.is_tensor(a):
            return True
        if isinstance(a, str):
            try:
                torch.device(a)
                return True
            except RuntimeError:
                pass
    return False


class HostTensorTracker(TorchFunctionMode):
    """Marks tensors that would live on the host on a GPU run (see module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if func in FACTORIES:
            if kwargs.get("device") is None and not (args and torch.is_tensor(args[0]) and func is torch.as_tensor):
                _mark(out, True)
            return out
        if name in ("to", "cuda") and _names_device(args, kwargs):
            target = next((a for a in args[1:] if torch.is_tensor(a)), None)
            host = _marked(target) if target is not None else False
            if args and torch.is_tensor(args[0]):
                _mark(args[0], host) if out is args[0] else None
            _mark(out, host)
            return out
        if name == "cpu":
            _mark(out, True)
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t)]
        big = [t for t in tensors if t.dim() > 0] or tensors  # CPU scalars mix with GPU tensors
        if any(_marked(t) for t in big):
            _mark(out, True)
        return out


def _checked(fn, name: str, calls: list):
    def wrapper(tensor, *args, **kwargs):
        for t in tree_flatten(tensor)[0]:
            if _marked(t):
                raise RuntimeError(f"{name} was handed a tensor made on the host (it would be "
                                   f"on the CPU on a GPU run; NCCL fails there)")
        calls.append(name)
        return fn(tensor, *args, **kwargs)
    return wrapper


def guard_collectives(calls: list) -> None:
    """Wrap torch.distributed's collectives (and the differentiable all_reduce) so a
    marked tensor raises; ``calls`` records each call."""
    import torch.distributed.nn.functional as fdist

    for name in COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, _checked(getattr(dist, name), name, calls))
    fdist.all_reduce = _checked(fdist.all_reduce, "nn.functional.all_reduce", calls)


def test_tracker_flags_a_host_tensor_handed_to_a_collective():
    """The guard can fail: the old loop's ``torch.zeros(3)`` loss sums are caught, a tensor
    made on the device (or moved there) passes."""
    calls = []
    check = _checked(lambda t: t, "all_reduce", calls)
    device = torch.device("cpu")
    with HostTensorTracker():
        host = torch.zeros(3, dtype=torch.float64)
        host += torch.ones(3, device=device).double()
        with pytest.raises(RuntimeError, match="made on the host"):
            check(host)
        with pytest.raises(RuntimeError, match="made on the host"):
            check(torch.stack([torch.ones((), device=device), torch.tensor(2.0)]) * 1)
        on_device = torch.zeros(3, device=device) + torch.tensor(1.0)  # a CPU scalar mixes in
        check(on_device)
        check(torch.zeros(3).to(device))
        check(torch.zeros(3).double().to(device) * 2)
    assert len(calls) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out, q):
    from mgpipe.train import BranchData, train_branch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    calls: list = []
    guard_collectives(calls)
    rng = np.random.default_rng(0)
    arrays = {f"r{i}": rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8) for i in range(16)}
    ids, labels = list(arrays), [i % 3 for i in range(16)]
    data = BranchData("rgb", arrays, 3, ids[:12], labels[:12], ids[12:], labels[12:], ids[12:])
    cfg = dict(epochs=2, batch_size=4, embed_dim=8, warmup_epochs=0, sync_bn=True,
               model=dict(widths=[4, 8, 8, 8], layers=[1, 1, 1, 1]))
    with HostTensorTracker():
        train_branch("r2plus1d", data, cfg, out, progress=False)
    q.put((rank, sorted(set(calls)), len(calls)))


@pytest.mark.slow
def test_ddp_collectives_get_tensors_on_the_training_device(tmp_path):
    """2 DDP processes (gloo) train R(2+1)D with synchronised BatchNorm; every collective
    the training code makes gets a tensor made on (or moved to) the training device."""
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(_free_port(), tmp_path / "ddp", q), nprocs=2,
                       start_method="spawn")
    got = sorted(q.get() for _ in range(2))
    for rank, names, n in got:
        # loss denominators every step, epoch loss sums, BatchNorm statistics
        assert {"all_reduce", "nn.functional.all_reduce"} <= set(names), (rank, names)
        assert n > 10
    assert (tmp_path / "ddp" / "logits.npz").is_file()


def test_no_collective_outside_mgpipe_distributed():
    """Every collective goes through mgpipe/distributed.py, which checks the device."""
    offenders = []
    for path in sorted((ROOT / "mgpipe").glob("*.py")) + sorted((ROOT / "stages").glob("*.py")):
        if path.name == "distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in COLLECTIVES + ("all_gather_object", "barrier")
                    and ast.unparse(node.value) != "distributed"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module}")
    assert not offenders, offenders
