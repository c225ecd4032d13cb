"""DistributedDataParallel helpers: one process per device under ``torchrun``, rank 0 does the I/O.

``torchrun --nproc_per_node N -m training.train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; without
them everything here degrades to a single process. gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (env vars present); no-op otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("DDP rank %d/%d (%s)", info.rank, info.world_size, backend)
    return info


def cleanup(info: DistInfo, finished: bool = True) -> None:
    """Leave the process group. After a normal finish every rank first waits for the others: a rank
    that tears gloo down while rank 0 is still writing its artifacts can abort at exit ("terminate
    called without an active exception", seen once in CI), and PyTorch asks for a collective
    ``destroy_process_group``. After an error there is no wait: the other ranks may never come."""
    if not (info.enabled and dist.is_initialized()):
        return
    if finished:
        barrier(info)
    dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device_type: str):
    """``init_distributed`` for the block, then :func:`cleanup` (collective only if the block finished)."""
    info = init_distributed(device_type)
    finished = False
    try:
        yield info
        finished = True
    finally:
        cleanup(info, finished)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's value of ``obj`` on every rank (e.g. the run directory name)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few scalars over ranks (loss sums, counts)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_arrays(arrays: dict[str, np.ndarray], info: DistInfo) -> dict[str, np.ndarray]:
    """Concatenate per-rank numpy arrays on every rank (evaluation results)."""
    if not info.enabled:
        return arrays
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices r, r+w, ...: evaluation without the padding DistributedSampler adds,
    so metrics count every frame exactly once."""

    def __init__(self, n: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, n, info.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
