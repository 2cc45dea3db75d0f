"""Rank 0's TensorBoard log, which a training keeps on the side: a file-system error on
its events file (a full disk, a folder made read-only) is one warning, then training
goes on without it, its checkpoints and audio examples written as usual.

TensorBoard's ``SummaryWriter`` writes in a background thread: where a write fails, that
thread stores the error, dies of it (``threading``'s hook prints its traceback) and the
writer raises it at its next call (``add_scalar``, ``flush``, ``close``), naming the
events file as bytes. :class:`TensorBoardLog` takes that error and
:func:`quiet_writer_threads` keeps the dying thread from printing it.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

from ..os_errors import describe_os_error, os_error_in

__all__ = ["TensorBoardLog", "open_tensorboard_log", "quiet_writer_threads"]


class TensorBoardLog:
    """Wraps a TensorBoard ``SummaryWriter`` (or a stand-in that writes nothing): its first
    file-system error warns once, naming the events file, and every later call does
    nothing. Other errors (a wrong value) are raised as they are."""

    def __init__(self, writer: Any) -> None:
        #: the error that turned logging off, or None while it writes
        self.failure: Optional[OSError] = None
        if isinstance(writer, TensorBoardLog):  # (already wrapped)
            writer, self.failure = writer._writer, writer.failure
        self._writer = writer

    def add_scalar(self, *args, **kwargs) -> None:
        self._call("add_scalar", *args, **kwargs)

    def add_audio(self, *args, **kwargs) -> None:
        self._call("add_audio", *args, **kwargs)

    def add_text(self, *args, **kwargs) -> None:
        self._call("add_text", *args, **kwargs)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        """Write what is pending and close the writer; never raises a file-system error
        (that warns, as any other write's)."""
        self._call("close")

    def _call(self, name: str, *args, **kwargs) -> None:
        if self.failure is not None:
            return
        try:
            getattr(self._writer, name)(*args, **kwargs)
        except Exception as err:
            cause = os_error_in(err)
            if cause is None:
                raise
            self._turn_off(cause)

    def _turn_off(self, err: OSError) -> None:
        self.failure = err
        path = _events_file(self._writer, err)
        what = f" {describe_os_error(err, path)}" if path else f": {describe_os_error(err, '')}"
        warnings.warn(f"cannot write TensorBoard's log{what}. Training goes on without "
                      "TensorBoard logs; its checkpoints and audio examples are written as usual")
        # Stop its thread where it still runs (a failure of the writer's own flush); a dead
        # one holds nothing (each write opens the events file anew).
        if self._writer is not None:
            with quiet_writer_threads(), contextlib.suppress(Exception):
                self._writer.close()


def open_tensorboard_log(log_dir: Path) -> TensorBoardLog:
    """A :class:`TensorBoardLog` on a new ``SummaryWriter`` for ``log_dir``. The writer
    writes its first event before it returns: where that fails (a resumed run's folder
    made read-only), the same warning, and a log that writes nothing."""
    from torch.utils.tensorboard import SummaryWriter

    with quiet_writer_threads():
        try:
            return TensorBoardLog(SummaryWriter(log_dir=str(log_dir)))
        except Exception as err:
            cause = os_error_in(err)
            if cause is None:
                raise
            log = TensorBoardLog(None)
            log._turn_off(cause if cause.filename is not None
                          else OSError(cause.errno, cause.strerror, str(log_dir)))
            return log


def _events_file(writer: Any, err: OSError) -> str:
    """The file that ``err`` failed to write, as text (TensorBoard's file layer names it in
    bytes; a failed write or flush names none: the writer's events file, or its folder)."""
    if isinstance(err.filename, (str, bytes)):
        return os.fsdecode(err.filename)
    event_writer = getattr(getattr(writer, "file_writer", None), "event_writer", None)
    for name in (getattr(event_writer, "_file_name", None), getattr(writer, "log_dir", None)):
        if isinstance(name, (str, bytes, os.PathLike)):
            return os.fsdecode(name)
    return ""


def _is_writer_thread(thread: Optional[threading.Thread]) -> bool:
    """Whether ``thread`` is TensorBoard's event writer thread (``_AsyncWriterThread``)."""
    return thread is not None and any(
        cls.__name__ == "_AsyncWriterThread" and cls.__module__.startswith("tensorboard")
        for cls in type(thread).__mro__)


@contextlib.contextmanager
def quiet_writer_threads() -> Iterator[None]:
    """While inside, TensorBoard's writer thread that dies of a file-system error prints no
    traceback (the writer raises that error at its next call, which
    :class:`TensorBoardLog` turns into its warning); every other thread's exception goes
    to ``threading.excepthook`` as before, which is put back on the way out."""
    previous = threading.excepthook

    def hook(args) -> None:
        if _is_writer_thread(args.thread) and os_error_in(args.exc_value) is not None:
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        if threading.excepthook is hook:  # not replaced meanwhile
            threading.excepthook = previous
