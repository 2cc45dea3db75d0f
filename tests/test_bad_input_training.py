"""Bad input to `rave-core preprocess`, `rave-core train` and the checkpoint loader
(`rave-deploy export`): each case answers with a short error and the documented exit
code, and deletes nothing of the user's (docs/bad-input.md)."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Iterable, List

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from rave_core.cli import main as core_cli
from rave_core.data import DataError, preprocess
from rave_deploy.cli import main as deploy_cli

from .conftest import tone
from .runs import make_run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["CAPACITY=4", "LATENT_SIZE=8", "rave.core.MultiScaleSTFT.scales = [512, 256, 128]"]
CKPT = Path("version_0") / "checkpoints" / "best.ckpt"

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(cli, args: Iterable, code: int, expect: Iterable[str] = ()) -> str:
    """Invoke ``cli``; check the exit code, the key words, and that the error is clean:
    no escaped exception, no traceback, the error the last one or two lines."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception), result.output)
    assert "Traceback" not in result.output, result.output
    assert "unexpected" not in result.output, result.output
    assert result.exit_code == code, (result.exit_code, result.output)
    if code in (1, 2):
        lines = result.stderr.strip().splitlines()
        errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
        assert errors and len(lines) - errors[-1] <= 2, result.stderr
    for word in expect:
        assert word in result.output, result.output
    return result.output


def tree(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def leftovers(folder: Path) -> List[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), ("brave",), name="brave")


def train_args(db: Path, out: Path, name: str, *extra) -> List[str]:
    args = ["train", "--db_path", db, "--name", name, "--out_path", out, "--batch", "2",
            "--n_signal", "8192", "--device", "cpu", "--workers", "0", "--no-progress",
            "--max_steps", "1", "--val_every", "1"]
    for o in TINY:
        args += ["--override", o]
    return [str(a) for a in args + list(extra)]


# ============================================================================ preprocess
def test_preprocess_refuses_a_folder_holding_other_files(tmp_path):
    """A folder with a metadata.yaml of its own (a project) is not a dataset: nothing in
    it is deleted."""
    wav = tone(tmp_path / "wav" / "a.wav").parent
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "metadata.yaml").write_text("name: x\n")
    (proj / "src" / "main.py").write_text("code\n")
    before = tree(proj)
    run_cli(core_cli, ["preprocess", "--input_path", wav, "--output_path", proj,
                       "--no-progress"], 2, ["not a dataset", "src/", "remove them"])
    assert tree(proj) == before and (proj / "src" / "main.py").read_text() == "code\n"
    assert leftovers(tmp_path) == []


def test_preprocess_still_replaces_its_own_dataset(tmp_path):
    wav = tone(tmp_path / "wav" / "a.wav").parent
    out = tmp_path / "db"
    preprocess([str(wav)], str(out), progress=False)
    tone(wav / "b.wav")
    run_cli(core_cli, ["preprocess", "--input_path", wav, "--output_path", out,
                       "--no-progress"], 0, ["2 files"])


def test_preprocess_refuses_an_input_inside_the_output(tmp_path):
    ds = tmp_path / "w" / "ds"
    tone(ds / "audio" / "a.wav")
    preprocess([str(ds / "audio")], str(tmp_path / "x"), progress=False)
    for name in ("audio.bin", "index.json", "skipped.txt", "metadata.yaml"):
        shutil.copy(tmp_path / "x" / name, ds / name)  # ds looks like a dataset, plus audio/
    for output in (ds, ds / "audio"):
        run_cli(core_cli, ["preprocess", "--input_path", ds / "audio", "--output_path", output,
                           "--no-progress"], 2, ["is inside --output_path", "delete the input"])
    assert (ds / "audio" / "a.wav").is_file()
    assert leftovers(ds.parent) == [] and leftovers(ds) == []


@pytest.mark.parametrize("flag, value, expected", [
    ("--sampling_rate", "441", "441 is not in the range 8000<=x<=384000"),   # a typo for 44100
    ("--channels", "100", "100 is not in the range 1<=x<=64"),
])
def test_preprocess_refuses_implausible_rates_and_channel_counts(tmp_path, flag, value, expected):
    tone(tmp_path / "in" / "a.wav")
    run_cli(core_cli, ["preprocess", "--input_path", tmp_path / "in", "--output_path",
                       tmp_path / "db", flag, value, "--no-progress"], 2, [expected])
    assert not (tmp_path / "db").exists()
    with pytest.raises(DataError, match="must be"):   # the library refuses them too
        preprocess([str(tmp_path / "in")], str(tmp_path / "db"),
                   **{flag.lstrip("-"): int(value)}, progress=False)


