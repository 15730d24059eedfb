"""torch.distributed helpers; all are no-ops in a single process, so nothing requires DDP.

Gradients are averaged explicitly (``all_reduce_gradients``) rather than by wrapping modules
in ``DistributedDataParallel``: methods may run several backward passes per step (a GAN's
generator and discriminator) and several networks (teacher/student, CPS pairs), which DDP's
one-forward-one-backward reducer does not support. One mechanism serves every method.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    if not is_distributed():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average gradients across processes, flattened into one buffer per dtype."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch._utils._flatten_dense_tensors(group)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        for g, synced in zip(group, torch._utils._unflatten_dense_tensors(flat, group)):
            g.copy_(synced)


def broadcast_module(module: nn.Module) -> None:
    """Make every rank hold rank 0's parameters and buffers (start, and before evaluation)."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group together, so no rank shuts gloo down while its peer may still be
    communicating. Without the barrier, 2 of 61 two-process CPU test runs beside busy benchmark rows
    had rank 1 abort after its work was done (SIGABRT, "terminate called without an active
    exception") and torchrun fail the job; that teardown race is the likely cause, not a proven one."""
    if is_distributed():
        barrier()
        dist.destroy_process_group()
