"""What `rave-deploy check` is given, found by testing as a user: a `--report` path that
names a file of the user's, paths too long or not UTF-8, an empty argument, Ctrl-C among
several artefacts, `--json` on an error, folders with artefacts that have no sidecar,
links, duplicates, a graph of an anira export, an empty file. Each is answered in one or
two lines, never a traceback, and nothing of the user's is replaced."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rave_core.text import clipped
from rave_deploy.cli import main as deploy_cli
from rave_deploy.sidecar import FOLDER_SIDECAR, sidecar_path
from rave_deploy.targets import registry

from .runs import export_quietly, make_run
from .test_bad_input_export import checks_run, cli  # noqa: F401 - checks_run: a fixture

pytestmark = pytest.mark.usefixtures("one_thread")

TOO_LONG = "x" * 300   # a file name holds 255 bytes


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """A tiny run's onnx and minifusion exports (the fastest to check), by target."""
    root = tmp_path_factory.mktemp("check_inputs")
    run = make_run(root / "runs", ("brave",), unit_gains=True)
    files = export_quietly(run, ["onnx", "minifusion"], root / "ex")
    return {"run": run, **{t: Path(p) for t, p in files.items()}}


def _copy_with_sidecar(artefact: Path, folder: Path, name: str = None) -> Path:
    """A copy of ``artefact`` and its sidecar in ``folder``: away from its run (the
    sidecar names it relative to its folder), it is checked with --run."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / (name or artefact.name)
    shutil.copy(artefact, copy)
    shutil.copy(sidecar_path(artefact), sidecar_path(copy, folder=False))
    return copy


# ============================================================ 1. --report over a file of the user's
def test_report_never_replaces_a_file_that_is_not_a_report(exports, tmp_path):
    checkpoint = next(exports["run"].rglob("*.ckpt"))
    sidecar = sidecar_path(exports["onnx"])
    for victim in (checkpoint, sidecar, exports["minifusion"]):
        before = victim.read_bytes()
        cli(["check", exports["onnx"], "--report", victim], code=2,
            expect=f"--report {victim} exists and is not a rave-deploy report: choose another "
                   "path, or remove it")
        assert victim.read_bytes() == before


def test_report_replaces_an_earlier_report(exports, tmp_path):
    report = tmp_path / "r.html"
    cli(["check", exports["onnx"], "--report", report], code=0)
    first = report.read_bytes()
    assert b"<meta name=generator content='rave-deploy check" in first[:200]
    cli(["check", exports["onnx"], "--report", report], code=0)   # ours: replaced
    assert report.read_bytes() != first
    # a page of a version that wrote no generator tag is ours too
    report.write_bytes(first.replace(first[first.index(b"<meta name=generator"):
                                           first.index(b"<meta name=viewport")], b""))
    cli(["check", exports["onnx"], "--report", report], code=0)


# ============================================================ 2. paths too long
@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_an_artefact_path_too_long_is_one_line(tmp_path, json_flag):
    result = cli(["check", tmp_path / f"{TOO_LONG}.ts", *json_flag], code=2,
                 expect="the name is too long: choose a shorter path")
    if json_flag:
        assert json.loads(result.stdout)["exit_code"] == 2


def test_a_report_path_too_long_is_one_line(exports, tmp_path):
    cli(["check", exports["onnx"], "--report", tmp_path / f"{TOO_LONG}.html"], code=2,
        expect=f"--report {tmp_path}/{TOO_LONG}.html: the name is too long")


def test_an_artefact_whose_sidecar_name_cannot_exist_has_none(exports, tmp_path):
    long_name = "y" * 249 + ".onnx"   # its sidecar's name would be 259 bytes
    shutil.copy(exports["onnx"], tmp_path / long_name)
    cli(["check", tmp_path / long_name], code=2, expect="has no rave-deploy sidecar naming its run")
    cli(["check", tmp_path / long_name, "--run", exports["run"]], code=0)


# ============================================================ 3. names that are not UTF-8
def test_a_folder_name_that_is_not_utf8_is_shown_escaped(exports, tmp_path):
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    artefact = _copy_with_sidecar(exports["minifusion"], folder)
    report = tmp_path / "r.html"
    run = ["--run", exports["run"]]
    result = cli(["check", artefact, "--report", report, *run], code=0)
    assert f"checking {folder.parent}/caf\\xe9/{artefact.name}" in result.stderr
    assert "caf\\xe9" in report.read_text(encoding="utf-8")
    result = cli(["check", artefact, "--json", *run], code=0)
    assert "\\udc" not in result.stdout   # a lone surrogate, which strict parsers refuse
    assert json.loads(result.stdout)["artifacts"][0]["artifact"].endswith("caf\\xe9/"
                                                                          + artefact.name)


# ============================================================ 4. an empty argument
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(exports, monkeypatch):
    monkeypatch.chdir(exports["onnx"].parent)   # an export folder: "" checked it all
    cli(["check", ""], code=2, expect="an empty path was given")
    cli(["check", exports["onnx"], "--run", ""], code=2, expect="--run: an empty path was given")
    cli(["check", exports["onnx"], "--report", ""], code=2,
        expect="--report: an empty path was given")


# ============================================================ 5. Ctrl-C among several
@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_keeps_the_results_of_the_artefacts_checked_before(exports, checks_run,
                                                                  monkeypatch, as_json):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(registry()["minifusion"], "check", interrupted)
    result = CliRunner().invoke(deploy_cli, ["check", str(exports["onnx"]),
                                             str(exports["minifusion"])]
                                + (["--json"] if as_json else []))
    assert result.exit_code == 130, result.output
    if as_json:   # nothing is above on stderr: the results are in the JSON on stdout
        assert (f"Interrupted while checking {exports['minifusion']}: the results of the 1 "
                "artefact(s) checked before it are in the JSON on stdout") in result.stderr
        assert "above" not in result.stderr
    else:
        assert (f"Interrupted while checking {exports['minifusion']}: the results above are "
                "of the 1 artefact(s) checked before it") in result.stderr
    if as_json:
        data = json.loads(result.stdout)
        assert [a["artifact"] for a in data["artifacts"]] == [str(exports["onnx"])]
        assert data["exit_code"] == 130 and data["passed"] is False
    else:
        assert "PASS  contract.stub" in result.stdout


# ============================================================ 6. --json on an error
def test_json_stdout_holds_one_object_on_an_error(tmp_path):
    result = cli(["check", tmp_path / "nosuch.ts", "--json"], code=2, expect="does not exist")
    assert json.loads(result.stdout) == {"passed": False, "artifacts": [], "exit_code": 2,
                                         "error": f"{tmp_path}/nosuch.ts does not exist"}
    result = cli(["export", tmp_path / "nope", "--json"], code=2, expect="does not exist")
    assert json.loads(result.stdout)["exit_code"] == 2


# ============================================================ 7. folders
def test_a_folder_says_which_artefacts_it_skips(exports, tmp_path, checks_run):
    mixed = tmp_path / "mix"
    _copy_with_sidecar(exports["onnx"], mixed)
    shutil.copy(exports["minifusion"], mixed / "foreign.h5")
    (mixed / "README.txt").write_text("notes")
    cli(["check", mixed, "--run", exports["run"]], code=0,
        expect=f"Warning: {mixed}/foreign.h5 has no sidecar: check it on its own with --run RUN")
    assert checks_run == [mixed / exports["onnx"].name]
    sidecar_path(mixed / exports["onnx"].name).unlink()
    cli(["check", mixed], code=2, expect=f"no artefacts with sidecars in {mixed} (found "
                                         f"foreign.h5, {exports['onnx'].name} without one: "
                                         "check them with --run RUN)")
    (tmp_path / "empty").mkdir()
    cli(["check", tmp_path / "empty"], code=2, expect=f"{tmp_path}/empty is empty")


def test_a_folder_named_like_a_file_says_it_is_a_folder(exports, tmp_path, checks_run):
    """`check my.ts/`, my.ts a folder: a folder is a folder (its artefacts are checked),
    but with nothing to check the message said only "is empty" or "no artefacts", to a
    user who took it for a TorchScript file."""
    folder = tmp_path / "my.ts"
    folder.mkdir()
    for given in (folder, f"{folder}/"):
        cli(["check", given], code=2, expect=f"{folder} is an empty folder, not a "
                                             "TorchScript file: give the files or folder "
                                             "rave-deploy export wrote")
    (folder / "notes.txt").write_text("notes")
    cli(["check", folder], code=2, expect=f"{folder} is a folder, not a TorchScript file: "
                                          f"no artefacts in {folder} (it holds notes.txt)")
    (tmp_path / "e.onnx").mkdir()
    cli(["check", tmp_path / "e.onnx"], code=2, expect="is an empty folder, not an ONNX graph")
    # listed among other things, a folder shows as one
    cli(["check", tmp_path], code=2, expect=f"no artefacts in {tmp_path} (it holds e.onnx/, "
                                            "my.ts/)")
    copy = _copy_with_sidecar(exports["onnx"], folder)
    cli(["check", folder, "--run", exports["run"]], code=0)
    assert checks_run == [copy]


# ============================================================ 8. links, duplicates, anira graphs
def test_a_link_finds_its_targets_sidecar_and_each_file_is_checked_once(exports, tmp_path,
                                                                        checks_run):
    link = tmp_path / "link.onnx"
    link.symlink_to(exports["onnx"])
    again = exports["onnx"].parent / ".." / exports["onnx"].parent.name / exports["onnx"].name
    cli(["check", link, exports["onnx"], again], code=0)
    assert checks_run == [link]


def test_a_graph_of_an_anira_export_names_its_folder(exports, tmp_path):
    folder = tmp_path / "brave.anira"
    folder.mkdir()
    (folder / FOLDER_SIDECAR).write_text(json.dumps({"target": "anira"}))
    shutil.copy(exports["onnx"], folder / "forward.onnx")
    cli(["check", folder / "forward.onnx"], code=2,
        expect=f"{folder}/forward.onnx is part of the anira export {folder}: check the folder")


# ============================================================ 9. an empty file, long messages
def test_an_empty_file_says_so_with_or_without_a_sidecar(exports, tmp_path):
    (tmp_path / "empty.ts").write_bytes(b"")
    cli(["check", tmp_path / "empty.ts"], code=2,
        expect=f"{tmp_path}/empty.ts is empty (0 bytes): copy or export it again")
    copy = _copy_with_sidecar(exports["onnx"], tmp_path / "ex")
    copy.write_bytes(b"")
    cli(["check", copy], code=2, expect="is empty (0 bytes)")


def test_a_long_message_is_cut_at_a_sentence_or_a_word():
    text = ("PytorchStreamReader failed locating file constants.pkl: file not found. "
            "This may be because the file was transferred incorrectly, or the archive is "
            "damaged in a way that loses its end")
    assert clipped(text, 100) == ("PytorchStreamReader failed locating file constants.pkl: "
                                  "file not found.")
    cut = clipped(text[72:], 60)
    assert cut.endswith("...") and len(cut) <= 60 and text[72:].startswith(cut[:-3])
    assert text[72:][len(cut) - 3] == " "   # not mid-word


# ============================================================ 10. help
def test_the_command_list_shows_whole_short_helps():
    result = cli(["--help"], code=0)
    commands = result.stdout.split("Commands:")[1]
    assert "..." not in commands and "Check exported artefacts against their run." in commands
    assert "--run RUN" in cli(["check", "--help"], code=0).stdout


def test_weights_that_are_not_the_exported_ones_are_refused_even_if_the_file_now_is(exports):
    """``check`` compares the file on disk with the sidecar's SHA-256 before loading it; a
    checkpoint rewritten while it was read would give other weights from a file that then
    matches again. The digest of the bytes loaded is compared too (here: as if the file had
    changed during the read)."""
    import dataclasses

    from rave_deploy.check import CheckUsageError, check_artifact, open_reference, prepare_check

    plan = prepare_check(exports["onnx"])
    loaded = open_reference(plan)
    other = dataclasses.replace(loaded, checkpoint_sha256="0" * 64)
    with pytest.raises(CheckUsageError, match="changed while it was being read"):
        check_artifact(exports["onnx"], loaded=other)


# ============================================================ 8. a run, or its checkpoint
def test_a_training_checkpoint_or_run_is_told_to_be_exported_first(exports, tmp_path):
    """A checkpoint is a zip archive as a TorchScript file is: it was taken for one ("rename
    it to best.ts"), and a run folder said only "no artefacts". Both are told to export
    first; a TorchScript file with another suffix is still told its name."""
    import torch

    run = exports["run"]
    checkpoint = next(run.rglob("*.ckpt"))
    for given, what in ((checkpoint, "a training checkpoint (torch.save)"),
                        (run, "a training run (config.gin and checkpoints)"),
                        (checkpoint.parent, "a folder of a training run (checkpoints)")):
        message = (f"{given} is {what}, not an export: export it first (rave-deploy export "
                   f"{given} -o FOLDER), then check what it writes (rave-deploy check FOLDER)")
        result = cli(["check", given], code=2, expect=message)
        assert "TorchScript" not in result.output and "rename" not in result.output
        result = cli(["check", given, "--json"], code=2)
        assert json.loads(result.stdout)["error"] == message
    scripted = tmp_path / "model.ckpt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    cli(["check", scripted, "--run", run], code=2,
        expect="it is a TorchScript file (a zip archive): rename it to model.ts")
