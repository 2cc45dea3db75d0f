"""Multi-process training glue (torch.distributed): who we are, and the few collectives used.

A process is part of a distributed run when ``WORLD_SIZE`` > 1 in its environment
(``torchrun`` sets it, with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
or when the caller already initialised the default process group. Backend: NCCL on
GPUs, gloo on CPU. With one process every collective is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Rank bookkeeping for one training process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, use_cuda: bool) -> "DistContext":
        """Join the process group described by the environment (if any)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", dist.get_rank())), False)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
        return cls(rank, world, local_rank, True)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flags: torch.Tensor) -> torch.Tensor:
        """Element-wise OR of 0/1 ``flags`` over all processes (one small all-reduce)."""
        if self.enabled:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags

    def gather(self, obj: Any) -> List[Any]:
        """Every process's ``obj``, in rank order (picklable values)."""
        if not self.enabled:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensors(self, tensors: List[torch.Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` into every process's, in place."""
        if self.enabled:
            for t in tensors:
                dist.broadcast(t, src=0)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
