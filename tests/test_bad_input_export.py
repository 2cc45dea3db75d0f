"""Bad input to `rave-deploy export` and `rave-deploy check` found by testing as a user:
something of the user's where an output goes, a checkpoint changed since the export,
NaN in `--json`, a folder as `--report`, a missing file among several, control
characters in `--name`, a damaged sidecar. Each answers with a short error (exit 2) before
anything is written or checked, and leaves every file as it was.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from click.testing import CliRunner

from rave_deploy import io as rio
from rave_deploy.cli import main as deploy_cli
from rave_deploy.model import DeployModel
from rave_deploy.sidecar import FOLDER_SIDECAR
from rave_deploy.targets import registry

from .runs import make_run
from .test_robustness import assert_clean, partials

pytestmark = pytest.mark.usefixtures("one_thread")

FOLDER_TARGETS = sorted(n for n, t in registry().items() if t.kind == "folder")


def cli(args, code=None, expect=None):
    result = CliRunner().invoke(deploy_cli, [str(a) for a in args])
    assert_clean(result)
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.output)
    for text in [expect] if isinstance(expect, str) else (expect or []):
        assert text in result.output, result.output
    return result


def tree(folder: Path) -> Dict[str, object]:
    """Every file's bytes and every folder, below ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), ("brave",), name="brave", unit_gains=True)


@pytest.fixture()
def run_copy(run, tmp_path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "brave"))


@pytest.fixture()
def stub_folder_exports(monkeypatch):
    """Folder targets write their files (as the real writer names them) in no time."""
    def stub(target):
        def export(model, options, path):
            for name in sorted(target.folder_files({})) or ["graph.onnx"]:
                (Path(path) / name).write_text("new")
            return {"_core": DeployModel(model, fidelity=options.fidelity, deterministic=True,
                                         streaming=False)}
        return export
    for name in FOLDER_TARGETS:
        monkeypatch.setattr(registry()[name], "export", stub(registry()[name]))


@pytest.fixture()
def checks_run(monkeypatch) -> List[Path]:
    """The artefacts whose target checks ran (each a stand-in that passes at once)."""
    from rave_deploy.check.result import CheckReport

    ran: List[Path] = []

    def stub(target):
        def check(artifact, sidecar, model, options):
            ran.append(Path(artifact))
            report = CheckReport(Path(artifact), target)
            report.add("contract.stub", True, "stand-in")
            return report
        return check
    for name, target in registry().items():
        monkeypatch.setattr(target, "check", stub(name))
    return ran


@pytest.fixture()
def exported(run_copy, tmp_path) -> Path:
    """A Minifusion export (a real, fast writer) of a run this test may change."""
    out = tmp_path / "ex"
    cli(["export", run_copy, "-t", "minifusion", "-o", out], code=0)
    return out / "brave.minifusion.h5"


# ============================================================ 1. a folder output over the user's files
@pytest.mark.parametrize("target", FOLDER_TARGETS)
def test_export_keeps_a_user_folder_where_a_folder_export_goes(run, tmp_path, target,
                                                               stub_folder_exports):
    out = tmp_path / "out"
    (out / f"brave.{target}").mkdir(parents=True)
    (out / f"brave.{target}" / "mynotes.txt").write_text("mine")
    before = tree(out)
    cli(["export", run, "-t", target, "-o", out], code=2,
        expect=[f"{out}/brave.{target} is a folder holding mynotes.txt, not an earlier {target} "
                "export", "move it away"])
    assert tree(out) == before and not partials(tmp_path)


@pytest.mark.parametrize("target", FOLDER_TARGETS)
def test_export_keeps_a_user_file_where_a_folder_export_goes(run, tmp_path, target,
                                                             stub_folder_exports):
    out = tmp_path / "out"
    out.mkdir()
    (out / f"brave.{target}").write_text("mine")
    cli(["export", run, "-t", target, "-o", out], code=2,
        expect=f"{out}/brave.{target} is a file, not a folder")
    assert tree(out) == {f"brave.{target}": b"mine"} and not partials(tmp_path)


