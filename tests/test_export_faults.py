"""Faults while `rave-deploy export` writes, found by a user test: a full disk (HDF5
crashed, the ONNX targets called it a bug), a folder whose name is not UTF-8 (the ONNX
targets failed), an --output naming another target's file (a folder of that name was
made, or another target's file replaced), and an export of several targets stopped
midway (it said nothing had changed, after replacing some). Each test fails against the
code before the fix.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from rave_deploy.targets import registry
from rave_deploy.targets.minifusion import LIBVER, write_h5

from .runs import export_quietly, make_run
from .test_bad_input_export import cli, tree
from .test_bad_input_training import _file_size_limit

pytestmark = pytest.mark.usefixtures("one_thread")

ONNX_TARGETS = ["onnx", "onnx_streaming", "anira"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), ("brave",), name="brave", unit_gains=True)


@pytest.fixture(scope="module")
def other_run(tmp_path_factory) -> Path:
    """Another checkpoint of the same architecture, under the same name."""
    return make_run(tmp_path_factory.mktemp("other"), ("brave",), name="brave", seed=1,
                    unit_gains=True)


def export_limited(run: Path, target: str, out: Path, limit: int = 100_000):
    """`rave-deploy export` in a process whose writes past ``limit`` bytes fail, as on a
    full disk (EFBIG: the file-size limit)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rave_deploy.cli", "export", str(run), "-t",
                           target, "-o", str(out)], capture_output=True, text=True, env=env,
                          preexec_fn=_file_size_limit(limit), timeout=600)


# ------------------------------------------------------------------ 1. HDF5, full disk
def test_minifusion_on_a_full_disk_says_one_line_and_keeps_the_earlier_file(run, tmp_path):
    """libhdf5 printed ~64 "Can't decrement id ref count (file write failed ...)"
    tracebacks, then our error, then crashed (exit 139)."""
    out = tmp_path / "out"
    earlier = export_quietly(run, ["minifusion"], out)["minifusion"]
    before = tree(out)
    done = export_limited(run, "minifusion", out)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"Error: minifusion: writing {earlier} failed: file too large for this file system "
        "(or this process's file-size limit): choose another folder; the earlier files "
        "there are unchanged"], done.stderr
    assert tree(out) == before


def test_the_minifusion_file_is_the_one_hdf5_writes_on_disk(tmp_path):
    """Built in memory, the file is byte for byte the one h5py writes to a path (the
    plugin's reader, and reproducible exports, rely on it)."""
    weights = {"encoder.weight": np.arange(300, dtype=np.float32).reshape(3, 10, 10),
               "decoder.bias": np.ones(7, np.float32)}
    attrs = {"sample_rate": 44100, "decoder_ratios": np.array([4, 4, 2], np.int64)}
    with h5py.File(tmp_path / "disk.h5", "w", libver=LIBVER) as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for key, value in weights.items():
            f.create_dataset(key, data=value, track_times=False)
    write_h5(tmp_path / "memory.h5", weights, attrs)
    assert (tmp_path / "memory.h5").read_bytes() == (tmp_path / "disk.h5").read_bytes()


# ------------------------------------------------------------------ 2. ONNX, full disk
@pytest.mark.parametrize("target", ONNX_TARGETS)
def test_onnx_targets_on_a_full_disk_say_so(run, tmp_path, target):
    """It said "the export failed (OnnxExportError: ... OSError: [Errno 27] File too
    large) ... report it", and that earlier files were unchanged where there were none."""
    done = export_limited(run, target, tmp_path / "out")
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"Error: {target}: writing {tmp_path / 'out' / f'brave.{target}'}"
        f"{registry()[target].suffix} failed: file too large for this file system (or this "
        "process's file-size limit): choose another folder"], done.stderr
    assert not [p for p in (tmp_path / "out").iterdir()]


