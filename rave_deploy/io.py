"""Atomic file output: nothing half-written, an existing output replaced only when the new
one is complete (also on error, Ctrl-C or a full disk).

Every output is written to a temporary sibling ``.<name>.<pid>.<random>.partial`` and
renamed over the final path once complete. The renames of one output (an artefact and its
sidecar) run with Ctrl-C held back, so they land together. A process killed outright
(SIGKILL, power cut) can leave a ``.partial`` sibling, never a damaged output; the next
write to the same path removes it once its process is gone, and so does the next export
into its folder (:func:`remove_unfinished`, run while the export holds the folder's lock).

Output folders are created as needed (``mkdir -p``), as ``rave-core preprocess``,
``rave-core train`` and ``rave-deploy check --report`` do too.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Set

from rave_core.folder_lock import pid_alive
from rave_core.os_errors import describe_os_error as describe

PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"  # a previous folder output, moved aside for the length of two renames
#: Exactly the names this module gives its temporaries: ``.<name>.<pid>.<random>.partial``
#: (``tempfile``'s eight random characters) and ``.<name>.<pid>.previous.old``.
_TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\."
                             r"(?:[a-z0-9_]{8}\.partial|previous\.old)", re.DOTALL)
#: The temporaries this process is writing now, as absolute paths (a killed process of the
#: same PID, as in a container where every command is PID 1, left the others of its PID)
_IN_USE: Set[str] = set()


class OutputError(OSError):
    """An output location that cannot be written; the message says what to do."""


class OutputInTheWay(OutputError):
    """Something that is not an earlier output stands at an output path (a folder where a
    file goes, a file where a folder goes, a folder of the user's): refused before
    anything is written, and it is left as it is. Bad usage (exit code 2)."""


# ------------------------------------------------------------------------ messages
def describe_os_error(err: OSError, path: Optional[Path] = None) -> str:
    """One line for ``err``: the path concerned (``path``, else the error's) and what to do,
    without the ``[Errno n]`` noise; ``path=""`` leaves the path out."""
    if isinstance(err, OutputError):
        return str(err)
    return describe(err, path)


# ------------------------------------------------------------------------ folders
def ensure_dir(folder: Path, flag: str = "--output") -> Path:
    """Create ``folder`` (and missing parents) or raise :class:`OutputError` saying why not
    (``flag``: the option the user can change)."""
    folder = Path(folder)
    if folder.is_dir():
        check_writable_dir(folder, flag)
        return folder
    blocker = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"cannot create output folder {folder}: {blocker} is a file, not a "
                          f"folder; choose another {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create output folder {folder}: "
                          f"{describe_os_error(err, '')}") from None
    check_writable_dir(folder, flag)
    return folder


def check_writable_dir(folder: Path, flag: str = "--output") -> None:
    """Raise :class:`OutputError` when ``folder`` is missing, not a folder or not writable.

    ``os.access`` is only a first check (it says yes to root almost everywhere); the
    write itself reports the real failure through :func:`describe_os_error`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise OutputError(f"output folder {folder} does not exist: create it first "
                          f"(mkdir -p {folder})")
    if not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder: choose another {flag}")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder {folder} is not writable: choose another {flag}")


def check_replaceable(path: Path, folder: bool = False, flag: str = "--output") -> None:
    """Raise :class:`OutputInTheWay` when ``path`` cannot simply be replaced by a new
    output: a folder where a file goes, or a file where a folder goes (``folder``).
    Whether an existing folder may be replaced is the caller's decision."""
    path = Path(path)
    if folder:
        if (path.exists() or path.is_symlink()) and not path.is_dir():
            raise OutputInTheWay(f"{path} is a file, not a folder: it stands where a folder "
                                 f"output goes; move it away, or choose another {flag}")
    elif path.is_dir():
        raise OutputInTheWay(f"{path} is a folder, not a file: it stands where a file output "
                             f"goes; move it away, or choose another {flag}")


# ------------------------------------------------------------------------ temporaries
def _partial_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def remove_stale_partials(path: Path) -> List[Path]:
    """Clean up after processes killed while writing ``path`` (and no longer running):
    delete their ``.partial`` temporaries, and put back a previous folder output that
    was moved aside (``.old``) when the new one had not replaced it yet. Returns the
    temporaries removed."""
    path = Path(path)
    removed: List[Path] = []
    if not path.parent.is_dir():
        return removed
    for sibling in sorted(path.parent.glob(f".{_glob_escape(path.name)}.*")):
        rest = sibling.name[len(path.name) + 2:]
        pid = rest.split(".", 1)[0]
        if not pid.isdigit() or not rest.endswith((PARTIAL_SUFFIX, OLD_SUFFIX)):
            continue
        if _clean_up(sibling, path, int(pid)):
            removed.append(sibling)
    return removed


def remove_unfinished(folder: Path) -> List[Path]:
    """Clean up ``folder`` after processes killed while writing there (and no longer
    running): every entry named exactly as :func:`atomic_outputs` names its temporaries
    (:data:`_TEMPORARY_NAME`), whatever output it was for, is handled as
    :func:`remove_stale_partials` does; nothing else is touched. Returns the temporaries
    removed. An entry that cannot be removed is left (the export's own writes then say
    what is wrong, where it is in their way)."""
    folder = Path(folder)
    removed: List[Path] = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY_NAME.fullmatch(name)
        if match is None:
            continue
        try:
            if _clean_up(folder / name, folder / match["name"], int(match["pid"])):
                removed.append(folder / name)
        except OSError:
            continue
    return removed


def _clean_up(temporary: Path, final: Path, pid: int) -> bool:
    """Remove ``temporary`` (a ``.partial``, or a folder output moved aside: ``.old``) of
    ``final``, written by process ``pid``, once that process is gone; an ``.old`` folder
    is put back instead where nothing replaced it. Returns whether it was removed."""
    if pid == os.getpid():
        if os.path.abspath(temporary) in _IN_USE:
            return False  # this process's own, being written
    elif pid_alive(pid):
        return False
    if temporary.name.endswith(OLD_SUFFIX) and not final.exists() and not final.is_symlink():
        os.replace(temporary, final)  # the killed process had moved it aside
        return False
    _discard(temporary)
    return True


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _umask() -> int:
    try:  # Linux: read it, without setting it even for an instant (threads create files)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(directory: bool) -> int:
    # mkstemp/mkdtemp create 0600/0700; a finished output gets the usual umask mode.
    return (0o777 if directory else 0o666) & ~_umask()


def _new_temp(path: Path, directory: bool) -> Path:
    remove_stale_partials(path)
    try:
        if directory:
            tmp = tempfile.mkdtemp(prefix=_partial_prefix(path), suffix=PARTIAL_SUFFIX,
                                   dir=path.parent)
        else:
            fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(path), suffix=PARTIAL_SUFFIX,
                                       dir=path.parent)
            os.close(fd)
        _IN_USE.add(os.path.abspath(tmp))
        return Path(tmp)
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(f"cannot write in {path.parent}: "
                          f"{describe_os_error(err, '')}") from None


