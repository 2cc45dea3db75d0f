"""Multi-process training glue (torch.distributed): who we are, and the few collectives used.

A process is part of a distributed run when ``WORLD_SIZE`` > 1 in its environment
(``torchrun`` sets it, with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
or when the caller already initialised the default process group. Backend: NCCL on
GPUs, gloo on CPU. With one process every collective is a no-op.

How the processes stop: an error that every process raises at the same point (after the
collective that decided it: a signal's stop, a divergence, rank 0's write failure, a
refused run; :func:`on_every_rank` marks it) lets them leave the group together. Any other
error stops its process alone: it leaves the group at once, without waiting for the
others, which then fail at their next collective ("Connection closed by peer") and say
that another process failed (:meth:`DistContext.explain`) instead of waiting for it until
gloo's timeout (30 minutes).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List

import torch
import torch.distributed as dist

from .errors import TrainingArgumentError, TrainingError

#: the attribute :func:`on_every_rank` sets on an error
_EVERY_RANK = "raised_on_every_rank"


def on_every_rank(err: BaseException) -> BaseException:
    """``err``, marked as raised by every process at the same point of the training
    (after the collective that decided it): the processes then leave their group together
    (:meth:`DistContext.close`)."""
    setattr(err, _EVERY_RANK, True)
    return err


def raised_on_every_rank(err: BaseException) -> bool:
    """Whether ``err`` was marked by :func:`on_every_rank`."""
    return bool(getattr(err, _EVERY_RANK, False))


#: torch.distributed's variables a process of a run of several needs (torchrun sets them)
_REQUIRED = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def _environment_problem(world: str) -> str:
    """Why the environment, which sets ``WORLD_SIZE`` to ``world``, does not describe a
    process of a run of several, or ''."""
    launch = ("launch the training with torchrun (torchrun --nproc_per_node N -m "
              "rave_core.train ...) or `rave-core train --gpus N`, or unset WORLD_SIZE to "
              "train in one process")
    try:
        size = int(world)
    except ValueError:
        return f"WORLD_SIZE is {world!r}, not a number of processes: {launch}"
    if size <= 1:
        return ""
    missing = [name for name in _REQUIRED if not os.environ.get(name)]
    if missing:
        names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1
                             else missing)
        verb = "is" if len(missing) == 1 else "are"
        return f"WORLD_SIZE is {size} but {names} {verb} not set: {launch}"
    for name in ("RANK", "LOCAL_RANK", "MASTER_PORT"):
        value = os.environ.get(name)
        if value is not None and not value.strip().isdigit():
            return f"{name} is {value!r}, not a number: {launch}"
    if int(os.environ["RANK"]) >= size:
        return (f"RANK is {os.environ['RANK']} but WORLD_SIZE is {size} (ranks count from 0): "
                f"{launch}")
    return ""


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
        problem = _environment_problem(os.environ.get("WORLD_SIZE") or "1")
        if problem:
            raise TrainingArgumentError(problem)
        world = int(os.environ.get("WORLD_SIZE") or "1")
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

    @contextlib.contextmanager
    def warnings_of_rank_0(self) -> Iterator[None]:
        """While inside, rank 0 alone says its warnings: for what every rank finds alike
        (a checkpoint, the arguments), said once, not once per process."""
        if self.is_main:
            yield
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield

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
        """Copy rank 0's values of ``tensors`` into every process's, in place: one
        broadcast per device and dtype (the tensors are packed into one), as DDP
        broadcasts a module's buffers."""
        if not self.enabled:
            return
        groups: Dict[Any, List[torch.Tensor]] = {}
        for t in tensors:
            if t.numel():
                groups.setdefault((t.device, t.dtype), []).append(t)
        for group in groups.values():
            packed = torch.cat([t.detach().reshape(-1) for t in group])
            dist.broadcast(packed, src=0)
            offset = 0
            with torch.no_grad():
                for t in group:
                    t.copy_(packed[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()

    #: what the backends say when another process is gone (gloo, then NCCL); any other
    #: backend error (a wrong network interface, mismatched collectives) is said as it is:
    #: every rank may raise it, and none would then say why
    PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe",
                 "timed out", "remote process exited", "communicator was aborted")

    def explain(self, err: BaseException) -> BaseException:
        """The error to say for ``err``, which stopped this process: where the connection
        to another process was lost (it failed, or stopped answering), a short
        :class:`TrainingError` saying so, in place of the backend's text ("Connection
        closed by peer ... GLHF", "Timed out waiting 1800000ms"); else ``err``."""
        if not self.enabled or isinstance(err, TrainingError) or not isinstance(err, RuntimeError):
            return err
        text = str(err)
        if not (isinstance(err, dist.DistError) or "gloo/" in text or "NCCL" in text):
            return err
        if not any(words in text.lower() for words in self.PEER_LOST):
            return err
        if "timed out" in text.lower():
            return TrainingError("another training process stopped answering (a collective "
                                 "timed out): see the other processes' messages; this one "
                                 "stopped too")
        return TrainingError("another training process failed (see its message); this one "
                             "stopped too")

    #: seconds a closing process waits for the others to close too: a coordinated stop
    #: brings them within moments, and a process that died answers at once
    CLOSE_TIMEOUT = 10.0

    def close(self, together: bool = True) -> None:
        """Leave the process group, then free it: ``together`` with the other processes
        (a bounded barrier first: they ended, or stopped on an error raised
        :func:`on_every_rank`), or else at once (this process stopped alone: the others,
        waiting for it at a collective, fail there at once instead of waiting for it until
        the backend's timeout, and a barrier could wait as long: gloo's monitored barrier
        is bounded on rank 0 only).

        Freed here, while Python is whole, the group joins its threads. Left alive to the
        interpreter's exit, a gloo thread still letting go of the last collective's tensors
        needs the interpreter that is going away, and the process aborts ("terminate called
        without an active exception") after its message was said."""
        if not (self.owns_group and dist.is_initialized()):
            return
        if together:
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
