"""The training loop of one training process: the steps from the start step to
``max_steps``, with the validations, checkpoints, TensorBoard scalars and audio examples
they bring, and how it stops (a signal, a divergence, a file that cannot be written) on
every rank together; :func:`~rave_core.training.trainer.train` builds what it trains.
"""
from __future__ import annotations

import collections
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Deque, Dict, List, NoReturn, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..os_errors import describe_os_error
from .analysis import fidelity_dimensions, latent_statistics
from .checkpoint import capture_rng, copy_checkpoint, replace_atomically, save_checkpoint
from .distributed import DistContext, on_every_rank
from .errors import TrainingError, TrainingInterrupted
from .resume import ResumeState
from .sampler import ResumableSampler
from .step import RAVETrainer
from .tensorboard_log import TensorBoardLog, quiet_writer_threads

if TYPE_CHECKING:
    from .trainer import RunSettings

__all__ = ["PROGRESS_KEYS", "StopRequest", "TrainResult", "TrainingLoop"]

PROGRESS_KEYS = {"fullband_spectral_distance": "fb", "multiband_spectral_distance": "mb",
                 "regularization": "reg", "loss_dis": "dis", "adversarial": "adv"}


@dataclass
class TrainResult:
    """What :func:`~rave_core.training.trainer.train` did.

    ``history``: the values logged at each of the last steps (dicts with ``step``);
    ``validations``: one dict per validation (``step``, ``validation``, fidelity levels).
    """

    run_dir: Path
    global_step: int
    epoch: int
    model: nn.Module
    history: List[Dict[str, float]] = field(default_factory=list)
    validations: List[Dict[str, float]] = field(default_factory=list)
    best_validation: Optional[float] = None
    resumed_from: Optional[Path] = None
    steps_done: int = 0  # by this call (a resumed run may have had nothing left to do)
    steps_per_second: float = 0.0


