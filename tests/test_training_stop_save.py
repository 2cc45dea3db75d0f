"""The checkpoint saved when Ctrl-C / SIGTERM stops training, when it cannot be written (a
full disk, a read-only folder): the user is told that the save on stop failed, why, and
which checkpoint is the last good one, on every rank, with exit code 1 as for any other
write failure of training.

A stop reaches the loop two ways: during a step (the ranks agree to stop after it), or
while the next batch loads (a Ctrl-C reaching the whole process group takes the data
workers down, and the loader raises). The second saved without any guard: rank 0 left
with a bare "cannot write" and no word of the checkpoint kept, and rank 1 said that it
had saved.
"""
from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from rave_core.cli import main as cli
from rave_core.data import AudioDataset
from rave_core.training.trainer import RAVETrainer, TrainingError

from .test_training import db  # noqa: F401 (the fixture: one synthesized dataset)
from .distributed import interrupt_during_step, join_two_ranks
from .test_training import _cli_train, _train_as_rank, _two_ranks_to_their_end

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKPOINTS = Path("version_0") / "checkpoints"


def _disk_full(after_the_first_save: bool = True) -> None:
    """Every checkpoint write fails (the disk is full), or every one after the first
    ``last.ckpt``."""
    from rave_core.training import checkpoint
    real = checkpoint.replace_atomically
    saved = [] if after_the_first_save else ["(none)"]

    def write(path, fn):
        if Path(path).suffix == ".ckpt" and saved:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, fn)
        if Path(path).name == "last.ckpt":
            saved.append(path)

    checkpoint.replace_atomically = write


def _stopped_while_loading(steps: int, batch: int) -> None:
    """SIGINT as the batch after ``steps`` steps loads, and the loader fails, as when a
    Ctrl-C took its data workers down ("DataLoader worker exited unexpectedly")."""
    real = AudioDataset.__getitem__
    calls = []

    def getitem(self, i):
        if self.split == "train":
            calls.append(i)
            if len(calls) == steps * batch + 1:
                os.kill(os.getpid(), signal.SIGINT)
                raise RuntimeError("DataLoader worker (pid 4242) exited unexpectedly")
        return real(self, i)

    AudioDataset.__getitem__ = getitem


@pytest.fixture
def restored():
    """Undo the module patches of one test."""
    from rave_core.training import checkpoint
    saved = (checkpoint.replace_atomically, AudioDataset.__getitem__, RAVETrainer.step)
    yield
    checkpoint.replace_atomically, AudioDataset.__getitem__, RAVETrainer.step = saved


@pytest.mark.parametrize("how, val_every, kept", [
    ("loading", 2, "step 2"),
    ("loading", 100, None),
    ("step", 2, "step 2"),
])
def test_a_stop_whose_checkpoint_cannot_be_written_says_so_and_what_is_kept(
        db, tmp_path, restored, how, val_every, kept):
    _disk_full(after_the_first_save=kept is not None)
    if how == "loading":
        _stopped_while_loading(3, batch=4)
    else:
        interrupt_during_step(1)   # the stop comes after step 3
    result = CliRunner().invoke(cli, _cli_train(db, tmp_path, "r", "--max_steps", "50",
                                                "--val_every", str(val_every)))
    out = result.output
    assert result.exit_code == 1, out
    last = tmp_path / "r" / CHECKPOINTS / "last.ckpt"
    assert (f"Error: interrupted at step 3 and could not save it: cannot write {last}: no "
            "space left on device") in out, out
    if kept:
        assert (f"the last checkpoint is {last} ({kept}), intact; fix that, then run the "
                "same command again to resume") in out, out
    else:
        assert ("no checkpoint was written yet; fix that, then run the same command again "
                "(it starts over)") in out, out
    assert "Traceback" not in out and "saved" not in out, out


def _ddp_stop_on_full_disk_worker(rank: int, port: int, db: str, out: str) -> None:
    """Both ranks stop as their 4th batch loads; rank 0's disk is full after step 2."""
    join_two_ranks(rank, port)
    _disk_full()
    _stopped_while_loading(3, batch=2)
    _train_as_rank(rank, db, out, "ddp_stop_full", TrainingError, max_steps=50, val_every=2)


def test_two_gloo_ranks_whose_stop_save_fails_both_say_why_and_what_is_kept(db, tmp_path):
    _two_ranks_to_their_end(_ddp_stop_on_full_disk_worker, db, tmp_path)
    last = tmp_path / "ddp_stop_full" / CHECKPOINTS / "last.ckpt"
    for rank in (0, 1):
        said = (tmp_path / f"rank{rank}.txt").read_text()
        assert (f"interrupted at step 3 and could not save it: cannot write {last}: no space "
                "left on device") in said, (rank, said)
        assert f"the last checkpoint is {last} (step 2), intact" in said, (rank, said)
