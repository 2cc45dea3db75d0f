"""One training per run folder at a time.

Two trainings of one run overwrite each other's ``last.ckpt`` and ``best.ckpt`` and both
log into ``version_0``. The training that writes the run holds an advisory lock on
``<run>/.training.lock`` (``flock``: the system releases it when the process ends, even
killed, so a stale lock never blocks a run). Where ``fcntl`` is missing (Windows) nothing
is locked.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Optional

from .errors import TrainingArgumentError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".training.lock"


class RunLock:
    """Held by the process writing a run, from :meth:`acquire` to the end of the ``with``
    block: acquired late, once the run's folder is about to be written, so that a
    training refused for another reason leaves no folder behind."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._file: Optional[IO[str]] = None

    def acquire(self) -> None:
        """Lock the run (creating its folder).

        Raises:
            TrainingArgumentError: another process is training this run.
        """
        if fcntl is None or self._file is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.run_dir / LOCK_NAME, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise TrainingArgumentError(
                f"run {self.run_dir} is being trained by another process"
                + (f" (PID {holder})" if holder.isdigit() else "")
                + ": wait for it to finish (then run this command again to resume it), or "
                  "choose another --name") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()   # closing releases the flock
            self._file = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
