"""Training in several processes (torchrun, torch.distributed with gloo on CPU): how they
stop when one of them fails, the frozen encoder's buffers in phase 2, what each process
says (warnings and errors in our words, a warning every rank would say said once), the
environment a process needs, and `rave-core train --gpus N`.

Two processes each, tiny models, few steps; a failure is injected into one rank by a
small script the test writes (as a user's crash would happen), never by a hook in the
code under test.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import torch
from click.testing import CliRunner

from .distributed import (TINY_TRAINING, free_port, interrupt_during_step, join_two_ranks,
                          run_two_ranks)

ROOT = Path(__file__).resolve().parents[1]

SMALL = TINY_TRAINING
FAST = dict(batch=2, n_signal=8192, device="cpu", workers=0, progress=False, log_every=1)
#: the discrete config, tiny: 2 quantisers of 16 codes, phase 2 from the third step, no
#: receptive-field crop (which would leave nothing of 8192-sample windows)
DISCRETE = SMALL + ["NUM_QUANTIZERS=2", "CODEBOOK_SIZE=16", "NOISE_AUGMENTATION=4",
                    "PHASE_1_DURATION=2", "rave.model.RAVE.valid_signal_crop = False"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _environment(**extra) -> dict:
    """This checkout's code first, one thread, no torchrun variables of our own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                        if p)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _train_flags(db, out, name, *extra, config=True, small=True) -> List[str]:
    flags = (["--config", "brave"] if config else []) + [
        "--db_path", str(db), "--name", name, "--out_path", str(out), "--batch", "2",
        "--n_signal", "8192", "--workers", "0", "--no-progress"]
    for override in SMALL if small else []:
        flags += ["--override", override]
    return flags + list(extra)


