"""The collectives mgpipe uses, each checking where its tensor lives.

NCCL takes only tensors on the process's own GPU: a host tensor handed to it fails far from
the cause (or, for some versions, hangs). Every collective of the training code goes
through here (a test checks that no other module calls ``torch.distributed`` collectives),
and each one raises at once, naming the call, when its tensor is not on the training device.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist

# torch 2.14 deprecates torch.distributed.nn.functional.all_reduce in favour of a functional
# collective whose gradient is not documented; ours is pinned by tests/test_train.py (DDP
# matches one process), so keep it and keep the log clean.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
                        category=FutureWarning)


def world_info() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment; (1, 0, 0) without it."""
    return (int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> None:
    """Join the process group of a torchrun launch (NCCL on GPU, gloo on CPU), once."""
    if world_info()[0] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def check_device(t: torch.Tensor, device: torch.device, what: str) -> None:
    if t.device != device:
        raise RuntimeError(f"{what}: tensor on {t.device}, but this process trains on {device}; "
                           f"NCCL needs every collective's tensors on the process's GPU")


def all_reduce(t: torch.Tensor, device: torch.device, what: str = "all_reduce") -> torch.Tensor:
    """Sum ``t`` over all processes, in place (no-op in a single process)."""
    check_device(t, device, what)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_autograd(t: torch.Tensor, what: str = "all_reduce_autograd") -> torch.Tensor:
    """Differentiable sum over all processes (the gradient is summed back); ``t`` is made
    from the layer's input, so it is on the input's device by construction."""
    from torch.distributed.nn.functional import all_reduce as _all_reduce

    return _all_reduce(t) if dist.is_initialized() and dist.get_world_size() > 1 else t


def all_gather_objects(obj) -> list:
    """``obj`` of every process, by rank (``[obj]`` in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier(device: torch.device) -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)
