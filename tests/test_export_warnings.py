"""What `rave-deploy export` warns about, and where a script finds it, from a user audit:
a warning about the run as a whole (`--fidelity 0.95` on a discrete run) was missing from
`--json`'s `warnings` and printed as `Warning:` on stderr apart from the targets' lines;
`--cpu-kernels onednn` on a model with no layer to pack exported a portable file without
a word; `--fidelity`'s help spoke of discrete models only. Each test fails against the
code before the fix.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from rave_deploy.cli import main as deploy_cli
from rave_deploy.export import export_run
from rave_deploy.sidecar import read_sidecar
from rave_deploy.targets import ExportOptions

from .runs import make_run

pytestmark = pytest.mark.usefixtures("one_thread")

FIDELITY_UNUSED = ("--fidelity 0.95 does not apply to this discrete (quantised) run, whose "
                   "latent is one code index per quantiser: it is exported whole, every "
                   "latent channel kept, and its sidecars record fidelity 1")


def _invoke(args):
    """stdout and stderr apart (click 8.2 keeps both; `result.output` mixes them)."""
    result = CliRunner().invoke(deploy_cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


@pytest.fixture(scope="module")
def discrete_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), ("discrete",), name="disc",
                    unit_gains=True)


@pytest.fixture(scope="module")
def brave_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), ("brave",), name="brave", unit_gains=True)


# ============================================================ 1. warnings about the run
def test_a_warning_about_the_run_is_in_the_json_of_every_target(discrete_run, tmp_path):
    """`--fidelity 0.95 --json` on a discrete run: the warning was on stderr only, not in
    any result's `warnings`. Now it comes first in each target's list, and stderr holds no
    `Warning:` line."""
    result = _invoke(["export", discrete_run, "-t", "onnx", "-t", "onnx_streaming",
                      "-o", tmp_path / "a", "--fidelity", "0.95", "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert [r["target"] for r in results] == ["onnx", "onnx_streaming"]
    for r in results:
        assert r["warnings"][:1] == [FIDELITY_UNUSED], r
    assert "Warning:" not in result.stderr, result.stderr
    # left out: nothing said
    result = _invoke(["export", discrete_run, "-t", "onnx", "-o", tmp_path / "b", "--json"])
    assert result.exit_code == 0, result.output
    assert not any("--fidelity" in w for r in json.loads(result.stdout) for w in r["warnings"])


def test_a_warning_about_the_run_is_printed_once_with_the_targets_lines(discrete_run,
                                                                      tmp_path):
    """Text output: it was `Warning: ...` on stderr; now a `warning:` line under the first
    target's, as the targets' own warnings are, and once for two targets."""
    result = _invoke(["export", discrete_run, "-t", "onnx", "-t", "onnx_streaming",
                      "-o", tmp_path / "a", "--fidelity", "0.95"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    said = [i for i, line in enumerate(lines) if line == f"        warning: {FIDELITY_UNUSED}"]
    assert len(said) == 1, result.stdout
    assert lines[said[0] - 1].startswith("  ok    onnx "), result.stdout
    assert "Warning:" not in result.stderr, result.stderr


def test_a_warning_about_the_run_still_comes_before_an_error(discrete_run, tmp_path):
    """An export refused after the warning was given (a folder where its file goes) still
    says it, on stderr, before the error, as before the change."""
    out = tmp_path / "a"
    out.mkdir()
    (out / "disc.onnx.onnx").mkdir()  # a folder where the file goes: refused, exit 2
    result = _invoke(["export", discrete_run, "-t", "onnx", "-o", out, "--fidelity", "0.95"])
    assert result.exit_code == 2, result.output
    err = result.stderr.splitlines()
    assert f"Warning: {FIDELITY_UNUSED}" in err, result.stderr
    assert err.index(f"Warning: {FIDELITY_UNUSED}") < next(
        i for i, line in enumerate(err) if line.startswith("Error: ")), result.stderr


def test_export_run_gives_the_run_warning_as_a_python_warning_and_in_each_result(
        discrete_run, tmp_path):
    """Called from Python: a warning as before, and in every result's `warnings` (it was
    in none); given ``on_warning``, to it instead."""
    with pytest.warns(UserWarning, match="--fidelity 0.5 does not apply"):
        results = export_run(discrete_run, ["onnx", "minifusion"], tmp_path / "a",
                             ExportOptions(fidelity=0.5, fidelity_given=True), explicit=False)
    assert results[1].skipped  # (Minifusion plays BRAVE's only): its result says it too
    assert all(r.warnings[:1] == [FIDELITY_UNUSED.replace("0.95", "0.5")] for r in results)
    given = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_run(discrete_run, ["onnx"], tmp_path / "b",
                   ExportOptions(fidelity=0.5, fidelity_given=True), on_warning=given.append)
    assert given == [FIDELITY_UNUSED.replace("0.95", "0.5")]
    assert not [w for w in caught if "--fidelity" in str(w.message)]


# ============================================================ 2. --cpu-kernels onednn, nothing to pack
def test_onednn_on_a_model_with_no_layer_to_pack_is_said_portable(brave_run, tmp_path):
    """`-t nn_tilde --cpu-kernels onednn` on a small BRAVE exported a portable file without
    a word (the docs said such a file says "onednn")."""
    import torch
    if not torch.backends.mkldnn.is_available():
        why = "this torch has no oneDNN: --cpu-kernels onednn cannot be exported"
        print(f"skipped: {why}")
        pytest.skip(reason=why)
    result = _invoke(["export", brave_run, "-t", "nn_tilde", "--cpu-kernels", "onednn",
                      "-o", tmp_path / "a", "--json"])
    assert result.exit_code == 0, result.output
    (res,) = json.loads(result.stdout)
    sidecar = read_sidecar(Path(res["path"]))
    assert sidecar["cpu_kernels"] == "portable" and sidecar["packed_layers"] == 0
    said = [w for w in res["warnings"] if w.startswith("--cpu-kernels onednn: no layer of "
                                                       "this model has a weight of 32768")]
    assert len(said) == 1, res["warnings"]
    assert 'the file is portable (its sidecar says "cpu_kernels": "portable")' in said[0]
    # the file's own warning (it loads only with oneDNN) is not given: it loads anywhere
    assert not any("loads only in" in w for w in res["warnings"]), res["warnings"]
    # portable asked for: nothing said
    result = _invoke(["export", brave_run, "-t", "nn_tilde", "-o", tmp_path / "b", "--json"])
    assert not any("--cpu-kernels" in w for w in json.loads(result.stdout)[0]["warnings"])


# ============================================================ 3. --fidelity's help
def test_fidelity_help_says_which_runs_are_exported_whole():
    """It said "(a discrete model keeps one code index per quantiser, whatever this says)":
    Wasserstein and spherical runs are exported whole too."""
    result = CliRunner().invoke(deploy_cli, ["export", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert ("discrete, Wasserstein and spherical runs are exported whole; their sidecars "
            "record 1") in text, text
    assert "whatever this says" not in text
