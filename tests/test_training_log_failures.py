"""Files a training cannot write, as the user meets them (a user audit):

- TensorBoard's events file (a full disk, a folder made read-only): TensorBoard writes in
  a thread, which printed its traceback; the next log call raised its error, which stopped
  training with the file named as bytes and no word of the checkpoint kept. The log is
  auxiliary: one warning, and training goes on.
- a checkpoint: the error named its temporary file (``.last.ckpt.tmp-<pid>``), not the
  file the user knows.

The failures are made by the file layers (TensorBoard's, the checkpoint writer's), so
that the tests run as root too, where a read-only mode does not stop writes.
"""
from __future__ import annotations

import errno
import os
import threading
import warnings
from pathlib import Path
from typing import Callable, List

import pytest
import torch
from click.testing import CliRunner

from rave_core.cli import main as cli
from rave_core.training import checkpoint

TINY = ["CAPACITY=4", "LATENT_SIZE=8", "rave.core.MultiScaleSTFT.scales = [512, 256, 128]"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(db: Path, out: Path, steps: int = 4):
    args = ["train", "--config", "brave", "--db_path", db, "--name", "r", "--out_path", out,
            "--batch", "2", "--n_signal", "8192", "--device", "cpu", "--workers", "0",
            "--no-progress", "--max_steps", steps, "--val_every", "2", "--log_every", "1"]
    for o in TINY:
        args += ["--override", o]
    return CliRunner().invoke(cli, [str(a) for a in args])


def _os_error(code: int, filename=None) -> OSError:
    return OSError(code, os.strerror(code), *([filename] if filename is not None else []))


def _fail_events_file(monkeypatch, when: Callable[[], bool], code: int) -> List[bytes]:
    """TensorBoard's file layer raises errno ``code`` on the events file once ``when()``:
    a read-only folder fails the open (naming the file in bytes, as its file layer does), a
    full disk the write (naming none). Returns the names it failed (the test checks it
    ran: a TensorBoard that writes through TensorFlow's file layer would not call it)."""
    from tensorboard.compat.tensorflow_stub.io import gfile

    real, failed = gfile.LocalFileSystem._write, []

    def write(self, filename, content, mode):
        if b"events.out.tfevents" in os.fsencode(filename) and when():
            failed.append(filename)
            raise _os_error(code, filename if code == errno.EROFS else None)
        real(self, filename, content, mode)

    monkeypatch.setattr(gfile.LocalFileSystem, "_write", write)
    return failed


def _read_only(monkeypatch, folder: Path, when: Callable[[], bool] = lambda: True) -> None:
    """``folder`` read-only, once ``when()``, for the checkpoint and audio writer: opening a
    file there fails, and so does removing one, even one that is not there (EROFS)."""
    real_open, real_unlink = open, os.unlink

    def refused(file) -> bool:
        return Path(file).is_relative_to(folder) and when()

    def read_only_open(file, *args, **kwargs):
        if refused(file):
            raise _os_error(errno.EROFS, str(file))
        return real_open(file, *args, **kwargs)

    def read_only_unlink(file, *args, **kwargs):
        if refused(file):
            raise _os_error(errno.EROFS, str(file))
        return real_unlink(file, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", read_only_open, raising=False)
    monkeypatch.setattr(os, "unlink", read_only_unlink)


def _record_thread_errors(monkeypatch) -> List[str]:
    """What reaches ``threading.excepthook`` (the traceback printer) during the test."""
    seen: List[str] = []

    def record_thread_error(args):
        seen.append(f"{args.thread!r}: {args.exc_type.__name__}: {args.exc_value}")

    monkeypatch.setattr(threading, "excepthook", record_thread_error)
    return seen


def _clean(output: str) -> None:
    assert "Traceback" not in output and "Exception in thread" not in output, output
    assert "b'" not in output and 'b"' not in output, output


# ------------------------------------------------------------------------ TensorBoard
@pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only file system"),
                                          (errno.ENOSPC, "no space left on device")])
