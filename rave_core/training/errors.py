"""Errors of the training pipeline; each message says what went wrong and what to do."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


class TrainingError(RuntimeError):
    """Training could not go on (it diverged); the message says why and what to do."""


class TrainingArgumentError(ValueError):
    """An argument of :func:`train` is unusable as given, or a checkpoint does not fit the
    config (bad usage, as ``rave-deploy export`` answers weights that do not fit)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM: training stopped after a complete step and saved ``last.ckpt``.
    ``signal``: the number of the signal that asked it to stop."""

    def __init__(self, message: str, checkpoint: Optional[Path], signal: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.checkpoint = checkpoint
        self.signal = signal
