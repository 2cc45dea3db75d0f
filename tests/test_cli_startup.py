"""`rave-deploy` and `rave-core` answer `--help`, `--version`, their listings (`targets`,
`configs`) and usage errors without importing torch, onnx, onnxruntime or NumPy: the CLI
modules imported them at their top, so each of these took 1.5 to 3 s. The commands that
need them import them when they run; an error a command finds before that, under
``--json``, prints its JSON object without torch (``rave_deploy.check`` imports nothing
heavy until its names are used).

Each command runs in a fresh Python through its console script's entry point
(pyproject.toml), which then reports the heavy libraries in ``sys.modules``; what it
prints is compared with what the libraries themselves say (the target registry, with
torch imported). Speed is not asserted (a shared machine's timings are no test)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path
from typing import List, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

#: What the command line must not import to answer (the four the task names, and the
#: other libraries the commands use that take long to import).
HEAVY = ("torch", "onnx", "onnxruntime", "numpy", "onnxscript", "scipy", "h5py", "gin",
         "soundfile", "matplotlib")

#: Runs a console script's entry point with the arguments given, as pip's script does,
#: then writes the heavy libraries it had imported (also when it exits with an error).
_WRAPPER = textwrap.dedent("""
    import importlib, json, sys
    spec = json.loads(sys.argv[1])
    sys.argv = [spec["prog"], *spec["args"]]
    module, function = spec["entry"].split(":")
    try:
        sys.exit(getattr(importlib.import_module(module), function)())
    finally:
        with open(spec["report"], "w") as f:
            json.dump(sorted(m for m in spec["heavy"] if m in sys.modules), f)
