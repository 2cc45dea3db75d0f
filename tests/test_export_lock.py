"""One `rave-deploy export` at a time into an output folder: two at once both succeeded
and could mix two runs under one name. The second is refused at once (exit 2), naming
the first's PID; the lock file leaves no trace in the folder users ship, a stale one
(a process killed outright) blocks nothing, and `rave-deploy check` never takes it for
an artefact. Each test fails against the code before the lock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .runs import export_quietly, make_run
from .test_bad_input_export import checks_run, cli, tree  # noqa: F401 - checks_run: a fixture

pytestmark = pytest.mark.usefixtures("one_thread")

LOCK = ".rave-deploy.lock"   # (spelled out: the code before the change has no such name)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), ("brave",), name="brave", unit_gains=True)


def _export(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    """`rave-deploy export ...` in a process of its own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rave_deploy.cli", "export",
                           *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


class Holder:
    """Another process holding the export lock of ``folder`` (as an export writing there
    does), until :meth:`release`, or killed outright by :meth:`kill`."""

    def __init__(self, folder: Path) -> None:
        code = textwrap.dedent(f"""
            import sys
            from rave_deploy.output_lock import output_lock
            with output_lock({str(folder)!r}):
                print("held", flush=True)
                sys.stdin.read()
            """)
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.process.stdout.readline().strip() == "held"
        self.pid = self.process.pid

    def release(self) -> None:
        self.process.communicate(timeout=60)
        assert self.process.returncode == 0

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=60)


def test_a_second_export_into_a_folder_is_refused_while_the_first_writes(run, tmp_path):
    """fix: both exports wrote, and the folder could end up with one run's file beside the
    other's sidecar. Now the second is refused before it writes anything; once the first
    is done it goes ahead, and no lock file is left in the folder."""
    out = tmp_path / "out"
    export_quietly(run, ["minifusion"], out)
    before = tree(out)
    holder = Holder(out)
    try:
        refused = _export(run, "-t", "minifusion", "-o", out)
        assert refused.returncode == 2, refused
        assert refused.stderr.strip() == (
            f"Error: another rave-deploy export (PID {holder.pid}) is writing into {out}: "
            "wait for it to finish, or choose another --output"), refused.stderr
        # one target's file path (-o file): its folder is locked too
        refused = _export(run, "-t", "minifusion", "-o", out / "m.h5", "--json")
        assert refused.returncode == 2 and json.loads(refused.stdout)["exit_code"] == 2
        assert f"(PID {holder.pid})" in json.loads(refused.stdout)["error"]
        assert {k: v for k, v in tree(out).items() if k != LOCK} == before  # nothing written
    finally:
        holder.release()
    assert tree(out) == before  # the holder's lock file went with it
    done = _export(run, "-t", "minifusion", "-o", out, "--name", "again")
    assert done.returncode == 0, done.stderr
    assert sorted(tree(out)) == sorted([*before, "again.minifusion.h5",
                                        "again.minifusion.h5.json"])


def test_a_run_path_that_names_no_run_is_said_before_a_locked_folder(run, tmp_path):
    """fix: a mistyped run exported into a folder another export holds was told to wait
    for that export, and only after waiting learnt that the run does not exist. What
    the path names is looked up first (nothing loaded); a real run is still refused at
    once there."""
    out = tmp_path / "out"
    out.mkdir()
    holder = Holder(out)
    try:
        typo = run.parent / "bravo"
        refused = _export(typo, "-t", "minifusion", "-o", out)
        assert refused.returncode == 2, refused
        assert refused.stderr.strip() == (
            f"Error: {typo} does not exist: give a run directory (with config.gin) or a "
            ".ckpt file"), refused.stderr
        refused = _export(run, "-t", "minifusion", "-o", out)
        assert refused.returncode == 2 and f"(PID {holder.pid})" in refused.stderr, refused
    finally:
        holder.release()


