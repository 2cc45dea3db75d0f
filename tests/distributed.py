"""Two training processes on this machine, as torchrun starts them (gloo on the CPU, one
thread each), for the tests of distributed training: the environment each rank gets, a
run of both that must end in time, and a Ctrl-C during a given step."""
from __future__ import annotations

import os
import signal
import socket
import time
from typing import Callable, List, Tuple

import pytest
import torch
import torch.multiprocessing as mp

#: A BRAVE small enough to train a few steps in seconds: reduced capacity, STFT scales
#: that fit 8192-sample windows (512 samples per band).
TINY_TRAINING = ["CAPACITY=4", "LATENT_SIZE=8",
                 "rave.core.MultiScaleSTFT.scales = [512, 256, 128]"]


def free_port() -> int:
    """A TCP port free on this machine now, for the ranks' rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_two_ranks(rank: int, port: int) -> None:
    """The environment torchrun gives rank ``rank`` of 2, one thread each."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def run_two_ranks(worker: Callable, *args, limit: float = 300) -> Tuple[mp.ProcessContext, List[int]]:
    """Run ``worker(rank, port, *args)`` as ranks 0 and 1 and wait until both have ended:
    the test fails if they have not within ``limit`` seconds (both are killed). Returns
    the spawn context (``join()`` raises a failed rank's error) and the exit codes."""
    context = mp.spawn(worker, args=(free_port(), *args), nprocs=2, join=False)
    deadline = time.monotonic() + limit
    while any(p.is_alive() for p in context.processes):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the ranks did not stop within {limit:.0f} s")
        time.sleep(0.5)
    return context, [p.exitcode for p in context.processes]


def interrupt_during_step(step: int) -> None:
    """Ctrl-C (SIGINT to this process) during the 0-based training step ``step``: the
    ranks agree to stop after the next one. Patches :class:`RAVETrainer` in this process."""
    from rave_core.training.trainer import RAVETrainer
    real = RAVETrainer.step

    def interrupted(self, x, at, stop=False):
        if at == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, x, at, stop)

    RAVETrainer.step = interrupted