def test_a_full_disk_the_onnx_exporter_wraps_is_worded_as_one(run, tmp_path, monkeypatch):
    """The exporter wraps the OSError it meets in its own error: the full disk is found in
    the chain, not reported as a bug."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("rave_deploy.onnx_graphs.torch.onnx.export", full)
    out = tmp_path / "out"
    cli(["export", run, "-t", "onnx", "-o", out], code=1,
        expect=[f"Error: onnx: writing {out / 'brave.onnx.onnx'} failed: no space left on "
                "device: free some space or choose another folder"])
    # said only when there were earlier files
    (out / "brave.onnx.onnx").write_text("earlier")
    result = cli(["export", run, "-t", "onnx", "-o", out], code=1,
                 expect="; the earlier files there are unchanged")
    assert "report it" not in result.output
    assert (out / "brave.onnx.onnx").read_text() == "earlier"


def test_an_export_failure_says_earlier_files_are_unchanged_only_when_there_were(
        run, tmp_path, monkeypatch):
    def broken(model, options, path):
        raise RuntimeError("boom")
    monkeypatch.setattr(registry()["minifusion"], "export", broken)
    result = cli(["export", run, "-t", "minifusion", "-o", tmp_path], code=1,
                 expect=f"Error: minifusion: exporting {tmp_path / 'brave.minifusion.h5'} "
                        "failed (RuntimeError: boom). Run `rave-deploy --debug")
    assert "earlier files" not in result.output


# ------------------------------------------------------------------ 3. names not UTF-8
@pytest.mark.parametrize("target", ONNX_TARGETS)
def test_onnx_targets_write_into_a_folder_whose_name_is_not_utf8(run, tmp_path, target):
    """`café` in Latin-1 (an old USB stick): torch.onnx.export refused the path
    ("incompatible function arguments"), reported as a bug."""
    out = tmp_path / os.fsdecode(b"caf\xe9") / "out"
    cli(["export", run, "-t", target, "-o", out], code=0, expect=f"ok    {target}")
    artefact = out / f"brave.{target}{registry()[target].suffix}"
    assert artefact.exists() and Path(f"{artefact}" + (
        "/rave-deploy.json" if artefact.is_dir() else ".json")).is_file()


# ------------------------------------------------------------------ 4. --output as a file
@pytest.mark.parametrize("given, target, expect", [
    ("my.ts", "onnx", "--output {}: onnx writes .onnx files, not .ts: give a .onnx path or "
                      "a folder"),
    ("my.onnx", "minifusion", "--output {}: minifusion writes .h5 files, not .onnx: give a "
                              ".h5 path or a folder"),
    ("my.onnx", "anira", "--output {}: anira writes a folder, not .onnx: give a folder"),
])
def test_an_output_with_another_targets_suffix_is_refused(run, tmp_path, given, target,
                                                          expect):
    """It made a folder `my.ts/` holding brave.onnx.onnx."""
    out = tmp_path / "fp" / given
    cli(["export", run, "-t", target, "-o", out], code=2, expect=expect.format(out))
    assert not (tmp_path / "fp").exists()


def test_an_existing_file_of_another_suffix_is_not_taken_for_a_folder(run, tmp_path):
    """It said "cannot create output folder fp/my.onnx: ... is a file, not a folder"."""
    (tmp_path / "my.onnx").write_text("mine")
    cli(["export", run, "-t", "minifusion", "-o", tmp_path / "my.onnx"], code=2,
        expect="minifusion writes .h5 files, not .onnx")
    assert (tmp_path / "my.onnx").read_text() == "mine"


def test_a_file_output_for_several_targets_is_refused(run, tmp_path):
    out = tmp_path / "model.onnx"
    cli(["export", run, "-t", "onnx", "-t", "minifusion", "-o", out], code=2,
        expect=f"--output {out} names one .onnx file, but 2 targets are exported: give a "
               "folder for them")
    assert not out.exists()


def test_a_file_output_suffix_is_read_in_any_case(run, tmp_path):
    """`-o nn.TS` made a folder nn.TS/."""
    out = tmp_path / "model.H5"
    cli(["export", run, "-t", "minifusion", "-o", out], code=0)
    assert out.is_file() and Path(f"{out}.json").is_file()


def test_another_targets_file_is_not_replaced_silently(run, tmp_path):
    """`-o brave.onnx_streaming.onnx -t onnx` replaced the streaming graph with the offline
    one (its sidecar then said onnx)."""
    streaming = export_quietly(run, ["onnx_streaming"], tmp_path)["onnx_streaming"]
    before = tree(tmp_path)
    cli(["export", run, "-t", "onnx", "-o", streaming], code=2,
        expect=f"Error: {streaming} is an earlier onnx_streaming export (its sidecar says "
               "so), and this onnx export would replace it: choose another --output or --name")
    assert tree(tmp_path) == before
    cli(["export", run, "-t", "onnx_streaming", "-o", streaming], code=0)  # its own: replaced


# ------------------------------------------------------------------ 5. stopped midway
@pytest.fixture()
def earlier_export(other_run, tmp_path) -> Path:
    """A folder holding another checkpoint's minifusion and onnx exports."""
    out = tmp_path / "out"
    export_quietly(other_run, ["minifusion", "onnx"], out)
    return out


def _sources(out: Path) -> dict:
    return {p.name: json.loads(p.read_text())["source"]["checkpoint_sha256"]
            for p in sorted(out.glob("*.json"))}


@pytest.mark.parametrize("stop, code, expect", [
    (KeyboardInterrupt, 130,
     "Interrupted: minifusion written (any earlier files there replaced); onnx not written "
     "(the earlier files there, if any, are as they were); nothing was left half-written."),
    (RuntimeError, 1,
     "minifusion written (any earlier files there replaced); onnx not written (the earlier "
     "files there, if any, are as they were)"),
])
def test_an_export_stopped_midway_says_which_targets_were_written(
        run, earlier_export, monkeypatch, stop, code, expect):
    """Ctrl-C after some targets were replaced said "earlier outputs are as they were",
    and the lines (and warnings) of the targets written were never printed."""
    before = _sources(earlier_export)

    def stopped(model, options, path):
        raise stop("stopped")
    monkeypatch.setattr(registry()["onnx"], "export", stopped)
    result = cli(["export", run, "-t", "minifusion", "-t", "onnx", "-o", earlier_export],
                 code=code, expect=[expect, "ok    minifusion",
                                    "brave.minifusion.h5 was an export of another checkpoint"])
    assert "earlier outputs are as they were" not in result.output
    after = _sources(earlier_export)
    assert after["brave.onnx.onnx.json"] == before["brave.onnx.onnx.json"]
    assert after["brave.minifusion.h5.json"] != before["brave.minifusion.h5.json"]


def test_an_export_stopped_before_writing_keeps_the_short_message(run, earlier_export,
                                                                   monkeypatch):
    def stopped(model, options, path):
        raise KeyboardInterrupt
    monkeypatch.setattr(registry()["minifusion"], "export", stopped)
    cli(["export", run, "-t", "minifusion", "-t", "onnx", "-o", earlier_export], code=130,
        expect="Interrupted: earlier outputs are as they were; nothing was left half-written.")
