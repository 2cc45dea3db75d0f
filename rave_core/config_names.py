"""The names of our shipped configs (``--config NAME``) and where their files are.

Apart from :mod:`rave_core.config` (which imports gin and torch), so that ``rave-core
configs`` and ``--help`` list them without importing torch; ``rave_core.config`` takes
both names from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

CONFIG_DIR = Path(__file__).parent / "configs"


def available_configs() -> List[str]:
    """Names accepted by ``--config`` (our shipped gin files)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.gin") if not p.stem.startswith("_"))
