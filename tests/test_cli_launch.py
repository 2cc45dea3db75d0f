"""Ctrl-C (or SIGTERM) while `rave-core` or `rave-deploy` starts: importing the CLI took
seconds (torch), and a Ctrl-C then printed a KeyboardInterrupt traceback from inside some
library's import (SIGTERM killed the process without a word). The console scripts now go
through rave_core.launch: one line, exit 130 (143 for SIGTERM), as for an interrupted
command.

The CLIs now import torch only when a command runs (tests/test_cli_startup.py), so the
seconds of importing moved into the commands: an interrupt there says the same one line.
Each test makes its moment certain: the first import of a given library waits, and the
signal is sent then."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

#: Run before the entry point: the first import of one of ``modules`` writes ``marker``,
#: then waits (a minute: the test's signal ends it first).
_SLOW_IMPORT = """
import sys, time
class _Slow:
    def find_spec(self, name, path=None, target=None):
        if name in {modules!r}:
            sys.meta_path.remove(self)
            open({marker!r}, "w").close()
            time.sleep(60)
        return None
sys.meta_path.insert(0, _Slow())
"""


def _console_script(name: str, prelude: str = ""):
    """The command pip's console script ``name`` runs: its entry point, called as the
    generated script calls it (after ``prelude``)."""
    module, function = SCRIPTS[name].split(":")
    return [sys.executable, "-c",
            f"{prelude}\nimport sys; from {module} import {function}; sys.exit({function}())"]


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (the launcher's, while it imports)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


def _interrupt_while_importing(script: str, args, modules, signum, tmp_path: Path):
    """Run ``script ARGS``, send ``signum`` while it imports the first of ``modules``;
    its exit status, stdout and stderr."""
    marker = tmp_path / "importing"
    prelude = _SLOW_IMPORT.format(modules=tuple(modules), marker=str(marker))
    proc = subprocess.Popen([*_console_script(script, prelude), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, (f"it ended before importing any of {modules}",
                                         proc.communicate())
            assert time.monotonic() < deadline, f"no import of {modules} in 120 s"
            time.sleep(0.01)
        # the handlers in place: Python leaves SIGTERM to the system unless told
        assert _catches_sigterm(proc.pid)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def _says_nothing_was_done(result, code) -> None:
    status, out, err = result
    assert "Traceback" not in err, err
    assert status == code, (status, err)
    assert err == "Interrupted: nothing was done.\n"
    assert out == ""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("script", ["rave-deploy", "rave-core"])
def test_an_interrupt_while_the_cli_is_imported_says_one_line(script, signum, code, tmp_path):
    # click: the CLI module's first import
    result = _interrupt_while_importing(script, ["--version"], ["click"], signum, tmp_path)
    _says_nothing_was_done(result, code)   # and stopped before the version was printed


#: A command of each CLI that imports torch or NumPy before it does anything (its inputs
#: made in the test's folder).
COMMANDS = {
    "export": ("rave-deploy", ["export", "run", "-o", "out"]),
    "export --json": ("rave-deploy", ["export", "run", "-o", "out", "--json"]),
    "check --json": ("rave-deploy", ["check", "x.ts", "--json", "--report", "out/r.html"]),
    "preprocess": ("rave-core", ["preprocess", "--input_path", "run", "--output_path",
                                 "out/db"]),
    "train": ("rave-core", ["train", "--db_path", "run", "--name", "r", "--out_path", "out"]),
}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_interrupt_while_a_command_imports_torch_says_one_line(command, signum, code,
                                                                   tmp_path):
    """Not Python's KeyboardInterrupt traceback from inside torch's import, nor click's
    "Aborted!" (exit 1): the launcher's line and exit code. Nothing was written."""
    script, args = COMMANDS[command]
    (tmp_path / "run").mkdir()
    if command == "train":   # a dataset's file: an empty folder is refused before torch
        (tmp_path / "run" / "metadata.yaml").write_text("")
    if command == "check --json":   # a missing artefact is refused before torch
        (tmp_path / "x.ts").write_bytes(b"")
    result = _interrupt_while_importing(script, args, ["torch", "numpy"], signum, tmp_path)
    _says_nothing_was_done(result, code)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "x.ts") == ["importing", "run"]


@pytest.mark.parametrize("script", ["rave-deploy", "rave-core"])
def test_the_launcher_then_runs_the_cli(script):
    """(a guard: passes on the old code too)"""
    done = subprocess.run([*_console_script(script), "--version"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("version 0.1.0\n")
    # the CLIs' own handling is back once they run: a bad option is their usual error
    done = subprocess.run([*_console_script(script), "--bogus"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("Error: No such option"), done.stderr


@pytest.mark.parametrize("script", ["rave-deploy", "rave-core"])
def test_the_installed_script_goes_through_the_launcher(script):
    """A stale install (entry points changed since `pip install -e .`) would skip the
    launcher; a missing one is a failed set-up (scripts/setup_env.sh installs both)."""
    installed = Path(sys.executable).parent / script
    assert installed.is_file(), (f"{script} is not installed beside {sys.executable}: run "
                                 "`bash scripts/setup_env.sh` (or `pip install -e .`)")
    module, function = SCRIPTS[script].split(":")
    assert f"from {module} import {function}" in installed.read_text(), (
        f"{installed} predates pyproject.toml's entry point {SCRIPTS[script]}: reinstall with "
        "`pip install -e .`")
