"""``rave-deploy check``: prove an exported artefact right, the way its host will use it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

from rave_core.run import RunError, open_run

from ..sidecar import read_sidecar, sidecar_path
from ..targets import CheckOptions, get_target, registry
from .result import CheckReport, CheckResult


class CheckUsageError(ValueError):
    """The artefact or options cannot be checked at all (exit code 2)."""


SUFFIX_TARGETS = {".ts": "nn_tilde", ".onnx": "onnx", ".h5": "minifusion"}


def identify(artifact: Path):
    """The sidecar of ``artifact`` (or ``{}``) and the name of its target."""
    try:
        sidecar = read_sidecar(artifact)
    except FileNotFoundError:
        sidecar = None
    except (ValueError, UnicodeDecodeError, OSError) as err:  # JSONDecodeError is a ValueError
        raise CheckUsageError(f"{sidecar_path(artifact)} is not a readable rave-deploy sidecar "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__}): "
                              "re-export, or move it away and pass --run RUN") from None
    if sidecar is not None:
        if not isinstance(sidecar, dict) or not isinstance(sidecar.get("target"), str):
            raise CheckUsageError(f"{sidecar_path(artifact)} names no target: it is not a "
                                  "rave-deploy sidecar; re-export, or move it away and pass "
                                  "--run RUN")
        return sidecar, sidecar["target"]
    if artifact.is_dir() and any(artifact.glob("*.json")) and any(artifact.glob("*.onnx")):
        return {}, "anira"
    name = SUFFIX_TARGETS.get(artifact.suffix)
    if name is None:
        raise CheckUsageError(
            f"{artifact}: unknown artefact type (no rave-deploy sidecar, suffix "
            f"{artifact.suffix or 'none'}): expected a .ts, .onnx, .h5 or an anira folder")
    return {}, name


def check_artifact(artifact, run: Optional[str] = None,
                   options: Optional[CheckOptions] = None) -> CheckReport:
    """Check ``artifact`` against the eager model of its run (``run``, else the
    checkpoint named in its sidecar)."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise CheckUsageError(f"{artifact} does not exist")
    options = options or CheckOptions()
    sidecar, target_name = identify(artifact)
    if target_name not in registry():
        raise CheckUsageError(f"{artifact}: target {target_name!r} is not known to this version "
                              f"(known: {', '.join(sorted(registry()))})")
    origin = sidecar.get("source") if isinstance(sidecar.get("source"), dict) else {}
    source = run or origin.get("checkpoint")
    if not source:
        raise CheckUsageError(f"{artifact} has no rave-deploy sidecar naming its run: pass "
                              "--run RUN (the run directory or checkpoint it was exported from)")
    try:
        loaded = open_run(source, ema=bool(origin.get("ema_weights")))
        model = loaded.model
    except RunError as err:
        if run:
            raise
        # The checkpoint named in the sidecar moved or changed since the export.
        raise RunError(f"{err} (the run named in {sidecar_path(artifact)}); pass --run RUN "
                       "to check against the run it was exported from") from None
    style = sidecar.get("style") if isinstance(sidecar.get("style"), dict) else None
    if style:
        model = _taught_as_exported(model, sidecar, loaded.checkpoint_sha256)
    report = get_target(target_name).check(artifact, sidecar, model, options)
    if style:  # which audio the file, and so its reference, was taught from
        report.summary["style"] = {side: style[side]["path"] for side in ("target", "source")
                                   if isinstance(style.get(side), dict)}
    return report


#: the last model taught by ``_taught_as_exported``: ``rave-deploy check exports/*``
#: checks every target of one export, all taught alike (teaching takes seconds a file)
_LAST_TAUGHT: Dict[str, object] = {}


def _taught_as_exported(model, sidecar, checkpoint_sha256: str):
    """The run's model taught the style the sidecar names (``export --style-*``), so the
    reference computes what the file was taught."""
    from ..style_teaching import StyleAudio, StyleAudioError, teach_style

    try:
        style = StyleAudio.from_sidecar(sidecar["style"])  # files there and unchanged
    except StyleAudioError as err:
        raise CheckUsageError(f"{err}") from None
    key = json.dumps([checkpoint_sha256, sidecar.get("source", {}).get("ema_weights"),
                      sidecar["style"]], sort_keys=True)
    if _LAST_TAUGHT.get("key") != key:
        _LAST_TAUGHT.update(key=key, model=teach_style(model, style))
    return _LAST_TAUGHT["model"]


__all__ = ["CheckReport", "CheckResult", "CheckUsageError", "check_artifact", "identify"]