def _descendants(pid: int) -> List[int]:
    """The processes ``pid`` started, and theirs (Linux: torchrun starts each training
    process in a session of its own, out of reach of a signal to its group)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _kill_all(proc: subprocess.Popen) -> None:
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run_to_its_end(cmd, limit: float, tmp_path: Path, marker=None, interrupt_after=None):
    """Run ``cmd`` in its own process group; return ``(exit code, stderr, seconds)``. A
    run still going after ``limit`` seconds is killed, every process of it (a rank left
    waiting would wait 30 minutes), and the test fails. ``marker``: once that file
    exists, wait ``interrupt_after`` seconds, then Ctrl-C the group (as a terminal does)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=_environment(), start_new_session=True)
    try:
        if marker is not None:
            while not marker.exists():
                assert proc.poll() is None, ("it ended before the marker", proc.communicate())
                assert time.monotonic() - started < limit, "no marker"
                time.sleep(0.05)
            time.sleep(interrupt_after)
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=max(1.0, limit - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        _kill_all(proc)
        _, err = proc.communicate()
        pytest.fail(f"still running after {limit:.0f} s: {err[-3000:]}")
    finally:
        if proc.poll() is None:
            _kill_all(proc)
            proc.communicate()
    return proc.returncode, err, time.monotonic() - started


def _train_one_process(db, out, name: str, **settings):
    from rave_core.training.trainer import train
    return train(["brave"], db, name, out_path=out, val_every=100, save_every=100,
                 overrides=SMALL, **{**FAST, **settings})


# ---------------------------------------------------------------------------- one rank fails
#: rank 1 runs out of memory in its third step (0-based step 2), the other rank goes on
_FAILS_ON_RANK_1 = """
import os
from rave_core.training import step
if os.environ.get("RANK") == "1":
    real_step = step.RAVETrainer.step

    def failing(self, x, index, stop=False):
        if index == 2:
            raise MemoryError()
        return real_step(self, x, index, stop)

    step.RAVETrainer.step = failing
from rave_core.train import main
main()
"""


def test_an_error_on_one_rank_stops_every_rank_at_once_its_reason_said_first(db, tmp_path):
    """A rank that failed alone waited at the group's exit for a rank that waited for it
    at a collective: the job froze for gloo's 30 minutes without a word, then rank 0 said
    `unexpected RuntimeError: ... Connection closed by peer ... GLHF ... report it`.
    Now the failing rank says why, leaves at once, and the other says that it failed.

    The run resumes a checkpoint saved by one process: the warning that says so, which
    every rank would say alike, is said once, by rank 0, as `rave-core train` says a
    warning (`Warning: ...`, not Python's `resume.py:156: UserWarning` and source line)."""
    _train_one_process(db, tmp_path, "run", max_steps=1)
    script = tmp_path / "fails_on_rank_1.py"
    script.write_text(_FAILS_ON_RANK_1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(script), *_train_flags(db, tmp_path, "run", "--max_steps", "20",
                                           "--val_every", "100", "--device", "cpu",
                                           config=False)]
    code, err, seconds = _run_to_its_end(cmd, 150, tmp_path)
    assert code != 0, err
    said = [line for line in err.splitlines() if line.startswith(("[rank", "Warning", "Error"))]
    failed = "[rank 1] Error: out of memory: lower --batch or --n_signal, or the model size"
    assert failed in said, err
    other = [i for i, line in enumerate(said) if line.startswith("[rank 0] Error:")]
    assert len(other) == 1 and said.index(failed) < other[0], err
    assert "another training process failed (see its message)" in said[other[0]]
    assert "GLHF" not in err and "report it" not in err and "Timed out" not in err, err
    assert seconds < 100, f"{seconds:.0f} s"
    # the warning, once, in our words
    assert "UserWarning" not in err, err
    warned = [line for line in said if "was saved by 1 processes, this run has 2" in line]
    assert len(warned) == 1 and warned[0].startswith("[rank 0] Warning: "), err


# ---------------------------------------------------------------------------- mp.spawn ranks
def _two_ranks(worker, *args, limit: float = 240) -> None:
    """Run ``worker(rank, port, *args)`` as ranks 0 and 1; both must end well in time."""
    context, codes = run_two_ranks(worker, *args, limit=limit)
    if codes != [0, 0]:
        try:
            context.join()   # raises the failed rank's error, its traceback with it
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"exit codes of ranks 0 and 1: {codes}: {err}")
        pytest.fail(f"exit codes of ranks 0 and 1: {codes}")


def _discrete_worker(rank: int, port: int, db: str, out: str, name: str, max_steps: int,
                     stop_during: int) -> None:
    """The tiny discrete config to ``max_steps`` (Ctrl-C during 0-based step
    ``stop_during``, if not -1: it stops after the next one); the codebooks each training
    forward of this rank quantised with go to ``<out>/<name>-rank<rank>.pt``."""
    from rave_core.models import quantization
    from rave_core.training.trainer import TrainingInterrupted, train
    join_two_ranks(rank, port)
    used: List[torch.Tensor] = []
    real_forward = quantization.EuclideanCodebook.forward

    def forward(self, x):
        if self.training:
            used.append(self.embed.detach().clone())
        return real_forward(self, x)

    quantization.EuclideanCodebook.forward = forward
    if stop_during >= 0:
        interrupt_during_step(stop_during)
    try:
        train(["discrete"], db, name, out_path=out, max_steps=max_steps, val_every=100,
              save_every=100, overrides=DISCRETE, **FAST)
    except TrainingInterrupted:
        pass
    torch.save(used, os.path.join(out, f"{name}-rank{rank}.pt"))


