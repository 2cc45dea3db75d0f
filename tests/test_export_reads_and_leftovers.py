"""What `rave-deploy export` reads, and what an interrupted export leaves behind.

1. The checkpoint was opened four times per export (a CRC pass, a zip probe, torch.load,
   a SHA-256 pass): it is now read once, and the SHA-256 a sidecar records names the
   bytes the model was loaded from, even when the file is rewritten during the export.
2. An export killed outright (SIGKILL) left its ``.partial`` temporary in the output
   folder until the same file was exported again: the next export into the folder (which
   holds the folder's lock) removes every temporary named exactly as ours, of a process
   no longer running, and says so in one line; nothing else is touched.
3. A sidecar or folder that export could not read while looking at what it replaces was
   skipped in silence (an unreadable sidecar), taken for no export at all (an anira
   folder's), or reported with the write-side advice "choose a folder you can write to":
   now the message says what could not be read, and how to make it readable.

Each test fails against the code before the change (see each docstring).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rave_deploy.sidecar import sidecar_path

from .runs import export_quietly, make_run
from .test_bad_input_export import (cli, run, run_copy, stub_folder_exports,  # noqa: F401 - fixtures
                                    tree)
from .test_export_lock import Holder, _export

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
CKPT = Path("version_0") / "checkpoints" / "best.ckpt"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ============================================================ 1. the checkpoint, read once
_OPENED = []   # the paths opened while a test listens (audit hooks cannot be removed)
_LISTENING = []
_HOOKED = []


def _audit(event: str, args) -> None:
    if _LISTENING and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.realpath(os.fsdecode(args[0])))


def test_an_export_of_every_target_reads_the_checkpoint_once(run_copy, tmp_path):
    """fix: open_run opened the checkpoint four times (zipfile's probe, its CRC pass,
    torch.load, the SHA-256 pass): this counted 4 before the change."""
    if _audit not in _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED.append(_audit)
    checkpoint = os.path.realpath(run_copy / CKPT)
    _OPENED.clear()
    _LISTENING.append(True)
    try:
        paths = export_quietly(run_copy, ["all"], tmp_path / "out")
    finally:
        _LISTENING.clear()
    assert {"nn_tilde", "onnx", "minifusion"} <= set(paths)
    assert _OPENED.count(checkpoint) == 1, _OPENED.count(checkpoint)
    for target, path in paths.items():
        if path is not None:
            recorded = json.loads(sidecar_path(path).read_text())["source"]
            assert recorded["checkpoint_sha256"] == _sha256(checkpoint), target



def test_a_checkpoint_rewritten_during_the_export_is_recorded_as_loaded(run_copy, tmp_path,
                                                                       monkeypatch):
    """fix: the SHA-256 was read from the file after the weights were loaded: a checkpoint
    rewritten in between (training still saving best.ckpt) gave a sidecar naming bytes
    the model did not come from, and `rave-deploy check` then compared the export with
    another checkpoint. Now the digest is of the bytes loaded (before the change the
    sidecar held the rewritten file's digest)."""
    from rave_core.run import open_run, sha256_of

    checkpoint = run_copy / CKPT
    loaded_bytes = checkpoint.read_bytes()
    rewritten = make_run(tmp_path / "other", ("brave",), name="brave", seed=1, unit_gains=True)
    new_bytes = (rewritten / CKPT).read_bytes()
    assert new_bytes != loaded_bytes
    real_load = torch.load

    def load_then_rewrite(*args, **kwargs):
        result = real_load(*args, **kwargs)
        checkpoint.write_bytes(new_bytes)   # in place, as a trainer saving over it does
        return result

    monkeypatch.setattr(torch, "load", load_then_rewrite)
    paths = export_quietly(run_copy, ["minifusion"], tmp_path / "out")
    recorded = json.loads(sidecar_path(paths["minifusion"]).read_text())["source"]
    assert recorded["checkpoint_sha256"] == hashlib.sha256(loaded_bytes).hexdigest()
    # the file as it is now is hashed anew (`check` compares it), not answered from the read
    assert sha256_of(checkpoint) == hashlib.sha256(new_bytes).hexdigest()

    # and the model is the one the loaded bytes hold, not the rewritten file's
    checkpoint.write_bytes(loaded_bytes)
    loaded = open_run(run_copy)     # (rewritten again once loaded)
    assert loaded.checkpoint_sha256 == hashlib.sha256(loaded_bytes).hexdigest()
    expected = real_load(io.BytesIO(loaded_bytes), weights_only=True)["state_dict"]
    for key, value in loaded.model.state_dict().items():
        if key in expected:
            assert torch.equal(value, expected[key]), key


# ============================================================ 2. leftovers of a killed export
def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def _killed_while_writing(run: Path, out: Path, name: str) -> None:
    """`rave-deploy export RUN -t minifusion -o out --name name`, killed with SIGKILL while
    it writes the file (its temporary holds part of it)."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import rave_deploy.targets.minifusion as minifusion
        def stuck(path, weights, attrs):
            Path(path).write_bytes(b"half a file")
            print("writing", flush=True)
            time.sleep(600)
        minifusion.write_h5 = stuck
        from rave_deploy.cli import main
        sys.argv = ["rave-deploy", "export", {str(run)!r}, "-t", "minifusion", "-o",
                    {str(out)!r}, "--name", {name!r}]
        main()
        """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env)
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=60)


