"""One training per run folder at a time.

Two trainings of one run overwrite each other's ``last.ckpt`` and ``best.ckpt`` and both
log into ``version_0``. The training that writes the run holds an advisory lock on
``<run>/.training.lock`` (``flock``, :mod:`rave_core.folder_lock`: the system releases it
when the process ends, even killed, so a stale lock never blocks a run). Where ``fcntl``
is missing (Windows) nothing is locked.
"""
from __future__ import annotations

from pathlib import Path

from ..folder_lock import LOCKING, FolderLock, LockHeld
from .errors import TrainingArgumentError

LOCK_NAME = ".training.lock"


class RunLock:
    """Held by the process writing a run, from :meth:`acquire` to the end of the ``with``
    block: acquired late, once the run's folder is about to be written, so that a
    training refused for another reason leaves no folder behind."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock = FolderLock(self.run_dir, LOCK_NAME)

    def acquire(self) -> None:
        """Lock the run (creating its folder).

        Raises:
            TrainingArgumentError: another process is training this run.
        """
        if not LOCKING or self._lock.held:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except LockHeld as held:
            raise TrainingArgumentError(
                f"run {self.run_dir} is being trained by another process"
                + (f" (PID {held.pid})" if held.pid is not None else "")
                + ": wait for it to finish (then run this command again to resume it), or "
                  "choose another --name") from None

    def release(self) -> None:
        self._lock.release()   # closing the file releases the flock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