@pytest.mark.parametrize("target", FOLDER_TARGETS)
def test_export_replaces_an_earlier_folder_export_and_nothing_else(run, tmp_path, target,
                                                                   stub_folder_exports):
    out = tmp_path / "out"
    folder = out / f"brave.{target}"
    cli(["export", run, "-t", target, "-o", out], code=0)
    assert json.loads((folder / FOLDER_SIDECAR).read_text())["target"] == target
    cli(["export", run, "-t", target, "-o", out], code=0)  # an earlier export: replaced
    (folder / "mynotes.txt").write_text("mine")
    (folder / "sub").mkdir()
    before = tree(out)
    cli(["export", run, "-t", target, "-o", out], code=2,
        expect=[f"{folder} holds an earlier {target} export and also mynotes.txt, sub/",
                "move them out of the folder"])
    assert tree(out) == before and not partials(tmp_path)
    # all: refused before any target is written
    cli(["export", run, "-o", out], code=2, expect="mynotes.txt")
    assert tree(out) == before and not partials(tmp_path)


def test_an_empty_folder_is_replaced(run, tmp_path, stub_folder_exports):
    out = tmp_path / "out"
    (out / "brave.anira").mkdir(parents=True)
    cli(["export", run, "-t", "anira", "-o", out], code=0)
    assert (out / "brave.anira" / FOLDER_SIDECAR).is_file()


# ============================================================ 5. a folder where the sidecar goes
@pytest.mark.parametrize("blocked", ["brave.minifusion.h5.json", "brave.minifusion.h5"])
def test_export_refuses_a_folder_where_the_artefact_or_its_sidecar_goes(run, tmp_path, blocked):
    out = tmp_path / "out"
    (out / blocked / "inside").mkdir(parents=True)
    before = tree(out)
    cli(["export", run, "-t", "minifusion", "-o", out], code=2,
        expect=f"{out}/{blocked} is a folder, not a file")
    assert tree(out) == before and not partials(tmp_path)


def test_the_pair_is_renamed_all_or_none(tmp_path):
    """A folder that appears where the sidecar goes while the artefact is written: neither
    is renamed into place (never an artefact without its sidecar)."""
    artefact, sidecar = tmp_path / "m.onnx", tmp_path / "m.onnx.json"
    artefact.write_bytes(b"old")
    with pytest.raises(rio.OutputInTheWay, match="m.onnx.json is a folder"):
        with rio.atomic_outputs([artefact, sidecar]) as (a, s):
            a.write_bytes(b"new")
            s.write_text("{}")
            sidecar.mkdir()
    assert artefact.read_bytes() == b"old" and sidecar.is_dir() and not partials(tmp_path)


# ============================================================ 7. control characters in --name
@pytest.mark.parametrize("name", ["a\nb", "a\tb", "a\rb", "model\x1b[31m", "a\x7fb", "a\x85b"])
def test_export_refuses_control_characters_in_the_name(run, tmp_path, name):
    cli(["export", run, "-t", "minifusion", "-o", tmp_path / "out", "--name", name], code=2,
        expect="control characters")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("name", ["a*b", "take?", "v2:live", 'say"hi"', "a|b", "<m>", "-x"])
