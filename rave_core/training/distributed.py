"""Multi-process training glue (torch.distributed): who we are, and the few collectives used.

A process is part of a distributed run when ``WORLD_SIZE`` > 1 in its environment
(``torchrun`` sets it, with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
or when the caller already initialised the default process group. Backend: NCCL on
GPUs, gloo on CPU. With one process every collective is a no-op.
"""
from __future__ import annotations

import datetime
import gc
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
        # torch.distributed.nn's functions take the default group as a default argument,
        # bound when the module is first imported (the optimisers and DDP import it):
        # imported after the group exists, they would keep it alive past close().
        import torch.distributed.nn.functional  # noqa: F401
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

    #: seconds a closing process waits for the others to close too: a coordinated stop
    #: brings them within moments, and a process that died answers at once
    CLOSE_TIMEOUT = 10.0

    def close(self) -> None:
        """Leave the process group together with the other processes, then free it.

        Freed here, while Python is whole, the group joins its threads. Left alive to the
        interpreter's exit, a gloo thread still letting go of the last collective's tensors
        needs the interpreter that is going away, and the process aborts ("terminate called
        without an active exception") after its message was said."""
        if not (self.owns_group and dist.is_initialized()):
            return
        self._wait_for_the_others()
        dist.destroy_process_group()
        gc.collect()  # a group left only in reference cycles is freed now, not at exit

    def _wait_for_the_others(self) -> None:
        """A bounded barrier: no process tears the group down while another is still in
        the last collective; a process that died, or never comes, delays nobody for long."""
        timeout = datetime.timedelta(seconds=self.CLOSE_TIMEOUT)
        try:
            if dist.get_backend() == dist.Backend.GLOO:
                dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
            else:
                dist.barrier(async_op=True).wait(timeout=timeout)
        except RuntimeError:   # another process died, or did not close in time: leave anyway
            pass
