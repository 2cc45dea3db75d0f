"""The quickstart and its synthesiser on their inputs (a user audit's findings): the audio
is exactly what was asked for, written atomically; bad arguments are one ``Error: ...``
line before any work; any config trains on a window it takes; no epoch checkpoints.

Fast: training is replaced by a stand-in that records its arguments and stops the run.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from rave_core.data import DataError
from rave_core.training import trainer
from rave_core.training.errors import TrainingArgumentError, TrainingInterrupted

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SMALL = ["--override", "CAPACITY = 4", "--override", "LATENT_SIZE = 8"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synth():
    return _load("synth_dataset")


@pytest.fixture(scope="module")
def qs():
    return _load("quickstart")


class _Stop(BaseException):
    """Ends a quickstart at its training step (not an Exception: nothing turns it into a
    message)."""


@pytest.fixture
def fake_train(monkeypatch):
    """Training replaced: records its arguments, then raises ``fake_train.raises``."""
    class Fake:
        calls: list = []
        raises: BaseException = _Stop()

        def __call__(self, configs, db_path, name, **kwargs):
            self.calls.append(dict(configs=configs, db_path=db_path, name=name, **kwargs))
            raise self.raises

    fake = Fake()
    fake.calls = []
    monkeypatch.setattr(trainer, "train", fake)
    return fake


def _exit_code(qs, argv) -> int:
    try:
        return qs.main([str(a) for a in argv])
    except SystemExit as stop:
        return stop.code
    except KeyboardInterrupt as err:   # escaping, it would end the pytest session
        pytest.fail(f"{type(err).__name__} escaped the quickstart: {err}")


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ============================================================================ 1: stale audio
def test_synth_rerun_leaves_exactly_the_files_asked_for(synth, tmp_path, capsys):
    """60 s then 15 s into one folder left 4 files, and said "wrote 1 files"."""
    out = tmp_path / "audio"
    synth.synthesize(out, seconds=60, sr=8000)
    (out / "mine.wav").write_bytes(b"not ours")          # not of our name pattern: kept
    (out / "synth_notes.txt").write_text("kept")
    capsys.readouterr()
    assert synth.main(["--out", str(out), "--seconds", "15", "--sr", "8000"]) in (0, None)
    said = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["mine.wav", "synth_000.wav",
                                                     "synth_notes.txt"]
    assert "wrote 1 file to" in said
    assert "removed 3 stale files of an earlier run: synth_001.wav, synth_002.wav, " \
           "synth_003.wav" in said
    with wave.open(str(out / "synth_000.wav")) as w:
        assert w.getnframes() == 15 * 8000


def test_synth_interrupted_run_leaves_the_folder_as_it_was(synth, tmp_path, monkeypatch):
    """Written in place, an interrupted run left a new first file and a half-written
    second one over the earlier run's."""
    out = tmp_path / "audio"
    synth.synthesize(out, seconds=30, sr=8000, seed=0)
    before = _snapshot(out)
    original = wave.Wave_write.writeframes
    calls = []

    def interrupted_second_file(self, data):
        calls.append(len(data))
        if len(calls) == 2:
            self.writeframesraw(data[: len(data) // 2])
            raise KeyboardInterrupt
        original(self, data)

    monkeypatch.setattr(wave.Wave_write, "writeframes", interrupted_second_file)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(out, seconds=30, sr=8000, seed=1)
    assert _snapshot(out) == before   # no temporary left, nothing replaced


def test_quickstart_preprocesses_only_this_runs_audio(qs, tmp_path, fake_train, capsys):
    """A re-run with --seconds 10 said "synthesising 10 s" then "2 files, 25.0 s of audio"."""
    out = tmp_path / "qs"
    with pytest.raises(_Stop):
        qs.main([*map(str, ["--out", out, "--seconds", 20, "--steps", 3]), *SMALL])
    capsys.readouterr()
    with pytest.raises(_Stop):
        qs.main([*map(str, ["--out", out, "--seconds", 5, "--steps", 3]), *SMALL])
    said = capsys.readouterr().out
    assert "synthesising 5 s" in said
    assert "1 file, 5.0 s of audio" in said, said
    assert "removed 1 file of an earlier run" in said
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["synth_000.wav"]


# ============================================================================ 2: errors
def test_quickstart_unknown_config_is_one_line_before_any_work(qs, tmp_path, capsys):
    """--config brve ended in a traceback, after synthesising and preprocessing."""
    out = tmp_path / "qs"
    assert _exit_code(qs, ["--out", out, "--config", "brve", "--seconds", 5]) == 2
    err = capsys.readouterr().err
    # rave-core train's own words
    assert err.count("\n") == 1 and err.startswith("Error: unknown config 'brve'")
    assert "Did you mean brave?" in err
    assert not out.exists()


def test_quickstart_unknown_config_has_no_traceback_as_a_command(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), "--out",
                           str(tmp_path / "qs"), "--config", "brve", "--seconds", "5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("Error: unknown config 'brve'")
    assert not (tmp_path / "qs").exists()


@pytest.mark.parametrize("steps", ["0", "-3", "x"])
def test_quickstart_bad_steps_name_its_own_flag_before_any_work(qs, tmp_path, capsys, steps):
    """--steps 0 ended in a traceback about --max_steps (a flag the script lacks)."""
    out = tmp_path / "qs"
    assert _exit_code(qs, ["--out", out, "--steps", steps, "--seconds", 5]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: argument --steps: must be a whole number >= 1")
    assert "--max_steps" not in err and err.count("\n") == 1
    assert not out.exists()


def test_quickstart_bad_steps_variable(qs, tmp_path, capsys, monkeypatch):
    """RAVE_QUICKSTART_STEPS=abc made even --help a ValueError traceback."""
    monkeypatch.setenv("RAVE_QUICKSTART_STEPS", "abc")
    assert _exit_code(qs, ["--help"]) == 0
    assert "RAVE_QUICKSTART_STEPS" in capsys.readouterr().out
    out = tmp_path / "qs"
    assert _exit_code(qs, ["--out", out, "--seconds", 5]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: RAVE_QUICKSTART_STEPS='abc': must be a whole number")
    assert not out.exists()
    # --steps given: the variable is not used
    monkeypatch.setenv("RAVE_QUICKSTART_STEPS", "7")
    assert qs.parse_arguments(["--out", str(out)]).steps == 7
    assert qs.parse_arguments(["--out", str(out), "--steps", "2"]).steps == 2


@pytest.mark.parametrize("error, code, said", [
    (TrainingArgumentError("--max_steps must be >= 1, got 0"), 2,
     "Error: --steps must be >= 1, got 0"),
    (DataError("the training split has 3 windows but one batch needs 4"), 1,
     "Error: the training split has 3 windows but one batch needs 4"),
    (RuntimeError("boom"), 1, "Error: unexpected RuntimeError: boom (run with --debug"),
    # Ctrl-C and SIGTERM: exit 130 or 143
    (KeyboardInterrupt(), 130, "Interrupted: run the same command again"),
    (TrainingInterrupted("interrupted at step 2: saved last.ckpt; run the same command "
                         "again to resume", None, 2), 130, "interrupted at step 2: saved"),
    (TrainingInterrupted("interrupted at step 2", None, 15), 143, "interrupted at step 2"),
])
def test_quickstart_errors_and_interrupts_of_the_pipeline_are_one_line(
        qs, tmp_path, fake_train, capsys, error, code, said):
    fake_train.raises = error
    assert _exit_code(qs, ["--out", tmp_path / "qs", "--seconds", 5, "--steps", 3,
                           *SMALL]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(said), err


# ============================================================================ 3: n_signal
@pytest.mark.parametrize("config, seconds, n_signal", [("brave", 5, 32768), ("v3", 9, 71680)])
def test_quickstart_trains_any_config_on_a_window_it_takes(qs, tmp_path, fake_train, config,
                                                           seconds, n_signal):
    """n_signal=32768 was hard-coded: --config v3 failed with "--n_signal 32768 is too
    short ... use 71680" (the number rave-core suggests, which the quickstart now takes)."""
    with pytest.raises(_Stop):
        qs.main(["--out", str(tmp_path / "qs"), "--config", config, "--seconds", str(seconds),
                 "--steps", "3"])
    (call,) = fake_train.calls
    assert call["n_signal"] == n_signal and call["configs"] == [config]


def test_quickstart_says_what_seconds_a_config_needs_before_any_work(qs, tmp_path,
                                                                     fake_train, capsys):
    out = tmp_path / "qs"
    assert _exit_code(qs, ["--out", out, "--config", "v3", "--seconds", 5]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: --seconds 5 is too short for --config v3") and \
        "give --seconds 9 or more" in err, err
    assert not out.exists() and not fake_train.calls


# ============================================================================ 4: synth args
@pytest.mark.parametrize("args", [
    ["--seconds", "0"], ["--seconds", "nan"], ["--seconds", "inf"], ["--seconds", "0.00001"],
    ["--seconds", "1e9"], ["--seconds", "3600.5"], ["--sr", "0"], ["--sr", "-5"],
    ["--sr", "1000000"], ["--seed", "-1"],
])
def test_synth_refuses_bad_arguments_creating_nothing(synth, tmp_path, monkeypatch, capsys, args):
    """--seconds 0, nan, 0.00001, --sr 0, -5 ended in tracebacks (--sr 0 after creating
    the folder); --seconds 1e9 wrote 3.6 GB."""
    def no_rendering(*a, **k):
        raise AssertionError("started rendering")   # (the old code would write gigabytes)

    monkeypatch.setattr(synth, "render_track", no_rendering)
    out = tmp_path / "audio"
    with pytest.raises(SystemExit) as stop:
        synth.main(["--out", str(out), *args])
    assert stop.value.code == 2
    assert "error: --" in capsys.readouterr().err
    assert not out.exists()


def test_synth_refuses_a_file_as_its_folder(synth, tmp_path, capsys):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("x")
    for out in (in_the_way, in_the_way / "below"):
        with pytest.raises(SystemExit) as stop:
            synth.main(["--out", str(out), "--seconds", "1"])
        assert stop.value.code == 2
        assert "is a file, not a folder" in capsys.readouterr().err
    assert in_the_way.read_text() == "x"


def test_synth_bounds(synth, tmp_path):
    from rave_core.dataset_limits import MAX_SAMPLING_RATE, MIN_SAMPLING_RATE
    assert (synth.MIN_SR, synth.MAX_SR) == (MIN_SAMPLING_RATE, MAX_SAMPLING_RATE)
    assert synth.MAX_SECONDS == 3600
    with pytest.raises(ValueError, match="at most 3600"):
        synth.synthesize(tmp_path / "never_created", seconds=3601)
    assert not (tmp_path / "never_created").exists()


# ============================================================================ 5: checkpoints
def test_quickstart_keeps_no_epoch_checkpoints(qs, tmp_path, fake_train):
    """save_every=steps//3 kept three epoch_*.ckpt (~58 MB each) beside best and last;
    the export reads best.ckpt (or last.ckpt) only."""
    with pytest.raises(_Stop):
        qs.main([*map(str, ["--out", tmp_path / "qs", "--seconds", 5, "--steps", 30]), *SMALL])
    (call,) = fake_train.calls
    assert call["max_steps"] == 30
    assert call["save_every"] > call["max_steps"]   # the loop keeps step % save_every == 0
    assert call["val_every"] == 10                  # best/last as before