def test_preprocess_skips_files_with_non_finite_samples(tmp_path):
    wav = tmp_path / "wav"
    tone(wav / "good.wav")
    for name, value in (("inf.wav", np.inf), ("nan.wav", np.nan)):
        x = sf.read(str(tone(wav / name)), dtype="float32")[0]
        x[1000] = value
        sf.write(str(wav / name), x, 44100, subtype="FLOAT")
    out = run_cli(core_cli, ["preprocess", "--input_path", wav, "--output_path",
                             tmp_path / "db", "--no-progress"], 0, ["1 file, "])
    for name in ("inf.wav", "nan.wav"):
        assert f"skipped {wav / name}: non-finite samples" in out, out
    audio = np.fromfile(tmp_path / "db" / "audio.bin", dtype="<f4")
    assert np.isfinite(audio).all() and np.abs(audio).max() < 1


_SLOW_PREPROCESS = """
import pathlib, sys, time
import rave_core.data.preprocess
pp = sys.modules["rave_core.data.preprocess"]
write = pp._write_block
def slow(fh, block):
    write(fh, block)
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(0.5)
pp._write_block = slow
from rave_core.cli import main
main(sys.argv[2:], prog_name="rave-core")
"""


def test_sigterm_during_preprocess_cleans_up_like_ctrl_c(tmp_path):
    wav = tone(tmp_path / "wav" / "a.wav", seconds=8).parent
    out, marker = tmp_path / "db", tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREPROCESS, str(marker), "preprocess",
                             "--input_path", str(wav), "--output_path", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 60
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, err)
    assert f"Interrupted: {out} is as it was" in err and "Traceback" not in err, err
    assert not out.exists() and leftovers(tmp_path) == []


# ============================================================================ train: dataset
@pytest.mark.parametrize("damage", ["index", "metadata"])
def test_train_on_a_damaged_dataset(db, tmp_path, damage):
    bad = Path(shutil.copytree(db, tmp_path / "db"))
    if damage == "index":
        (bad / "index.json").write_text("{\n")
    else:
        (bad / "metadata.yaml").write_text("sr: [\n")
    name = "index.json" if damage == "index" else "metadata.yaml"
    run_cli(core_cli, train_args(bad, tmp_path / "runs", "r", "--config", "brave"), 2,
            [f"dataset {bad} is damaged: {name} is unreadable", "re-run `rave-core preprocess`"])
    assert not (tmp_path / "runs").exists()


def test_train_refuses_n_signal_not_a_multiple_of_the_ratio(db, tmp_path):
    args = train_args(db, tmp_path / "runs", "r", "--config", "brave")
    args[args.index("--n_signal") + 1] = "8193"
    run_cli(core_cli, args, 2, ["--n_signal must be a multiple of 128", "8192"])
    assert not (tmp_path / "runs").exists()


def _file_size_limit(limit: int):
    """For ``preexec_fn``: writes past ``limit`` bytes fail (EFBIG) as on a full disk."""
    def limited():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # else the write kills the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limited


def test_a_checkpoint_that_cannot_be_written_names_it_and_what_is_kept(db, tmp_path):
    """A full disk (here: a file-size limit below the checkpoint's 1 MB) while saving: the
    file and the reason, and the checkpoint to resume from, untouched (torch.save's zip
    writer said "unexpected pos 44074304 vs 44074192 ... report it")."""
    runs = tmp_path / "runs"
    run_cli(core_cli, train_args(db, runs, "r", "--config", "brave"), 0, ["trained"])
    last = runs / "r" / "version_0" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    args = train_args(db, runs, "r")
    args[args.index("--max_steps") + 1] = "2"
    done = subprocess.run([sys.executable, "-m", "rave_core.cli", *args], capture_output=True,
                          text=True, preexec_fn=_file_size_limit(600_000), timeout=600)
    assert done.returncode == 1, done.stderr
    # best.ckpt when step 2 improved the distance (it is written first), else last.ckpt
    assert re.search(rf"Error: cannot write {re.escape(str(last.parent))}/(best|last)\.ckpt: "
                     "file too large", done.stderr), done.stderr
    assert f"the last checkpoint is {last} (step 1), intact" in done.stderr, done.stderr
    assert "run the same command again to resume" in done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert last.read_bytes() == before
    assert not [p.name for p in last.parent.iterdir() if ".tmp-" in p.name]


