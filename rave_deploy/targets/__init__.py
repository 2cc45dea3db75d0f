"""Export targets, one module each. Importing this package registers them all."""
from __future__ import annotations

import importlib
import pkgutil

from .base import CheckOptions, ExportOptions, Target, TargetUnsupported, register, registry


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def get_target(name: str) -> Target:
    targets = registry()
    if name not in targets:
        raise KeyError(name)
    return targets[name]


_discover()  # last: target modules may import this package's names

__all__ = ["CheckOptions", "ExportOptions", "Target", "TargetUnsupported", "get_target",
           "register", "registry"]