def _discard(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C back (re-raised right after) so a group of renames is never split.

    Python runs signal handlers in the main thread only, so swapping the handler there
    is enough; elsewhere the renames simply run as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except (ValueError, OSError):  # e.g. embedded interpreters without signal support
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def _fsync(path: Path) -> None:
    if path.is_dir():
        return
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _commit(pairs: Sequence[tuple]) -> None:
    """Rename each ``(tmp, final)`` into place, held together against Ctrl-C. A folder
    already at ``final`` is moved aside first and put back if the rename fails."""
    for tmp, final in pairs:  # all or none: never the artefact renamed, then no sidecar
        check_replaceable(final, folder=tmp.is_dir())
    with _interrupts_held():
        done, aside = [], []
        try:
            for tmp, final in pairs:
                old = None
                if tmp.is_dir() and final.exists():
                    old = final.with_name(f"{_partial_prefix(final)}previous{OLD_SUFFIX}")
                    aside.append(os.path.abspath(old))
                    _IN_USE.add(aside[-1])
                    _discard(old)
                    os.replace(final, old)
                try:
                    os.replace(tmp, final)
                except BaseException:
                    if old is not None:
                        os.replace(old, final)
                    raise
                done.append(old)
        finally:
            for old in done:
                if old is not None:
                    _discard(old)
            _IN_USE.difference_update(aside)


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[Path], folder: bool = False) -> Iterator[List[Path]]:
    """Yield one temporary path per final path (the first a folder when ``folder``); on
    success they replace the final paths together. On any error, Ctrl-C included, the
    temporaries are removed and the earlier outputs stay exactly as they were.

    Raises:
        OutputError: the output folder is missing or cannot be written.
        OutputInTheWay: a folder stands where a file goes, or a file where the folder
            goes (checked for every path before anything is written).
    """
    paths = [Path(p) for p in paths]
    for i, path in enumerate(paths):
        check_replaceable(path, folder=folder and i == 0)
    temps: List[Path] = []
    try:
        for i, path in enumerate(paths):
            check_writable_dir(path.parent)
            temps.append(_new_temp(path, directory=folder and i == 0))
        yield list(temps)
        for i, tmp in enumerate(temps):
            _fsync(tmp)
            os.chmod(tmp, _default_mode(tmp.is_dir()))
        _commit(list(zip(temps, paths)))
    except BaseException:
        for tmp in temps:
            _discard(tmp)
        raise
    finally:
        _IN_USE.difference_update(os.path.abspath(tmp) for tmp in temps)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    with atomic_outputs([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``."""
    with atomic_outputs([path], folder=True) as (tmp,):
        yield tmp


def dump_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` as indented, key-sorted JSON (not atomic: a temporary)."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    with atomic_file(path) as tmp:
        dump_json(tmp, data)
