"""An advisory lock on a file in a folder: one process at a time writes that folder.

The holder keeps an exclusive ``flock`` on ``<folder>/<name>`` and writes its PID into the
file, for the message of a process refused. The system releases the lock when its
process ends, even killed (SIGKILL, a crash), so a stale lock file never blocks anyone.
Where ``fcntl`` is missing (Windows) nothing is locked.

Used by ``rave-core train`` (:mod:`rave_core.training.run_lock`: one training per run) and
``rave-deploy export`` (:mod:`rave_deploy.output_lock`: one export per output folder).
:func:`pid_alive` tells whether the process of a PID still runs, on POSIX and Windows (for
what a process killed outright left behind).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, Optional

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

#: whether this system can lock (False on Windows: :meth:`FolderLock.acquire` does nothing)
LOCKING = fcntl is not None


#: Windows: OpenProcess's access right, GetExitCodeProcess's "running", GetLastError's codes
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_STILL_ACTIVE = 259
_ERROR_INVALID_PARAMETER = 87


def pid_alive(pid: int) -> bool:
    """Whether a process of PID ``pid`` is running (another user's too). Where that cannot
    be told it is taken as running: callers keep what such a process may still use.

    POSIX: ``kill(pid, 0)``. Windows: ``os.kill(pid, 0)`` would send Ctrl-C there
    (``CTRL_C_EVENT`` is 0), so the process is opened and its exit code read instead.
    """
    if sys.platform == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = ctypes.c_void_p  # a HANDLE: 64 bits, not an int's 32
    kernel32.OpenProcess.argtypes = (ctypes.c_ulong, ctypes.c_int, ctypes.c_ulong)
    kernel32.GetExitCodeProcess.argtypes = (ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong))
    kernel32.CloseHandle.argtypes = (ctypes.c_void_p,)
    handle = kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:  # no such process; access denied (running, someone else's), or unknown
        return ctypes.get_last_error() != _ERROR_INVALID_PARAMETER
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == _STILL_ACTIVE  # (one that exited with 259 reads as running)
    finally:
        kernel32.CloseHandle(handle)


class LockHeld(Exception):
    """Another process holds the lock: ``pid`` is the PID it wrote, None where it wrote
    none (yet)."""

    def __init__(self, path: Path, pid: Optional[int]) -> None:
        self.path, self.pid = Path(path), pid
        super().__init__(f"{path} is locked by another process"
                         + (f" (PID {pid})" if pid is not None else ""))


class FolderLock:
    """An exclusive lock on ``folder / name``, held from :meth:`acquire` to :meth:`release`
    (or the end of the ``with`` block). The folder must exist.

    ``remove``: delete the lock file on release, leaving the folder as it was found (for
    folders users ship); a process that opened the file just before it was removed locks
    the file there now instead (:meth:`acquire`). Without it the file stays, as a run's
    ``.training.lock`` does. ``follow_links=False``: a symbolic link in the lock file's
    place is not followed (an OSError), so a folder received from someone else cannot
    make the lock truncate a file elsewhere.
    """

    def __init__(self, folder: Path, name: str, remove: bool = False,
                 follow_links: bool = True) -> None:
        self.folder = Path(folder)
        self.name = name
        self.remove = remove
        self.follow_links = follow_links
        self._file: Optional[IO[str]] = None

    @property
    def path(self) -> Path:
        return self.folder / self.name

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> bool:
        """Take the lock at once, or refuse: never waits. Returns whether a lock is held
        (False where nothing can be locked: Windows).

        Raises:
            LockHeld: another process holds it (also a second :class:`FolderLock` of
                the same file in this process).
            OSError: the lock file cannot be opened or written (a read-only folder, a
                full disk); nothing is held then.
        """
        if not LOCKING:
            return False
        if self._file is not None:
            return True
        flags = os.O_RDWR | os.O_CREAT
        if not self.follow_links:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        while True:
            f = open(os.open(self.path, flags, 0o666), "r+")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = _pid_in(f)
                f.close()
                raise LockHeld(self.path, pid) from None
            if not self.remove or _is_at(f, self.path):
                break
            f.close()  # its holder removed it as it was opened here: lock the one there now
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
        except OSError:
            self._file = f
            self.release()
            raise
        self._file = f
        return True

    def release(self) -> None:
        """Give the lock back (closing the file releases the flock); with ``remove``,
        delete the file first, while it is still held."""
        f, self._file = self._file, None
        if f is None:
            return
        if self.remove:
            with contextlib.suppress(OSError):
                if _is_at(f, self.path):
                    os.unlink(self.path)
        f.close()

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _pid_in(f: IO[str]) -> Optional[int]:
    """The PID a holder wrote in its lock file, None where there is none (being written)."""
    try:
        f.seek(0)
        text = f.read(32).strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def _is_at(f: IO[str], path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path`` (not removed, nor replaced)."""
    try:
        opened, there = os.fstat(f.fileno()), os.stat(path)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (there.st_dev, there.st_ino)
