"""Data parallelism over processes with `torch.distributed`, launched by `torchrun`.

    torchrun --standalone --nproc_per_node 4 -m decision_rnn train --dataset zoo/hopper/medium-v0 --out RUN

starts one process ("rank") per device. Each rank trains on its shard of every global batch under
`DistributedDataParallel` (gradients all-reduced, so the weights stay identical on every rank); rank 0 alone writes
the run directory and runs periodic evaluation. The process group uses `nccl` when training on CUDA, `gloo` on the
CPU. Several nodes: the same command on every node, with `--nnodes N --rdzv-backend c10d --rdzv-id JOB
--rdzv-endpoint HOST:PORT` (one node's address) instead of `--standalone`.

Without torchrun nothing here does anything: one process, no process group, rank 0 of 1.

A rank that raises exits non-zero and torchrun stops the others; a rank that hangs (or waits on a peer that died
without torchrun noticing) fails its next collective after `DECISION_RNN_DIST_TIMEOUT` seconds (default
`DEFAULT_TIMEOUT_S`). The timeout must exceed the longest time the other ranks wait for rank 0: a checkpoint plus
a periodic evaluation.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 1800
TIMEOUT_ENV = "DECISION_RNN_DIST_TIMEOUT"


def launched() -> bool:
    """Whether this process was started by torchrun (torch.distributed.elastic)."""
    return dist.is_available() and dist.is_torchelastic_launched()


def active() -> bool:
    """Whether a process group is initialized: training and evaluation then split their work over its ranks."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: from the process group, else from torchrun's environment (before `init`), else 0."""
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if launched() else 0


def world_size() -> int:
    """How many ranks share the work (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main_process() -> bool:
    """Rank 0: the one process that writes files, logs and evaluates."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if launched() else 0


def timeout() -> timedelta:
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds, e.g. {DEFAULT_TIMEOUT_S}")
    return timedelta(seconds=seconds)


def init(device: str | torch.device = "cpu") -> bool:
    """Join torchrun's process group, `nccl` for a CUDA `device` and `gloo` otherwise; returns whether a group is
    active. Does nothing outside torchrun or when a group is already initialized."""
    if active():
        return True
    if not launched():
        return False
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout())
    return True


def device_for_rank(device: torch.device) -> torch.device:
    """The device this rank trains on: under a process group, CUDA means `cuda:LOCAL_RANK` (one GPU per rank)."""
    if not active() or device.type != "cuda":
        return device
    if device.index is not None and world_size() > 1:
        raise ValueError(f"device {str(device)!r}: under torchrun each rank takes the GPU of its local rank; pass "
                         f"--device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    return torch.device("cuda", local_rank())


def barrier() -> None:
    """Wait until every rank gets here (no-op without a process group)."""
    if not active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def gather(obj: Any) -> list[Any] | None:
    """Every rank's `obj` (picklable), in rank order, on rank 0; None on the other ranks. `[obj]` without a group."""
    if not active():
        return [obj]
    out = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` (picklable) on every rank; `obj` itself without a group."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group (each rank, once its work is done)."""
    if active():
        dist.destroy_process_group()


__all__ = ["DEFAULT_TIMEOUT_S", "active", "barrier", "device_for_rank", "gather", "init", "is_main_process",
           "launched", "local_rank", "rank", "shutdown", "timeout", "world_size"]