def test_the_next_export_removes_what_a_killed_export_left(run, tmp_path):
    """fix: a ``.partial`` of an export killed while writing stayed in the output folder
    until that very file was exported again; an export of another name or target left it
    there (before the change the temporary was still there, and nothing was said)."""
    out = tmp_path / "out"
    _killed_while_writing(run, out, "first")
    left = sorted(p.name for p in out.iterdir())
    assert ".rave-deploy.lock" in left, left   # killed outright
    partials = [n for n in left if n != ".rave-deploy.lock"]
    assert [n.split(".")[1:4] for n in partials] == [["first", "minifusion", "h5"]] * 2, left

    # the user's files that look alike are kept, and so are a live process's
    alike = ["notes.partial", ".notes.partial", f".first.minifusion.h5.{_dead_pid()}.x1.partial",
             f".first.minifusion.h5.{_dead_pid()}.abcd1234.partial.txt"]
    for name in alike:
        (out / name).write_text("the user's")
    live = f".first.minifusion.h5.{os.getppid()}.abcd1234.partial"
    (out / live).write_text("being written")

    done = _export(run, "-t", "minifusion", "-o", out, "--name", "second")
    assert done.returncode == 0, done.stderr
    assert (f"Warning: removed 2 unfinished files left in {out} by an interrupted export: "
            f"{', '.join(partials)}") in done.stderr.splitlines(), done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(alike + [live, "second.minifusion.h5", "second.minifusion.h5.json"])
    # nothing left: nothing said
    again = _export(run, "-t", "minifusion", "-o", out, "--name", "second")
    assert again.returncode == 0 and "unfinished" not in again.stderr, again.stderr


def test_a_folder_another_export_holds_is_not_cleaned_up_until_it_is_done(run, tmp_path):
    """The lock's holder may be writing its temporaries: a second export is refused and
    touches none; once the holder is gone, the next export removes the dead process's.
    (Before the change the last export left them.)"""
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    stale = [out / f".brave.onnx.onnx.{dead}.k2_9zq0a.partial",
             out / f".brave.anira.{dead}.abcdefgh.partial"]
    holder = Holder(out)   # (it cleans up as it takes the lock: these come after)
    try:
        stale[0].write_bytes(b"half")
        stale[1].mkdir()
        (stale[1] / "encode.onnx").write_bytes(b"half")
        refused = _export(run, "-t", "minifusion", "-o", out)
        assert refused.returncode == 2, refused.stderr
        assert all(p.exists() for p in stale)
    finally:
        holder.release()
    done = _export(run, "-t", "minifusion", "-o", out)
    assert done.returncode == 0, done.stderr
    assert not any(p.exists() for p in stale)
    assert (f"Warning: removed 2 unfinished files left in {out} by an interrupted export: "
            f"{stale[1].name}, {stale[0].name}") in done.stderr.splitlines(), done.stderr


def test_a_folder_moved_aside_by_a_killed_export_is_put_back(tmp_path):
    """A folder output (anira) is moved aside for the length of two renames: an export
    killed between them left it hidden as ``.old``; the next export into the folder puts
    it back (before the change only a new export of that very folder did)."""
    from rave_deploy import io as rio

    dead = _dead_pid()
    aside = tmp_path / f".brave.anira.{dead}.previous.old"
    aside.mkdir()
    (aside / "graph.onnx").write_bytes(b"previous export")
    replaced = tmp_path / f".m.anira.{dead}.previous.old"   # the new one is in place
    replaced.mkdir()
    (tmp_path / "m.anira").mkdir()
    assert rio.remove_unfinished(tmp_path) == [replaced]
    assert (tmp_path / "brave.anira" / "graph.onnx").read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brave.anira", "m.anira"]