def test_a_tensorboard_log_that_cannot_be_written_warns_once_and_training_goes_on(
        db, tmp_path, monkeypatch, capfd, code, reason):
    version = tmp_path / "r" / "version_0"
    last = version / "checkpoints" / "last.ckpt"
    failed = _fail_events_file(monkeypatch, last.exists, code)
    thread_errors = _record_thread_errors(monkeypatch)

    result = _train(db, tmp_path)
    assert result.exit_code == 0, result.output
    assert failed, "TensorBoard's file layer was not called"
    events = [p for p in version.iterdir() if p.name.startswith("events.out.tfevents")]
    assert len(events) == 1, events
    warning = (f"Warning: cannot write TensorBoard's log {events[0]}: {reason}")
    assert warning in result.output, result.output
    assert ("Training goes on without TensorBoard logs; its checkpoints and audio examples "
            "are written as usual") in result.output
    assert result.output.count("cannot write TensorBoard's log") == 1, result.output
    _clean(result.output + capfd.readouterr().err)
    assert thread_errors == []
    assert threading.excepthook.__name__ == "record_thread_error"  # put back

    # the training went on to its end: checkpoints and audio examples as usual
    assert torch.load(last, weights_only=True)["global_step"] == 4
    assert sorted(p.name for p in (version / "audio").iterdir()) == \
        ["step_0.wav", "step_2.wav", "step_4.wav"]
    assert (version / "checkpoints" / "best.ckpt").is_file()


def test_a_run_folder_made_read_only_names_the_checkpoint_kept(db, tmp_path, monkeypatch,
                                                               capfd):
    """The audit's case: the run's version_0 made read-only after the first last.ckpt.
    Training stops at the next file it must write, with the checkpoint to resume from."""
    version = tmp_path / "r" / "version_0"
    last = version / "checkpoints" / "last.ckpt"
    failed = _fail_events_file(monkeypatch, last.exists, errno.EROFS)
    thread_errors = _record_thread_errors(monkeypatch)
    _read_only(monkeypatch, version, last.exists)
    result = _train(db, tmp_path)
    assert result.exit_code == 1, result.output
    assert failed
    _clean(result.output + capfd.readouterr().err)
    assert thread_errors == []
    assert "Warning: cannot write TensorBoard's log " in result.output
    lines = result.output.strip().splitlines()
    assert lines[-2] == (f"Error: cannot write {version / 'audio' / 'step_4.wav'}: read-only "
                         "file system: choose a folder you can write to"), result.output
    assert lines[-1] == (f"the last checkpoint is {last} (step 2), intact; fix that, then run "
                         "the same command again to resume"), result.output
    assert torch.load(last, weights_only=True)["global_step"] == 2


def test_the_log_wrapper_turns_a_failed_writer_into_one_warning(tmp_path, monkeypatch):
    """Unit: a SummaryWriter whose thread died of a full disk; the no-op stand-in too."""
    from torch.utils.tensorboard import SummaryWriter

    from rave_core.training.tensorboard_log import TensorBoardLog, quiet_writer_threads
    from rave_core.training.trainer import _NoTensorBoard

    thread_errors = _record_thread_errors(monkeypatch)
    writer = SummaryWriter(log_dir=str(tmp_path))
    failed = _fail_events_file(monkeypatch, lambda: True, errno.ENOSPC)
    log = TensorBoardLog(writer)
    with quiet_writer_threads(), warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for step in range(30):
            log.add_scalar("x", 1.0, step)
        log.flush()
        log.add_audio("a", torch.zeros(100), 0, sample_rate=100)
        log.close()
    assert failed and thread_errors == []
    assert [str(w.message) for w in said] == [
        f"cannot write TensorBoard's log {writer.file_writer.event_writer._file_name}: no space "
        "left on device: free some space or choose another folder. Training goes on without "
        "TensorBoard logs; its checkpoints and audio examples are written as usual"]
    assert isinstance(log.failure, OSError)

    # a wrong value is not a file-system error: raised as it is
    class WrongValue:
        def add_scalar(self, tag, value, step):
            raise ValueError(f"could not convert string to float: {value!r}")

    with pytest.raises(ValueError):
        TensorBoardLog(WrongValue()).add_scalar("x", "nan?", 0)

    stand_in = TensorBoardLog(_NoTensorBoard())
    stand_in.add_scalar("x", 1.0, 0)
    stand_in.add_audio("a", torch.zeros(10), 0, sample_rate=100)
    stand_in.flush()
    stand_in.close()
    assert stand_in.failure is None