def test_phase_2_quantises_with_rank_0s_codebooks_and_resumes_exactly(db, tmp_path):
    """Phase 2's frozen encoder runs outside any DDP wrapper, in train mode: each rank
    updated its codebooks from its own batches, so from the first step of phase 2 the
    ranks quantised with different codebooks (until the next validation), and a run
    stopped and resumed (the others then take rank 0's codebooks from the checkpoint) was
    not the uninterrupted one. As in phase 1 (DDP), every forward now takes rank 0's."""
    args = (str(db), str(tmp_path))
    _two_ranks(_discrete_worker, *args, "whole", 5, -1)
    used = [torch.load(tmp_path / f"whole-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(used[0]) == len(used[1]) == 5 * 2   # 5 steps, 2 quantisers
    for i, (a, b) in enumerate(zip(*used)):
        assert torch.equal(a, b), f"step {i // 2 + 1}, quantiser {i % 2}: the ranks differ"

    # Ctrl-C during step 3 (phase 2): the run stops after step 4, saved there (no
    # validation); resumed to step 5
    _two_ranks(_discrete_worker, *args, "resumed", 5, 2)
    stopped = tmp_path / "resumed" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(stopped, weights_only=True)["global_step"] == 4
    _two_ranks(_discrete_worker, *args, "resumed", 5, -1)
    whole, resumed = (torch.load(tmp_path / name / "version_0" / "checkpoints" / "last.ckpt",
                                 weights_only=True) for name in ("whole", "resumed"))
    assert resumed["global_step"] == whole["global_step"] == 5
    differ = [k for k, v in whole["state_dict"].items()
              if not torch.equal(v, resumed["state_dict"][k])]
    assert not differ, f"the resumed run differs: {differ[:5]}"
    for a, b in zip(whole["optimizer_states"], resumed["optimizer_states"]):
        for p, state in a["state"].items():
            for k, v in state.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][p][k])), (p, k)


def _nan_on_rank_1_worker(rank: int, port: int, db: str, out: str) -> None:
    """Rank 1's batches turn to NaN from its second step; rank 0's stay finite."""
    from rave_core.data import dataset
    from rave_core.training.trainer import TrainingError, train
    join_two_ranks(rank, port)
    if rank == 1:
        real_item = dataset.AudioDataset.__getitem__
        served = [0]

        def item(self, index):
            x = real_item(self, index)
            if self.split == "train":
                served[0] += 1
                if served[0] > FAST["batch"]:
                    x = x * float("nan")
            return x

        dataset.AudioDataset.__getitem__ = item
    try:
        train(["brave"], db, "nan", out_path=out, max_steps=10, val_every=100,
              save_every=100, overrides=SMALL, **FAST)
    except TrainingError as err:
        Path(out, f"rank{rank}.txt").write_text(str(err))


def test_a_loss_not_finite_on_one_rank_is_named_with_its_values_on_every_rank(db, tmp_path):
    """Only the stop was shared: rank 0, whose loss was finite, said `the generator loss
    is not finite at step 2 (multiband_spectral_distance=14.43, ...)`, listing finite
    values."""
    _two_ranks(_nan_on_rank_1_worker, str(db), str(tmp_path))
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert said[0] == said[1], said
    found = re.search(r"the generator loss is not finite at step 2 on rank 1 \(([^)]*)\)",
                      said[0])
    assert found, said[0]
    assert "multiband_spectral_distance=nan" in found.group(1), said[0]


# ---------------------------------------------------------------------------- environment
@pytest.mark.parametrize("unset", ["RANK", "MASTER_ADDR"])
def test_a_process_without_torchruns_variables_is_a_usage_error(db, tmp_path, monkeypatch,
                                                                 unset):
    """`WORLD_SIZE=2` without `RANK` (or `MASTER_ADDR`) said `unexpected KeyError: 'RANK'
    ... report it` (a ValueError of torch's rendezvous, exit 1)."""
    from rave_core.cli import torchrun_train
    for name, value in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0",
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(unset)
    result = CliRunner().invoke(torchrun_train, _train_flags(db, tmp_path, "env",
                                                             "--device", "cpu"))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert re.match(rf"(\[rank 0\] )?Error: WORLD_SIZE is 2 but {unset} is not set: "
                    r"launch the training with torchrun \(torchrun --nproc_per_node N -m "
                    r"rave_core.train \.\.\.\) or `rave-core train --gpus N`", lines[0]), lines
    assert not (tmp_path / "env").exists()