def test_a_run_being_trained_is_not_trained_twice(db, tmp_path):
    """Two trainings of one run overwrote each other's checkpoints and both logged into
    version_0, and both said they had trained it."""
    from rave_core.training.run_lock import RunLock

    runs = tmp_path / "runs"
    with RunLock(runs / "r") as other:   # as another process's training holds it
        other.acquire()
        run_cli(core_cli, train_args(db, runs, "r", "--config", "brave"), 2,
                [f"run {runs / 'r'} is being trained by another process (PID ",
                 "wait for it to finish", "or choose another --name"])
        assert not (runs / "r" / "version_0").exists() and not (runs / "r" / "config.gin").exists()
    run_cli(core_cli, train_args(db, runs, "r", "--config", "brave"), 0, ["trained"])
    # the lock is released at the end: the run resumes
    args = train_args(db, runs, "r")
    args[args.index("--max_steps") + 1] = "2"
    run_cli(core_cli, args, 0, ["trained"])


@pytest.mark.parametrize("configs, expect", [
    (["causal"], "causal is a modifier: give a base config before it, e.g. --config v2 --config causal"),
    (["spherical"], "spherical is a modifier: give a base config before it"),
    (["v1", "spherical"], "spherical applies to v2, v2_small, v2_nodisc, v3, not to v1"),
    (["brave", "wasserstein"], "wasserstein applies to v2, v2_small, v2_nodisc, v3, not to brave"),
])
def test_a_modifier_without_its_base_says_what_to_give(db, tmp_path, configs, expect):
    """gin said "RAVE.__init__() missing 4 required positional arguments"."""
    args = train_args(db, tmp_path / "runs", "r")
    for c in configs:
        args += ["--config", c]
    run_cli(core_cli, args, 2, [expect])
    assert not (tmp_path / "runs").exists()