""")


class Ran(NamedTuple):
    code: int
    stdout: str
    stderr: str
    heavy: List[str]   # the heavy libraries it imported


def run_script(script: str, args, tmp_path: Path) -> Ran:
    report = tmp_path / "imported.json"
    spec = {"prog": script, "args": [str(a) for a in args], "entry": SCRIPTS[script],
            "report": str(report), "heavy": HEAVY}
    done = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(spec)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return Ran(done.returncode, done.stdout, done.stderr, json.loads(report.read_text()))


def heavy_after(statements: str, tmp_path: Path) -> List[str]:
    """The heavy libraries a fresh Python has imported once it ran ``statements``."""
    code = (f"import json, sys; {statements}; "
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def answers_light(script: str, args, tmp_path: Path, code: int = 0) -> Ran:
    ran = run_script(script, args, tmp_path)
    assert ran.code == code, (ran.code, ran.stderr)
    assert ran.heavy == [], f"`{script} {' '.join(args)}` imported {ran.heavy}"
    return ran


@pytest.mark.parametrize("script, args", [
    ("rave-deploy", ["--help"]),
    ("rave-deploy", ["-h"]),
    ("rave-deploy", ["export", "--help"]),
    ("rave-deploy", ["check", "--help"]),
    ("rave-deploy", ["targets", "--help"]),
    ("rave-core", ["--help"]),
    ("rave-core", ["train", "--help"]),
    ("rave-core", ["preprocess", "--help"]),
    ("rave-core", ["configs", "--help"]),
])
def test_help_imports_no_heavy_library(script, args, tmp_path):
    ran = answers_light(script, args, tmp_path)
    command = " ".join([script, *args[:-1]])
    assert ran.stdout.startswith(f"Usage: {command} [OPTIONS]"), ran.stdout
    assert ran.stderr == ""


@pytest.mark.parametrize("script", ["rave-deploy", "rave-core"])
def test_version_imports_no_heavy_library(script, tmp_path):
    import rave_core
    ran = answers_light(script, ["--version"], tmp_path)
    assert ran.stdout == f"{script}, version {metadata.version('rave-deploy')}\n"
    assert ran.stdout == f"{script}, version {rave_core.__version__}\n"


def test_targets_lists_the_registry_without_importing_the_targets(tmp_path):
    """The plugins' names and descriptions, read without importing them, are those of
    the registry (which imports them: torch)."""
    from rave_deploy.targets import registry
    ran = answers_light("rave-deploy", ["targets"], tmp_path)
    width = max(15, *map(len, registry()))   # the longest name, at least 15
    assert ran.stdout.splitlines() == [f"{name:{width}s} {target.description}"
                                       for name, target in sorted(registry().items())]
    assert len(ran.stdout.splitlines()) >= 7


def test_export_help_offers_the_registry_targets_and_cpu_kernels(tmp_path):
    from rave_deploy.model import CPU_KERNELS
    from rave_deploy.targets import registry
    ran = answers_light("rave-deploy", ["export", "--help"], tmp_path)
    assert f"[{'|'.join([*sorted(registry()), 'all'])}]" in ran.stdout, ran.stdout
    assert f"--cpu-kernels [{'|'.join(CPU_KERNELS)}]" in ran.stdout, ran.stdout


def _option_help(text: str, option: str, following: str) -> str:
    flat = " ".join(text.split())
    return flat[flat.index(option):flat.index(following)]


def test_help_names_every_host_and_what_block_size_does(tmp_path):
    """The description names every target's host (anira was missing), as the target
    declares it (``host``; else its name: a new target needs no word here); export's
    --block-size says it fixes the onnx_streaming graph too (it named anira alone), and
    check's says each kind's default sizes (it said "64 or the ratio, up to 4096" for
    all, and anira and a fixed onnx_streaming graph use other sizes)."""
    from rave_deploy.targets import registry, shown_host
    description = " ".join(answers_light("rave-deploy", ["--help"], tmp_path).stdout.split())
    for name, target in registry().items():
        assert (shown_host(target) or name) in description, (name, description)
    export = _option_help(answers_light("rave-deploy", ["export", "--help"], tmp_path).stdout,
                          "--block-size", "--engine")
    assert "anira" in export and "onnx_streaming graph is fixed to it" in export, export
    check = _option_help(answers_light("rave-deploy", ["check", "--help"], tmp_path).stdout,
                         "--block-size", "--json")
    assert "onnx_streaming graphs" in check and "anira: N and 4N" in check, check
    assert "failed check" in check, check


def test_configs_lists_the_shipped_configs_without_torch(tmp_path):
    from rave_core.config import available_configs
    from rave_core.config_names import config_description
    ran = answers_light("rave-core", ["configs"], tmp_path)
    lines = ran.stdout.splitlines()
    assert [line.split()[0] for line in lines] == available_configs()
    assert "v2" in available_configs()
    for line, name in zip(lines, available_configs()):
        assert line == f"{name:<14} {config_description(name)}"


def test_preprocess_help_shows_the_dataset_bounds(tmp_path):
    from rave_core.data.preprocess import (MAX_CHANNELS, MAX_SAMPLING_RATE, MIN_CHANNELS,
                                           MIN_SAMPLING_RATE)
    ran = answers_light("rave-core", ["preprocess", "--help"], tmp_path)
    text = " ".join(ran.stdout.split())
    assert f"[default: 1; {MIN_CHANNELS}<=x<={MAX_CHANNELS}]" in text, text
    assert f"[default: 44100; {MIN_SAMPLING_RATE}<=x<={MAX_SAMPLING_RATE}]" in text, text


@pytest.mark.parametrize("script, args, error", [
    ("rave-deploy", ["export"], "Error: Missing argument 'RUN'.\n"
                                "Try 'rave-deploy export -h' for help.\n"),
    ("rave-deploy", ["export", "run", "--bogus"], "Error: No such option '--bogus'.\n"),
    ("rave-deploy", ["export", "run", "-t", "nope"],
     "Error: Invalid value for '--target' / '-t': 'nope' is not one of 'anira', "),
    ("rave-deploy", ["check", "x.ts", "--block-size", "0"],
     "Error: Invalid value for '--block-size': 0 is not in the range 1<=x<=65536.\n"),
    ("rave-deploy", ["nope"], "Error: No such command 'nope'.\n"),
    ("rave-deploy", ["export", "run", "--name", "a/b"], "Error: --name "),  # the command's own
    ("rave-core", ["train"], "Error: Missing option '--db_path'.\n"),
    ("rave-core", ["preprocess", "--channels", "100", "--input_path", "a", "--output_path",
                   "b"], "Error: Invalid value for '--channels': 100 is not in the range "),
    ("rave-core", ["train", "--db_path", "nowhere", "--name", "r"],   # the command's own
     "Error: --db_path nowhere: no such dataset folder"),
    ("rave-core", ["--bogus"], "Error: No such option '--bogus'.\n"),
])
def test_a_usage_error_imports_no_heavy_library(script, args, error, tmp_path):
    ran = answers_light(script, args, tmp_path, code=2)
    assert ran.stderr.startswith(error), ran.stderr
    assert ran.stdout == ""


@pytest.mark.parametrize("args, fields", [
    (["check", "--json"], {"passed": False, "artifacts": [],
                           "error": "Missing argument 'ARTIFACTS...'."}),
    (["export", "run", "--json", "--fidelity", "2"],
     {"error": "Invalid value for '--fidelity': 2.0 is not in the range 0<x<=1."}),
])
def test_a_usage_error_under_json_prints_its_object_without_heavy_libraries(args, fields,
                                                                            tmp_path, capsys):
    """The same text as rave_deploy.check.output.print_json writes (which imports NumPy)."""
    from rave_deploy.check.output import print_json
    ran = answers_light("rave-deploy", args, tmp_path, code=2)
    assert json.loads(ran.stdout) == {**fields, "exit_code": 2}
    print_json({**fields, "exit_code": 2})
    assert ran.stdout == capsys.readouterr().out
    assert ran.stderr.startswith(f"Error: {fields['error']}\n"), ran.stderr


@pytest.mark.parametrize("args, fields", [
    (["export", "run", "--name", "a/b", "--json"],
     {"error": "--name 'a/b': give a plain file name (no folders, not starting with '.'), "
               "e.g. --name my_model; --output sets the folder"}),
    (["check", "x.ts", "--run", "", "--json"],
     {"passed": False, "artifacts": [],
      "error": "--run: an empty path was given (an unset shell variable?): give the run "
               "directory or checkpoint, or leave --run out to use the sidecar's"}),
])
def test_a_command_error_under_json_prints_its_object_without_torch(args, fields, tmp_path,
                                                                     capsys):
    """An error a command finds before it imports torch, under ``--json``: its JSON object
    (rave_deploy.check.output.print_json) was printed after importing torch (2.5 s) for
    want of a torch-free ``rave_deploy.check``; print_json tells NumPy values without
    importing NumPy."""
    from rave_deploy.check.output import print_json
    ran = run_script("rave-deploy", args, tmp_path)
    assert ran.code == 2, (ran.code, ran.stderr)
    assert not ran.heavy, f"`rave-deploy {' '.join(args)}` imported {ran.heavy}"
    assert json.loads(ran.stdout) == {**fields, "exit_code": 2}
    print_json({**fields, "exit_code": 2})
    assert ran.stdout == capsys.readouterr().out
    assert ran.stderr == f"Error: {fields['error']}\n"


@pytest.mark.parametrize("args, error", [
    (["check", "x.ts"], "x.ts does not exist"),
    (["check", "x.ts", "y.onnx"], "x.ts does not exist"),
    (["check", "{made}", "--run", "no_run"],
     "no_run does not exist: give a run directory (with config.gin) or a .ckpt file"),
    (["export", "no_run", "-t", "onnx"],
     "no_run does not exist: give a run directory (with config.gin) or a .ckpt file"),
])
def test_a_path_that_does_not_exist_is_said_without_torch(args, error, tmp_path):
    """A missing artefact or run took 2 to 4 s to be refused (torch was imported first);
    the words are those of the command's own check (rave_deploy.check.artifacts,
    rave_core.run.locate_run)."""
    made = tmp_path / "made.ts"
    made.write_bytes(b"")
    ran = answers_light("rave-deploy", [a.format(made=made) for a in args], tmp_path, code=2)
    assert ran.stderr == f"Error: {error}\n"


@pytest.mark.parametrize("script, args, error", [
    ("rave-deploy", ["check", "x.wav"], "Error: x.wav: unknown artefact type"),
    ("rave-deploy", ["export", "run"], "Error: no checkpoint (*.ckpt) found under run"),
])
def test_a_command_imports_what_it_needs_when_it_runs(script, args, error, tmp_path):
    """(a guard: passes on the old code too) the errors of a running command, known once
    it imported its libraries, are as before."""
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.gin").write_text("")
    ran = run_script(script, args, tmp_path)
    assert (ran.code, ran.stderr[:len(error)]) == (2, error), ran.stderr
    assert "torch" in ran.heavy


def test_importing_the_packages_and_clis_imports_no_heavy_library(tmp_path):
    assert heavy_after("import rave_core, rave_core.cli, rave_deploy.cli, rave_deploy.targets; "
                       "from rave_deploy.targets import available_targets; "
                       "available_targets(); rave_core.available_configs()", tmp_path) == []


@pytest.mark.parametrize("module", ["rave_deploy.check", "rave_deploy.check.output"])
def test_the_check_package_and_its_output_import_no_heavy_library(module, tmp_path):
    """The CLI imports rave_deploy.check.output at its top (the progress line, the JSON
    of errors): the package imported torch when it was loaded (its names came from
    modules that import it)."""
    assert heavy_after(f"import {module}", tmp_path) == []


def test_rave_core_names_are_there_when_used():
    """(a guard: passes on the old code too) `rave_core.load_run` and the rest: imported
    from their modules when first used."""
    import rave_core
    import rave_core.config
    import rave_core.run
    assert rave_core.__all__ == ["ConfigError", "RunError", "available_configs",
                                 "build_model", "load_run", "open_run"]
    for name in rave_core.__all__:
        module = rave_core.run if name in ("RunError", "load_run", "open_run") else rave_core.config
        assert getattr(rave_core, name) is getattr(module, name), name
        assert name in dir(rave_core)
    from rave_core import ConfigError, load_run  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        rave_core.nothing  # noqa: B018


def test_the_check_package_names_are_there_when_used():
    """`from rave_deploy.check import X` gives what it gave (the names the package
    defined, and CheckReport, CheckResult), now each from the module that defines it; a
    submodule is still one."""
    import rave_deploy.check as check
    from rave_deploy.check import artifacts, checking, near_ties, result
    assert check.__all__ == ["COMMON_SUMMARY", "CheckPlan", "CheckReport", "CheckResult",
                             "CheckUsageError", "check_artifact", "check_sidecar_facts",
                             "expand_artifacts", "given_path", "identify", "open_reference",
                             "prepare_check"]
    defined = {artifacts: ["CheckPlan", "CheckUsageError", "SIGNATURES", "expand_artifacts",
                           "given_path", "identify", "prepare_check", "suffix_kinds",
                           "suffix_targets"],
               checking: ["COMMON_SUMMARY", "SIDECAR_FACTS", "check_artifact",
                          "check_sidecar_facts", "open_reference"],
               result: ["CheckReport", "CheckResult"]}
    assert set(check.__all__) <= {n for names in defined.values() for n in names}
    for module, names in defined.items():
        for name in names:
            assert getattr(check, name) is getattr(module, name), name
            assert name in dir(check)
    assert near_ties.__name__ == "rave_deploy.check.near_ties"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        check.nothing  # noqa: B018


def test_the_error_classes_of_the_clis_are_those_of_before():
    """Which errors each CLI treats as bad usage (exit 2) and as a failed operation
    (exit 1), now imported when a command runs (a guard: the old code had them as module
    attributes, USAGE_ERRORS and OPERATION_ERRORS)."""
    import rave_core.cli
    import rave_deploy.cli
    from rave_core.config import ConfigError
    from rave_core.data import DataError, DataInputError
    from rave_core.run import RunError
    from rave_deploy.export import ExportError
    from rave_deploy.io import OutputError, OutputInTheWay
    from rave_deploy.model import DeployError
    from rave_deploy.targets import TargetUnsupported
    usage, operation = rave_core.cli._error_classes()
    assert usage == (ConfigError, RunError, DataInputError)
    assert operation == (DataError, OSError)
    usage, operation = rave_deploy.cli._error_classes()
    assert usage == (RunError, ConfigError, DeployError, OutputInTheWay)
    assert operation == (TargetUnsupported, OutputError, OSError, ExportError)


def test_every_shipped_target_is_read_without_being_imported():
    """Each plugin module declares its targets as the catalogue reads them (a plugin that
    did not would be imported to list it: torch again, which the tests above catch)."""
    from rave_deploy import targets
    declared = {}
    for module in targets._plugin_modules():
        found = targets._declared_targets(module)
        assert found is not None, module
        declared.update({d.name: d for d in found})
    assert declared == {name: (name, t.description, targets.shown_host(t))
                        for name, t in targets.registry().items()}
    assert {d.host for d in declared.values()} >= {"nn~", "SuperCollider", "the RAVE VST"}


@pytest.mark.parametrize("body, read", [
    ('name = "a"\n    description = ("one "\n                   "two")',
     (("a", "one two", None),)),
    ('name: str = "a"\n    description = "d"\n    def f(self):\n        name = 1',
     (("a", "d", None),)),
    ('name = "a"\n    description = "d"\n    host = "A~"', (("a", "d", "A~"),)),
    ('name = "a"\n    description = "d" + SUFFIX', None),      # computed
    ('name = "a"', None),                                       # description inherited
    ('name = "a"\n    description = "d"\n    description += "e"', None),
    ('name = "a"\n    description = "d"\n    if X:\n        name = "b"', None),
    ('name = 3\n    description = "d"', None),
    ('name = "a"\n    description = "d"\n    host = HOST', None),         # host computed
    ('name = "a"\n    description = "d"\n    host = "x"\n    host = "y"', None),
    ('name = "a"\n    description = "d"\n    if X:\n        host = "x"', None),
    ('name = "a"\n    description = "d"\n    host = ""', None),
])
def test_the_catalogue_reads_literal_declarations_only(body, read):
    from rave_deploy.targets import _declarations
    source = f"from .base import Target, register\n\n\n@register\nclass A(Target):\n    {body}\n"
    assert _declarations(source) == read


@pytest.mark.parametrize("source", [
    'class A(Target):\n    name = "a"\n    description = "d"\n\n\nregister(A)\n',
    'if X:\n    @register\n    class A(Target):\n        name = "a"\n        description = "d"\n',
    '@base.register()\nclass A(Target):\n    name = "a"\n    description = "d"\n',
])
def test_the_catalogue_imports_a_module_that_registers_otherwise(source):
    """A target registered another way than by the decorator on a top-level class is
    known only by running its module: the catalogue then imports it (None here)."""
    from rave_deploy.targets import _declarations
    assert _declarations(source) is None
