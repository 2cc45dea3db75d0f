"""Sidecars name their run relative to their own folder, not by absolute path: a shared
sidecar, anira's ``rave-deploy.json`` and the report of ``check`` tell nobody where the
files were (``/home/alice/...``), and a project folder (runs + exports) moved whole is
still checked without ``--run``. A copied artefact whose run is not at the same relative
place is refused with the path as written; a run of the same relative place that is not
the one exported (a copied project trained on) is refused by its SHA-256; the absolute
paths older versions wrote keep working. The tests marked "fix" fail against the code
before the change."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from rave_deploy.sidecar import FOLDER_SIDECAR, read_sidecar, sidecar_path

from .runs import export_quietly, make_run
from .test_bad_input_export import checks_run, cli  # noqa: F401 - checks_run: a fixture

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKPOINT = Path("version_0", "checkpoints", "best.ckpt")


def _project(root: Path) -> dict:
    """``root/runs/brave`` and its onnx, minifusion and anira exports in ``root/exports``."""
    run = make_run(root / "runs", ("brave",), name="brave", unit_gains=True)
    files = export_quietly(run, ["onnx", "minifusion", "anira"], root / "exports")
    return {"run": run, **{t: Path(p) for t, p in files.items()}}


@pytest.fixture()
def project(tmp_path) -> dict:
    return _project(tmp_path / "project")


def _resolved(recorded: str, sidecar: Path) -> Path:
    """Where a path a sidecar records leads: from the sidecar's real folder."""
    return Path(os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(sidecar)),
                                              recorded)))


def _sidecar_file(artefact: Path) -> Path:
    return artefact / FOLDER_SIDECAR if artefact.is_dir() else sidecar_path(artefact)


# ------------------------------------------------------------------ what the sidecars say
def test_sidecars_name_the_run_relative_to_their_folder(project, tmp_path):
    """fix: every sidecar, anira's rave-deploy.json inside the folder users ship included,
    held the checkpoint's and config's absolute paths."""
    for target in ("onnx", "minifusion", "anira"):
        path = _sidecar_file(project[target])
        text = path.read_text()
        assert str(tmp_path) not in text and os.path.realpath(tmp_path) not in text, target
        source = json.loads(text)["source"]
        up = "../../" if target == "anira" else "../"   # anira's is inside its folder
        assert source["checkpoint"] == f"{up}runs/brave/{CHECKPOINT.as_posix()}", target
        assert source["config"] == f"{up}runs/brave/config.gin", target
        assert len(source["checkpoint_sha256"]) == 64   # kept: tells another checkpoint
        assert _resolved(source["checkpoint"], path) == \
            Path(os.path.realpath(project["run"] / CHECKPOINT))


def test_a_run_reached_through_a_link_is_recorded_from_the_real_folders(tmp_path):
    """An output folder given through a symbolic link: the relative path is taken between
    real folders, so the system finds the run from the sidecar's real folder."""
    run = make_run(tmp_path / "data" / "runs", ("brave",), name="brave", unit_gains=True)
    (tmp_path / "data" / "exports").mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "exports").symlink_to(tmp_path / "data" / "exports")
    (tmp_path / "home" / "runs").symlink_to(tmp_path / "data" / "runs")
    files = export_quietly(tmp_path / "home" / "runs" / "brave", ["minifusion"],
                           tmp_path / "home" / "exports")
    source = read_sidecar(files["minifusion"])["source"]
    assert source["checkpoint"] == f"../runs/brave/{CHECKPOINT.as_posix()}"
    assert _resolved(source["checkpoint"], sidecar_path(files["minifusion"])) == \
        Path(os.path.realpath(run / CHECKPOINT))


# ------------------------------------------------------------------ check, after a move
def test_a_project_moved_whole_is_checked_without_run(project, tmp_path, monkeypatch,
                                                      checks_run):
    """fix: `check` looked for the run at the absolute path of the export: moving the
    project folder (runs + exports) made every artefact need --run."""
    moved = tmp_path / "moved"
    (tmp_path / "project").rename(moved)
    exports = moved / "exports"
    result = cli(["check", exports, "--json"], code=0)
    assert sorted(checks_run) == sorted(exports / p.name for p in
                                        (project["onnx"], project["minifusion"], project["anira"]))
    assert json.loads(result.stdout)["passed"]
    # the checkpoint as the user knows it: relative to here, never made absolute
    monkeypatch.chdir(moved)
    report = tmp_path / "report.html"
    result = cli(["check", "exports", "--json", "--report", report], code=0)
    shown = {a["summary"]["checkpoint"] for a in json.loads(result.stdout)["artifacts"]}
    assert shown == {f"runs/brave/{CHECKPOINT.as_posix()}"}
    page = report.read_text()
    assert f"<dt>checkpoint</dt><dd>runs/brave/{CHECKPOINT.as_posix()}</dd>" in page
    assert str(tmp_path) not in page and os.path.realpath(tmp_path) not in page