class StopRequest:
    """SIGINT / SIGTERM ask training to stop after the current step (and save); a second
    signal stops at once. One within a second of the first is the same request: torchrun
    passes the terminal's Ctrl-C on to workers that received it already."""

    #: seconds within which a repeated signal counts as the first one
    REPEAT_WINDOW = 1.0

    def __init__(self) -> None:
        self.requested = False
        self.signal = int(signal.SIGINT)  # the first signal received
        self._first = 0.0
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if time.monotonic() - self._first > self.REPEAT_WINDOW:
                raise KeyboardInterrupt
            return
        self.requested = True
        self.signal = int(signum)
        self._first = time.monotonic()

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingLoop:
    """The steps of one training process, from the start step to ``max_steps``.

    Holds what a run keeps while it trains: the checkpoint last saved (what a failure
    leaves to resume from), rank 0's TensorBoard writer and progress bar, the logged
    history and the :class:`TrainResult`. Every rank runs it in step with the others:
    rank 0 alone validates and writes, and the other ranks learn of its failures at the
    collectives that follow.
    """

    def __init__(self, ctx: DistContext, settings: RunSettings, model: nn.Module,
                 trainer: RAVETrainer, sampler: ResumableSampler, valid_loader: DataLoader,
                 writer, resumed: ResumeState, resume_path: Optional[Path]) -> None:
        self.ctx, self.settings, self.model, self.trainer = ctx, settings, model, trainer
        self.sampler, self.valid_loader = sampler, valid_loader
        # TensorBoard is on the side: a write failure there warns, and training goes on
        self.writer = (writer if writer is None or isinstance(writer, TensorBoardLog)
                       else TensorBoardLog(writer))
        self.ckpt_dir = settings.ckpt_dir
        self.step = resumed.start_step
        self.result = TrainResult(run_dir=settings.run_dir, global_step=self.step,
                                  epoch=sampler.epoch_of(self.step), model=model,
                                  best_validation=resumed.best_validation,
                                  resumed_from=resume_path)
        self.history: Deque[Dict[str, float]] = collections.deque(maxlen=settings.keep_history)
        self.last_saved: Optional[Tuple[Path, int]] = ((resume_path, self.step) if resume_path
                                                       else None)
        self.bar = None
        if ctx.is_main and settings.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=settings.max_steps, initial=self.step, unit="step",
                            desc=settings.name, dynamic_ncols=True)
        # what rank 0 broadcasts after a validation: the buffers a checkpoint holds
        persistent = model.state_dict(keep_vars=True)
        self.buffers = [b for name, b in model.named_buffers() if name in persistent]
        self._shown = 0.0   # when the progress bar's losses were last updated

    def run(self, loader: DataLoader) -> TrainResult:
        """Every rank: train up to ``max_steps`` (a new run validated first) and return the
        result.

        Raises:
            TrainingError: a step diverged, or rank 0 failed to write (on every rank).
            TrainingInterrupted: a signal stopped training (``last.ckpt`` saved first).
        """
        s = self.settings
        start_step = self.step
        stopper = StopRequest()
        iterator, interrupted = None, False
        with quiet_writer_threads():  # through _close, which writes what is pending
            try:
                if self.step == 0:
                    self._validate_baseline()
                self.model.train()
                # steps per second count the steps alone, not the baseline validation
                t0 = self._shown = time.perf_counter()
                with stopper:
                    iterator = iter(loader)
                    while self.step < s.max_steps:
                        try:
                            x = next(iterator)
                        except RuntimeError:
                            if stopper.requested:  # a signal took the data workers down
                                interrupted = True
                                break
                            raise
                        x = x.to(s.device, non_blocking=True)
                        stop = self._train_step(x, stopper.requested)
                        at_val = self.step % s.val_every == 0 or self.step == s.max_steps
                        periodic = self.step % s.save_every == 0
                        if at_val or periodic or stop:
                            self._validate_and_save(at_val, periodic,
                                                    stopping=stop and self.step < s.max_steps)
                        if stop:
                            interrupted = True
                            break
                    if interrupted and self.step < s.max_steps:
                        self._save_and_stop(stopper)
            finally:
                del iterator   # its data workers end now
                self._close()
        return self._finish(time.perf_counter() - t0, self.step - start_step)

    def _train_step(self, x: torch.Tensor, stop_requested: bool) -> bool:
        """One optimisation step on batch ``x``, logged; True when any rank asked to stop."""
        try:
            logs, stop = self.trainer.step(x, self.step, stop_requested)
        except TrainingError as err:  # (every rank: the finite check is shared)
            raise on_every_rank(TrainingError(_divergence_message(err, self.last_saved))) from None
        self.step += 1
        logs["step"] = self.step
        self.history.append(logs)
        self._log(logs)
        return stop

    def _log(self, logs: Dict[str, float]) -> None:
        """Rank 0: TensorBoard every ``log_every`` steps, and the progress bar."""
        step = self.step
        if self.writer is not None and step % self.settings.log_every == 0:
            self._write_scalars(logs, step)
        if self.bar is not None:
            self.bar.update(1)
            # every 10 steps, or every 2 s when steps are slow (a full-size v3 on CPU)
            if (step % 10 == 0 or step == self.settings.max_steps
                    or time.perf_counter() - self._shown > 2):
                self.bar.set_postfix({short: f"{logs[k]:.3g}" for k, short in PROGRESS_KEYS.items()
                                      if k in logs}, refresh=False)
                self._shown = time.perf_counter()

    def _write_scalars(self, values: Dict[str, float], step: int) -> None:
        for k, v in values.items():
            if k != "step":
                self.writer.add_scalar(k, v, step)

    def _validate_and_save(self, at_val: bool, periodic: bool, stopping: bool = False) -> None:
        """Validate (at ``at_val``) and save this step (``stopping``: the save of a stop
        before ``max_steps``).

        Every rank must call this: :meth:`save` gathers, and rank 0's write failure is
        broadcast, so that every rank raises the same :class:`TrainingError`. After a
        validation every rank takes rank 0's buffers.
        """
        failed: Optional[OSError] = None
        try:
            improved = self.validate(self.step) if at_val else False
        except OSError as err:  # its audio; the ranks still gather in save()
            failed, improved = err, False
        try:
            self.save(self.step, periodic, improved, write=failed is None)
        except OSError as err:
            failed = err
        self._stop_if_rank_0_failed(failed, stopping)
        if at_val:
            # Rank 0's buffers (latent statistics, BatchNorm running stats, which
            # each rank updates from its own batches) everywhere: every rank
            # then holds the model that was saved.
            self.ctx.broadcast_tensors(self.buffers)

    def _validate_baseline(self) -> None:
        """Validate the model training starts from (Lightning's sanity check), step 0.

        Every rank must call this: rank 0's write failure (its audio) is broadcast, and
        every rank then takes rank 0's buffers.
        """
        failed: Optional[OSError] = None
        try:
            self.validate(0, baseline=True)
        except OSError as err:
            failed = err
        self._stop_if_rank_0_failed(failed)
        self.ctx.broadcast_tensors(self.buffers)

    def _stop_if_rank_0_failed(self, failed: Optional[OSError], stopping: bool = False) -> None:
        """Every rank: raise rank 0's write failure ``failed`` (None on the other ranks, and
        where it wrote) as the same :class:`TrainingError`; ``stopping``: it failed the
        save of a stop, which the message says. Rank 0 alone writes: the other ranks learn
        of its failure here, and stop with it, instead of waiting for it at the next
        collective."""
        message = None
        if failed is not None:
            message = _write_failure_message(failed, self.last_saved)
            if stopping:
                message = f"interrupted at step {self.step} and could not save it: {message}"
        message = self.ctx.broadcast(message)
        if message is not None:
            raise on_every_rank(TrainingError(message)) from failed

    def _save_and_stop(self, stopper: StopRequest) -> NoReturn:
        """Every rank, when a signal stopped training before ``max_steps``: save this step
        (unless it is saved already) and raise :class:`TrainingInterrupted`; where rank 0
        could not write it, every rank raises its :class:`TrainingError` instead, naming
        the checkpoint kept (the loop's own write failures say the same)."""
        if self.last_saved is None or self.last_saved[1] != self.step:
            failed: Optional[OSError] = None
            try:
                self.save(self.step, False, False)
            except OSError as err:
                failed = err
            self._stop_if_rank_0_failed(failed, stopping=True)
        raise on_every_rank(TrainingInterrupted(
            f"interrupted at step {self.step}: saved {self.ckpt_dir / 'last.ckpt'}; run the same "
            "command again to resume", self.ckpt_dir / "last.ckpt", stopper.signal))

    def save(self, step: int, periodic: bool, improved: bool, write: bool = True) -> None:
        """Every rank: gather the RNG states; rank 0 writes the checkpoints (unless
        ``write`` is False: validation already failed to write)."""
        s, ckpt_dir = self.settings, self.ckpt_dir
        rngs = self.ctx.gather(capture_rng())  # every rank's RNG, for an exact resume
        if not write:
            return
        if not self.ctx.is_main:
            # Every rank records the save: an interrupted rank that thought nothing was
            # saved would gather again, alone, after rank 0 had left.
            self.last_saved = (ckpt_dir / "last.ckpt", step)
            return
        payload = {
            "state_dict": self.model.state_dict(),
            "global_step": step,
            "epoch": self.sampler.epoch_of(step),
            **self.trainer.state_dict(),
            "callbacks": {"BetaWarmupCallback": {"training_steps": step}},
            "rng_states": rngs,
            "loader": {"batches_consumed": step, "batch": s.batch,
                       "world_size": self.ctx.world_size, "seed": s.seed,
                       "batches_per_epoch": self.sampler.batches_per_epoch,
                       "n_signal": s.n_signal},
            "best_validation": self.result.best_validation,
        }
        # best.ckpt first: a failure between the two writes then leaves a last.ckpt that
        # records an older best, never one whose best.ckpt was not written.
        if improved:
            save_checkpoint(ckpt_dir / "best.ckpt", payload)
            copy_checkpoint(ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt")
        else:
            save_checkpoint(ckpt_dir / "last.ckpt", payload)
        if periodic:
            copy_checkpoint(ckpt_dir / "last.ckpt", ckpt_dir / f"epoch_{step}.ckpt")
        self.last_saved = (ckpt_dir / "last.ckpt", step)

    def validate(self, step: int, baseline: bool = False) -> bool:
        """Rank 0: validation, latent statistics, audio; True when the distance improved
        (never for the ``baseline`` validation of the untrained model)."""
        if not self.ctx.is_main or len(self.valid_loader.dataset) == 0:
            return False
        model, result = self.model, self.result
        distance, z, audio = self.trainer.validate(self.valid_loader, self.settings.seed,
                                                   self.settings.audio_examples)
        record = {"step": step, "validation": distance}
        if z is not None and len(z):
            mean, pca, fidelity = latent_statistics(z)
            model.latent_mean.copy_(mean)
            model.latent_pca.copy_(pca)
            model.fidelity.copy_(fidelity)
            record.update(fidelity_dimensions(model.fidelity))
        result.validations.append(record)
        self._write_scalars(record, step)
        if audio is not None:
            _write_audio(self.settings.run_dir / "version_0" / "audio" / f"step_{step}.wav", audio,
                         int(model.sr))
            self.writer.add_audio("audio_val", audio.mean(0).clamp(-1, 1), step,
                                  sample_rate=int(model.sr))
        self.writer.flush()
        if baseline:
            return False
        improved = result.best_validation is None or distance < result.best_validation
        if improved:
            result.best_validation = distance
        return improved

    def _close(self) -> None:
        """Let go of the DDP wrappers, the progress bar and the TensorBoard writer."""
        self.trainer.drop_ddp_wrappers()
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def _finish(self, elapsed: float, steps_done: int) -> TrainResult:
        """The result of the steps done, the model left in eval mode."""
        result = self.result
        result.global_step = self.step
        result.epoch = self.sampler.epoch_of(self.step)
        result.history = list(self.history)
        result.steps_done = steps_done
        result.steps_per_second = steps_done / elapsed if elapsed > 0 and steps_done else 0.0
        self.model.eval()
        return result


def _kept(last_saved: Optional[Tuple[Path, int]], what: str = "last good checkpoint") -> str:
    """What a failed training leaves to resume from."""
    if last_saved is None:
        return "no checkpoint was written yet"
    return f"the {what} is {last_saved[0]} (step {last_saved[1]})"


def _divergence_message(err: TrainingError, last_saved: Optional[Tuple[Path, int]]) -> str:
    again = "re-run to resume from it" if last_saved else "re-run to start over"
    return (f"training diverged: {err}.\n{_kept(last_saved)}; {again} (another --seed "
            "changes the data order), or check the dataset for clipped or corrupt audio")


def _write_failure_message(err: OSError, last_saved: Optional[Tuple[Path, int]]) -> str:
    """A checkpoint or validation file could not be written (a full disk, a folder made
    read-only): what failed, and what the user can resume from."""
    keep = _kept(last_saved, "last checkpoint") + (", intact" if last_saved else "")
    again = "to resume" if last_saved else "(it starts over)"
    return (f"cannot write {describe_os_error(err)}\n{keep}; fix that, then run the "
            f"same command again {again}")


def _write_audio(path: Path, audio: torch.Tensor, sr: int) -> None:
    """``(channels, time)`` float audio to a WAV file, atomically."""
    import io

    import soundfile as sf
    # encoded in memory (seconds of audio): libsndfile reports a full disk as "System
    # error.", Python's own write names the error and the file
    wav = io.BytesIO()
    sf.write(wav, audio.clamp(-1, 1).t().numpy(), sr, format="WAV", subtype="FLOAT")
    replace_atomically(path, lambda f: f.write(wav.getvalue()))
