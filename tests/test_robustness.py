"""Bad input, faults and untrusted files: a clear error every time, nothing lost.

Every command (`rave-core preprocess`, `rave-core train`, `rave-deploy export`,
`rave-deploy check`) is driven as a user drives it (click's CliRunner, or a real process
for signals) with bad input. Each must exit 1 (a failed operation), 2 (bad usage) or 130
(Ctrl-C) with one or two lines naming the problem and what to do, and no traceback; an
interrupted or failed command must leave earlier outputs byte for byte as they were and
no temporary file behind. docs/bad-input.md lists what the user sees in each case.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import pytest
import torch
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import rave_deploy.targets.minifusion as minifusion_module
from rave_core.cli import main as core_cli
from rave_core.data import preprocess
from rave_core.training.trainer import RAVETrainer
from rave_deploy import io as rio
from rave_deploy.cli import MAX_BLOCK, main as deploy_cli
from rave_deploy.export import export_run
from rave_deploy.model import DeployModel
from rave_deploy.targets import ExportOptions, registry

from .runs import make_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from synth_dataset import synthesize  # noqa: E402

# Reduced capacity, and STFT scales that fit 8192-sample windows (as tests/test_training.py).
TINY = ["CAPACITY=4", "LATENT_SIZE=8", "rave.core.MultiScaleSTFT.scales = [512, 256, 128]"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ============================================================================ helpers
def run_cli(cli, args: Iterable, code: Optional[int] = None,
            expect: Optional[str] = None) -> Result:
    """Invoke ``cli`` in-process; check the exit code, the message, and that the error
    is short and clean (no exception escaped, no traceback, at most two lines)."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert_clean(result)
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.output)
    if expect is not None:
        assert expect in result.output, result.output
    return result


def assert_clean(result: Result) -> None:
    # CliRunner catches escaping exceptions: one that is not SystemExit is a crash the
    # user would have seen as a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception), result.output)
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 1, 2, 130, 143), (result.exit_code, result.output)
    if result.exit_code in (1, 2):
        lines = result.stderr.strip().splitlines()
        errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
        # The error is the last thing said, in one or two lines.
        assert errors and len(lines) - errors[-1] <= 2, result.stderr


def partials(folder: Path) -> List[Path]:
    """Temporaries left behind: ours (`*.partial`), preprocess's and the trainer's."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*")
            if p.name.endswith((".partial", ".old", ".tmp")) or ".partial-" in p.name
            or ".tmp-" in p.name]


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"brave": make_run(root, ("brave",), name="brave"),
            "v2": make_run(root, ("v2",), name="v2")}


@pytest.fixture()
def brave_copy(runs, tmp_path) -> Path:
    """A run directory this test may damage."""
    return Path(shutil.copytree(runs["brave"], tmp_path / "brave"))


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A dataset of 4 s of audio: about 20 training windows of 8192 samples (not one batch
    of 64)."""
    root = tmp_path_factory.mktemp("data")
    synthesize(root / "wav", seconds=4, sr=44100, seed=0, n_files=1)
    preprocess([str(root / "wav")], str(root / "db"), progress=False)
    return root / "db"


def train_args(db: Path, out: Path, name: str, *extra) -> List[str]:
    args = ["train", "--config", "brave", "--db_path", db, "--name", name, "--out_path", out,
            "--batch", "2", "--n_signal", "8192", "--device", "cpu", "--workers", "0",
            "--no-progress"]
    for o in TINY:
        args += ["--override", o]
    return [str(a) for a in args + list(extra)]


CKPT = Path("version_0") / "checkpoints" / "best.ckpt"


# ============================================================ runs that cannot be loaded
def _missing(run: Path) -> Path:
    return run.parent / "no_such_run"


def _empty_dir(run: Path) -> Path:
    empty = run.parent / "empty"
    empty.mkdir()
    return empty


def _config_without_checkpoint(run: Path) -> Path:
    shutil.rmtree(run / "version_0")
    return run


def _checkpoint_without_config(run: Path) -> Path:
    (run / "config.gin").unlink()
    return run


def _lone_checkpoint(run: Path) -> Path:
    lone = run.parent / "lone.ckpt"
    shutil.copy(run / CKPT, lone)
    return lone