def test_train_from_a_plain_state_dict(db, tmp_path):
    first = tmp_path / "runs"
    run_cli(core_cli, train_args(db, first, "a", "--config", "brave"), 0, ["trained"])
    ckpt = torch.load(first / "a" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    plain = tmp_path / "plain.ckpt"
    torch.save(ckpt["state_dict"], plain)
    out = run_cli(core_cli, train_args(db, first, "b", "--config", "brave", "--ckpt", plain), 0,
                  ["trained", "Warning: ", "holds weights only"])
    assert "KeyError" not in out
    # Our warnings are one clean line, not Python's "file:line: UserWarning" and source
    assert "UserWarning" not in out and "warnings.warn(" not in out, out
    assert (first / "b" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_resuming_a_mono_run_on_a_stereo_dataset_names_the_channels(db, tmp_path):
    runs = tmp_path / "runs"
    run_cli(core_cli, train_args(db, runs, "mono", "--config", "brave"), 0, ["trained"])
    tone(tmp_path / "st" / "a.wav", seconds=3, channels=2)
    stereo = tmp_path / "db2"
    preprocess([str(tmp_path / "st")], str(stereo), channels=2, progress=False)
    before = tree(runs)
    run_cli(core_cli, train_args(stereo, runs, "mono"), 2,
            ["has 2 channel(s)", "trained on 1", "--channels 1"])
    ckpt = runs / "mono" / "version_0" / "checkpoints" / "last.ckpt"
    # exit 2, as rave-deploy export answers weights that do not fit: the inputs disagree
    run_cli(core_cli, train_args(stereo, runs, "new", "--config", "brave", "--ckpt", ckpt), 2,
            ["does not fit", "the dataset has 2 channel(s), the checkpoint's run 1"])
    assert tree(runs) == before


# ============================================================================ configs
@pytest.mark.parametrize("content", [b"# caf\xe9\n", b"\x00\xbb\xff\xfe binary"])
def test_non_utf8_config_gin(run, db, tmp_path, content):
    bad = Path(shutil.copytree(run, tmp_path / "bad"))
    (bad / "config.gin").write_bytes(content + (run / "config.gin").read_bytes())
    run_cli(deploy_cli, ["export", bad, "-t", "onnx", "-o", tmp_path / "ex"], 2,
            [f"{bad / 'config.gin'} is not UTF-8 text (line 1", "save it as UTF-8"])
    gin = tmp_path / "my.gin"
    gin.write_bytes(content + b"include 'brave.gin'\n")
    run_cli(core_cli, train_args(db, tmp_path / "runs", "r", "--config", gin), 2,
            [f"{gin} is not UTF-8 text (line 1", "save it as UTF-8"])
    assert not (tmp_path / "ex").exists() and not (tmp_path / "runs").exists()


def test_config_gin_with_a_utf8_bom_is_read(run, tmp_path):
    bom = Path(shutil.copytree(run, tmp_path / "bom"))
    (bom / "config.gin").write_bytes(b"\xef\xbb\xbf" + (run / "config.gin").read_bytes())
    from rave_core.run import open_run
    assert open_run(bom).model is not None


def test_a_text_file_given_as_run(run, tmp_path):
    run_cli(deploy_cli, ["export", run / "config.gin", "-t", "onnx", "-o", tmp_path / "ex"], 2,
            ["is not a checkpoint", "RUN must be a run directory", "or a checkpoint file"])


# ============================================================================ checkpoints
def _flip_weight_byte(ckpt: Path) -> str:
    with zipfile.ZipFile(ckpt) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    data = bytearray(ckpt.read_bytes())
    with open(ckpt, "rb") as f:  # the local header's extra field may differ from the central one
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
    start = info.header_offset + 30 + name_len + extra_len
    data[start + 16] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    return info.filename


def test_corrupted_checkpoint_bytes_are_refused(run, db, tmp_path):
    bad = Path(shutil.copytree(run, tmp_path / "bad"))
    entry = _flip_weight_byte(bad / CKPT)
    assert zipfile.ZipFile(bad / CKPT).testzip() == entry
    run_cli(deploy_cli, ["export", bad, "-t", "onnx", "-o", tmp_path / "ex"], 2,
            ["truncated or corrupted", "CRC mismatch",
             "use another checkpoint of the run, or train it again"])
    run_cli(core_cli, train_args(db, tmp_path / "runs", "r", "--ckpt", bad / CKPT), 2,
            ["truncated or corrupted", "CRC mismatch"])
    assert not (tmp_path / "ex").exists() and not (tmp_path / "runs").exists()


def test_a_truncated_checkpoint_names_the_others_to_use(run, db, tmp_path):
    """It said "Use another checkpoint of the run (e.g. last.ckpt)" of last.ckpt itself,
    after torch's advice cut off mid-sentence."""
    bad = Path(shutil.copytree(run, tmp_path / "bad"))
    folder = (bad / CKPT).parent
    shutil.copy(folder / "best.ckpt", folder / "epoch_10.ckpt")
    (folder / "best.ckpt").rename(folder / "last.ckpt")
    with open(folder / "last.ckpt", "r+b") as f:
        f.truncate(1000)
    out = run_cli(core_cli, train_args(db, tmp_path / "runs", "r", "--ckpt", folder / "last.ckpt"),
                  2, [f"cannot read checkpoint {folder / 'last.ckpt'}: the file is truncated",
                      "use another checkpoint of the run: epoch_10.ckpt beside it"])
    assert "If you are seeing" not in out and "(e.g. last.ckpt)" not in out


def test_non_finite_weights_are_refused(run, db, tmp_path):
    bad = Path(shutil.copytree(run, tmp_path / "bad"))
    ckpt = torch.load(bad / CKPT, weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["state_dict"][key][(0,) * ckpt["state_dict"][key].dim()] = float("inf")
    torch.save(ckpt, bad / CKPT)
    run_cli(deploy_cli, ["export", bad, "-t", "onnx", "-o", tmp_path / "ex"], 2,
            ["NaN or infinite weights", repr(key), "diverged", "earlier checkpoint"])
    run_cli(core_cli, train_args(db, tmp_path / "runs", "r", "--ckpt", bad / CKPT), 2,
            ["NaN or infinite weights", repr(key)])
    assert not (tmp_path / "ex").exists() and not (tmp_path / "runs").exists()


def test_a_checkpoint_that_cannot_be_opened_says_why_not_damaged(run, monkeypatch):
    """A last.ckpt without read permission was called "truncated or corrupted"."""
    import errno

    from rave_core.run import RunError, read_checkpoint

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    # as root, chmod cannot refuse the read: the module's open() refuses it
    monkeypatch.setattr("rave_core.run.open", refused, raising=False)
    with pytest.raises(RunError) as err:
        read_checkpoint(run / CKPT)
    assert str(err.value) == (f"cannot read checkpoint {run / CKPT}: permission denied: make it "
                              "readable (chmod +r), or run as its owner")


def test_resuming_says_what_the_options_do_to_the_run(db, tmp_path):
    """Resuming past --max_steps said "trained ... to step 2" and nothing else; an
    --override on resume rewrote config.gin without a word; one that changes the model's
    sizes was told to "leave out --config", which was not given."""
    runs = tmp_path / "runs"
    args = train_args(db, runs, "r", "--config", "brave")
    args[args.index("--max_steps") + 1] = "2"
    run_cli(core_cli, args, 0, ["trained"])
    last = runs / "r" / "version_0" / "checkpoints" / "last.ckpt"
    run_cli(core_cli, train_args(db, runs, "r"), 0,
            [f"Warning: {last} is at step 2, --max_steps is 1: nothing to train; raise "
             "--max_steps to go on"])
    later = train_args(db, runs, "r", "--override", "PHASE_1_DURATION=3")
    later[later.index("--max_steps") + 1] = "3"
    run_cli(core_cli, later, 0, [f"Warning: resuming {runs / 'r'} with --override", "--override "
                                 "PHASE_1_DURATION=3: its config.gin is updated"])
    assert "PHASE_1_DURATION = 3" in (runs / "r" / "config.gin").read_text()
    bigger = train_args(db, runs, "r")
    bigger[bigger.index("CAPACITY=4")] = "CAPACITY=8"
    out = run_cli(core_cli, bigger, 2, ["does not fit the config", "leave out --config, and any "
                                        "--override of the model's sizes"])
    assert "(leave out --config)" not in out


def test_a_dataset_too_small_for_a_validation_split_is_told(tmp_path):
    """One window of audio trains with nothing held out: no best.ckpt and no latent
    statistics, which export then blamed on the run not being "trained past a validation
    step". Training says so at its start."""
    tone(tmp_path / "wav" / "a.wav", seconds=0.25)   # 11025 samples: one window of 8192
    preprocess([str(tmp_path / "wav")], str(tmp_path / "db"), progress=False)
    runs = tmp_path / "runs"
    args = train_args(tmp_path / "db", runs, "r", "--config", "brave")
    args[args.index("--batch") + 1] = "1"
    run_cli(core_cli, args, 0, [
        f"Warning: no validation set ({tmp_path / 'db'} holds 1 window of 8192 samples, and "
        "one must stay for training): this run will write no best.ckpt, and never compute the "
        "latent statistics", "give a shorter --n_signal, so that two windows or more fit"])
    assert not (runs / "r" / CKPT).exists()
    assert (runs / "r" / CKPT.parent / "last.ckpt").is_file()


def test_a_best_checkpoint_that_cannot_be_written_is_not_recorded(db, tmp_path, monkeypatch):
    """last.ckpt was written first, recording the new best distance, then best.ckpt's copy
    failed (a full disk): resumed, the run believed best.ckpt held a model it never got."""
    import errno

    from rave_core.training import checkpoint

    real = checkpoint.replace_atomically

    def refuse_best(path, write):
        if Path(path).name == "best.ckpt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, write)

    monkeypatch.setattr(checkpoint, "replace_atomically", refuse_best)
    runs = tmp_path / "runs"
    best = runs / "r" / CKPT
    run_cli(core_cli, train_args(db, runs, "r", "--config", "brave"), 1,
            [f"cannot write {best}: no space left on device", "no checkpoint was written yet"])
    assert not best.with_name("last.ckpt").exists()
