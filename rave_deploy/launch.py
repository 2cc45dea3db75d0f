"""The console scripts ``rave-core`` and ``rave-deploy`` (pyproject.toml's
[project.scripts]): each imports its CLI, then runs it.

Importing a CLI takes seconds (torch, onnx). Ctrl-C in that time raised KeyboardInterrupt
in the middle of some library's import, which Python printed as a traceback (or the
library turned into another error: numpy's RecursionError), and SIGTERM killed the
process without a word. While the CLI is imported, either now ends the process as the
CLIs end an interrupted command: one line on stderr, exit 130 (Ctrl-C) or 143 (SIGTERM),
as the shell counts. Nothing was done yet, so there is nothing to clean up: the process
ends at once, no exception goes through the libraries' imports.

This module lives in ``rave_deploy`` because that package's ``__init__`` imports nothing:
``rave_core``'s imports torch, so a launcher inside it would import torch before its own
first line ran. Keep this module free of imports from either package at its top.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys

#: What an interrupted start-up says (the CLIs' own "Interrupted: ..." lines say what was
#: kept; here no command had started).
INTERRUPTED = "Interrupted: nothing was done."

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop(signum, frame) -> None:
    print(INTERRUPTED, file=sys.stderr, flush=True)
    os._exit(128 + signum)   # 130 for Ctrl-C, 143 for SIGTERM


def _load(module: str):
    """``module``'s click command ``main``; Ctrl-C or SIGTERM meanwhile ends the process
    (exit 130 or 143) with one line."""
    previous = {s: signal.signal(s, _stop) for s in _SIGNALS}
    try:
        return importlib.import_module(module).main
    finally:
        # from here on the CLIs handle both as each command needs
        for s, handler in previous.items():
            signal.signal(s, handler)


def rave_core() -> None:
    """``rave-core``: prepare datasets and train."""
    _load("rave_core.cli")()


def rave_deploy() -> None:
    """``rave-deploy``: export and check."""
    _load("rave_deploy.cli")()
