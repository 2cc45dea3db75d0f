"""The console scripts ``rave-core`` and ``rave-deploy`` (pyproject.toml's
[project.scripts]): each imports its CLI, then runs it; and :func:`interrupts_end_at_once`,
which the CLIs' commands use while they import the libraries they need.

The CLI modules themselves import no heavy library (``--help``, ``--version``, the
listings, a usage error: a fraction of a second); a command imports torch, onnx, NumPy
when it runs, which takes seconds. Ctrl-C in such an import raised KeyboardInterrupt in
the middle of some library's import, which Python printed as a traceback (or the library
turned into another error: numpy's RecursionError), and SIGTERM killed the process
without a word. While the CLI is imported, and while a command imports its libraries,
either now ends the process as the CLIs end an interrupted command: one line on stderr,
exit 130 (Ctrl-C) or 143 (SIGTERM), as the shell counts. Nothing was done yet, so there is
nothing to clean up: the process ends at once, no exception goes through the libraries'
imports.

:func:`torchrun` is torchrun as ``rave-core train --gpus N`` runs it: quiet where a
training process failed (that process said why).

``rave_core``'s ``__init__`` imports nothing up front (its names are imported when first
used), so importing this module imports nothing heavy; keep it free of imports from either
package at its top: its handlers must be in place before anything of theirs is imported.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Iterator

#: What an interrupted start-up says (the CLIs' own "Interrupted: ..." lines say what was
#: kept; here no command had started, or it was still importing its libraries).
INTERRUPTED = "Interrupted: nothing was done."

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_end_at_once(message: str = INTERRUPTED) -> Iterator[None]:
    """While inside, Ctrl-C or SIGTERM prints ``message`` on stderr and ends the process
    at once (exit 130 or 143), raising nothing: for imports that take seconds (torch),
    before anything is done. Only in the main thread (elsewhere Python cannot set
    handlers); the previous handlers are back on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        for stream in (sys.stdout, sys.stderr):   # os._exit flushes nothing
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(Exception):
            print(message, file=sys.stderr, flush=True)
        os._exit(128 + signum)   # 130 for Ctrl-C, 143 for SIGTERM

    previous = {s: signal.signal(s, stop) for s in _SIGNALS}
    try:
        yield
    finally:
        # from here on the CLIs handle both as each command needs
        for s, handler in previous.items():
            signal.signal(s, handler)


def _load(module: str):
    """``module``'s click command ``main``; Ctrl-C or SIGTERM meanwhile ends the process
    (exit 130 or 143) with one line."""
    with interrupts_end_at_once():
        return importlib.import_module(module).main


def rave_core() -> None:
    """``rave-core``: prepare datasets and train."""
    _load("rave_core.cli")()


def rave_deploy() -> None:
    """``rave-deploy``: export and check."""
    _load("rave_deploy.cli")()


def torchrun(argv=None) -> None:
    """torchrun's launcher (``torch.distributed.run``, arguments ``argv``, else the command
    line's), for ``rave-core train --gpus N``: where a training process fails, it exits
    with that process's exit code (2: a usage error; 1: a failed training; 128 + N: killed
    by signal N, the first to fail) instead of printing its ``ChildFailedError``
    traceback, 40 lines that add nothing to what the process said; the launcher's log
    lines (which process it stops, and how) are left out too. Interrupted (Ctrl-C,
    SIGTERM, passed on to the training processes, which save), it exits 130 or 143 without
    its ``SignalException`` traceback."""
    import logging
    with interrupts_end_at_once():
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import parse_args, run
    # (each of the launcher's modules sets its logger's own level)
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as err:
        # the first failure, but a usage error first of all: torchrun orders failures by
        # the second they happened in, then by rank, so that of a rank 1 whose arguments
        # were refused could come after rank 0's failing on the lost connection
        rank, failure = err.get_first_failure()
        refused = [(r, f) for r, f in sorted(err.failures.items()) if f.exitcode == 2]
        if refused:
            rank, failure = refused[0]
        code = failure.exitcode
        if code < 0:   # killed: it said nothing, say it here
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            print(f"Error: training process {rank} was killed by {name}"
                  + (" (out of memory, if nobody killed it: lower --batch or --n_signal)"
                     if -code == signal.SIGKILL else ""), file=sys.stderr)
            sys.exit(128 - code)
        sys.exit(code)
    except SignalException as err:
        sys.exit(128 + int(err.sigval))