def test_an_export_holds_the_lock_while_it_writes(run, tmp_path, monkeypatch):
    """The lock is held from before the first target is written to after the last: a
    second export started meanwhile (here: while the first writes its second target) is
    refused, and the first still completes."""
    from rave_deploy import export as export_module

    out = tmp_path / "out"
    seen = []
    write = export_module._write_artifact

    def and_meanwhile(target, *args, **kwargs):
        if target.name == "onnx":  # the second target of the first export
            seen.append(_export(run, "-t", "minifusion", "-o", out, "--name", "other"))
        return write(target, *args, **kwargs)

    monkeypatch.setattr(export_module, "_write_artifact", and_meanwhile)
    files = export_quietly(run, ["minifusion", "onnx"], out)
    assert seen[0].returncode == 2 and f"(PID {os.getpid()})" in seen[0].stderr, seen[0]
    assert sorted(tree(out)) == sorted([files["minifusion"].name, files["minifusion"].name
                                        + ".json", files["onnx"].name,
                                        files["onnx"].name + ".json"])


def test_a_killed_exports_lock_blocks_nothing_and_check_ignores_it(run, tmp_path, checks_run):
    """fix (check): a lock file left by a process killed outright (hidden, empty of
    meaning once its process is gone) is not an artefact for `check <folder>`, and the
    next export takes the lock over and removes the file."""
    out = tmp_path / "out"
    export_quietly(run, ["minifusion"], out)
    holder = Holder(out)
    holder.kill()
    assert (out / LOCK).is_file()
    result = cli(["check", out], code=0)
    assert checks_run == [out / "brave.minifusion.h5"] and LOCK not in result.output
    only = tmp_path / "only"
    only.mkdir()
    (only / LOCK).write_text("12345")
    cli(["check", only], code=2, expect=f"{only} is empty: give the files or folder "
                                        "rave-deploy export wrote")
    done = _export(run, "-t", "minifusion", "-o", out)
    assert done.returncode == 0, done.stderr
    assert not (out / LOCK).exists()


