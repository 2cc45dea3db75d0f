"""`--json` on a usage error click finds itself (a bad option value, an unknown option, a
missing argument): before, the command never ran, so stdout held nothing while every other
error under `--json` printed one JSON object. Now stdout holds the same object (`error`,
`exit_code`, and for check `passed` and `artifacts`), with exit code 2; without `--json`,
and in `rave-core`, which has no `--json`, the error is text alone, as before."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rave_core.cli import main as core_cli
from rave_deploy.cli import main as deploy_cli

from .test_robustness import assert_clean

CHECK_FIELDS = {"passed": False, "artifacts": []}


def invoke(cli, args):
    result = CliRunner().invoke(cli, args)
    assert_clean(result)
    assert result.exit_code == 2, (result.exit_code, result.output)
    return result


@pytest.mark.parametrize("args, fields, error", [
    (["check", "x.ts", "--block-size", "0", "--json"], CHECK_FIELDS,
     "Invalid value for '--block-size': 0 is not in the range 1<=x<=65536."),
    (["check", "x.ts", "--json", "--bogus"], CHECK_FIELDS, "No such option '--bogus'."),
    (["check", "--json"], CHECK_FIELDS, "Missing argument 'ARTIFACTS...'."),
    (["export", "run", "--target", "nope", "--json"], {},
     "Invalid value for '--target' / '-t': 'nope' is not one of "),
    (["export", "--json"], {}, "Missing argument 'RUN'."),
    (["export", "run", "--json", "--fidelity", "2"], {}, "Invalid value for '--fidelity': "),
    (["--json", "check", "x.ts"], {}, "No such option '--json'."),   # the group's own
    (["chek", "x.ts", "--json"], {}, "No such command 'chek'."),
])
def test_a_usage_error_under_json_prints_one_json_object(args, fields, error):
    result = invoke(deploy_cli, args)
    data = json.loads(result.stdout)   # stdout holds exactly one JSON object
    assert {k: v for k, v in data.items() if k not in ("error", "exit_code")} == fields
    assert data["exit_code"] == 2
    assert data["error"].startswith(error), data["error"]
    # the text error stays on stderr, as for every other error under --json
    assert result.stderr.startswith(f"Error: {data['error']}\n"), result.stderr
    if args[0] != "--json":   # without --json (the same error): that text alone
        without = invoke(deploy_cli, [a for a in args if a != "--json"])
        assert without.stdout == ""
        assert without.stderr.startswith(f"Error: {data['error']}\n"), without.stderr


def test_json_after_a_double_dash_is_an_argument_not_the_flag():
    """(a guard: passes on the old code too)"""
    result = invoke(deploy_cli, ["check", "x.ts", "--block-size", "0", "--", "--json"])
    assert result.stdout == ""
    assert result.stderr.startswith("Error: Invalid value for '--block-size'")


def test_rave_core_has_no_json_and_keeps_its_text_errors():
    """(a guard: passes on the old code too)"""
    result = invoke(core_cli, ["train", "--json"])
    assert result.stdout == ""
    assert result.stderr.startswith("Error: No such option '--json'.")


def test_the_console_command_prints_the_json_object_too():
    """Through click's own main (standalone), as `rave-deploy` runs."""
    done = subprocess.run([sys.executable, "-m", "rave_deploy.cli", "check", "x.ts",
                           "--block-size", "0", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout) == {
        **CHECK_FIELDS, "exit_code": 2,
        "error": "Invalid value for '--block-size': 0 is not in the range 1<=x<=65536."}
    assert "Traceback" not in done.stderr
