"""Messages of `rave-core preprocess`, `rave-core train`, `rave-core configs` and the
quickstart that a user audit found wrong or misleading: each answers what the input is
and what to do, with the documented exit code (docs/bad-input.md)."""
from __future__ import annotations

import importlib.util
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from rave_core.cli import main as core_cli
from rave_core.data import DataError, DataInputError, load_metadata, preprocess

# db (conftest): a mono dataset of 3 s, made from a folder of one audio file (``wav/``, beside it)
from .conftest import tone
from .test_bad_input_training import run_cli, train_args

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(db, tmp_path_factory) -> Path:
    """A brave run (TINY) trained one step: ``runs/r``."""
    runs = tmp_path_factory.mktemp("runs")
    run_cli(core_cli, train_args(db, runs, "r", "--config", "brave"), 0, ["trained"])
    return runs / "r"


# ============================================================================ A: --db_path
def test_db_path_given_a_folder_of_audio_says_what_it_is(db, tmp_path):
    """It said "dataset audio is incomplete (no metadata.yaml); re-run rave-core
    preprocess to rebuild it"."""
    audio = db.parent / "wav"
    tone(audio / "sub" / "b.wav")   # counted like preprocess finds them: recursively
    try:
        out = run_cli(core_cli, train_args(audio, tmp_path / "runs", "r", "--config", "brave"), 2,
                      [f"--db_path {audio} is not a dataset: it is a folder of 2 audio files; "
                       f"make a dataset of them with `rave-core preprocess --input_path {audio} "
                       f"--output_path {audio}_db`, then train with --db_path {audio}_db"])
    finally:
        shutil.rmtree(audio / "sub")
    assert "incomplete" not in out
    with pytest.raises(DataInputError, match="it is a folder of 1 audio file; make a dataset"):
        load_metadata(audio)   # the library says the same
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("case", ["empty", "dataset file", "audio file", "parent", "other file"])
def test_db_path_that_holds_no_dataset_says_what_it_is(db, tmp_path, case):
    """An empty folder said "incomplete", a file (audio.bin) "no such dataset folder;
    create it with ... --output_path data/small/audio.bin"."""
    path, expected = {
        "empty": (tmp_path / "empty", "it is an empty folder; make a dataset there with "
                  "`rave-core preprocess --input_path AUDIO_DIR --output_path "
                  f"{tmp_path / 'empty'}`"),
        "dataset file": (db / "audio.bin", f"it is a file of the dataset {db}: give the folder, "
                         f"--db_path {db}"),
        "audio file": (db.parent / "wav" / "a.wav", "it is an audio file; make a dataset of it "
                       f"with `rave-core preprocess --input_path {db.parent / 'wav' / 'a.wav'} "
                       f"--output_path {db.parent / 'wav' / 'a_db'}`"),
        "parent": (db.parent, f"it is a folder holding the dataset {db}: give --db_path {db}"),
        "other file": (db.parent / "notes.txt", "it is a file, not a folder; give the folder "
                       "written by `rave-core preprocess --input_path AUDIO_DIR --output_path DB`"),
    }[case]
    if case == "empty":
        path.mkdir()
    if case == "other file":
        path.write_text("notes\n")
    run_cli(core_cli, train_args(path, tmp_path / "runs", "r", "--config", "brave"), 2,
            [f"Error: --db_path {path} is not a dataset: {expected}"])
    assert not (tmp_path / "runs").exists()


