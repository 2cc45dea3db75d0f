"""How `rave-deploy check` shows its results: each check's PASS/FAIL line and the summary
table for people, one strict JSON object for scripts (``--json``, errors included), and
the ``checking ARTIFACT (k/n)`` progress line on stderr while an artefact is checked."""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import click

from rave_core.text import printable

from .result import on_each_result


def jsonable(v: Any) -> Any:
    """``v`` (dicts, lists, NumPy and torch values, paths) as plain JSON values, NaN and
    infinities as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (as
    :meth:`CheckResult.as_dict` writes a check's value): ``json.dumps(..., allow_nan=False)``
    then always succeeds, and strict parsers (``JSON.parse``) read the result (a path that
    is not UTF-8 shows its bytes as ``\\xe9``: :func:`rave_core.text.printable`)."""
    if isinstance(v, dict):
        return {jsonable(str(k)): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in v]
    if (type(v).__module__.partition(".")[0] in ("numpy", "torch")
            and callable(getattr(v, "tolist", None))):
        # arrays, tensors and NumPy scalars (tolist gives Python values), told apart
        # without importing NumPy: an error under --json prints at once
        return jsonable(v.tolist())
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, (str, Path)):
        # a name that is not UTF-8 holds lone surrogates, which strict parsers refuse
        return printable(str(v))
    return v


def print_json(data) -> None:
    """``data`` as strict JSON on stdout: NaN and infinities as strings ("nan", "inf", as
    CheckResult.as_dict writes a value), names that are not UTF-8 as ``\\xe9``."""
    click.echo(json.dumps(jsonable(data), indent=2, allow_nan=False))


def print_results(reports) -> None:
    """Each check's PASS or FAIL line, then the summary table, on stdout."""
    from .report import format_table
    for r in reports:
        for c in r.results:
            mark = "PASS" if c.passed else "FAIL"
            click.echo(printable(f"  {mark}  {c.name:32s} {c.message}"))
    click.echo("")
    click.echo(printable(format_table(reports)))


class CheckProgress:
    """The line ``checking ARTIFACT (k/n)`` on stderr. On a terminal it is rewritten as
    each check finishes (how many, seconds so far, the last one's name) and ends with the
    count and time: a full-size model's checks take minutes. Elsewhere (a log, a pipe) it
    is printed once, unless ``quiet`` (``--json``: stdout is for the JSON, and a script
    reading it may log stderr). A warning or an error printed meanwhile starts on a line
    of its own (an error: call :meth:`end_open_line` before printing it)."""

    #: a progress line is open on the terminal
    open_line = False

    def __init__(self, title: str, quiet: bool = False) -> None:
        self.title = printable(title)
        self.live = sys.stderr.isatty()
        self.show = self.live or not quiet
        self.count = 0
        self.t0 = time.monotonic()

    def __enter__(self) -> "CheckProgress":
        if not self.live:
            if self.show:
                click.echo(f"{self.title} ...", err=True)
            return self
        self._write(f"{self.title} ...")
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(on_each_result(self._on_result))
        previous = warnings.showwarning

        def show(*args, **kwargs):
            CheckProgress.end_open_line()
            previous(*args, **kwargs)

        warnings.showwarning = show
        self._stack.callback(setattr, warnings, "showwarning", previous)
        return self

    def _on_result(self, result) -> None:
        self.count += 1
        self._write(f"{self.title}: {_checks(self.count)} ({time.monotonic() - self.t0:.0f} s), "
                    f"last {result.name}")

    def _write(self, text: str) -> None:
        width = shutil.get_terminal_size((80, 24)).columns - 1
        click.echo("\r\x1b[K" + (text if len(text) <= width else text[:width - 3] + "..."),
                   err=True, nl=False)
        CheckProgress.open_line = True

    @staticmethod
    def end_open_line() -> None:
        if CheckProgress.open_line:
            CheckProgress.open_line = False
            click.echo("", err=True)

    def done(self, report) -> None:
        if self.live:
            failed = len(report.failures())
            self._write(f"{self.title}: {_checks(len(report.results))}"
                        + (f", {failed} failed" if failed else "")
                        + f" in {time.monotonic() - self.t0:.0f} s")
            self.end_open_line()

    def __exit__(self, *exc) -> None:
        if self.live:
            self._stack.close()
            self.end_open_line()   # interrupted: end the line before what follows


def _checks(n: int) -> str:
    """``1 check``, ``2 checks``."""
    return f"{n} check" + ("" if n == 1 else "s")
