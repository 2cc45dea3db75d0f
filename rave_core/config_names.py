"""The names of our shipped configs (``--config NAME``) and where their files are.

Apart from :mod:`rave_core.config` (which imports gin and torch), so that ``rave-core
configs`` and ``--help`` list them without importing torch; ``rave_core.config`` takes
both names from here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List

CONFIG_DIR = Path(__file__).parent / "configs"


def available_configs() -> List[str]:
    """Names accepted by ``--config`` (our shipped gin files)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.gin") if not p.stem.startswith("_"))


def config_description(name: str) -> str:
    """What a shipped config is, in a sentence: its leading comment's first paragraph,
    up to the first sentence that ends on or after its first line (a first line ending
    in a colon goes on to the next)."""
    lines: List[str] = []
    for line in (CONFIG_DIR / f"{name}.gin").read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text:
            break
        lines.append(text)
    if not lines:
        return ""
    paragraph = " ".join(lines)
    end = re.compile(r"[.!?](?=\s|$)").search(paragraph, max(len(lines[0]) - 1, 0))
    return paragraph[:end.end()] if end else paragraph