def test_only_a_lost_peer_is_said_as_another_process_failing():
    """gloo's words for a peer gone become "another training process failed"; a backend
    error every rank may raise alike (mismatched collectives) is said as it is, else no
    rank would say why."""
    from rave_core.training.distributed import DistContext
    from rave_core.training.errors import TrainingError
    ctx = DistContext(rank=0, world_size=2)
    lost = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection "
                        "closed by peer [127.0.0.1]:29500")
    said = ctx.explain(lost)
    assert isinstance(said, TrainingError) and "another training process failed" in str(said)
    slow = RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed "
                        "out waiting 1800000ms for recv operation to complete")
    assert "stopped answering" in str(ctx.explain(slow))
    own = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:446] "
                       "op.preamble.length <= op.nbytes. 8 vs 4")
    assert ctx.explain(own) is own
    assert DistContext().explain(lost) is lost   # one process: nothing to explain


# ---------------------------------------------------------------------------- --gpus N
#: `rave-core train` with two GPUs faked in this (the launching) process only: its
#: torchrun and the training processes are real, on the CPU. The marker file is written
#: once torchrun is started.
_FAKE_GPUS = """
import subprocess, sys
import torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
real_popen = subprocess.Popen

def popen(*args, **kwargs):
    started = real_popen(*args, **kwargs)
    open({marker!r}, "w").close()
    return started

subprocess.Popen = popen
from rave_core.cli import main
sys.argv[0] = "rave-core"
main()
"""


def _rave_core_with_two_gpus(tmp_path: Path) -> List[str]:
    marker = tmp_path / "torchrun-started"
    script = tmp_path / "two_gpus.py"
    script.write_text(_FAKE_GPUS.format(marker=str(marker)))
    return [sys.executable, str(script), "train", "--gpus", "2"]


def test_gpus_passes_a_usage_error_on_without_torchruns_traceback(db, tmp_path):
    """A usage error in the training processes (windows too short for brave's STFT)
    exited 1, after torchrun's ChildFailedError traceback (43 lines)."""
    cmd = [*_rave_core_with_two_gpus(tmp_path),
           *_train_flags(db, tmp_path, "short", "--max_steps", "2", small=False)]
    code, err, _ = _run_to_its_end(cmd, 150, tmp_path)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines and len(lines) <= 2, err   # each process's one line
    for line in lines:
        assert re.match(r"\[rank [01]\] Error: --n_signal 8192 is too short for this config",
                        line), err


def test_gpus_interrupted_while_starting_claims_no_save(db, tmp_path):
    """Ctrl-C while the processes start said `Interrupted: the run saved last.ckpt`, also
    where nothing was saved, and where no run folder existed."""
    last = tmp_path / "r" / "version_0" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"an earlier training's")
    cmd = [*_rave_core_with_two_gpus(tmp_path), *_train_flags(db, tmp_path, "r")]
    code, err, _ = _run_to_its_end(cmd, 120, tmp_path, marker=tmp_path / "torchrun-started",
                                   interrupt_after=0.5)
    assert code == 130, err
    assert "saved" in err and "the run saved" not in err, err
    assert f"nothing was saved since the start; the run's {last} is as it was" in err, err
    assert "Traceback" not in err, err


def test_gpus_says_a_save_only_where_the_run_saved_since_the_start(tmp_path):
    from rave_core.cli import _file_stamp, _interrupted_spawn
    last = tmp_path / "r" / "last.ckpt"
    assert _interrupted_spawn(last, None) == ("Interrupted: nothing was saved (the training "
                                              "had not saved a checkpoint yet).")
    last.parent.mkdir()
    last.write_bytes(b"1")
    before = _file_stamp(last)
    assert "nothing was saved since the start" in _interrupted_spawn(last, before)
    last.write_bytes(b"12")
    assert _interrupted_spawn(last, before).startswith(f"Interrupted: the run saved {last}")
    assert _interrupted_spawn(last, None).startswith(f"Interrupted: the run saved {last}")
