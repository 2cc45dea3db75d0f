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
