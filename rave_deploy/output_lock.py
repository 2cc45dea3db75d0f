"""One ``rave-deploy export`` at a time into an output folder.

Two exports into one folder at once would both succeed, and could leave one name's
artefact from one run beside its sidecar, or its other targets, from the other. An export
holds an advisory lock on ``<output folder>/.rave-deploy.lock`` (:mod:`rave_core.folder_lock`:
``flock``, released by the system when the process ends, even killed) from before it
loads its run to after its last write there; a second export into that folder is refused
at once, before loading its own run (:class:`OutputLocked`, exit code 2), naming the PID
of the first. The lock file is removed when the export ends, so the folder a user ships
holds no trace of it (a process killed outright leaves it, hidden: the next export takes
it over and removes it, and ``rave-deploy check`` ignores it). Where ``fcntl`` is missing
(Windows) nothing is locked.

Holding the lock, an export knows that no other export is writing into the folder: it
removes the temporaries that exports killed outright left there, whatever target they were
for (:func:`rave_deploy.io.remove_unfinished`: only names exactly as our atomic writer
gives them, of processes no longer running), and says so in one warning.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator

from rave_core.folder_lock import FolderLock, LockHeld
from rave_core.text import listed

from .io import OutputInTheWay, ensure_dir, remove_unfinished

LOCK_NAME = ".rave-deploy.lock"


class OutputLocked(OutputInTheWay):
    """Another export is writing into the output folder: refused before anything is
    written, nothing touched. Bad usage (exit code 2), as every :class:`OutputInTheWay`:
    what stands in the way is the user's other export, and the remedy theirs (wait for it,
    or choose another --output)."""


class OutputLock:
    """The export lock of ``folder``, taken in two steps, so that an export is refused
    before its slow work (loading the checkpoint, teaching a style) and yet leaves nothing
    behind when it then writes nothing (:func:`rave_deploy.export.export_run`):

    * :meth:`claim`, first: takes the lock where the folder exists, refusing at once
      (:class:`OutputLocked`) where another export holds it. It creates nothing: where
      the folder does not exist no export is writing there (a holder made it first).
    * :meth:`take`, before writing: creates the folder as needed (:func:`ensure_dir`),
      takes the lock if :meth:`claim` did not, and removes what exports killed outright
      left unfinished there.

    Held until :meth:`release` (or the end of the ``with`` block), which removes the lock
    file. A lock file that cannot be written (a full disk, a read-only folder; a link or a
    folder of that name) locks nothing: the export's own writes then say what is wrong,
    in their words.
    """

    def __init__(self, folder: Path, flag: str = "--output") -> None:
        self.folder = Path(folder)
        self.flag = flag
        self._lock = FolderLock(self.folder, LOCK_NAME, remove=True, follow_links=False)

    def claim(self) -> None:
        """Take the lock of an existing folder; nothing where it does not exist.

        Raises:
            OutputLocked: another process holds it.
        """
        if self.folder.is_dir():
            self._acquire()

    def take(self) -> Path:
        """Hold the lock of the folder, created as needed; returns the folder.

        Raises:
            OutputLocked: another process holds it.
            OutputError: the folder cannot be created, or is not writable (:func:`ensure_dir`).
        """
        folder = ensure_dir(self.folder, self.flag)
        if self._acquire():
            _remove_unfinished(folder)
        return folder

    def _acquire(self) -> bool:
        """Whether the lock is held (at once, where it already is)."""
        try:
            return self._lock.acquire()
        except LockHeld as other:
            by = f" (PID {other.pid})" if other.pid is not None else ""
            raise OutputLocked(f"another rave-deploy export{by} is writing into {self.folder}: "
                               f"wait for it to finish, or choose another {self.flag}") from None
        except OSError:
            return False

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def output_lock(folder: Path, flag: str = "--output") -> Iterator[Path]:
    """Hold the export lock of ``folder`` (created as needed) for the ``with`` block, which
    gets the folder: :meth:`OutputLock.take`, released at the end."""
    with OutputLock(folder, flag) as lock:
        yield lock.take()


def _remove_unfinished(folder: Path) -> None:
    """Remove what exports killed outright left unfinished in ``folder``, saying so."""
    removed = remove_unfinished(folder)
    if removed:
        files = "file" if len(removed) == 1 else "files"
        warnings.warn(f"removed {len(removed)} unfinished {files} left in {folder} by an "
                      f"interrupted export: {listed([p.name for p in removed], 3)}",
                      stacklevel=1)


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` is an export's lock file (never an artefact)."""
    return Path(path).name == LOCK_NAME


__all__ = ["LOCK_NAME", "OutputLock", "OutputLocked", "is_lock_file", "output_lock"]
