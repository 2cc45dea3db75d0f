"""Ctrl-C (or SIGTERM) while `rave-core` or `rave-deploy` starts: importing the CLI takes
seconds (torch), and a Ctrl-C then printed a KeyboardInterrupt traceback from inside some
library's import (SIGTERM killed the process without a word). The console scripts now go
through rave_deploy.launch: one line, exit 130 (143 for SIGTERM), as for an interrupted
command."""
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


def _console_script(name: str):
    """The command pip's console script ``name`` runs: its entry point, called as the
    generated script calls it."""
    module, function = SCRIPTS[name].split(":")
    return [sys.executable, "-c",
            f"import sys; from {module} import {function}; sys.exit({function}())"]


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (the launcher's, while it imports)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


def _interrupt_while_starting(args, signum):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            text=True)
    # as soon as the launcher's handlers are in place (0.5 s at most: the import takes
    # seconds, so it is still under way then)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline and not _catches_sigterm(proc.pid):
        time.sleep(0.005)
    time.sleep(0.05)   # into the import
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("script", ["rave-deploy", "rave-core"])
def test_an_interrupt_while_the_cli_is_imported_says_one_line(script, signum, code):
    status, out, err = _interrupt_while_starting([*_console_script(script), "--version"],
                                                 signum)
    assert "Traceback" not in err, err
    assert status == code, (status, err)
    assert err == "Interrupted: nothing was done.\n"
    assert out == ""   # it stopped before the version was printed


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