def test_a_temporary_of_this_pid_not_being_written_is_a_leftover(tmp_path):
    """In a container every command may run as PID 1: a temporary named with this
    process's PID that this process is not writing was left by a killed one (before the
    change it was kept for good); one being written is kept."""
    from rave_deploy import io as rio

    left = tmp_path / f".m.onnx.{os.getpid()}.abcd1234.partial"
    left.write_bytes(b"half")
    with rio.atomic_file(tmp_path / "other.json") as writing:
        assert rio.remove_unfinished(tmp_path) == [left]
        assert writing.exists()
    assert rio.remove_stale_partials(tmp_path / "m.onnx") == []


# ============================================================ 3. what export cannot read
def _skip_as_root() -> None:
    if IS_ROOT:
        pytest.skip(reason="running as root: permissions do not stop root from reading, so "
                           "no unreadable file can be made (the tests with a simulated "
                           "refusal below cover the messages)")


def _refused(path: Path):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    return refuse


def test_a_sidecar_export_cannot_read_is_said_so_not_skipped(run, tmp_path, monkeypatch):
    """fix: a sidecar that could not be read was taken for none: the file beside it was
    replaced without the checks that sidecar is for (another target's file, another
    checkpoint's export). Now export refuses, naming the file and the fix (before the
    change it exited 0). Simulated: root reads any file."""
    out = tmp_path / "out"
    paths = export_quietly(run, ["minifusion"], out)
    sidecar = sidecar_path(paths["minifusion"])
    before = tree(out)
    real_read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (
        _refused(self)() if self == sidecar else real_read_text(self, *a, **k)))
    result = cli(["export", run, "-t", "minifusion", "-o", out], code=1)
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot read {sidecar} (the sidecar of {paths['minifusion']}, which the "
        f"minifusion export would replace): permission denied: make it readable (chmod u+r "
        f"{sidecar}) or remove it, or choose another --output or --name"), result.stderr
    assert tree(out) == before


def test_an_anira_folder_export_cannot_list_is_said_so_for_reading(run, tmp_path, monkeypatch,
                                                                   stub_folder_exports):
    """fix: "cannot read ..., where the anira export goes: permission denied: choose a
    folder you can write to", the advice for a write (the wording before the change)."""
    out = tmp_path / "out"
    folder = export_quietly(run, ["anira"], out)["anira"]
    before = tree(out)
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: (
        _refused(self)() if self == folder else real_iterdir(self)))
    result = cli(["export", run, "-t", "anira", "-o", out], code=1)
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot read {folder} (where the anira export goes): permission denied: make "
        f"it readable (chmod u+rwx {folder}), or choose another --output or --name")
    assert "write to" not in result.stderr
    assert tree(out) == before


def test_an_unreadable_sidecar_of_an_anira_folder_is_not_taken_for_none(run, tmp_path,
                                                                        stub_folder_exports):
    """fix: an anira folder whose rave-deploy.json could not be read was called "not an
    earlier anira export (it has no rave-deploy.json of one)" (before the change)."""
    _skip_as_root()
    out = tmp_path / "out"
    folder = export_quietly(run, ["anira"], out)["anira"]
    sidecar = folder / "rave-deploy.json"
    sidecar.chmod(0)
    try:
        result = cli(["export", run, "-t", "anira", "-o", out], code=1)
    finally:
        sidecar.chmod(0o644)
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: cannot read {sidecar} (the sidecar of {folder}, which the anira export would "
        f"replace): permission denied: make it readable (chmod u+r {sidecar}), or choose "
        "another --output or --name")


@pytest.mark.parametrize("what", ["sidecar", "anira folder", "output folder"])
def test_what_export_cannot_read_is_named_with_how_to_read_it(run, tmp_path, what,
                                                              stub_folder_exports):
    """The same as the simulated tests above, with real permissions: a sidecar without
    read permission (exited 0 before the change), an anira folder that cannot be listed
    ("choose a folder you can write to"), an output folder that cannot be searched (the
    same write-side advice, naming a file in it)."""
    _skip_as_root()
    out = tmp_path / "out"
    target = "onnx" if what == "sidecar" else "anira"
    artefact = export_quietly(run, [target], out)[target]
    blocked, mode, fix = {
        "sidecar": (sidecar_path(artefact), 0, "u+r"),
        "anira folder": (artefact, 0o300, "u+rwx"),
        "output folder": (out, 0o600, "u+rwx")}[what]
    blocked.chmod(mode)
    try:
        result = cli(["export", run, "-t", target, "-o", out], code=1)
    finally:
        blocked.chmod(0o755 if blocked.is_dir() else 0o644)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: cannot read {blocked} ("), last
    assert f"permission denied: make it readable (chmod {fix} {blocked})" in last, last
    assert "write to" not in result.stderr
