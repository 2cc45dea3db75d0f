"""The names of our shipped configs (``--config NAME``) and where their files are.

Apart from :mod:`rave_core.config` (which imports gin and torch), so that ``rave-core
configs`` and ``--help`` list them, and a ``--config`` that names no config (or a
modifier without its base) is refused, without importing torch; ``rave_core.config``
takes these names from here.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

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


#: Shipped configs that modify a base config given before them, and the bases each
#: applies to (None: any). spherical and wasserstein replace EncoderV2's output. Their
#: descriptions (``rave-core configs``) name the same bases.
MODIFIERS: Dict[str, Optional[Tuple[str, ...]]] = {
    "causal": None,
    "spherical": ("v2", "v2_small", "v2_nodisc", "v3"),
    "wasserstein": ("v2", "v2_small", "v2_nodisc", "v3"),
}


def shipped_config(name_or_path: str) -> Optional[Path]:
    """The shipped config file ``--config name_or_path`` reads: by its name (which wins
    over a file of that name in the working folder), else by a path to that very file."""
    if not name_or_path:
        return None
    if "/" not in name_or_path and os.sep not in name_or_path \
            and name_or_path in available_configs():
        return CONFIG_DIR / f"{name_or_path}.gin"
    try:
        path = Path(name_or_path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if path.suffix == ".gin" and path.parent == CONFIG_DIR.resolve() and path.is_file() \
            and path.stem in available_configs():
        return CONFIG_DIR / path.name
    return None


def _looks_like_a_path(name: str) -> bool:
    return "/" in name or os.sep in name or bool(os.altsep and os.altsep in name) \
        or name.endswith(".gin")


def config_problem(name_or_path: str) -> Optional[str]:
    """Why ``--config name_or_path`` names no config (a message for the user, in one
    line), or None: a shipped name, or a file (whose content is read later)."""
    flag = f"--config {name_or_path!r}" if not name_or_path.strip() else f"--config {name_or_path}"
    if not name_or_path.strip():
        return (f"{flag} is empty: give a shipped config name (`rave-core configs` lists "
                "them, e.g. v2_small) or a .gin file")
    if shipped_config(name_or_path) is not None:
        return None
    path = Path(name_or_path)
    if path.is_dir():
        return (f"{flag} is a folder: give a .gin file or a shipped config name "
                "(`rave-core configs` lists them)")
    if path.exists():
        return None
    names = available_configs()
    by_case = {n.lower(): n for n in names}
    if _looks_like_a_path(name_or_path):
        stem = path.stem if path.suffix == ".gin" else path.name
        shipped = by_case.get(stem.lower())
        hint = (f"; for the shipped config {shipped}, give --config {shipped}" if shipped else
                ": give an existing .gin file, or a shipped config name (`rave-core configs`)")
        return f"config file {name_or_path} does not exist{hint}"
    if name_or_path.lower() in by_case:
        close = [by_case[name_or_path.lower()]]
    else:
        found = difflib.get_close_matches(name_or_path.lower(), list(by_case), n=3)
        close = [by_case[c] for c in found]
    if close:
        return (f"unknown config {name_or_path!r}: not a shipped config nor a file. Did you "
                f"mean {', '.join(close)}? (`rave-core configs` lists them)")
    return (f"unknown config {name_or_path!r}: not a shipped config ({', '.join(names)}) nor "
            "a file")


def modifier_problem(configs: Sequence[str]) -> Optional[str]:
    """Why composing ``configs`` (``--config`` values, in order) cannot work: a shipped
    modifier alone, or after a shipped base it does not apply to (gin would fail deep
    inside, "missing 4 required positional arguments"). None if none is seen. A modifier
    or base may be given by name or by the path of its shipped file."""
    shipped = [shipped_config(c) for c in configs]
    names = [p.stem if p is not None else None for p in shipped]
    for i, (given, name) in enumerate(zip(configs, names)):
        if name not in MODIFIERS:
            continue
        allowed = MODIFIERS[name]
        shown = name if given == name else f"{given} (the shipped {name})"
        example = f"--config {(allowed or ('v2',))[0]} --config {name}"
        bases = [(c, n) for c, n in zip(configs[:i], names[:i]) if n not in MODIFIERS]
        if not bases:
            return f"{shown} is a modifier: give a base config before it, e.g. {example}"
        base, base_name = bases[0]
        if allowed is not None and base_name is not None and base_name not in allowed:
            base_shown = base_name if base == base_name else f"{base} (the shipped {base_name})"
            return (f"{shown} applies to {', '.join(allowed)}, not to {base_shown}: e.g. "
                    f"{example}")
    return None