def test_a_lock_removed_as_it_is_taken_is_taken_again(tmp_path, monkeypatch):
    """The releasing export removes the lock file while still holding it; a process that
    opened that file just before locks a file nobody else will see, so it locks the one
    now there instead (else two exports could each hold "the" lock)."""
    from rave_core import folder_lock
    from rave_core.folder_lock import FolderLock, LockHeld

    first = FolderLock(tmp_path, LOCK, remove=True)
    assert first.acquire()
    flock = folder_lock.fcntl.flock
    calls = []

    def first_releases_meanwhile(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            first.release()   # (removes the file the second has open)
        return flock(fd, op)

    monkeypatch.setattr(folder_lock.fcntl, "flock", first_releases_meanwhile)
    second = FolderLock(tmp_path, LOCK, remove=True)
    assert second.acquire() and len(calls) == 2
    monkeypatch.setattr(folder_lock.fcntl, "flock", flock)
    with pytest.raises(LockHeld) as held:
        FolderLock(tmp_path, LOCK, remove=True).acquire()
    assert held.value.pid == os.getpid()
    second.release()
    assert list(tmp_path.iterdir()) == []


def test_without_fcntl_nothing_is_locked(run, tmp_path, monkeypatch):
    """Windows has no fcntl: exports go ahead unlocked, as trainings do."""
    from rave_core import folder_lock
    from rave_deploy.output_lock import output_lock

    monkeypatch.setattr(folder_lock, "LOCKING", False)
    out = tmp_path / "out"
    with output_lock(out):
        export_quietly(run, ["minifusion"], out)
    assert not (out / LOCK).exists()


def test_a_link_in_the_lock_files_place_is_not_followed(run, tmp_path):
    """A folder received from someone else may hold a link named like the lock file: the
    export must not truncate the file it leads to (it goes ahead unlocked)."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    (out / LOCK).symlink_to(victim)
    export_quietly(run, ["minifusion"], out)
    assert victim.read_text() == "mine" and (out / LOCK).is_symlink()


def test_a_second_export_is_refused_before_it_loads_its_run(run, tmp_path, monkeypatch):
    """fix: a second export into a folder loaded its checkpoint (seconds for a full-size
    model) and taught its style (--style-target: longer) before it was refused. Now the
    refusal comes first: its run is never opened, and the folder is left as it was."""
    from rave_deploy import export as export_module
    from rave_deploy.export import export_run
    from rave_deploy.output_lock import OutputLocked, output_lock
    from rave_deploy.targets import ExportOptions

    opened = []
    open_run = export_module.open_run
    monkeypatch.setattr(export_module, "open_run",
                        lambda *args, **kwargs: opened.append(args) or open_run(*args, **kwargs))
    out = tmp_path / "out"
    export_quietly(run, ["minifusion"], out)
    opened.clear()
    before = tree(out)
    style = tmp_path / "style.wav"
    style.write_bytes(b"")  # (never read: refused first)
    refused = f"another rave-deploy export (PID {os.getpid()}) is writing into {out}: "
    with output_lock(out):
        for args in (["-o", out], ["-o", out / "m.h5"], ["-o", out, "--style-target", style]):
            cli(["export", run, "-t", "minifusion", *args], code=2, expect=refused)
            assert opened == []
        with pytest.raises(OutputLocked, match=r"\(PID "):
            export_run(run, ["minifusion"], out, ExportOptions())
    assert opened == [] and tree(out) == before


def test_an_export_holds_the_lock_from_before_it_loads_its_run(run, tmp_path, monkeypatch):
    """An export into an existing folder holds its lock while it loads its run: a second
    export started meanwhile is refused (it went ahead and wrote, before)."""
    from rave_deploy import export as export_module

    out = tmp_path / "out"
    out.mkdir()
    seen = []
    open_run = export_module.open_run

    def and_meanwhile(*args, **kwargs):
        seen.append(_export(run, "-t", "minifusion", "-o", out, "--name", "other"))
        return open_run(*args, **kwargs)

    monkeypatch.setattr(export_module, "open_run", and_meanwhile)
    files = export_quietly(run, ["minifusion"], out)
    assert seen[0].returncode == 2 and f"(PID {os.getpid()})" in seen[0].stderr, seen[0]
    assert sorted(tree(out)) == sorted([files["minifusion"].name,
                                        files["minifusion"].name + ".json"])


@pytest.mark.parametrize("existing", [False, True], ids=["new folder", "existing folder"])
def test_an_export_refused_otherwise_leaves_no_folder_nor_lock_file(run, tmp_path, existing):
    """The lock is taken before the run is loaded, yet an export that then writes nothing
    (a bad run, a target the model cannot serve, every target skipped, something of the
    user's in the way) creates no folder, leaves no lock file, and says what it said
    before."""
    from rave_deploy.export import export_run
    from rave_deploy.targets import ExportOptions

    out = tmp_path / "new" / "out"
    if existing:
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
        before = tree(out)

    def as_before():
        if existing:
            assert tree(out) == before
        else:
            assert not (tmp_path / "new").exists()

    cli(["export", tmp_path / "missing", "-o", out], code=2, expect="missing does not exist")
    as_before()
    cli(["export", run, "-t", "vst", "-o", out], code=1,
        expect="vst: ratio 128 is below the RAVE VST's minimum of 512")
    as_before()
    results = export_run(run, ["vst"], out, ExportOptions(), explicit=False)
    assert [r.skipped is not None for r in results] == [True]
    as_before()
    if existing:
        (out / "brave.minifusion.h5").mkdir()
        before = tree(out)
        cli(["export", run, "-t", "minifusion", "-o", out], code=2,
            expect="is a folder, not a file")
        as_before()