def _truncated(run: Path) -> Path:
    data = (run / CKPT).read_bytes()
    (run / CKPT).write_bytes(data[: len(data) // 2])
    return run


def _not_a_checkpoint(run: Path) -> Path:
    (run / CKPT).write_bytes(b"this is not a checkpoint\n" * 10)
    return run


def _other_capacity(run: Path) -> Path:
    (run / "config.gin").write_text((run / "config.gin").read_text() + "\nCAPACITY = 8\n")
    return run


def _gin_syntax_error(run: Path) -> Path:
    (run / "config.gin").write_text((run / "config.gin").read_text() + "\nthis is ( not gin\n")
    return run


def _unknown_configurable(run: Path) -> Path:
    (run / "config.gin").write_text((run / "config.gin").read_text() + "\nfoo.Bar.baz = 3\n")
    return run


def _unknown_parameter(run: Path) -> Path:
    (run / "config.gin").write_text((run / "config.gin").read_text()
                                    + "\nrave.model.RAVE.nonsense_param = 3\n")
    return run


@pytest.mark.parametrize("damage, expect", [
    (_missing, "does not exist: give a run directory (with config.gin) or a .ckpt file"),
    (_empty_dir, "no checkpoint (*.ckpt) found under"),
    (_config_without_checkpoint, "no checkpoint (*.ckpt) found under"),
    (_checkpoint_without_config, "no config.gin found in or above"),
    (_lone_checkpoint, "no config.gin found in or above"),
    (_truncated, "the file is truncated or corrupted"),
    (_not_a_checkpoint, "the file is truncated or corrupted"),
    (_other_capacity, "'encoder.encoder.net.0.weight' has shape (4, 16, 7) in the checkpoint "
                      "but (8, 16, 7) in the model built from config.gin"),
    (_gin_syntax_error, "invalid gin config (config.gin, line "),
    (_unknown_configurable, "unknown configurable 'foo.Bar'"),
    (_unknown_parameter, "rave.model.RAVE has no parameter 'nonsense_param'"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else "")
def test_export_of_a_run_that_cannot_be_loaded(brave_copy, tmp_path, damage, expect):
    out = tmp_path / "out"
    result = run_cli(deploy_cli, ["export", damage(brave_copy), "-t", "minifusion", "-o", out],
                     code=2, expect=expect)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing written, not even the folder


def test_debug_shows_the_traceback(runs, tmp_path):
    (tmp_path / "nope").mkdir()   # a run without a checkpoint (a missing one is refused earlier)
    result = CliRunner().invoke(deploy_cli, ["--debug", "export", str(tmp_path / "nope"),
                                             "-t", "minifusion", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "RunError" in result.stderr


# ============================================================================ untrusted files
class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_by_export(brave_copy, tmp_path):
    import pickle
    marker = tmp_path / "pwned"
    ckpt = brave_copy / CKPT
    payload = torch.load(ckpt, weights_only=True)
    payload["state_dict"]["exploit"] = _Exploit(marker)
    torch.save(payload, ckpt, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    out = tmp_path / "out"
    run_cli(deploy_cli, ["export", brave_copy, "-t", "minifusion", "-o", out], code=2,
            expect="refusing to load")
    assert not marker.exists()
    assert not out.exists()


def test_malicious_config_gin_cannot_run_code(brave_copy, tmp_path):
    """gin imports what a config names, and its dynamic registration calls any imported
    function: a run's config.gin must not import other code (a trailing comment once
    slipped an import past the filter)."""
    marker = tmp_path / "pwned"
    (brave_copy / "config.gin").write_text(
        (brave_copy / "config.gin").read_text()
        + "\nfrom __gin__ import dynamic_registration  # x\nimport os  # x\n"
        + f"os.system.command = 'touch {marker}'\nCAPACITY = @os.system()\n")
    out = tmp_path / "out"
    run_cli(deploy_cli, ["export", brave_copy, "-t", "minifusion", "-o", out], code=2,
            expect="config imports 'os': a RAVE config may only name rave, cached_conv and "
                   "torch modules")
    assert not marker.exists()
    assert not out.exists()


def test_malicious_config_gin_cannot_run_code_through_an_include(brave_copy, tmp_path):
    marker = tmp_path / "pwned"
    payload = brave_copy / "extra.gin"
    payload.write_text("from __gin__ import dynamic_registration\n"
                       "import torch.utils.collect_env\n"
                       f"torch.utils.collect_env.run.command = 'touch {marker}'\n"
                       "CAPACITY = @torch.utils.collect_env.run()\n")
    (brave_copy / "config.gin").write_text(
        (brave_copy / "config.gin").read_text() + f"\ninclude '{payload}'\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(deploy_cli, ["export", str(brave_copy), "-t", "minifusion",
                                             "-o", str(out)])
    assert not marker.exists()
    assert result.exit_code == 2 and not out.exists()


# ============================================================ targets that cannot serve the model
def test_architecture_the_target_cannot_run(runs, tmp_path):
    out = tmp_path / "out"
    run_cli(deploy_cli, ["export", runs["v2"], "-t", "minifusion", "-o", out], code=1,
            expect="minifusion: the Minifusion plugin runs mono models of BRAVE's causal architecture only: "
                   "encoder is EncoderV2")
    assert not out.exists()


def test_vst_refuses_ratio_128_when_named_and_is_skipped_under_all(runs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    reason = "ratio 128 is below the RAVE VST's minimum of 512"
    run_cli(deploy_cli, ["export", runs["brave"], "-t", "vst", "-o", out], code=1,
            expect=f"Error: vst: {reason}")
    # Named with a target that could be exported: refused before anything is written.
    run_cli(deploy_cli, ["export", runs["brave"], "-t", "minifusion", "-t", "vst", "-o", out],
            code=1, expect=reason)
    assert not out.exists()

    # `all` (here: all of two, to stay fast) skips it with the reason and exports the rest.
    targets = registry()
    monkeypatch.setattr("rave_deploy.export.registry",
                        lambda: {k: targets[k] for k in ("minifusion", "vst")})
    result = run_cli(deploy_cli, ["export", runs["brave"], "-t", "all", "-o", out], code=0)
    assert f"skip  vst             {reason}" in result.stdout
    assert "ok    minifusion" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["brave.minifusion.h5",
                                                      "brave.minifusion.h5.json"]


def test_all_with_no_target_for_the_model_is_an_error(runs, tmp_path, monkeypatch):
    """`all` that can write nothing exits 1 with every reason: a script must not read an
    empty export as a success."""
    targets = registry()
    monkeypatch.setattr("rave_deploy.export.registry", lambda: {"vst": targets["vst"]})
    out = tmp_path / "out"
    run_cli(deploy_cli, ["export", runs["brave"], "-o", out], code=1,
            expect="no target can serve this model; vst: ratio 128 is below the RAVE VST's "
                   "minimum of 512")
    assert not out.exists()


def test_a_warning_about_the_run_is_printed_once(tmp_path, monkeypatch):
    """Untrained latent statistics concern the run, not a target: said once, not under
    every target exported."""
    run = make_run(tmp_path, ("brave",), name="fresh", trained_statistics=False)
    targets = registry()
    monkeypatch.setattr("rave_deploy.export.registry",
                        lambda: {k: targets[k] for k in ("onnx", "onnx_streaming")})
    result = run_cli(deploy_cli, ["export", run, "-o", tmp_path / "out"], code=0)
    assert "ok    onnx " in result.stdout and "ok    onnx_streaming" in result.stdout
    assert result.stdout.count("latent statistics were never computed") == 1


# ============================================================================ where the output goes
@pytest.mark.parametrize("where", ["under_a_file", "proc", "read_only_folder"])
def test_output_that_cannot_be_written(runs, tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "afile").write_text("x")
        out, expect = tmp_path / "afile" / "out", "afile is a file, not a folder"
    elif where == "proc":
        if not Path("/proc/self").exists():
            pytest.skip(reason="no /proc on this system")
        out, expect = Path("/proc/rave-deploy-test"), "cannot create output folder /proc/"
    else:
        # Root writes through 0o500; only a non-root user sees this case.
        if IS_ROOT:
            pytest.skip(reason="running as root: permissions do not stop root (the file and /proc "
                        "cases cover an unwritable output)")
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out, expect = locked, "is not writable"
    run_cli(deploy_cli, ["export", runs["brave"], "-t", "minifusion", "-o", out], code=1,
            expect=expect)
    assert not partials(tmp_path)


def test_missing_output_folders_are_created_by_every_command(runs, db, tmp_path):
    """One rule everywhere: a missing output folder is created, parents included."""
    nested = tmp_path / "a" / "b"
    run_cli(deploy_cli, ["export", runs["brave"], "-t", "minifusion", "-o", nested / "x"], code=0)
    assert (nested / "x" / "brave.minifusion.h5").exists()
    run_cli(deploy_cli, ["export", runs["brave"], "-t", "minifusion", "-o", nested / "y" / "m.h5"],
            code=0)
    assert (nested / "y" / "m.h5").exists() and (nested / "y" / "m.h5.json").exists()
    wav = db.parent / "wav"
    run_cli(core_cli, ["preprocess", "--input_path", wav, "--output_path", nested / "c" / "db",
                       "--no-progress"], code=0)
    assert (nested / "c" / "db" / "metadata.yaml").exists()


def test_preprocess_and_train_refuse_an_output_under_a_file(db, tmp_path):
    (tmp_path / "afile").write_text("x")
    run_cli(core_cli, ["preprocess", "--input_path", db.parent / "wav", "--output_path",
                       tmp_path / "afile" / "db", "--no-progress"], code=1,
            expect="--output_path " + str(tmp_path / "afile" / "db") + ": "
                   + str(tmp_path / "afile") + " is a file, not a folder")
    run_cli(core_cli, train_args(db, tmp_path / "afile" / "runs", "x", "--max_steps", "1"),
            code=1, expect="is a file, not a folder; choose another --out_path")


# ============================================================================ faults while writing
@pytest.fixture()
def exported(runs, tmp_path):
    """An earlier export in ``out``, and its bytes."""
    out = tmp_path / "out"
    run_cli(deploy_cli, ["export", runs["brave"], "-t", "minifusion", "-o", out], code=0)
    return out, snapshot(out)


def _half_then(exc: BaseException):
    """A replacement for the Minifusion writer: half a file, then ``exc``."""
    def write_h5(path, weights, attrs):
        with open(path, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 100_000)
            f.flush()
            raise exc
    return write_h5


@pytest.mark.parametrize("fault, code, expect", [
    (OSError(errno.ENOSPC, "No space left on device"), 1,
     "minifusion: writing {out}/brave.minifusion.h5 failed: no space left on device"),
    (OSError(errno.EIO, "Input/output error"), 1, "input/output error"),
    (KeyboardInterrupt(), 130, "Interrupted: earlier outputs are as they were"),
], ids=["disk_full", "io_error", "ctrl_c"])
def test_fault_mid_write_keeps_the_earlier_export(runs, exported, monkeypatch, fault, code, expect):
    out, before = exported
    monkeypatch.setattr(minifusion_module, "write_h5", _half_then(fault))
    run_cli(deploy_cli, ["export", runs["brave"], "-t", "minifusion", "-o", out], code=code,
            expect=expect.format(out=out))
    assert snapshot(out) == before
    assert not partials(out)


def test_fault_writing_the_sidecar_keeps_the_earlier_pair(runs, exported, monkeypatch):
    """The artefact and its sidecar are renamed into place together, or not at all."""
    out, before = exported

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("rave_deploy.export.dump_json", full_disk)
    run_cli(deploy_cli, ["export", runs["brave"], "-t", "minifusion", "-o", out], code=1,
            expect="no space left on device")
    assert snapshot(out) == before and not partials(out)


def test_sigterm_mid_write_cleans_up_like_ctrl_c(runs, exported, monkeypatch):
    out, before = exported

    def killed(path, weights, attrs):
        Path(path).write_bytes(b"\0" * 1000)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises first
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(minifusion_module, "write_h5", killed)
    previous = signal.getsignal(signal.SIGTERM)
    run_cli(deploy_cli, ["export", runs["brave"], "-t", "minifusion", "-o", out], code=143,
            expect="Interrupted")
    assert signal.getsignal(signal.SIGTERM) is previous  # restored after the command
    assert snapshot(out) == before and not partials(out)


def test_folder_outputs_are_replaced_whole_or_not_at_all(tmp_path):
    final = tmp_path / "model.anira"
    with rio.atomic_dir(final) as tmp:
        (tmp / "a.onnx").write_bytes(b"old")
    assert final.stat().st_mode & 0o777 == 0o777 & ~_umask()  # not mkdtemp's 0o700
    with pytest.raises(KeyboardInterrupt):
        with rio.atomic_dir(final) as tmp:
            (tmp / "a.onnx").write_bytes(b"new, half")
            raise KeyboardInterrupt
    assert snapshot(final) == {"a.onnx": b"old"} and not partials(tmp_path)
    with rio.atomic_dir(final) as tmp:
        (tmp / "b.onnx").write_bytes(b"new")
    assert snapshot(final) == {"b.onnx": b"new"} and not partials(tmp_path)


def test_leftovers_of_a_killed_process_are_cleaned_up_and_nothing_is_lost(runs, tmp_path):
    """SIGKILL can leave temporaries (never a damaged output); the next write to the same
    path removes them, and puts back a folder output that was moved aside mid-swap."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale_file = out / f".brave.minifusion.h5.{dead.pid}.x1y2.partial"
    stale_file.write_bytes(b"half")
    stale_dir = out / f".brave.anira.{dead.pid}.z3.partial"
    stale_dir.mkdir()
    moved_aside = out / f".m.anira.{dead.pid}.previous.old"
    moved_aside.mkdir()
    (moved_aside / "graph.onnx").write_bytes(b"previous export")
    live = out / f".brave.minifusion.h5.{os.getppid()}.x.partial"  # a live process's: kept
    live.write_bytes(b"in progress")

    run_cli(deploy_cli, ["export", runs["brave"], "-t", "minifusion", "-o", out], code=0)
    assert not stale_file.exists() and live.exists()
    rio.remove_stale_partials(out / "brave.anira")
    rio.remove_stale_partials(out / "m.anira")
    assert not stale_dir.exists()
    assert (out / "m.anira" / "graph.onnx").read_bytes() == b"previous export"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_exported_files_get_ordinary_permissions(exported):
    out, _ = exported
    for p in out.iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~_umask(), p  # not mkstemp's 0o600


# ============================================================================ preprocess
def test_preprocess_with_only_unreadable_files(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_text("not audio")
    (bad / "b.flac").write_bytes(os.urandom(500))
    result = run_cli(core_cli, ["preprocess", "--input_path", bad, "--output_path",
                                tmp_path / "db", "--no-progress"], code=1,
                     expect="all 2 audio files were skipped (e.g.")
    assert "fix or replace the input audio" in result.stderr
    assert not (tmp_path / "db").exists() and not partials(tmp_path)


def test_preprocess_skips_a_bad_file_among_good_ones(db, tmp_path):
    mixed = Path(shutil.copytree(db.parent / "wav", tmp_path / "mixed"))
    (mixed / "broken.wav").write_bytes(b"RIFF\0\0\0\0WAVEfmt " + os.urandom(64))
    result = run_cli(core_cli, ["preprocess", "--input_path", mixed, "--output_path",
                                tmp_path / "db", "--no-progress"], code=0)
    assert "skipped" in result.output and "broken.wav" in result.output
    assert (tmp_path / "db" / "metadata.yaml").exists()


def test_ctrl_c_during_preprocess_keeps_the_earlier_dataset(db, tmp_path, monkeypatch):
    target = Path(shutil.copytree(db, tmp_path / "db"))
    before = snapshot(target)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # After audio.bin is written into the temporary dataset, before it is complete.
    monkeypatch.setattr(sys.modules["rave_core.data.preprocess"], "_write_skipped", interrupted)
    run_cli(core_cli, ["preprocess", "--input_path", db.parent / "wav", "--output_path", target,
                       "--no-progress"], code=130, expect=f"Interrupted: {target} is as it was")
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


# ============================================================================ train
def test_train_config_errors(db, tmp_path):
    # each error names the file and the line the user wrote, whatever precedes it (an
    # included config, an import line that is dropped before parsing)
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'brave.gin'\nCAPACITY = (4\n")
    run_cli(core_cli, train_args(db, tmp_path, "r", "--config", str(bad)), code=2,
            expect=f"invalid gin config ({bad}, after line 2): EOF in multi-line statement")
    bad.write_text("include 'brave.gin'\nfrom rave import blocks\n\nthis is ( not gin\n")
    run_cli(core_cli, train_args(db, tmp_path, "r", "--config", "v2", "--config", str(bad)),
            code=2, expect=f"invalid gin config ({bad}, line 4): Couldn't parse statement")
    unknown = tmp_path / "unknown.gin"
    unknown.write_text("include 'brave.gin'\nrave.blocks.Encodr.n_layers = 2\n")
    run_cli(core_cli, train_args(db, tmp_path, "r", "--config", str(unknown)), code=2,
            expect="unknown configurable 'rave.blocks.Encodr'; nearest valid: "
                   "rave.blocks.Encoder, rave.blocks.EncoderV2, rave.blocks.DiscreteEncoder "
                   f"({unknown}, line 2)")
    evil = tmp_path / "evil.gin"
    evil.write_text("\nimport os\n")
    unknown.write_text(f"include 'brave.gin'\ninclude '{evil}'\n")
    run_cli(core_cli, train_args(db, tmp_path, "r", "--config", str(unknown)), code=2,
            expect="config imports 'os': a RAVE config may only name rave, cached_conv and "
                   "torch modules (a config that imports other code could run it) "
                   "(evil.gin, line 2)")
    run_cli(core_cli, train_args(db, tmp_path, "r", "--override", "LATENT_SIZ=8"), code=2,
            expect="the config has no macro LATENT_SIZ; nearest: LATENT_SIZE")
    run_cli(core_cli, train_args(db, tmp_path, "r", "--override", "rave.model.RAVE.phase1=3"),
            code=2, expect="rave.model.RAVE has no parameter 'phase1'; nearest: phase_1_duration")
    assert not (tmp_path / "r").exists()


def test_train_on_less_audio_than_one_batch(db, tmp_path):
    run_cli(core_cli, train_args(db, tmp_path, "r", "--batch", "64", "--max_steps", "1"),
            code=1, expect="but one batch needs 64; add audio, or lower --batch or --n_signal")
    assert not (tmp_path / "r" / "version_0" / "checkpoints").exists()


def test_train_nan_loss_exits_1_and_keeps_the_last_good_checkpoint(db, tmp_path, monkeypatch):
    real_step = RAVETrainer.step

    def poisoned(self, x, step, stop=False):
        if step == 4:  # the 5th step sees a NaN
            x = x.clone()
            x[0, 0, 100] = float("nan")
        return real_step(self, x, step, stop)

    monkeypatch.setattr(RAVETrainer, "step", poisoned)
    result = run_cli(core_cli, train_args(db, tmp_path, "nan", "--max_steps", "10",
                                          "--val_every", "3"), code=1,
                     expect="training diverged: the")
    assert "not finite at step 5" in result.stderr and "(step 3)" in result.stderr
    ckpt = torch.load(tmp_path / "nan" / "version_0" / "checkpoints" / "last.ckpt",
                      weights_only=True)
    assert ckpt["global_step"] == 3
    assert not partials(tmp_path / "nan")


def _train_process(args: List[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.Popen([sys.executable, "-m", "rave_core.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_mid_training_then_resume_continues_identically(db, tmp_path):
    """A real `rave-core train` process killed with SIGKILL (no chance to save) right after
    its first checkpoint: the same command resumes from it, so at most one save interval
    is lost, and finishes with the weights of a run never interrupted. (~20 s: two
    processes start torch, in parallel.)"""
    steps, every = 12, 3
    common = ["--max_steps", str(steps), "--val_every", str(every), "--save_every", "1000"]
    killed_args = train_args(db, tmp_path, "killed", *common)
    straight = _train_process(train_args(db, tmp_path, "straight", *common))
    victim = _train_process(killed_args)
    last = tmp_path / "killed" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    output, _ = victim.communicate()
    assert victim.returncode == -signal.SIGKILL, f"ended before it could be killed:\n{output}"
    saved = torch.load(last, weights_only=True)["global_step"]
    assert saved % every == 0 and every <= saved < steps

    resumed = _train_process(killed_args)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"to step {steps}" in output and "Traceback" not in output
    output, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, output

    a = torch.load(last, weights_only=True)
    b = torch.load(tmp_path / "straight" / "version_0" / "checkpoints" / "last.ckpt",
                   weights_only=True)
    assert a["global_step"] == b["global_step"] == steps
    for key, value in b["state_dict"].items():
        assert torch.equal(a["state_dict"][key], value), key


# ============================================================================ check
def test_check_an_artefact_of_unknown_type(runs, tmp_path):
    odd = tmp_path / "model.pt"
    odd.write_bytes(b"\0" * 100)
    run_cli(deploy_cli, ["check", odd, "--run", runs["brave"]], code=2,
            expect="model.pt: unknown artefact type (no rave-deploy sidecar, suffix .pt): "
                   "expected a .ts, .onnx, .h5 or an anira folder")
    run_cli(deploy_cli, ["check", tmp_path / "gone.ts"], code=2, expect="gone.ts does not exist")
    # A file whose first bytes say another kind than its suffix (no sidecar to go by):
    # named, with the name to give it, instead of the wrong loader's parse error.
    scripted = tmp_path / "linear.onnx"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 4)), str(scripted))
    run_cli(deploy_cli, ["check", scripted, "--run", runs["brave"]], code=2,
            expect="linear.onnx is a TorchScript file (a zip archive), not what its suffix "
                   ".onnx says: rename it to linear.ts")
    shutil.copy(scripted, odd)
    run_cli(deploy_cli, ["check", odd, "--run", runs["brave"]], code=2,
            expect="suffix .pt): expected a .ts, .onnx, .h5 or an anira folder; it is a "
                   "TorchScript file (a zip archive): rename it to model.ts")


def test_check_a_torchscript_file_not_made_by_this_tool(runs, tmp_path):
    foreign = tmp_path / "linear.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 4)), str(foreign))
    run_cli(deploy_cli, ["check", foreign], code=2,
            expect="has no rave-deploy sidecar naming its run: pass --run RUN")
    result = run_cli(deploy_cli, ["check", foreign, "--run", runs["brave"]], code=1)
    # What applies is reported (it loads); what cannot hold fails by name.
    assert "PASS  contract.1_load" in result.stdout
    assert "FAIL" in result.stdout and "check(s) failed" in result.stderr


def test_check_with_a_damaged_or_orphaned_sidecar(runs, exported, tmp_path):
    out, _ = exported
    artefact = out / "brave.minifusion.h5"
    sidecar = out / "brave.minifusion.h5.json"
    text = sidecar.read_text()
    sidecar.write_text(text[: len(text) // 2])
    run_cli(deploy_cli, ["check", artefact], code=2,
            expect="is not a readable rave-deploy sidecar")
    sidecar.write_text("[1, 2]")
    run_cli(deploy_cli, ["check", artefact], code=2, expect="names no target")
    data = json.loads(text)
    data["source"]["checkpoint"] = str(tmp_path / "moved" / "best.ckpt")
    sidecar.write_text(json.dumps(data))
    run_cli(deploy_cli, ["check", artefact], code=2,
            expect="pass --run RUN to check against the run it was exported from")


# ============================================================================ property-based
def _stub_export(target):
    """A fast stand-in for a target's writer, for the property tests: each example must
    take a fraction of a second, and the writers have their own tests. The option checks
    (`unsupported_reason`) and everything around the writer stay real."""
    def export(model, options, path):
        if target.kind == "folder":
            (Path(path) / "graph.onnx").write_bytes(b"stub")
        else:
            Path(path).write_bytes(b"stub")
        return {"_core": DeployModel(model, fidelity=options.fidelity, deterministic=True,
                                     streaming=False)}
    return export


@contextlib.contextmanager
def _fast_writers():
    with pytest.MonkeyPatch.context() as mp:
        for name, target in registry().items():
            if name != "minifusion":  # the real one: fast
                mp.setattr(target, "export", _stub_export(target))
        yield


_counter = itertools.count()
PROPERTY = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
_text = st.text(max_size=8)
_flag_values = {
    "--fidelity": st.one_of(st.floats(0, 1), st.floats(allow_nan=True, allow_infinity=True),
                            _text),
    "--block-size": st.one_of(st.integers(1, 4096), st.integers(-10**6, 10**9), _text),
    "--sr": st.one_of(st.integers(-10**6, 10**7), st.sampled_from([44100, 88200, 48000])),
    "--channels": st.integers(-3, 100),
    "--name": st.one_of(_text, st.sampled_from(["m", "../up", "a/b", ".hidden"])),
}


@PROPERTY
@given(flags=st.fixed_dictionaries({}, optional=_flag_values),
       targets=st.lists(st.sampled_from(sorted(registry()) + ["all", "nope"]), max_size=3))
def test_property_export_flags(runs, tmp_path, flags, targets):
    out = tmp_path / f"ex{next(_counter)}"
    args = ["export", str(runs["brave"]), "-o", str(out), "--json"]
    args += [f"{k}={v}" for k, v in flags.items()]  # `=`: a value is never read as a flag
    args += [a for t in targets for a in ("-t", t)]
    with _fast_writers():
        result = CliRunner().invoke(deploy_cli, args)
    event(f"exit {result.exit_code}")
    assert_clean(result)
    assert result.exit_code in (0, 1, 2), result.output
    assert not partials(tmp_path)
    if result.exit_code == 0:
        written = [r["path"] for r in json.loads(result.stdout) if not r["skipped"]]
        assert all(Path(w).exists() for w in written), result.stdout
        assert all(Path(w).resolve().is_relative_to(out.resolve()) for w in written), written
    elif out.exists():
        # A refusal writes nothing (a failure mid-way keeps what was finished: not here,
        # the stand-in writers do not fail).
        assert not any(out.iterdir()), result.output


_keys = st.one_of(st.sampled_from(["CAPACITY", "LATENT_SIZE", "N_BAND", "RATIOS",
                                   "rave.model.RAVE.phase_1_duration",
                                   "rave.blocks.Encoder.n_layers", "rave.model.RAVE"]),
                  st.text(max_size=20))
_values = st.one_of(st.integers(-3, 8).map(str), st.text(max_size=10),
                    st.sampled_from(["None", "[1, 2]", "@foo", "%CAPACITY", "'x'", "True",
                                     "(", "@rave.model.RAVE()"]))
_override = st.one_of(st.text(max_size=30),
                      st.builds(lambda k, sep, v: f"{k}{sep}{v}", _keys,
                                st.sampled_from(["=", " = ", "==", ""]), _values))


@PROPERTY
@given(overrides=st.lists(_override, min_size=1, max_size=2))
def test_property_train_overrides(db, tmp_path, overrides):
    """Random `--override` text: an error naming it (exit 2), or, when it happens to be
    valid, the dataset error this dataset is built for (exit 1): never a traceback, and no
    run folder."""
    name = f"r{next(_counter)}"
    args = train_args(db, tmp_path, name, "--batch", "64", "--max_steps", "1")
    args += [a for o in overrides for a in ("--override", o)]
    result = CliRunner().invoke(core_cli, args)
    event(f"exit {result.exit_code}")
    assert_clean(result)
    assert result.exit_code in (1, 2), result.output
    assert not (tmp_path / name).exists()


@pytest.fixture(scope="module")
def streaming_artefact(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    [result] = export_run(runs["brave"], ["onnx_streaming"], out, ExportOptions())
    return result.path


_block = st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_BLOCK + 1),
                   st.integers(1, 4096))


@settings(PROPERTY, max_examples=10)
@given(blocks=st.lists(_block, min_size=1, max_size=3))
def test_property_check_block_sizes(streaming_artefact, blocks):
    """Random host block sizes: out of range is bad usage (exit 2, naming the value),
    anything else is checked (exit 0 or 1), never a traceback nor a partial file."""
    from rave_deploy.targets import CheckOptions

    # Short signals: each example must take seconds, not tens of seconds.
    short = lambda **kw: CheckOptions(**kw, seconds=0.5, rtf_seconds=0.05)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rave_deploy.cli.CheckOptions", short)
        result = CliRunner().invoke(deploy_cli, ["check", str(streaming_artefact), *[
            f"--block-size={b}" for b in blocks]])
    event(f"exit {result.exit_code}")
    assert_clean(result)
    bad = [b for b in blocks if not 1 <= b <= MAX_BLOCK]
    if bad:
        assert result.exit_code == 2 and f"{bad[0]} is not in the range" in result.stderr
    else:
        assert result.exit_code in (0, 1) and "onnx" in result.stdout, result.output
    assert not partials(streaming_artefact.parent)
