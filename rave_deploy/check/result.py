"""Results of ``rave-deploy check``: named checks, each passed or failed with a reason."""
from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional


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
    summary: Dict[str, Any] = field(default_factory=dict)   # latency ms, rtf, snr, size...
    signals: Dict[str, Any] = field(default_factory=dict)   # numpy arrays for plots/audio

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
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def failures(self) -> List[CheckResult]:
        return [r for r in self.results if not r.passed]

    def as_dict(self) -> Dict[str, Any]:
        return {"artifact": str(self.artifact), "target": self.target, "passed": self.passed,
                "summary": self.summary, "checks": [r.as_dict() for r in self.results]}


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
