"""Training: synthetic audio -> preprocess -> reduced-capacity RAVE trained on CPU.

Covers learning (the spectral distance drops), the phase schedule (phase 2's adversarial
losses, v2_nodisc staying in phase 1), exact resume, divergence handling, Ctrl-C, two
gloo processes under DDP, the run directory as `open_run` reads it, and the CLI's errors.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from rave_core.cli import main as cli
from rave_core.config import ConfigError, build_model
from rave_core.data import DataError, preprocess
from rave_core.run import open_run
from rave_core.training.trainer import RAVETrainer, TrainingError, train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from synth_dataset import synthesize  # noqa: E402

from .distributed import (TINY_TRAINING, free_port, interrupt_during_step,  # noqa: E402
                          join_two_ranks, run_two_ranks)

SMALL = TINY_TRAINING
FAST = dict(batch=4, n_signal=8192, device="cpu", workers=0, progress=False, log_every=1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    synthesize(root / "wav", seconds=8, sr=44100, seed=0, n_files=1)
    preprocess([str(root / "wav")], str(root / "db"), progress=False)
    return root / "db"


def _files(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------- learning
def test_training_reduces_spectral_distance_and_writes_a_loadable_run(db, tmp_path):
    result = train(["brave"], db, "learn", out_path=tmp_path, max_steps=60, val_every=30,
                   save_every=30, overrides=SMALL + ["CAPACITY=8"], valid_fraction=0.1, **FAST)
    assert result.global_step == 60 and len(result.history) == 60

    # Validation distance (step 0 is the untrained model) and training distance both drop.
    validations = [v["validation"] for v in result.validations]
    assert [v["step"] for v in result.validations] == [0, 30, 60]
    assert validations[-1] < 0.92 * validations[0], validations
    # Training batches are random crops, so single steps are noisy (+-20 %): fit a line
    # through all 60 and ask that it falls, rather than comparing two short windows.
    fullband = [h["fullband_spectral_distance"] for h in result.history]
    slope, start = np.polyfit(np.arange(len(fullband)), fullband, 1)
    assert start + slope * (len(fullband) - 1) < 0.95 * start, fullband
    assert {"multiband_spectral_distance", "regularization", "beta_factor"} <= set(result.history[0])
    assert "loss_dis" not in result.history[-1]  # phase 1 only

    run = result.run_dir
    version = run / "version_0"
    assert _files(version / "checkpoints") == ["best.ckpt", "epoch_30.ckpt", "epoch_60.ckpt",
                                               "last.ckpt"]
    assert _files(version / "audio") == ["step_0.wav", "step_30.wav", "step_60.wav"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(version)).Reload()
    assert {"validation", "fullband_spectral_distance", "regularization", "fidelity_0.95"} <= \
        set(events.Tags()["scalars"])
    assert len(events.Scalars("fullband_spectral_distance")) == 60
    assert "audio_val" in events.Tags()["audio"]

    # Checkpoints: plain values only, full model (discriminator included), resume state.
    ckpt = torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 60 and "pytorch-lightning_version" not in ckpt
    assert any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 1
    assert ckpt["callbacks"]["BetaWarmupCallback"]["training_steps"] == 60
    assert ckpt["loader"]["batches_consumed"] == 60

    # config.gin is the operative config and builds the same model again.
    text = (run / "config.gin").read_text()
    assert "RAVE.n_channels = 1" in text and "CAPACITY = 8" in text
    rebuilt = build_model(text=text)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in ckpt["state_dict"].items()}

    # The run loads like any other, with the statistics validation computed.
    loaded = open_run(run)
    assert loaded.checkpoint_path.name == "best.ckpt"
    model = loaded.model
    assert (model.fidelity > 0).all() and model.fidelity[-1] == pytest.approx(1.0, abs=1e-5)
    assert torch.all(model.fidelity[1:] >= model.fidelity[:-1])
    pca = model.latent_pca
    assert torch.allclose(pca @ pca.T, torch.eye(8), atol=1e-4)
    assert model.latent_mean.abs().sum() > 0
    left, right = model.receptive_field.tolist()
    assert left > 1000 and right == 0  # BRAVE is causal


# ---------------------------------------------------------------------------- schedule, resume
def test_phase_2_and_exact_resume(db, tmp_path):
    """Phase 2 from step 4: adversarial losses, frozen encoder. A run stopped at step 5
    and resumed continues exactly like an uninterrupted one."""
    overrides = SMALL + ["PHASE_1_DURATION=3"]
    kwargs = dict(out_path=tmp_path, val_every=100, save_every=3, overrides=overrides, **FAST)
    first = train(["brave"], db, "resumed", max_steps=5, **kwargs)
    resumed = train(["brave"], db, "resumed", max_steps=8, **kwargs)  # same name: resumes
    straight = train(["brave"], db, "straight", max_steps=8, **kwargs)

    assert resumed.resumed_from == tmp_path / "resumed" / "version_0" / "checkpoints" / "last.ckpt"
    assert [h["step"] for h in resumed.history] == [6, 7, 8]
    assert (first.steps_done, resumed.steps_done, straight.steps_done) == (5, 3, 8)
    again = train(["brave"], db, "resumed", max_steps=8, **kwargs)  # nothing left to do
    assert (again.global_step, again.steps_done, again.steps_per_second) == (8, 0, 0.0)
    for a, b in zip(resumed.history, straight.history[5:]):
        assert a == b  # every logged value, bit for bit: same weights, optimisers, RNG, data
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, straight.model.state_dict()[k]), k
    assert first.history == straight.history[:5]

    history = straight.history
    adversarial = {"loss_dis", "pred_real", "pred_fake", "feature_matching", "adversarial"}
    assert not adversarial & set(history[2])  # step 3: phase 1
    assert all(adversarial <= set(h) for h in history[3:])
    assert all(torch.isfinite(torch.tensor(h["loss_dis"])) for h in history[3:])

    # The encoder stopped learning at step 3; the decoder and discriminator did not.
    at_3 = torch.load(tmp_path / "straight" / "version_0" / "checkpoints" / "epoch_3.ckpt",
                      weights_only=True)["state_dict"]
    params = dict(straight.model.named_parameters())
    for prefix, frozen in (("encoder.", True), ("decoder.", False), ("discriminator.", False)):
        same = all(torch.equal(at_3[k], v.detach()) for k, v in params.items() if k.startswith(prefix))
        assert same == frozen, prefix
    final = straight.model.state_dict()
    assert int(final["encoder.warmed_up"]) == 1


def test_v2_nodisc_builds_no_discriminator_and_stays_in_phase_1(db, tmp_path):
    result = train(["v2_nodisc"], db, "nodisc", out_path=tmp_path, max_steps=2, val_every=100,
                   save_every=100, overrides=SMALL,
                   **{**FAST, "n_signal": 32768, "batch": 2})
    model = result.model
    assert model.discriminator is None
    assert all("loss_dis" not in h and "adversarial" not in h for h in result.history)
    assert int(model.encoder.warmed_up) == 0
    ckpt = torch.load(result.run_dir / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 1
    # v2 crops the receptive field off the multiband signals: measured before step 1.
    left, right = model.receptive_field.tolist()
    assert left > 5000 and right > 5000


# ---------------------------------------------------------------------------- failures
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(db, tmp_path, monkeypatch):
    real_step = RAVETrainer.step

    def poisoned(self, x, step, stop=False):
        if step == 6:  # the 7th step sees a NaN sample
            x = x.clone()
            x[0, 0, 100] = float("nan")
        return real_step(self, x, step, stop)

    monkeypatch.setattr(RAVETrainer, "step", poisoned)
    with pytest.raises(TrainingError) as info:
        train(["brave"], db, "nan", out_path=tmp_path, max_steps=20, val_every=5, save_every=100,
              overrides=SMALL, **FAST)
    message = str(info.value)
    assert "not finite at step 7" in message and "step 5" in message and "last.ckpt" in message
    folder = tmp_path / "nan" / "version_0" / "checkpoints"
    assert _files(folder) == ["best.ckpt", "last.ckpt"]  # no temporary file left behind
    ckpt = torch.load(folder / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_dataset_shorter_than_one_batch_is_a_data_error(db, tmp_path):
    with pytest.raises(DataError, match="lower --batch or --n_signal"):
        train(["brave"], db, "short", out_path=tmp_path, max_steps=1, overrides=SMALL,
              **{**FAST, "batch": 64})
    with pytest.raises(ConfigError, match="nearest: CAPACITY"):
        train(["brave"], db, "typo", out_path=tmp_path, max_steps=1, overrides=["CAPACTIY=4"], **FAST)


def test_sigterm_saves_and_exits_143(db, tmp_path, monkeypatch):
    """SIGTERM (Slurm's time limit, `kill`, Docker) saves as Ctrl-C does, and exits 143 as
    the other commands do (it was 130, which reads as a Ctrl-C to a job script)."""
    real_step = RAVETrainer.step

    def terminated(self, x, step, stop=False):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, x, step, stop)

    monkeypatch.setattr(RAVETrainer, "step", terminated)
    result = CliRunner().invoke(cli, _cli_train(db, tmp_path, "term", "--max_steps", "50"))
    assert result.exit_code == 143, result.output
    assert "interrupted at step 3: saved" in result.output
    last = tmp_path / "term" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3


def test_ctrl_c_saves_and_exits_130(db, tmp_path, monkeypatch):
    real_step = RAVETrainer.step

    def interrupted(self, x, step, stop=False):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C during step 3
        return real_step(self, x, step, stop)

    monkeypatch.setattr(RAVETrainer, "step", interrupted)
    result = CliRunner().invoke(cli, _cli_train(db, tmp_path, "ctrlc", "--max_steps", "50"))
    assert result.exit_code == 130, result.output
    assert "interrupted at step 4" in result.output and "resume" in result.output
    assert "Traceback" not in result.output
    folder = tmp_path / "ctrlc" / "version_0" / "checkpoints"
    assert _files(folder) == ["last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4

    # Resuming needs no --config (the run's config.gin), and refuses another config.
    monkeypatch.setattr(RAVETrainer, "step", real_step)
    args = _cli_train(db, tmp_path, "ctrlc", "--max_steps", "5")
    other = CliRunner().invoke(cli, [a if a != "brave" else "v1" for a in args])
    assert other.exit_code == 2 and "trained with another config" in other.output, other.output
    assert "leave out --config and --override to resume it" in other.output  # both were given
    i = args.index("--config")
    resumed = CliRunner().invoke(cli, args[:i] + args[i + 2:])
    assert resumed.exit_code == 0, resumed.output
    assert "to step 5" in resumed.output

    # Other windows: validation distances are not comparable across the change.
    longer = args[:i] + args[i + 2:]
    longer[longer.index("--n_signal") + 1] = "16384"
    longer[longer.index("--max_steps") + 1] = "6"
    changed = CliRunner().invoke(cli, longer)
    assert changed.exit_code == 0, changed.output
    assert "trained on windows of 8192 samples, this run uses --n_signal 16384" in changed.output


def test_a_repeated_signal_is_one_request_unless_it_comes_later():
    from rave_core.training.loop import StopRequest
    with StopRequest() as stopper:
        os.kill(os.getpid(), signal.SIGINT)   # the terminal's Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)   # torchrun passing it on: same request
        assert stopper.requested
        stopper._first -= 2 * stopper.REPEAT_WINDOW
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C, later: stop at once
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                time.sleep(0.01)


# ---------------------------------------------------------------------------- distributed
def _ddp_worker(rank: int, port: int, db: str, out: str) -> None:
    join_two_ranks(rank, port)
    # Step 1: phase 1; step 2: generator step of phase 2; step 3: discriminator step.
    result = train(["brave"], db, "ddp", out_path=out, max_steps=3, val_every=100, save_every=100,
                   overrides=SMALL + ["PHASE_1_DURATION=1"], **{**FAST, "batch": 2})
    torch.save({"state_dict": result.model.state_dict(), "history": result.history},
               os.path.join(out, f"rank{rank}.pt"))
    assert not _process_group_threads(), "the process group outlived training"


def test_two_gloo_processes_keep_identical_weights(db, tmp_path):
    mp.spawn(_ddp_worker, args=(free_port(), str(db), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    a, b = (r["state_dict"] for r in ranks)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Different shards of the data (different losses), phase 2 reached on both.
    h0, h1 = (r["history"] for r in ranks)
    assert h0[0]["fullband_spectral_distance"] != h1[0]["fullband_spectral_distance"]
    assert "loss_dis" in h0[-1] and "loss_dis" in h1[-1]
    # Rank 0 alone wrote the run; its checkpoint holds both ranks' RNG states.
    ckpt = torch.load(tmp_path / "ddp" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and len(ckpt["rng_states"]) == 2
    assert all(torch.equal(v, ckpt["state_dict"][k]) for k, v in a.items())


def _process_group_threads() -> List[str]:
    """The names of this process's threads that serve a process group: gloo's workers and
    transport, the TCP store's server (Linux names them; elsewhere none is found)."""
    names = []
    for task in (Path("/proc/self/task").iterdir() if Path("/proc/self/task").is_dir() else ()):
        with contextlib.suppress(OSError):
            names.append((task / "comm").read_text().strip())
    return [name for name in names if "gloo" in name or "tcpstore" in name]


def _train_as_rank(rank: int, db: str, out: str, name: str, caught, **settings) -> None:
    """A short BRAVE training as rank ``rank``; what an expected ``caught`` error says
    goes to ``<out>/rank<rank>.txt`` for the test to read. However training ended, its
    process group is gone with its threads: one left to the interpreter's exit aborted the
    process now and then ("terminate called without an active exception")."""
    try:
        train(["brave"], db, name, out_path=out, save_every=100, overrides=SMALL,
              **{**FAST, "batch": 2, **settings})
    except caught as err:
        Path(out, f"rank{rank}.txt").write_text(str(err))
    left = _process_group_threads()
    assert not left, f"rank {rank}: the process group's threads outlived training: {left}"


def _ddp_interrupted_worker(rank: int, port: int, db: str, out: str) -> None:
    """Ctrl-C reaches every process of the group: each gets SIGINT during step 3."""
    from rave_core.training.trainer import TrainingInterrupted
    join_two_ranks(rank, port)
    interrupt_during_step(2)
    _train_as_rank(rank, db, out, "ddp_stop", TrainingInterrupted, max_steps=50, val_every=100)


def test_two_gloo_processes_stop_together_on_ctrl_c(db, tmp_path):
    # Each rank raised TrainingInterrupted (rank 1 used to gather again, alone, after
    # rank 0 had saved and left: "Connection closed by peer").
    mp.spawn(_ddp_interrupted_worker, args=(free_port(), str(db), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        assert "interrupted at step 4" in (tmp_path / f"rank{rank}.txt").read_text()
    folder = tmp_path / "ddp_stop" / "version_0" / "checkpoints"
    assert _files(folder) == ["last.ckpt"]
    ckpt = torch.load(folder / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and len(ckpt["rng_states"]) == 2


def _two_ranks_to_their_end(worker, db, tmp_path, limit: float = 300,
                            exit_codes=(0, 0)) -> None:
    """Run ``worker`` as ranks 0 and 1, wait until both have ended, and check how: after an
    error, gloo's teardown used to abort a process as it exited ("terminate called without
    an active exception", exit code -6), once its message was said."""
    codes = tuple(run_two_ranks(worker, str(db), str(tmp_path), limit=limit)[1])
    assert codes == tuple(exit_codes), f"exit codes of ranks 0 and 1: {codes}"


def _ddp_full_disk_worker(rank: int, port: int, db: str, out: str) -> None:
    """Rank 0's checkpoint write fails (a full disk) at the validation of step 2."""
    import errno

    from rave_core.training import checkpoint
    join_two_ranks(rank, port)
    real = checkpoint.replace_atomically

    def full_at_step_2(path, write):
        if Path(path).suffix == ".ckpt" and Path(out, "step1-saved").exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, write)
        if Path(path).name == "last.ckpt":
            Path(out, "step1-saved").touch()

    checkpoint.replace_atomically = full_at_step_2
    _train_as_rank(rank, db, out, "ddp_full", TrainingError, max_steps=4, val_every=1)


def test_a_write_failure_on_rank_0_stops_every_rank_with_its_message(db, tmp_path):
    """Rank 0 alone writes; when it failed, the other ranks went on to the next collective
    and waited there for a rank that had left (or died of "Connection closed by peer")."""
    _two_ranks_to_their_end(_ddp_full_disk_worker, db, tmp_path)
    last = tmp_path / "ddp_full" / "version_0" / "checkpoints" / "last.ckpt"
    for rank in (0, 1):
        said = (tmp_path / f"rank{rank}.txt").read_text()
        assert "no space left on device" in said and f"the last checkpoint is {last} (step 1)" \
            in said, (rank, said)


def _ddp_failing_write_worker(rank: int, port: int, db: str, out: str) -> None:
    """Rank 0 cannot write (a full disk) before the first step: ``out``'s name says
    where, the run's config.gin or the step-0 validation's audio example."""
    import errno

    from rave_core.training import loop, trainer
    join_two_ranks(rank, port)
    what = Path(out).name

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    if what == "config":
        trainer.write_text_atomically = full
    else:
        loop._write_audio = full
    _train_as_rank(rank, db, out, "ddp_start", (OSError, TrainingError), max_steps=2,
                   val_every=100, audio_examples=1)


@pytest.mark.parametrize("what", ["config", "audio"])
def test_a_write_failure_on_rank_0_before_the_first_step_stops_every_rank(db, tmp_path, what):
    """Rank 0 writes the run's folder (config.gin, TensorBoard) and the step-0 validation's
    audio before the loop; where that failed, it left with a bare OSError, and rank 1,
    waiting for it at the next collective, died there when the connection closed (exit
    code 1, without the reason) after rank 0 had waited 10 s for it at the group's exit."""
    out = tmp_path / what
    out.mkdir()
    _two_ranks_to_their_end(_ddp_failing_write_worker, db, out)
    for rank in (0, 1):
        said = (out / f"rank{rank}.txt").read_text()
        assert "no space left on device" in said.lower(), (rank, said)
    if what == "audio":  # no checkpoint yet: said, on every rank
        assert all("no checkpoint was written yet" in (out / f"rank{r}.txt").read_text()
                   for r in (0, 1))


def _ddp_locked_worker(rank: int, port: int, db: str, out: str) -> None:
    from rave_core.training.trainer import TrainingArgumentError
    join_two_ranks(rank, port)
    _train_as_rank(rank, db, out, "ddp_locked", TrainingArgumentError, max_steps=2,
                   val_every=100)


def test_a_run_being_trained_refuses_every_rank_of_a_second_torchrun(db, tmp_path):
    """Rank 0 alone takes the run's lock: refused, it left, and rank 1 died on the lost
    connection ("Connection closed by peer") instead of saying why."""
    from rave_core.training.run_lock import RunLock

    with RunLock(tmp_path / "ddp_locked") as lock:
        lock.acquire()   # as a training of this run in another process
        _two_ranks_to_their_end(_ddp_locked_worker, db, tmp_path)
    for rank in (0, 1):
        assert "is being trained by another process" in (tmp_path / f"rank{rank}.txt").read_text()


def _ddp_dying_worker(rank: int, port: int, db: str, out: str) -> None:
    """Rank 1 dies (killed, out of memory) during step 2; rank 0 is left alone."""
    join_two_ranks(rank, port)
    real_step = RAVETrainer.step

    def dying(self, x, step, stop=False):
        if step == 1 and rank == 1:
            os._exit(9)
        return real_step(self, x, step, stop)

    RAVETrainer.step = dying
    started = time.monotonic()
    _train_as_rank(rank, db, out, "ddp_dying", RuntimeError, max_steps=50, val_every=100)
    Path(out, f"rank{rank}-seconds.txt").write_text(f"{time.monotonic() - started:.1f}")


def test_a_rank_that_dies_leaves_the_other_to_stop_at_once(db, tmp_path):
    """The ranks leave the group together, but one that died is not waited for: the
    survivor stops on the lost connection and frees the group within seconds."""
    _two_ranks_to_their_end(_ddp_dying_worker, db, tmp_path, limit=120, exit_codes=(0, 9))
    assert (tmp_path / "rank0.txt").exists()   # gloo's error: the connection was lost
    assert float((tmp_path / "rank0-seconds.txt").read_text()) < 60


# ---------------------------------------------------------------------------- CLI
def _cli_train(db, out, name, *extra):
    args = ["train", "--config", "brave", "--db_path", str(db), "--name", name,
            "--out_path", str(out), "--batch", "4", "--n_signal", "8192", "--device", "cpu",
            "--workers", "0", "--no-progress"]
    for o in SMALL:
        args += ["--override", o]
    return args + list(extra)


def test_cli_log_every_sets_how_often_losses_reach_tensorboard(db, tmp_path):
    """Losses went to TensorBoard every 50 steps, not a flag: a short run logged none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = CliRunner().invoke(cli, _cli_train(db, tmp_path, "logs", "--max_steps", "4",
                                                "--log_every", "2"))
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "logs" / "version_0")).Reload()
    assert [e.step for e in events.Scalars("fullband_spectral_distance")] == [2, 4]


@pytest.mark.parametrize("config", ["v3", "brave"])
def test_a_too_short_n_signal_is_answered_with_the_shortest_that_works(config):
    """The error gave a negative sample count and no value to use."""
    import re

    from rave_core.training.analysis import receptive_field
    from rave_core.training.trainer import (TrainingArgumentError, _check_signal_length,
                                            _signal_shortfall)

    model = build_model([config])
    model.receptive_field.copy_(torch.tensor(receptive_field(model)))
    with pytest.raises(TrainingArgumentError) as err:
        _check_signal_length(model, 1024)
    assert "-" not in str(err.value).split("sees ")[1].split(" ")[0], str(err.value)
    shortest = int(re.search(r"use --n_signal (\d+) or more", str(err.value)).group(1))
    assert shortest % model.ratio == 0
    assert _signal_shortfall(model, shortest) is None
    assert _signal_shortfall(model, shortest - model.ratio) is not None


@pytest.mark.parametrize("change, code, expected", [
    (("--db_path", "MISSING"), 2, "rave-core preprocess"),
    (("--config", "brvae"), 2, "Did you mean brave"),
    (("--override", "CAPACTIY=4"), 2, "nearest: CAPACITY"),
    (("--override", "rave.model.RAVE.phase1_duration=4"), 2, "nearest: phase_1_duration"),
    (("--batch", "64"), 1, "lower --batch or --n_signal"),
    (("--n_signal", "1024"), 2, "--n_signal 1024 is too short"),
    (("--gpus", "2"), 2, "--gpus 2 asks for GPU processes but --device is cpu"),
])
def test_cli_errors_are_short_and_coded(db, tmp_path, change, code, expected):
    args = _cli_train(db, tmp_path, "bad")
    flag, value = change
    if flag in ("--db_path", "--config", "--batch", "--n_signal"):
        i = args.index(flag)
        args[i + 1] = str(tmp_path / value) if value == "MISSING" else value
    else:
        args += [flag, value]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2
    assert not (tmp_path / "bad" / "version_0" / "checkpoints").exists()


def test_cli_preprocess_configs_and_help(tmp_path):
    synthesize(tmp_path / "wav", seconds=1, sr=44100, seed=1)
    runner = CliRunner()
    result = runner.invoke(cli, ["preprocess", "--input_path", str(tmp_path / "wav"),
                                 "--output_path", str(tmp_path / "db"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "db" / "metadata.yaml").exists()
    missing = runner.invoke(cli, ["preprocess", "--input_path", str(tmp_path / "nope"),
                                  "--output_path", str(tmp_path / "db2")])
    assert missing.exit_code == 2 and "does not exist" in missing.output

    listed = runner.invoke(cli, ["configs"])
    assert listed.exit_code == 0 and "v2_nodisc" in listed.output and "brave" in listed.output
    helped = runner.invoke(cli, ["train", "--help"])
    for flag in ("--config", "--db_path", "--name", "--out_path", "--max_steps", "--batch",
                 "--n_signal", "--val_every", "--save_every", "--device", "--workers", "--ckpt",
                 "--override", "--seed", "--gpus"):
        assert flag in helped.output
    assert "default: 131072" in helped.output
