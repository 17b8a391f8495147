"""Process-group plumbing for DDP under torchrun (or any launcher that sets the env:// variables).

Every collective of the process group (and of the gloo group the stop requests use) fails after
a timeout, 20 minutes unless the environment variable ``KDFLOW_DIST_TIMEOUT_MIN`` (minutes, a
positive number) says otherwise: a rank that died or hangs then brings the others down with an
error, instead of holding the allocation (and its GPUs) until the scheduler's time limit. Raise it
when something legitimately keeps one rank away from the next collective for longer, e.g. rank 0
writing a very large state to a slow file system while the others wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_ENV = "KDFLOW_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 20.0


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device


def timeout() -> timedelta:
    """How long any collective may wait for the other ranks (see the module docstring)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return timedelta(minutes=DEFAULT_TIMEOUT_MIN)
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of minutes")
    return timedelta(minutes=minutes)


def setup(prefer_cuda: bool = True) -> DistInfo:
    """Initialise the process group when launched with WORLD_SIZE > 1; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = prefer_cuda and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout())
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def initialised_world() -> int:
    """World size of the initialised default process group; 1 without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
