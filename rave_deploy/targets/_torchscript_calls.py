"""Calling a scripted file as a TorchScript host does, and what every TorchScript check
shares: not a target (the leading underscore keeps it out of target discovery).

* :func:`params`, :func:`call` (under inference mode, as hosts call), :func:`input_for`
  (a musical signal or a latent walk of a method's input shape), :func:`state_shapes`,
  :func:`output_problems` (what hosts require of an output), :func:`copy_problems` (a
  second copy of a file, moved or run by another executor);
* the file's attributes and switches: :func:`attr`, :func:`deterministic`,
  :func:`set_deterministic`, :func:`reset`;
* :class:`CheckContext`, what the checks know about the artefact, and :func:`named`,
  which names a check by the result it adds.

Used by the shared checks (:mod:`._torchscript`, :mod:`._torchscript_contracts`) and by
the host checks of the nn~, SuperCollider and RAVE VST targets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from rave_core.models.rave import RAVE

from .base import CheckOptions

METHODS = ("encode", "decode", "forward")


def params(module, method: str) -> List[int]:
    return [int(v) for v in getattr(module, f"{method}_params")]


def call(module, method: str, x: torch.Tensor):
    with torch.inference_mode():
        return getattr(module, method)(x)


def error_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` of an error raised in a call, in one line. TorchScript's errors
    start with a generic header ("The following operation failed in the TorchScript
    interpreter.") and tracebacks, and end with the error's own line (``RuntimeError:
    ...``): that last line, without PyTorch's "(Could this error message be improved?
    ...)"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1].split("  (Could this error message be improved?", 1)[0] if lines else ""
    head, _, rest = last.partition(":")
    if head.isidentifier() and head.endswith(("Error", "Exception")):   # `RuntimeError: ...`
        last = rest.strip()
    else:
        head = type(exc).__name__
    shown = f"{head}: {last}" if last else head
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


#: How a check that runs a second copy of a file says it could not compare outputs.
NOT_COMPARED = "; outputs not compared: the file has no deterministic switch"


def copy_problems(method: str, copy: str, run_copy: Callable[[], torch.Tensor],
                  ref: torch.Tensor, dtype: torch.dtype, comparable: bool) -> List[str]:
    """What is wrong with a second copy of a file (moved, or run by another executor)
    running ``method``: ``run_copy()`` raises, returns other than finite ``dtype`` values
    of ``ref``'s shape, or (when ``comparable``: both copies deterministic) an output
    other than the file's ``ref``, to 1e-5 of its peak."""
    try:
        y = run_copy()
    except Exception as exc:
        return [f"{method}: {error_line(exc)}"]
    if y.dtype != dtype or y.shape != ref.shape or not bool(y.isfinite().all()):
        return [f"{method}: {copy} returns {y.dtype} {tuple(y.shape)}, not finite {dtype} "
                f"{tuple(ref.shape)}"]
    err = float((y.to(ref.dtype) - ref).abs().max())
    if comparable and err > 1e-5 * float(ref.abs().max() + 1e-12):
        return [f"{method}: {copy}'s output is not the file's (max difference {err:.3g})"]
    return []


def state_shapes(module) -> Dict[str, Tuple[int, ...]]:
    return {n: tuple(b.shape) for n, b in module.named_buffers()
            if n == "state" or n.endswith(".state")}


def _musical(n: int, channels: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float32)
    tone = 0.3 * torch.sin(2 * math.pi * t * 0.013) + 0.2 * torch.sin(2 * math.pi * t * 0.0021)
    noise = 0.1 * torch.randn(batch, channels, n, generator=g)
    return (tone + noise).float()


def _latent(frames: int, channels: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.cumsum(torch.randn(batch, channels, frames, generator=g), -1)
    return (z / max(math.sqrt(frames), 1.0)).float()


def input_for(module, method: str, n_audio: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    in_dim, in_ratio, _, _ = params(module, method)
    if in_ratio > 1:
        return _latent(n_audio // in_ratio, in_dim, batch, seed)
    return _musical(n_audio, in_dim, batch, seed)


def output_problems(y, expected: Tuple[int, ...]) -> List[str]:
    if not isinstance(y, torch.Tensor):
        return [f"returns {type(y).__name__}, not one tensor (nn~ fails every block)"]
    out = []
    if tuple(y.shape) != expected:
        out.append(f"shape {tuple(y.shape)} != {expected}")
    if y.dtype != torch.float32:
        out.append(f"dtype {y.dtype}")
    if not y.is_contiguous():
        out.append("not contiguous")
    if not bool(torch.isfinite(y).all()):
        out.append("non-finite values")
    return out


# --------------------------------------------------------------------------- attributes
def attr(module, name: str):
    try:
        return module._c.getattr(name) if module._c.hasattr(name) else None
    except Exception:
        return None


def deterministic(module) -> Optional[bool]:
    if module._c._has_method("get_deterministic"):
        return bool(module.get_deterministic()[0])
    return None


def set_deterministic(module) -> bool:
    if module._c._has_method("set_deterministic"):
        module.set_deterministic(True)
        return True
    return False


def reset(module, batch: int = 1) -> None:
    """Silence, and the same random draws for every compared run (files without a
    deterministic switch sample noise)."""
    if module._c._has_method("reset"):
        module.reset()
    torch.manual_seed(0)


# --------------------------------------------------------------------------- checks
def named(name: str):
    """Name a check (a function, or a target's method) by the result it adds (reported if
    the check itself crashes)."""
    def mark(fn):
        fn.check_name = name
        return fn
    return mark


@dataclass
class CheckContext:
    """What the checks know about the artefact."""

    artifact: Path
    sidecar: Dict[str, object]
    model: RAVE
    options: CheckOptions
    ratio: int
    latent: int
    blocks: List[int]
    #: the file's ``latency_samples`` attribute (0 if it has none), for files without sidecar
    model_latency: int = 0

    def past_latency(self, calls: int = 1) -> int:
        """Samples of input, a multiple of ``calls * ratio``, that reach at least two
        frames past the model's latency: within the latency the output is the model's
        response to silence, too small to compare two copies by (a v2's can peak at
        5e-11, and rounding noise relative to that fails any tolerance)."""
        latency = int(self.sidecar.get("latency_samples") or self.model_latency or 0)
        step = calls * self.ratio
        return -(-(latency + 2 * self.ratio) // step) * step