def test_export_refuses_a_name_windows_or_a_command_line_cannot_take(run, tmp_path, name):
    """The files go to the concert's machine (Max and the VST on Windows too), and are
    given to commands (`rave-deploy check -x.ts` reads an option)."""
    why = "starting with '-' reads as an option" if name == "-x" else \
        "cannot be in a file name on Windows"
    cli(["export", run, "-t", "minifusion", "-o", tmp_path / "out", "--name", name], code=2,
        expect=[why, "give a plain name"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_run_folder_name_windows_cannot_take_is_made_plain(run, tmp_path):
    """Without --name the files take the run folder's name, which Linux allows to hold
    characters --name refuses (``live:v2?``): they were written as they were."""
    odd = Path(shutil.copytree(run, tmp_path / "-live:v2?"))
    cli(["export", odd, "-t", "minifusion", "-o", tmp_path / "out"], code=0,
        expect="the files are named 'live_v2_'; give --name to choose another")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["live_v2_.minifusion.h5", "live_v2_.minifusion.h5.json"]


@pytest.mark.parametrize("name", ["CON", "nul", "com1.live", "Lpt9"])
def test_export_refuses_a_windows_device_name(run, tmp_path, name):
    """Windows opens CON, NUL, COM1... (whatever follows the dot) as devices: the file
    could not be copied to, nor loaded on, a Windows machine."""
    cli(["export", run, "-t", "minifusion", "-o", tmp_path / "out", "--name", name], code=2,
        expect=[f"Windows reads files named {name.split('.')[0]}.* as a device"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("folder, name", [("my run", "my_run"), ("aux", "aux_")])
def test_a_run_folder_name_with_spaces_or_a_device_name_is_made_plain(run, tmp_path, folder,
                                                                      name):
    """A space splits a PureData or Max object box's arguments (`[nn~ my run.ts]`)."""
    odd = Path(shutil.copytree(run, tmp_path / folder))
    cli(["export", odd, "-t", "minifusion", "-o", tmp_path / "out"], code=0,
        expect=f"the files are named {name!r}")
    assert (tmp_path / "out" / f"{name}.minifusion.h5").is_file()


def test_a_run_folder_name_that_is_not_utf8_is_made_plain(run, tmp_path):
    """A run folder named on a Latin-1 system (``caf\\xe9``): the default name failed
    ('unexpected UnicodeEncodeError ... report it'); Windows and macOS take UTF-8 names
    only, so the byte becomes ``_`` as the other characters they refuse do."""
    odd = Path(shutil.copytree(run, tmp_path / os.fsdecode(b"caf\xe9")))
    cli(["export", odd, "-t", "minifusion", "-o", tmp_path / "out"], code=0,
        expect="the files are named 'caf_'")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["caf_.minifusion.h5", "caf_.minifusion.h5.json"]


def test_export_refuses_a_name_no_file_system_holds(run, tmp_path):
    cli(["export", run, "-t", "minifusion", "-o", tmp_path / "out", "--name", "x" * 300],
        code=2, expect=["--name: 300 bytes, more than the 200", "give a shorter name"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    cli(["export", run, "-t", "all", "-o", tmp_path / "out", "--name", "é" * 100], code=0)


def test_no_streaming_writes_the_offline_graph_only(run, tmp_path):
    """`-t all --no-streaming`: the streaming-graph targets are skipped with the reason,
    as the TorchScript targets are (onnx_streaming and anira were written regardless)."""
    result = cli(["export", run, "-t", "all", "--no-streaming", "-o", tmp_path / "o"], code=0)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "brave.onnx.onnx", "brave.onnx.onnx.json"], result.output
    for target in ("onnx_streaming", "anira"):
        line = next(x for x in result.output.splitlines() if f"skip  {target} " in x)
        assert "the offline graph is -t onnx (drop --no-streaming)" in line, line


def test_export_json_is_strict(run, tmp_path):
    result = cli(["export", run, "-t", "minifusion", "-o", tmp_path / "out", "--json"], code=0)
    _strict(result.stdout)


# ============================================================ 2. checkpoint changed since the export
def test_check_refuses_a_checkpoint_changed_since_the_export(exported, run_copy, tmp_path,
                                                             checks_run):
    checkpoint = run_copy / "version_0" / "checkpoints" / "best.ckpt"
    original = tmp_path / "original" / "best.ckpt"  # a copy kept elsewhere, with its config
    original.parent.mkdir()
    shutil.copy(checkpoint, original)
    shutil.copy(run_copy / "config.gin", original.parent)
    other = make_run(tmp_path / "other", ("brave",), name="brave", seed=1, unit_gains=True)
    shutil.copy(other / "version_0" / "checkpoints" / "best.ckpt", checkpoint)  # trained on
    cli(["check", exported], code=2,
        expect=f"the checkpoint {checkpoint.resolve()} changed since the export (SHA-256 "
               "differs): export again, or pass --run with the checkpoint it was exported from")
    # --run naming the changed checkpoint (or its run): the same refusal
    cli(["check", exported, "--run", run_copy], code=2, expect="changed since the export")
    # --run naming another checkpoint: refused, naming it
    cli(["check", exported, "--run", other], code=2,
        expect=f"--run {other} (its best.ckpt) is not the checkpoint {exported} was exported "
               "from (SHA-256 differs")
    assert checks_run == []
    # --run naming the original (a copy elsewhere): checked
    cli(["check", exported, "--run", original], code=0)
    assert checks_run == [exported]


def test_the_checkpoint_is_hashed_once_per_path_size_and_mtime(tmp_path, monkeypatch):
    import rave_core.run as run_module

    reads = []
    monkeypatch.setattr(run_module, "_read_sha256", lambda p: reads.append(p) or "ab" * 32)
    f = tmp_path / "a.ckpt"
    f.write_bytes(b"x")
    assert run_module.sha256_of(f) == run_module.sha256_of(f) == "ab" * 32
    assert len(reads) == 1
    f.write_bytes(b"xy")
    run_module.sha256_of(f)
    assert len(reads) == 2


# ============================================================ 6. every path before any check
def test_check_refuses_a_missing_file_before_checking_any(exported, tmp_path, checks_run):
    cli(["check", exported, tmp_path / "missing.onnx"], code=2,
        expect=f"{tmp_path}/missing.onnx does not exist")
    assert checks_run == []


def test_check_loads_every_run_before_checking_any(exported, run, tmp_path, checks_run):
    """A second artefact whose run cannot be loaded (its config.gin broken after the
    export) is refused before the first artefact's checks run, not after them."""
    other = Path(shutil.copytree(run, tmp_path / "other"))
    cli(["export", other, "-t", "minifusion", "-o", tmp_path / "ex2"], code=0)
    (other / "config.gin").write_text("this is not gin (\n")
    result = cli(["check", exported, tmp_path / "ex2" / "other.minifusion.h5"], code=2,
                 expect=[f"{other}", "config"])
    assert checks_run == [] and "PASS" not in result.output


# ============================================================ 4. --report a folder
def test_check_refuses_a_folder_as_report_before_checking(exported, tmp_path, checks_run):
    folder = tmp_path / "rep"
    folder.mkdir()
    cli(["check", exported, "--report", folder], code=2,
        expect=[f"--report {folder}: that is a folder", f"--report {folder}/report.html"])
    cli(["check", exported, "--report", f"{tmp_path}/newrep/"], code=2,
        expect=f"--report {tmp_path}/newrep/report.html")
    assert checks_run == [] and not (tmp_path / "newrep").exists()
    assert not any(folder.iterdir()) and not partials(tmp_path)


# ============================================================ 3. NaN in --json
def test_check_json_has_no_nan(exported, monkeypatch):
    """An artefact that outputs NaN: its values come out as "nan" / "inf" strings in
    results and summary alike, and the output is strict JSON."""
    from rave_deploy.check.result import CheckReport

    def nan_check(artifact, sidecar, model, options):
        report = CheckReport(Path(artifact), "minifusion")
        report.add("parity.forward", False, "max error nan", value=float("nan"),
                   details={"errors": [np.float64("nan"), 1.0], "peak": float("inf")})
        report.summary.update(parity={"forward": {"snr_db": np.float64("nan"),
                                                  "max_error": float("-inf")}},
                              latency_ms=1.5, rtf={"128": {"rtf": float("inf")}})
        return report
    monkeypatch.setattr(registry()["minifusion"], "check", nan_check)
    result = CliRunner().invoke(deploy_cli, ["check", str(exported), "--json"])
    assert result.exit_code == 1, result.output  # a failed check: exit 1, JSON on stdout
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    data = _strict(result.stdout)
    [art] = data["artifacts"]
    assert art["summary"]["parity"]["forward"] == {"snr_db": "nan", "max_error": "-inf"}
    assert art["summary"]["rtf"]["128"]["rtf"] == "inf" and art["summary"]["latency_ms"] == 1.5
    assert art["checks"][0]["value"] == "nan"
    assert art["checks"][0]["details"] == {"errors": ["nan", 1.0], "peak": "inf"}


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON output: not JSON (JSON.parse fails)")
    data = json.loads(text, parse_constant=refuse)
    assert "NaN" not in text and "Infinity" not in text
    return data


# ============================================================ 8. "source": null
@pytest.mark.parametrize("source, field", [(None, "'source'"),
                                           ({"checkpoint": None}, "'source.checkpoint'")])
def test_check_names_the_damaged_field_of_a_sidecar(exported, checks_run, source, field):
    sidecar = Path(f"{exported}.json")
    data = json.loads(sidecar.read_text())
    data["source"] = source
    sidecar.write_text(json.dumps(data))
    cli(["check", exported], code=2,
        expect=[f"{sidecar} is damaged: its {field} field is null", "re-export, or pass --run"])
    assert checks_run == []


# ============================================================ 9. a folder or a glob of one
def test_check_takes_an_export_folder_or_its_glob(run, tmp_path, checks_run,
                                                  stub_folder_exports):
    """`check exports/*` (sidecars included, as a shell expands it) and `check exports/`
    check every artefact once: a sidecar beside its file stands for the file, and an
    --output folder (not an anira folder) for the artefacts in it."""
    out = tmp_path / "ex"
    cli(["export", run, "-t", "minifusion", "-t", "anira", "-o", out], code=0)
    artefacts = [out / "brave.anira", out / "brave.minifusion.h5"]
    cli(["check", *sorted(out.iterdir())], code=0)
    assert sorted(checks_run) == artefacts
    checks_run.clear()
    result = cli(["check", out], code=0)
    assert sorted(checks_run) == artefacts
    # which artefact is being checked, on stderr (full-size checks take minutes)
    assert f"checking {out / 'brave.anira'} (1/2) ..." in result.stderr
    assert f"checking {out / 'brave.minifusion.h5'} (2/2) ..." in result.stderr
    as_json = cli(["check", out, "--json"], code=0)   # not a terminal: JSON alone
    assert "checking" not in as_json.stderr and json.loads(as_json.stdout)["passed"]
    checks_run.clear()
    cli(["check", out / "brave.anira"], code=0)  # an anira folder is one artefact
    assert checks_run == [out / "brave.anira"]


def test_export_warns_when_it_replaces_another_checkpoints_export(run, tmp_path):
    """Two runs exported under one name into one folder: the second replaces the first's
    file, and says so; a re-export of the same checkpoint replaces it silently."""
    other = make_run(tmp_path / "runs", ("brave",), name="other", seed=1, unit_gains=True)
    out = tmp_path / "ex"
    args = ["-t", "minifusion", "-o", out, "--name", "m"]
    assert "warning" not in cli(["export", run, *args], code=0).output
    assert "warning" not in cli(["export", run, *args], code=0).output
    result = cli(["export", other, *args], code=0)
    assert "m.minifusion.h5 was an export of another checkpoint" in result.output, result.output
    assert "give --name or --output to keep both" in result.output
    recorded = json.loads((out / "m.minifusion.h5.json").read_text())["source"]["checkpoint"]
    assert (out / recorded).resolve().is_relative_to(other.resolve())