def test_a_folder_with_some_of_a_datasets_files_is_still_incomplete(db, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(db / "audio.bin", partial / "audio.bin")
    run_cli(core_cli, train_args(partial, tmp_path / "runs", "r", "--config", "brave"), 2,
            [f"dataset {partial} is incomplete (no metadata.yaml); re-run `rave-core preprocess`"])


# ============================================================================ B: sampling rate
def test_a_dataset_at_another_sampling_rate_is_a_usage_error(tmp_path):
    """Exit 1, where another channel count is exit 2: both are inputs that disagree."""
    tone(tmp_path / "wav" / "a.wav", seconds=3)
    preprocess([str(tmp_path / "wav")], str(tmp_path / "db48"), sampling_rate=48000,
               progress=False)
    run_cli(core_cli, train_args(tmp_path / "db48", tmp_path / "runs", "r", "--config", "brave"),
            2, [f"Error: dataset {tmp_path / 'db48'} is at 48000 Hz but the config at 44100 Hz; "
                "re-run `rave-core preprocess --sampling_rate 44100`, or --override "
                "'SAMPLING_RATE=48000'"])
    assert not (tmp_path / "runs").exists()


# ============================================================================ C: short dataset
def test_preprocess_warns_about_less_audio_than_one_training_window(tmp_path):
    """One 10-sample file said "1 files, 0.0 s of audio ... -> out/short", exit 0, and
    training then failed."""
    wav = tmp_path / "wav"
    wav.mkdir()
    sf.write(str(wav / "s.wav"), np.full(10, 0.3, np.float32), 44100, subtype="FLOAT")
    out = run_cli(core_cli, ["preprocess", "--input_path", wav, "--output_path", tmp_path / "short",
                             "--no-progress"], 0)
    assert out.startswith(f"1 file, 0.0 s of audio (1 ch, 44100 Hz) -> {tmp_path / 'short'}\n"), out
    assert (f"warning {tmp_path / 'short'}: 10 samples (0.00 s) of audio, less than one training "
            "window (--n_signal, 131072 samples by default: 2.97 s at 44100 Hz), which "
            "`rave-core train` needs at least; add audio: 1.5 s or more trains brave or v1 with "
            "--n_signal 32768 --batch 1, 27 s or more any config with the defaults") in out, out


def test_the_n_signal_preprocess_suggests_for_a_short_dataset_trains(tmp_path):
    tone(tmp_path / "wav" / "a.wav", seconds=2)   # 88200 samples: two windows of 32768
    out = run_cli(core_cli, ["preprocess", "--input_path", tmp_path / "wav", "--output_path",
                             tmp_path / "db", "--no-progress"], 0)
    suggested = re.search(r"train with (--n_signal \d+ --batch \d+) \(a config that takes "
                          r"windows that short: brave and v1 do", out)
    assert suggested and suggested.group(1) == "--n_signal 32768 --batch 1", out
    args = train_args(tmp_path / "db", tmp_path / "runs", "r", "--config", "brave",
                      "--override", "rave.core.MultiScaleSTFT.scales=[2048, 1024, 512, 256, 128]")
    args[args.index("--n_signal") + 1], args[args.index("--batch") + 1] = "32768", "1"
    run_cli(core_cli, args, 0, ["trained"])


def test_a_long_enough_dataset_gets_no_warning_and_one_skipped_file_is_singular(tmp_path):
    tone(tmp_path / "wav" / "a.wav", seconds=3)   # 132300 samples: one window of 131072
    assert "warning" not in str(preprocess([str(tmp_path / "wav")], str(tmp_path / "db"),
                                           progress=False))
    (tmp_path / "bad").mkdir()
    sf.write(str(tmp_path / "bad" / "quiet.wav"), np.zeros(1000, np.float32), 44100)
    with pytest.raises(DataError, match=r"^the only audio file was skipped \(.*quiet.wav: silent"):
        preprocess([str(tmp_path / "bad")], str(tmp_path / "db2"), progress=False)


# ============================================================================ D, E: resuming
def test_an_override_refused_on_resume_does_not_say_config_gin_is_updated(db, run):
    """"Warning: resuming runs/A with --override CAPACITY=8: its config.gin is updated",
    then the refusal, config.gin unchanged."""
    before = (run / "config.gin").read_bytes()
    bigger = train_args(db, run.parent, run.name)
    bigger[bigger.index("CAPACITY=4")] = "CAPACITY=8"
    bigger[bigger.index("--max_steps") + 1] = "2"
    out = run_cli(core_cli, bigger, 2, ["does not fit the config"])
    assert "config.gin is updated" not in out and "Warning" not in out, out
    assert (run / "config.gin").read_bytes() == before


def test_another_config_on_resume_names_a_binding_that_differs(db, run):
    """`--config v2` on a brave run said ('LATENT_SIZE = 8' vs 'DILATIONS = [[1, 3, 9], ...')."""
    run_cli(core_cli, train_args(db, run.parent, run.name, "--config", "v2"), 2,
            [f"run {run} exists and was trained with another config ('RATIOS = [2, 2, 2, 1]' vs "
             "'RATIOS = [4, 4, 4, 2]'); leave out --config and --override to resume it"])


def test_first_difference_compares_bindings_by_key():
    from rave_core.training.trainer import _first_difference
    old = "# Macros:\nA = 1\nB = [1,\n     2]\n\nX.y = 'a'  # note\n"
    assert _first_difference(old, "A = 1\nC = 3\nB = [1, 2]\nX.y = 'b'\n") == \
        "\"X.y = 'a'\" vs \"X.y = 'b'\""
    assert _first_difference(old, "A = 1\nB = [1, 2]\n") == "\"X.y = 'a'\" vs no binding of X.y"
    assert _first_difference("A = 1\n", "A = 1\nZ = 2\n") == "no binding of Z vs 'Z = 2'"


# ============================================================================ F: --override
def test_an_override_value_that_is_not_a_literal_says_what_a_value_is(db, tmp_path):
    """It said "malformed node or string on line 1: <ast.Name object at 0x7f...>"."""
    out = run_cli(core_cli, train_args(db, tmp_path / "runs", "r", "--config", "brave",
                                       "--override", "CAPACITY=foo("), 2,
                  ["Error: --override 'CAPACITY=foo(': its value foo( is not a Python literal nor "
                   "a gin reference (a number, a 'quoted string', a [list], True, False, None, "
                   "@configurable or %MACRO); e.g. --override 'CAPACITY=4' (its current value)"])
    assert "ast." not in out and "malformed" not in out
    run_cli(core_cli, train_args(db, tmp_path / "runs", "r", "--config", "brave", "--override",
                                 "cached_conv.convs.get_padding.mode=causal"), 2,
            ["e.g. --override \"cached_conv.convs.get_padding.mode='causal'\" (a string needs "
             "quotes)"])
    assert not (tmp_path / "runs").exists()


def test_a_config_file_value_that_is_not_a_literal_names_its_line(tmp_path):
    from rave_core.config import ConfigError, parse_config
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'brave.gin'\nCAPACITY = foo(\n")
    with pytest.raises(ConfigError) as err:
        parse_config([str(bad)])
    assert str(err.value) == (f"invalid gin config ({bad}, line 2): a value is not a Python "
                              "literal nor a gin reference (a number, a 'quoted string', a "
                              "[list], True, False, None, @configurable or %MACRO); a string "
                              "needs quotes")


# ============================================================================ G: --n_signal
def test_n_signal_suggestions_pass_the_length_check_too(db, tmp_path):
    """--n_signal 1000 suggested 896 or 1024, both then refused as too short."""
    args = train_args(db, tmp_path / "runs", "r", "--config", "brave")
    args[args.index("--n_signal") + 1] = "1000"
    out = run_cli(core_cli, args, 2, ["--n_signal must be a multiple of 128 (the model's samples "
                                      "per latent frame), got 1000: use e.g. 4224 or more (the "
                                      "shortest window this config takes)"])
    suggested = re.search(r"use e\.g\. (\d+)", out).group(1)
    args[args.index("--n_signal") + 1] = suggested
    run_cli(core_cli, args, 0, ["trained"])   # 4224: 264 samples per band, the STFT needs 257
    args[args.index("--n_signal") + 1] = "4223"
    out = run_cli(core_cli, args, 2, ["got 4223: use e.g. 4224"])
    assert "4096" not in out   # too short


# ============================================================================ H: quickstart
@pytest.fixture(scope="module")
def quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "examples" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_says_durations_and_distances_readably(quickstart):
    """It said "(about 0 minutes on 2 cores)" and "best validation distance
    26.761167526245117"."""
    assert quickstart.training_time(3) == "under a minute"
    assert quickstart.training_time(90) == "about 1 minute"
    assert quickstart.training_time(500) == "about 6 minutes"
    result = SimpleNamespace(global_step=3, steps_per_second=1.234,
                             best_validation=26.761167526245117)
    assert quickstart.trained_summary(result) == \
        "  3 steps, 1.23 steps/s, best validation distance 26.76"


def test_quickstart_warnings_are_one_line_naming_its_own_flags(quickstart, capsys):
    """A resumed quickstart printed `.../trainer.py:322: UserWarning: ... --max_steps is 3
    ...` with the source line; its flag is --steps."""
    from rave_core.training import trainer
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with quickstart.quickstart_warnings():
            warnings.warn_explicit("last.ckpt is at step 3, --max_steps is 3: nothing to train; "
                                   "raise --max_steps to go on", UserWarning, trainer.__file__, 322)
    assert capsys.readouterr().err == ("Warning: last.ckpt is at step 3, --steps is 3: nothing "
                                       "to train; raise --steps to go on\n")


# ============================================================================ I: configs
def test_configs_lists_a_whole_sentence_per_config():
    """v2_nodisc's description was cut at its comment's first line, ending in a colon."""
    listed = CliRunner().invoke(core_cli, ["configs"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert any(line.startswith("v2_nodisc ") and line.endswith(
        "(the MusicNet experiment): v2_small's architecture, phase 1 never ends, no "
        "discriminator is built.") for line in lines), listed.output
    for line in lines:
        assert line.endswith("."), line
    assert any(line.startswith("brave ") and line.endswith("40 dB PQMF. Low latency.")
               for line in lines)
    assert any(line.startswith("spherical ") and line.endswith("exports give its angles.")
               for line in lines)
