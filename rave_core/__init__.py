"""rave_core: our implementation of the RAVE model family (RAVE v1/v2/v3, BRAVE),
compatible with acids-rave 2.3.1 checkpoints and configs, with exact streaming.

>>> import rave_core
>>> model = rave_core.load_run("runs/my_run")          # or acids-rave's run directory
>>> y = model.decode(model.encode(x)[:, :model.latent_size])

Importing the package imports nothing else: the names below are imported from their
modules (which import torch: seconds) when first used (PEP 562), so that the command-line
tools answer ``--help`` and their listings without torch.
"""
from __future__ import annotations

from .lazy_names import lazy_names

__version__ = "0.1.0"

#: Each public name, and the module of this package it comes from.
_FROM = {
    "ConfigError": "config",
    "RunError": "run",
    "available_configs": "config_names",
    "build_model": "config",
    "load_run": "run",
    "open_run": "run",
}

__all__ = ["ConfigError", "RunError", "available_configs", "build_model", "load_run", "open_run"]


__getattr__, __dir__ = lazy_names(globals(), _FROM)