def test_a_tensorboard_log_that_cannot_start_warns_and_writes_nothing(tmp_path, monkeypatch):
    """A resumed run whose version_0 was made read-only: the writer's first event fails
    before it returns (the thread's traceback, then the file named in bytes)."""
    from rave_core.training.tensorboard_log import TensorBoardLog, open_tensorboard_log

    thread_errors = _record_thread_errors(monkeypatch)
    failed = _fail_events_file(monkeypatch, lambda: True, errno.EROFS)
    with pytest.warns(UserWarning) as said:
        log = open_tensorboard_log(tmp_path)
    assert failed and thread_errors == []
    assert [str(w.message) for w in said] == [
        f"cannot write TensorBoard's log {os.fsdecode(failed[0])}: read-only file system: "
        "choose a folder you can write to. Training goes on without TensorBoard logs; its "
        "checkpoints and audio examples are written as usual"]
    for wrapped in (log, TensorBoardLog(log)):   # (the loop wraps what it is given)
        wrapped.add_text("config", "x")
        wrapped.add_scalar("x", 1.0, 0)
        wrapped.flush()
        wrapped.close()
        assert isinstance(wrapped.failure, OSError)


def test_quiet_writer_threads_silences_tensorboards_thread_alone(monkeypatch):
    from rave_core.training.tensorboard_log import quiet_writer_threads

    thread_errors = _record_thread_errors(monkeypatch)
    hook = threading.excepthook

    def fail():
        raise _os_error(errno.ENOSPC)

    class _AsyncWriterThread(threading.Thread):
        pass
    _AsyncWriterThread.__module__ = "tensorboard.summary.writer.event_file_writer"

    with quiet_writer_threads():
        assert threading.excepthook is not hook
        for thread in (_AsyncWriterThread(target=fail), threading.Thread(target=fail)):
            thread.start()
            thread.join()
    assert threading.excepthook is hook
    assert len(thread_errors) == 1 and "_AsyncWriterThread" not in thread_errors[0]


# ------------------------------------------------------------------------ checkpoints
def test_a_checkpoint_that_cannot_be_written_is_named_not_its_temporary_file(db, tmp_path,
                                                                             monkeypatch):
    """A read-only checkpoints folder (made by ``open``: chmod stops no root)."""
    ckpts = tmp_path / "r" / "version_0" / "checkpoints"
    _read_only(monkeypatch, ckpts)
    result = _train(db, tmp_path)
    assert result.exit_code == 1, result.output
    _clean(result.output)
    assert ".tmp-" not in result.output, result.output
    # the first validation improved: best.ckpt is written first
    assert result.output.strip().splitlines() == [
        f"Error: cannot write {ckpts / 'best.ckpt'}: read-only file system: choose a folder you "
        "can write to",
        "no checkpoint was written yet; fix that, then run the same command again (it starts "
        "over)"], result.output


@pytest.mark.parametrize("where", ["open", "write", "fsync", "replace"])
def test_replace_atomically_names_the_file_it_replaces(tmp_path, monkeypatch, where):
    target = tmp_path / "best.ckpt"

    def write(f):
        if where == "write":
            raise _os_error(errno.ENOSPC)
        f.write(b"x")

    if where == "open":
        _read_only(monkeypatch, tmp_path)
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(_os_error(errno.EIO)))
    elif where == "replace":
        monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(
            OSError(errno.EROFS, os.strerror(errno.EROFS), str(a), str(b))))
    with pytest.raises(OSError) as caught:
        checkpoint.replace_atomically(target, write)
    assert caught.value.filename == str(target), caught.value
    assert not list(tmp_path.iterdir())   # no temporary file left


def test_a_copy_whose_source_cannot_be_read_names_the_source(tmp_path):
    src, dst = tmp_path / "last.ckpt", tmp_path / "epoch_2.ckpt"
    with pytest.raises(FileNotFoundError) as caught:
        checkpoint.copy_checkpoint(src, dst)
    assert caught.value.filename == str(src)

    def wrapped(f):   # torch.save's way: a library error whose cause names another file
        try:
            src.read_bytes()
        except OSError as err:
            raise RuntimeError("cannot read") from err

    with pytest.raises(FileNotFoundError) as caught:
        checkpoint.replace_atomically(dst, wrapped)
    assert caught.value.filename == str(src)
    assert not list(tmp_path.iterdir())