def test_from_far_away_the_report_shows_the_checkpoint_as_the_sidecar_gives_it(
        project, tmp_path, monkeypatch, checks_run):
    """Relative to the current folder only where that is inside it or shorter: from
    elsewhere the report shows the path as the sidecar records it (relative to the
    sidecar's folder), not an absolute one (reports are shared)."""
    far = tmp_path / "a" / "b" / "c" / "d"
    far.mkdir(parents=True)
    monkeypatch.chdir(far)
    result = cli(["check", project["onnx"], "--json"], code=0)
    summary = json.loads(result.stdout)["artifacts"][0]["summary"]
    assert summary["checkpoint"] == f"../runs/brave/{CHECKPOINT.as_posix()}"
    monkeypatch.chdir(tmp_path)  # inside: relative to here
    result = cli(["check", project["onnx"], "--json", "--run", project["run"]], code=0)
    summary = json.loads(result.stdout)["artifacts"][0]["summary"]
    assert summary["checkpoint"] == f"project/runs/brave/{CHECKPOINT.as_posix()}"


def test_a_copied_artefact_away_from_its_run_says_give_run(project, tmp_path):
    """fix: a copy of an artefact and its sidecar, elsewhere: the sidecar's relative path
    leads nowhere, and check says so with the path as written there (before, the absolute
    path found the run, and a copy sent to another machine failed with the sender's
    home folder in the message)."""
    elsewhere = tmp_path / "shared" / "with" / "friend"
    elsewhere.mkdir(parents=True)
    copy = elsewhere / project["minifusion"].name
    shutil.copy(project["minifusion"], copy)
    shutil.copy(sidecar_path(project["minifusion"]), sidecar_path(copy, folder=False))
    result = cli(["check", copy], code=2, expect=[
        f"../runs/brave/{CHECKPOINT.as_posix()} does not exist: give a run directory (with "
        f"config.gin) or a .ckpt file (the run named in {sidecar_path(copy)}, relative to "
        "that file's folder); pass --run RUN to check against the run it was exported from"])
    assert str(tmp_path) not in result.output.replace(str(elsewhere), "")
    cli(["check", copy, "--run", project["run"]], code=0)


def test_a_moved_project_trained_on_is_not_taken_for_the_exported_run(project, tmp_path):
    """fix: a copy of the project whose run went on training (another checkpoint at the
    same relative path): check compares the SHA-256 the sidecar keeps and refuses it
    (before, the absolute path led to the original's run, and the copy's own run was
    never looked at)."""
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "project", copy, symlinks=True)
    other = make_run(tmp_path / "other", ("brave",), name="brave", seed=1, unit_gains=True)
    shutil.copy(other / CHECKPOINT, copy / "runs" / "brave" / CHECKPOINT)
    cli(["check", copy / "exports" / project["minifusion"].name], code=2,
        expect="changed since the export (SHA-256 differs): export again, or pass --run with "
               "the checkpoint it was exported from")


def test_links_find_the_run_from_the_real_sidecar(project, tmp_path, checks_run):
    """A link to an artefact (its sidecar read beside the link's target), and a link to
    the sidecar too: the relative path is taken from the real sidecar's folder."""
    desk = tmp_path / "desk"
    desk.mkdir()
    (desk / "m.h5").symlink_to(project["minifusion"])
    cli(["check", desk / "m.h5"], code=0)
    (desk / "n.h5").symlink_to(project["minifusion"])
    (desk / "n.h5.json").symlink_to(sidecar_path(project["minifusion"]))
    cli(["check", desk / "n.h5"], code=0)
    (desk / "a.anira").symlink_to(project["anira"])
    cli(["check", desk / "a.anira"], code=0)
    assert len(checks_run) == 3


def test_absolute_paths_of_older_sidecars_still_work(project, tmp_path, checks_run):
    path = sidecar_path(project["onnx"])
    sidecar = json.loads(path.read_text())
    sidecar["source"]["checkpoint"] = str((project["run"] / CHECKPOINT).resolve())
    sidecar["source"]["config"] = str((project["run"] / "config.gin").resolve())
    path.write_text(json.dumps(sidecar))
    cli(["check", project["onnx"]], code=0)
    (project["run"] / CHECKPOINT).rename(tmp_path / "gone.ckpt")
    cli(["check", project["onnx"]], code=2, expect=[
        f"{(project['run'] / CHECKPOINT).resolve()} does not exist: give a run directory "
        f"(with config.gin) or a .ckpt file (the run named in {path}); pass --run RUN"])


def test_replacing_another_checkpoints_export_names_it_as_the_user_knows_it(
        project, tmp_path, monkeypatch):
    other = make_run(tmp_path / "project" / "runs", ("brave",), name="other", seed=1,
                     unit_gains=True)
    monkeypatch.chdir(tmp_path / "project")
    result = cli(["export", "runs/other", "-t", "minifusion", "-o", "exports", "--name",
                  "brave"], code=0)
    assert (f"was an export of another checkpoint (runs/brave/{CHECKPOINT.as_posix()}) and "
            "is replaced") in result.output
    assert read_sidecar(Path("exports/brave.minifusion.h5"))["source"]["checkpoint"] == \
        f"../runs/other/{CHECKPOINT.as_posix()}"
    assert other.is_dir()
