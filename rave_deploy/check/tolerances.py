"""Pass thresholds of the generic checks (:mod:`rave_deploy.check.harness`,
:mod:`rave_deploy.check.latency`), and how a target chooses them.

The defaults expect an artefact computed in float32 PyTorch: streaming is exact there, so
causality and latency allow no difference at all, and parity and block sizes allow float32
rounding. A target whose runtime computes otherwise loosens its own (``options.tolerances``,
read by :func:`tolerances_of`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional


@dataclass
class Tolerances:
    """Pass thresholds of the generic checks.

    A target whose runtime is not bit-exact with PyTorch (ONNX Runtime's fused kernels, a
    NumPy re-implementation) loosens ``parity_*``; the defaults expect float32 PyTorch.
    Pass them with ``run_method_checks(..., tolerances=Tolerances(parity_max_rel=1e-3))``
    or as ``options.tolerances`` (a :class:`Tolerances` or a dict of its fields).
    """

    #: max |exported - eager| / peak |eager| after the warm-up.
    parity_max_rel: float = 1e-4
    #: minimum signal-to-error ratio of the exported output, dB.
    parity_min_snr_db: float = 80.0
    #: max |output at N - output at N0| / peak: blocks must not change the result.
    #: Float32 rounding of differently sized products stays near 1e-6 in small models
    #: and reaches 5e-5 in a full-size c128_r10 (4.6e-14 in float64): the bound is the
    #: parity bound; state carried wrongly across calls shows as 1e-3 or more.
    blocks_max_rel: float = 1e-4
    #: a change smaller than this share of the output peak is "no change"
    #: (streaming is exact: a causal artefact shows exactly 0).
    causality_max_rel: float = 1e-6
    #: allowed |measured - structural| latency, samples (streaming is exact: 0).
    latency_max_error: int = 0


def tolerances_of(options, override: Optional[Tolerances] = None) -> Tolerances:
    """The tolerances to use: ``override``, else ``options.tolerances``, else defaults."""
    if override is not None:
        return override
    tol = getattr(options, "tolerances", None)
    if isinstance(tol, Tolerances):
        return tol
    if isinstance(tol, dict):
        known = {f.name for f in fields(Tolerances)}
        unknown = set(tol) - known
        if unknown:
            raise ValueError(f"unknown tolerance(s) {sorted(unknown)}: expected some of {sorted(known)}")
        return replace(Tolerances(), **tol)
    return Tolerances()


__all__ = ["Tolerances", "tolerances_of"]
