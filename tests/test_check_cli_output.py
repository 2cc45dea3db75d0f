"""What `rave-deploy check` prints for people and scripts: the progress line on a terminal,
and the summary keys every artefact's JSON has whatever its target."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from rave_deploy.check import COMMON_SUMMARY
from rave_deploy.check.result import CheckReport

from .runs import export_quietly, make_run


def _run_with_terminal_stderr(args) -> tuple:
    """``(returncode, stdout, stderr)`` of ``args`` with stderr on a pseudo-terminal, as
    when a person runs the command (stdout a pipe, as when they redirect it)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave,
                            env={**os.environ, "COLUMNS": "200"})
    os.close(slave)
    chunks = []

    def drain():   # a pty's buffer is small: read while the command runs
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:   # the other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout = proc.stdout.read()
    proc.wait(timeout=600)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check_output")
    run = make_run(root / "runs", ("brave",), unit_gains=True)
    export_quietly(run, ["onnx", "onnx_streaming", "minifusion"], root / "ex")
    return root / "ex"


def test_a_terminal_sees_each_artefacts_checks_count_up_and_stdout_stays_json(exports):
    artefacts = sorted(p for p in exports.iterdir() if not p.name.endswith(".json"))
    code, stdout, stderr = _run_with_terminal_stderr(
        [sys.executable, "-m", "rave_deploy.cli", "check", *map(str, artefacts), "--json"])
    assert code == 0, stderr
    data = json.loads(stdout)   # the progress went to the terminal, not into the JSON
    lines = stderr.replace("\r\n", "\n").split("\n")
    for i, (artefact, result) in enumerate(zip(artefacts, data["artifacts"]), 1):
        n = len(result["checks"])
        title = f"checking {artefact} ({i}/{len(artefacts)})"
        line = next(line for line in lines if title in line)
        updates = line.split("\r\x1b[K")
        assert f"{title}: 1 check (" in line and f"{title}: 2 checks (" in line, line
        assert f"last {result['checks'][-1]['name']}" in updates[-2]
        # the line ends with the count and the time, then a newline
        assert updates[-1].startswith(f"{title}: {n} checks in ") and updates[-1].endswith(" s")


def test_a_warning_during_a_check_starts_on_its_own_line(capsys, monkeypatch):
    """A warning printed while the progress line is open must not be glued to it."""
    from rave_deploy.check.output import CheckProgress

    # as rave_core.cli.warnings_as_messages prints ours
    monkeypatch.setattr(warnings, "showwarning",
                        lambda message, *args, **kw: print(f"Warning: {message}", file=sys.stderr))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)   # a terminal: the live line
    report = CheckReport(Path("model.ts"), "nn_tilde")
    with CheckProgress("checking model.ts (1/1)") as progress:
        report.add("contract.1_load", True, "loads")
        warnings.warn("something odd")
        report.add("parity.forward", True, "exact")
        progress.done(report)
    err = capsys.readouterr().err
    assert "last contract.1_load\nWarning: something odd\n" in err, repr(err)
    assert err.endswith("checking model.ts (1/1): 2 checks in 0 s\n"), repr(err)


def test_every_artefacts_summary_has_the_common_keys(exports):
    from click.testing import CliRunner

    from rave_deploy.cli import main

    result = CliRunner().invoke(main, ["check", str(exports), "--json"])
    assert result.exit_code == 0, result.output
    artefacts = json.loads(result.stdout)["artifacts"]
    assert {a["target"] for a in artefacts} == {"onnx", "onnx_streaming", "minifusion"}
    for a in artefacts:
        s = a["summary"]
        missing = [k for k in COMMON_SUMMARY if k not in s]
        assert not missing, (a["target"], missing)
        assert list(s) == list(COMMON_SUMMARY), a["target"]   # and nothing else
        assert (s["sample_rate"], s["ratio"]) == (44100, 128), a["target"]
        assert s["size_bytes"] == Path(a["artifact"]).stat().st_size
        if a["target"] == "onnx_streaming":   # the smallest block that kept up
            kept_up = [int(b) for b, row in s["rtf"].items() if row["passed"]]
            assert s["realtime_block"] == (min(kept_up) if kept_up else None)
            assert s["latency_samples"] == 112
        else:   # an offline graph; Minifusion's plugin is not timed here
            assert s["realtime_block"] is None, a["target"]


def test_check_loads_each_run_once_and_no_check_changes_its_model(exports, tmp_path,
                                                                  monkeypatch):
    """`check` opened each run twice per artefact (once to refuse a broken run before any
    check, then again inside the check); it now hands the first to every check, which is
    sound only if no target's check changes the model it is given."""
    from click.testing import CliRunner

    from rave_core.run import open_run
    from rave_deploy.check import checking
    from rave_deploy.cli import main
    from rave_deploy.targets import CheckOptions

    opened = []

    def counted(plan, run=None, _real=checking.open_reference):
        opened.append(_real(plan, run))
        return opened[-1]

    # where the command looks it up, and check_artifact when it is handed no loaded run
    monkeypatch.setattr(checking, "open_reference", counted)
    result = CliRunner().invoke(main, ["check", str(exports), "--json"])
    assert result.exit_code == 0, result.output
    assert len(opened) == 1

    run = make_run(tmp_path / "runs", ("brave",), unit_gains=True)
    files = export_quietly(run, ["nn_tilde", "supercollider"], tmp_path / "ex")
    loaded = open_run(run)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    for target in ("nn_tilde", "supercollider"):
        report = checking.check_artifact(files[target], options=CheckOptions(block_sizes=[512]),
                                         loaded=loaded)
        assert report.passed, [c.message for c in report.failures()]
    after = loaded.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch_equal(before[k], after[k]) for k in before), \
        [k for k in before if not torch_equal(before[k], after[k])]


def torch_equal(a, b) -> bool:
    import torch
    return a.shape == b.shape and bool(torch.equal(a, b))


def test_json_output_converts_numpy_and_torch_values_without_importing_numpy(tmp_path):
    """``--json`` prints NumPy and torch values as plain JSON (NaN and infinities as
    strings), yet its module imports no NumPy: an error under ``--json`` prints at once."""
    import numpy as np
    import torch

    from rave_deploy.check.output import jsonable

    data = {1: np.float32(1.5), "i": np.int64(3), "b": np.bool_(True),
            "a": np.array([[1.0, np.nan]]), "t": torch.tensor([1, 2]), "inf": float("-inf"),
            "nan64": np.float64("nan"), "p": Path("x") / "y", "s": {2}}
    out = jsonable(data)
    assert out == {"1": 1.5, "i": 3, "b": True, "a": [[1.0, "nan"]], "t": [1, 2],
                   "inf": "-inf", "nan64": "nan", "p": "x/y", "s": [2]}
    assert [type(v) for v in (out["i"], out["b"], out["1"])] == [int, bool, float]
    json.dumps(out, allow_nan=False)   # strict JSON
    code = ("import sys, rave_deploy.check.output; "
            "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert ran.stdout.strip() == "[]"
