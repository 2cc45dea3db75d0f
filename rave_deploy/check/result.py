"""Results of ``rave-deploy check``: named checks, each passed or failed with a reason,
and each artefact's summary (:data:`SUMMARY_KEYS`, documented below).

The summary (``check --json``: each artefact's ``summary``)
==========================================================

One shape for every target: every key below is present in every artefact's summary, in
this order, ``null`` where it does not apply to the target or where the check could not
establish it (a check that stopped early: a file that does not load, a failed contract);
what only one target measures is under ``target_specific``, which is always present. A
script reads the summary without knowing the target. Samples are at ``sample_rate``.

``size_bytes`` (int, bytes)
    The artefact's size on disk; an anira folder: its files together. Every target
    states it first thing; null only from a target that did not.
``sample_rate`` (int, Hz)
    The rate the host runs the artefact at (a file exported with ``--sr``: that rate,
    a multiple of the model's). null: the check stopped before reading it.
``ratio`` (int, samples per latent frame)
    The model's compression ratio at ``sample_rate``. null: as ``sample_rate``.
``block_size`` (int, samples)
    The fixed number of samples the artefact takes per call (an anira folder's graphs, a
    streaming ONNX graph exported with ``--block-size``): a host feeds it blocks of that
    size. null: it takes any multiple of ``ratio`` (every other target).
``latency_samples`` (int, samples)
    The model's latency, which a host compensates: the output answers the input this
    much later (the offline ONNX graph: 0, its output is aligned with its input). Not
    what the host's own buffering adds (``host_latency``). null: the check stopped first.
``latency_ms`` (float, ms)
    ``latency_samples`` in milliseconds. null: as ``latency_samples``.
``latency_measured`` (object, samples)
    ``{"mean": float, "min": int, "max": int, "jitter": int}``: the latency measured on
    clicks and note onsets at 16 positions inside a host block (``latency.forward``;
    ``jitter`` = max - min). null: not measured (the offline ONNX graph, which has no
    host block; a check that stopped first).
``parity`` (object)
    ``{method: {"snr_db": float, "max_rel_error": float}}`` for each method compared with
    the eager model: signal-to-error ratio in dB ("inf" when exact) and max |error| /
    peak. Streamed block by block and aligned by the latency, except the offline ONNX
    graph's (one call on the whole signal); Minifusion's is its NumPy emulation in
    float64 (its float32 error: ``target_specific.float32_max_rel_error``). null: no
    parity check ran.
``rtf`` (object)
    The artefact's streaming speed in the runtime its host uses (libtorch, ONNX Runtime),
    one thread, per host block: ``{block: {"block": int, "rtf": float (x real time),
    "mean_ms", "p99_ms", "max_ms", "budget_ms": float (ms; the budget is the block's
    duration), "blocks_timed": int, "passed": bool (p99 under budget)}}``. null: the
    host's streaming speed is not measured here: the offline ONNX graph (one call, no
    stream: ``target_specific.rtf_offline``) and Minifusion's file (a C++ plugin; our
    NumPy emulation's speed is ``target_specific.rtf_numpy_emulation``), or a check that
    stopped first.
``realtime_block`` (int, samples)
    The smallest host block in ``rtf`` that keeps up (``rtf.forward``). null: none kept
    up, or ``rtf`` is null.
``host_latency`` (object)
    The total latency in nn~ (the model's plus what nn~'s buffering adds at Pd's 64-sample
    vector; host contract 28): ``{"unthreaded": {"samples": int, "ms": float},
    "threaded": {block: {"samples": int, "ms": float}}}``; unthreaded is nn~'s buffer
    argument 0, which runs at the model's largest ratio R (R - 64 added), threaded one
    figure per buffer argument N (2N - 64 added). For the TorchScript files (``.ts``: the
    targets ``rave-deploy targets`` says are TorchScript), which nn~ loads (SuperCollider's
    NN.ar buffers as nn~ does; the RAVE UGens and the RAVE VST buffer otherwise: their
    sidecar's ``host_latency_samples``). null: every other artefact (ONNX graphs, anira
    folders, Minifusion's file), which nn~ cannot load (their hosts add their own
    buffering), or a check that stopped first. What the artefact's own host adds, where its contract states it, is in the
    ``latency.forward`` check (its message, and its details: ``host`` names the host and
    the key of its figures, ``nn_tilde_adds`` for nn~, ``host_adds`` for another host;
    ``host`` null and ``host_note`` where no figure is stated).
``checkpoint`` (str)
    The checkpoint the artefact was checked against, as the user knows it: relative to
    the current folder where that is shorter, else as the sidecar (or ``--run``) names it.
``style`` (object)
    ``{"target": str, "source": str}`` (either may be missing): the style audio a v3
    file was taught at export (``--style-target``, ``--style-source``), as
    ``checkpoint``'s paths are shown. null: the sidecar names none.
``target_specific`` (object, never null; ``{}`` when the target has nothing of its own)
    ``nn_tilde_host_latency`` (the TorchScript targets; object, samples):
        what nn~'s buffering adds to ``forward`` in the emulation of nn~
        (``contract.12_host_latency``), without the model's latency:
        ``{"forward unthreaded": int, "forward threaded <block>": int}``.
    ``rtf_offline`` (``onnx``; float, x real time): the offline graph on the whole test
        signal in one call (ONNX Runtime, one thread). Not a streaming speed: the graph
        has no host block.
    ``rtf_numpy_emulation`` (``minifusion``; object, as ``rtf``): the speed of our NumPy
        float32 emulation of the plugin, report only; the plugin itself runs C++ and is
        not timed here.
    ``float32_max_rel_error`` (``minifusion``; float, share of the peak): max |float32
        emulation - float64 eager model| / peak, what float32 arithmetic, as the plugin
        computes, adds (``precision.forward_float32``).

In ``--json``, NaN and infinities are the strings ``"nan"``, ``"inf"``, ``"-inf"``.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

#: The keys of every artefact's summary, in order (see the module's docstring for each
#: one's type, unit and when it is null); ``target_specific`` holds the rest.
SUMMARY_KEYS = ("size_bytes", "sample_rate", "ratio", "block_size", "latency_samples",
                "latency_ms", "latency_measured", "parity", "rtf", "realtime_block",
                "host_latency", "checkpoint", "style")
#: The key of the object holding what only one target measures.
TARGET_SPECIFIC = "target_specific"


def documented_summary(summary: Dict[str, Any]) -> Dict[str, Any]:
    """``summary`` in the documented shape: every key of :data:`SUMMARY_KEYS` (None where
    it has none), then ``target_specific``, where any other key a target wrote is moved,
    so the shape holds whatever a target writes."""
    extra = dict(summary.get(TARGET_SPECIFIC) or {})
    extra.update({k: v for k, v in summary.items()
                  if k not in SUMMARY_KEYS and k != TARGET_SPECIFIC})
    out = {k: summary.get(k) for k in SUMMARY_KEYS}
    out[TARGET_SPECIFIC] = extra
    return out


@dataclass
class CheckResult:
    """One check. ``name`` is dotted: ``contract.17_decode_params``, ``parity.decode``,
    ``causality.forward``, ``blocks.forward``, ``latency.forward``, ``rtf.forward``."""

    name: str
    passed: bool
    message: str
    value: Optional[float] = None
    threshold: Optional[str] = None
    details: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        v = self.value
        if v is not None and (math.isnan(v) or math.isinf(v)):
            v = str(v)
        return {"name": self.name, "passed": self.passed, "message": self.message,
                "value": v, "threshold": self.threshold, "details": self.details}


@dataclass
class CheckReport:
    """All checks of one artefact, plus data for the HTML report."""

    artifact: Path
    target: str
    results: List[CheckResult] = field(default_factory=list)
    #: facts for scripts and the report (the module's docstring: :data:`SUMMARY_KEYS`);
    #: filled as checks run, put in the documented shape by :func:`documented_summary`
    #: (``check_artifact`` and :meth:`as_dict` do)
    summary: Dict[str, Any] = field(default_factory=dict)
    signals: Dict[str, Any] = field(default_factory=dict)   # numpy arrays for plots/audio
    #: ``(sample rate, ratio)`` of the eager reference the generic checks compared the
    #: methods with (:func:`rave_deploy.check.harness.run_method_checks`): one per report
    reference: Optional[Tuple[int, int]] = field(default=None, repr=False, compare=False)
    #: the reference's receptive field per method, ``{method: (reference, (lookahead,
    #: memory))}``, measured once for the checks of all methods
    #: (:func:`rave_deploy.check.plan.impulse_span`)
    spans: Dict[str, Tuple[Any, Tuple[int, int]]] = field(default_factory=dict, repr=False,
                                                          compare=False)

    def add(self, name: str, passed: bool, message: str, **kw) -> CheckResult:
        r = CheckResult(name, bool(passed), message, **kw)
        self.results.append(r)
        listener = _ON_RESULT.get()
        if listener is not None:
            listener(r)
        return r

    def add_contract(self, name: str, problems: List[str], passed_message: str,
                     label: str = "host contract", **kw) -> CheckResult:
        """A host-contract check named ``contract.<point>_<what>``: it passes when
        ``problems`` is empty, and its message names the point and the problems (or
        ``passed_message``)."""
        point = name.split(".", 1)[1].split("_", 1)[0]
        detail = "; ".join(problems) if problems else passed_message
        return self.add(name, not problems, f"{label} {point}: {detail}", **kw)

    @property
    def target_specific(self) -> Dict[str, Any]:
        """``summary["target_specific"]``, created empty if need be: where a target puts
        what only it measures (documented in the module's docstring)."""
        return self.summary.setdefault(TARGET_SPECIFIC, {})

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def failures(self) -> List[CheckResult]:
        return [r for r in self.results if not r.passed]

    def as_dict(self) -> Dict[str, Any]:
        return {"artifact": str(self.artifact), "target": self.target, "passed": self.passed,
                "summary": documented_summary(self.summary),
                "checks": [r.as_dict() for r in self.results]}


_ON_RESULT: contextvars.ContextVar[Optional[Callable[[CheckResult], None]]] = \
    contextvars.ContextVar("rave_deploy_on_result", default=None)


@contextlib.contextmanager
def on_each_result(listener: Callable[[CheckResult], None]) -> Iterator[None]:
    """Call ``listener(result)`` as each check is added to any report inside the block:
    progress for a check that takes minutes. A target may still amend a result after
    adding it (e.g. Minifusion's timing, which is report-only), so a listener shows
    progress, not verdicts: the report holds those."""
    token = _ON_RESULT.set(listener)
    try:
        yield
    finally:
        _ON_RESULT.reset(token)
