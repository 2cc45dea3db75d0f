"""Train a RAVE-family model on a preprocessed dataset, on one process or many.

The schedule is RAVE's:

* **phase 1** (steps ``0 .. phase_1_duration - 1``): the autoencoder learns to
  reconstruct. Loss = multiband + fullband spectral distance + beta * KL (beta from
  :class:`~rave_core.training.schedule.BetaWarmup`). Adam(1e-3, betas (.5, .9)), its
  learning rate decayed linearly to a tenth over phase 1.
* **phase 2** (from ``phase_1_duration``): the encoder is frozen (``set_warmed_up``) and
  the decoder is trained adversarially: hinge (or the config's) GAN loss plus feature
  matching against the discriminator, which is updated by its own Adam(1e-4) on every
  ``update_discriminator_every``-th step instead of the generator.

A run lives in ``<out_path>/<name>/``: ``config.gin`` (the operative config) and
``version_0/`` (TensorBoard events, ``checkpoints/{last,best,epoch_<step>}.ckpt``,
``audio/step_<n>.wav`` reconstructions). Re-running the same name resumes it exactly.

Multi-process: run under ``torchrun`` (``python -m rave_core.train``); each process
trains on its shard of every epoch, gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel` (NCCL on GPUs, gloo on CPU) and only
rank 0 validates, logs and writes files.
"""
from __future__ import annotations

import contextlib

import collections
import difflib
import inspect
import random
import re
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..config import ConfigError, parse_config, read_text_file
from ..data import AudioDataset, DataError, load_metadata
from ..models.encoders import VariationalEncoder
from ..os_errors import describe_os_error
from ..run import RunError, extract_state_dict, find_config
from ..text import printable
from .analysis import cropped_length, fidelity_dimensions, latent_statistics, receptive_field
from .checkpoint import (capture_rng, copy_checkpoint, load_checkpoint, replace_atomically,
                         restore_rng, save_checkpoint, write_text_atomically)
from .distributed import DistContext
from .errors import TrainingArgumentError, TrainingError, TrainingInterrupted
from .run_lock import RunLock
from .sampler import ResumableSampler
from .schedule import BetaWarmup
from .step import RAVETrainer

__all__ = ["TrainingError", "TrainingArgumentError", "TrainingInterrupted", "TrainResult",
           "RAVETrainer", "train"]

CHECKPOINT_DIR = Path("version_0") / "checkpoints"
PROGRESS_KEYS = {"fullband_spectral_distance": "fb", "multiband_spectral_distance": "mb",
                 "regularization": "reg", "loss_dis": "dis", "adversarial": "adv"}


@dataclass
class TrainResult:
    """What :func:`train` did.

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


# ============================================================================ config
def _macros(text: str) -> List[str]:
    defined = re.findall(r"^\s*([A-Za-z_]\w*)\s*=", text, flags=re.MULTILINE)
    used = re.findall(r"%([A-Za-z_]\w*)", text)
    return sorted(set(defined) | set(used))


def _selectors() -> List[str]:
    return sorted(sel for sel, _ in gin.config._REGISTRY.items())


def check_overrides(config_text: str, overrides: Sequence[str]) -> None:
    """Refuse overrides that would silently do nothing or fail deep inside gin.

    ``NAME = value`` must name a macro of the config (gin would accept a typo as a new,
    unused macro); ``[scope/]module.Class.param = value`` must name a configurable and
    one of its parameters. Errors name the nearest valid keys.
    """
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form 'KEY=VALUE' "
                              "(e.g. --override 'CAPACITY=32')")
        key = override.split("=", 1)[0].strip()
        if "." not in key:
            macros = _macros(config_text)
            if key not in macros:
                close = difflib.get_close_matches(key, macros, n=3, cutoff=0.5)
                hint = f"nearest: {', '.join(close)}" if close else f"macros: {', '.join(macros)}"
                raise ConfigError(f"override {key!r}: the config has no macro {key}; {hint}")
            continue
        selector, param = key.split("/")[-1].rsplit(".", 1)
        matches = gin.config._REGISTRY.matching_selectors(selector)
        if not matches:
            close = difflib.get_close_matches(selector, _selectors(), n=3, cutoff=0.5)
            hint = f"; nearest: {', '.join(close)}" if close else ""
            raise ConfigError(f"override {key!r}: no configurable {selector!r}{hint}")
        if len(matches) > 1:
            continue  # ambiguous: gin itself says so
        target = gin.config._REGISTRY.get_match(matches[0]).wrapped
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        params = [p.name for p in signature.parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()) or param in params:
            continue
        close = difflib.get_close_matches(param, params, n=3, cutoff=0.5)
        hint = f"nearest: {', '.join(close)}" if close else f"parameters: {', '.join(params)}"
        raise ConfigError(f"override {key!r}: {matches[0]} has no parameter {param!r}; {hint}")


def _build(configs: Sequence[str], overrides: Sequence[str], text: Optional[str],
           channels: int, seed: int):
    """Parse the config, build the model with its discriminator, and the beta schedule.

    Returns ``(model, beta, operative config text)``.
    """
    from ..models.rave import RAVE
    full = parse_config(configs, (), text)
    check_overrides(full, overrides)
    # The dataset decides the channel count, as in acids-rave's `rave train`.
    parse_config(configs, [*overrides, f"rave.model.RAVE.n_channels = {channels}"], text)
    torch.manual_seed(seed)  # the initial weights depend on the seed only
    try:
        model = RAVE(build_discriminator=True)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config does not build a RAVE model: {err}") from None
    beta = BetaWarmup()
    # Calling the training-time callables once records their bindings (e.g. the
    # feature-matching norm) in the operative config, so config.gin is complete.
    probe = torch.ones(1, 1, 4)
    if model.gan_loss is not None:
        model.gan_loss(probe, probe)
    if model.feature_matching_fun is not None:
        model.feature_matching_fun(probe, probe)
    return model, beta, gin.operative_config_str()


def _first_difference(a: str, b: str) -> str:
    for la, lb in zip(a.splitlines(), b.splitlines()):
        if la != lb:
            return f"{la.strip()!r} vs {lb.strip()!r}"
    return "different length"


# ============================================================================ the loop
class _StopRequest:
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

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingArgumentError("--device cuda: CUDA is not available on this machine; "
                                        "use --device cpu (or auto)")
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise TrainingArgumentError(f"--device {device!r}: use auto, cpu or cuda")


def _check_arguments(name: str, max_steps: int, batch: int, n_signal: int, val_every: int,
                     save_every: int, workers: int) -> None:
    if not name or Path(name).name != name or name in (".", ".."):
        raise TrainingArgumentError(f"--name {name!r}: give a plain run name (no '/'), e.g. "
                                    "--name my_run")
    for flag, value, low in (("--max_steps", max_steps, 1), ("--batch", batch, 1),
                             ("--n_signal", n_signal, 1), ("--val_every", val_every, 1),
                             ("--save_every", save_every, 1), ("--workers", workers, 0)):
        if int(value) < low:
            raise TrainingArgumentError(f"{flag} must be >= {low}, got {value}")


#: what to do when a checkpoint's weights do not fit the model built for it
_FIT_HINT = ("resume with the config the run was trained with (leave out --config, and any "
             "--override of the model's sizes)")


def _load_model_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    # A checkpoint without discriminator (e.g. from an export-only model) can still
    # seed training: the discriminator starts fresh.
    blocking = [k for k in missing if not k.startswith("discriminator.")]
    if blocking or unexpected:
        key = (blocking or unexpected)[0]
        why = "is missing" if blocking else "is not in the model"
        raise TrainingArgumentError(f"{path} does not fit the config: key {key!r} {why}; {_FIT_HINT}")
    for k, v in state_dict.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            note = _channels_note(path, int(getattr(model, "n_channels", 0) or 0))
            raise TrainingArgumentError(f"{path} does not fit the config: {k!r} has shape "
                                        f"{tuple(v.shape)} in the checkpoint but "
                                        f"{tuple(expected[k].shape)} in the model"
                                        + (note or f"; {_FIT_HINT}"))
    if missing:
        warnings.warn(f"{path} has no discriminator weights: the discriminator starts from scratch")
    # `warmed_up` / `enabled` are replaced (not written in place) by set_warmed_up: copy
    # through load_state_dict, which handles both.
    model.load_state_dict(state_dict, strict=False)


def train(configs: Sequence[str], db_path, name: str, out_path="runs", max_steps: int = 6_000_000,
          batch: int = 8, n_signal: int = 131072, val_every: int = 10_000,
          save_every: int = 500_000, device: str = "auto", workers: int = 8,
          ckpt=None, overrides: Sequence[str] = (), seed: int = 0, progress: bool = True, *,
          valid_fraction: float = 0.02, log_every: int = 50, audio_examples: int = 4,
          keep_history: int = 10_000) -> TrainResult:
    """Train (or resume) the run ``<out_path>/<name>`` until ``max_steps`` steps.

    Args:
        configs: config names or gin files, composed in order (``rave-core configs``).
            May be empty when resuming: the run's ``config.gin`` is used.
        db_path: a dataset folder written by :func:`rave_core.data.preprocess`.
        name: run name (a folder under ``out_path``). An existing run of that name with a
            ``last.ckpt`` is resumed exactly (same step, optimisers, RNG, data order).
        max_steps: total training steps (a resumed run continues up to it).
        batch: windows per step (per process under torchrun).
        n_signal: samples per window.
        val_every: validate, update latent statistics and save ``last.ckpt`` (and
            ``best.ckpt`` when the validation distance improves) every that many steps,
            and at the end.
        save_every: also keep ``epoch_<step>.ckpt`` every that many steps.
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
        workers: data-loading processes.
        ckpt: resume from this checkpoint instead (with its run's config unless
            ``configs`` are given).
        overrides: gin bindings ``'KEY=VALUE'`` applied after the configs.
        seed: seeds weights, data order and noise.
        progress: show a progress bar (rank 0).
        valid_fraction: share of the windows held out for validation.
        log_every: TensorBoard scalars every that many steps.
        audio_examples: reconstructions written at each validation.
        keep_history: steps of logged values kept in the result.

    Raises:
        ConfigError: unknown config or override. DataError: missing or too short dataset.
        TrainingArgumentError: unusable argument, or a checkpoint that does not fit the
        config. TrainingError: diverged (non-finite loss; the last good checkpoint is kept).
        TrainingInterrupted: Ctrl-C / SIGTERM (``last.ckpt`` saved first).
    """
    _check_arguments(name, max_steps, batch, n_signal, val_every, save_every, workers)
    dev = _resolve_device(device)
    with _denormals_flushed():
        return _train_on_device(configs, db_path, name, out_path, max_steps, batch, n_signal, val_every,
                      save_every, dev, workers, ckpt, overrides, seed, progress,
                      valid_fraction=valid_fraction, log_every=log_every,
                      audio_examples=audio_examples, keep_history=keep_history)


@contextlib.contextmanager
def _denormals_flushed():
    """Decaying activations and gradients reach denormal floats, many times slower on CPU;
    flush them to zero while training (nothing audible), then restore the default."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _train_on_device(configs, db_path, name, out_path, max_steps, batch, n_signal, val_every,
                     save_every, dev, workers, ckpt, overrides, seed, progress, *,
                     valid_fraction, log_every, audio_examples, keep_history) -> TrainResult:
    ctx = DistContext.from_environment(dev.type == "cuda")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed window shapes: let cuDNN pick kernels
        if ctx.enabled:
            dev = torch.device("cuda", ctx.local_rank)
    try:
        with RunLock(Path(out_path) / name) as lock:
            return _train(ctx, lock, configs, Path(db_path), name, Path(out_path), int(max_steps),
                          int(batch), int(n_signal), int(val_every), int(save_every), dev,
                          int(workers), ckpt, list(overrides), int(seed), progress,
                          valid_fraction, log_every, audio_examples, keep_history)
    finally:
        ctx.close()


def _train(ctx: DistContext, lock: RunLock, configs, db_path: Path, name: str, out_path: Path,
           max_steps: int, batch: int, n_signal: int, val_every: int, save_every: int,
           device: torch.device, workers: int, ckpt, overrides: List[str], seed: int,
           progress: bool, valid_fraction: float, log_every: int, audio_examples: int,
           keep_history: int) -> TrainResult:
    meta = load_metadata(db_path)
    channels = int(meta["channels"])
    run_dir = out_path / name
    ckpt_dir = run_dir / CHECKPOINT_DIR
    seen = _file_stamp(ckpt_dir / "last.ckpt")
    by_name = ckpt is None and seen is not None
    resume_path = Path(ckpt) if ckpt is not None else (ckpt_dir / "last.ckpt" if by_name else None)
    if resume_path is not None and not resume_path.is_file():
        raise TrainingArgumentError(f"--ckpt {resume_path}: no such checkpoint file")

    # ---- config and model
    stored = read_text_file(run_dir / "config.gin") if (run_dir / "config.gin").exists() else None
    text = None
    if not configs:
        if resume_path is None:
            raise TrainingArgumentError("no --config given: choose one or more of "
                                        "`rave-core configs` (e.g. --config v2_small)")
        try:
            text = read_text_file(find_config(resume_path))
        except RunError as err:
            raise TrainingError(str(err)) from None
    if text is not None:
        _check_channels(text, channels, db_path, resume_path)
    model, beta, operative = _build(configs, overrides, text, channels, seed)
    _check_signal_multiple(model, n_signal)
    if by_name and configs and stored is not None and operative != stored:
        raise TrainingArgumentError(
            f"run {run_dir} exists and was trained with another config "
            f"({_first_difference(stored, operative)}); leave out --config"
            f"{' and --override' if overrides else ''} to resume it, or choose a new --name")
    if by_name and not configs and overrides and stored is not None and operative != stored:
        warnings.warn(f"resuming {run_dir} with {' '.join('--override ' + o for o in overrides)}: "
                      f"its config.gin is updated ({_first_difference(stored, operative)})")
    if int(model.sr) != int(meta["sr"]):
        raise DataError(f"dataset {db_path} is at {meta['sr']} Hz but the config at {model.sr} Hz; "
                        f"re-run `rave-core preprocess --sampling_rate {model.sr}`, or "
                        f"--override 'SAMPLING_RATE={meta['sr']}'")
    model.to(device)

    # ---- data
    train_set = AudioDataset(db_path, n_signal, "train", valid_fraction)
    valid_set = AudioDataset(db_path, n_signal, "valid", valid_fraction)
    if len(valid_set) == 0 and ctx.is_main:
        _warn_no_validation(db_path, len(train_set), n_signal, valid_fraction,
                            isinstance(model.encoder, VariationalEncoder))

    # ---- optimisation state
    trainer = RAVETrainer(model, beta, device, ctx)
    start_step, best, rng_state = 0, None, None
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        if "state_dict" in state:
            weights = state["state_dict"]
        else:  # a plain state dict (torch.save(model.state_dict(), ...)): weights only
            try:
                weights, _ = extract_state_dict(state)
            except RunError as err:
                raise TrainingArgumentError(f"--ckpt {resume_path}: {err}") from None
            state = {}
        if not isinstance(weights, dict):
            raise TrainingArgumentError(f"--ckpt {resume_path}: its 'state_dict' is not a dict "
                                        "of tensors; give a checkpoint written by training")
        _load_model_weights(model, weights, resume_path)
        start_step = int(state.get("global_step", 0) or 0)
        best = state.get("best_validation")
        if not state:
            warnings.warn(f"{resume_path} holds weights only (a plain state dict): training "
                          "starts from them at step 0, with fresh optimisers")
        elif not trainer.load_state_dict(state):
            warnings.warn(f"{resume_path}: no usable optimiser state; optimisers start afresh")
        rngs = state.get("rng_states") or []
        if len(rngs) == ctx.world_size:
            rng_state = rngs[ctx.rank]
        elif rngs:
            warnings.warn(f"{resume_path} was saved by {len(rngs)} processes, this run has "
                          f"{ctx.world_size}: noise and data order will differ from an "
                          "uninterrupted run")
        loader_state = state.get("loader") or {}
        if loader_state and (loader_state.get("batch"), loader_state.get("seed")) != (batch, seed):
            warnings.warn(f"{resume_path} was trained with batch {loader_state.get('batch')} and seed "
                          f"{loader_state.get('seed')}: the data order changes")
        trained_signal = loader_state.get("n_signal")
        if trained_signal is not None and int(trained_signal) != n_signal:
            warnings.warn(f"{resume_path} was trained on windows of {trained_signal} samples, "
                          f"this run uses --n_signal {n_signal}: validation windows change too, "
                          "so distances before and after this step are not comparable (best.ckpt "
                          "is replaced only by a distance lower than the one carried over)")
    if start_step >= max_steps and ctx.is_main:
        warnings.warn(f"{resume_path} is at step {start_step}, --max_steps is {max_steps}: "
                      "nothing to train; raise --max_steps to go on")
    if rng_state is not None:
        restore_rng(rng_state)
    else:
        # Per-rank noise (reparametrisation, filtered noise); weights were seeded alike.
        torch.manual_seed(seed + ctx.rank)
        np.random.seed(seed + ctx.rank)
        random.seed(seed + ctx.rank)

    # ---- receptive field (RAVE measures it before training; valid_signal_crop uses it)
    if not int(model.receptive_field.sum()):
        left, right = receptive_field(model)
        model.receptive_field.copy_(torch.tensor([left, right], device=model.receptive_field.device))
    _check_signal_length(model, n_signal)

    sampler = ResumableSampler(train_set, batch, ctx.world_size, ctx.rank, seed, start_step)
    loader = DataLoader(train_set, batch_size=batch, sampler=sampler, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed))
    valid_loader = DataLoader(valid_set, batch_size=batch, shuffle=False, num_workers=0)

    # ---- run directory (rank 0 only)
    writer = None
    refused: Optional[TrainingArgumentError] = None
    if ctx.is_main:
        try:
            lock.acquire()
            if _file_stamp(ckpt_dir / "last.ckpt") != seen:
                # another training of this run saved while this one was starting
                raise TrainingArgumentError(
                    f"run {run_dir} changed while this training was starting (another "
                    "training of it saved a checkpoint): run the command again to resume from it")
        except TrainingArgumentError as err:
            refused = err
    # The other ranks stop with rank 0's refusal, instead of waiting for it at a collective.
    said = ctx.broadcast(None if refused is None else str(refused))
    if said is not None:
        raise refused or TrainingArgumentError(said)
    if ctx.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if stored != operative:
            write_text_atomically(run_dir / "config.gin", operative)
        writer = _tensorboard_writer(run_dir / "version_0")
        if start_step == 0:
            writer.add_text("config", "```\n" + operative + "\n```")

    result = TrainResult(run_dir=run_dir, global_step=start_step, epoch=sampler.epoch_of(start_step),
                         model=model, best_validation=best, resumed_from=resume_path)
    history: Deque[Dict[str, float]] = collections.deque(maxlen=keep_history)
    step = start_step
    last_saved: Optional[Tuple[Path, int]] = (resume_path, start_step) if resume_path else None

    def save(step: int, periodic: bool, improved: bool, write: bool = True) -> None:
        """Every rank: gather the RNG states; rank 0 writes the checkpoints (unless
        ``write`` is False: validation already failed to write)."""
        nonlocal last_saved
        rngs = ctx.gather(capture_rng())  # every rank's RNG, for an exact resume
        if not write:
            return
        if not ctx.is_main:
            # Every rank records the save: an interrupted rank that thought nothing was
            # saved would gather again, alone, after rank 0 had left.
            last_saved = (ckpt_dir / "last.ckpt", step)
            return
        payload = {
            "state_dict": model.state_dict(),
            "global_step": step,
            "epoch": sampler.epoch_of(step),
            **trainer.state_dict(),
            "callbacks": {"BetaWarmupCallback": {"training_steps": step}},
            "rng_states": rngs,
            "loader": {"batches_consumed": step, "batch": batch, "world_size": ctx.world_size,
                       "seed": seed, "batches_per_epoch": sampler.batches_per_epoch,
                       "n_signal": n_signal},
            "best_validation": result.best_validation,
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
        last_saved = (ckpt_dir / "last.ckpt", step)

    def validate(step: int, baseline: bool = False) -> bool:
        """Rank 0: validation, latent statistics, audio; True when the distance improved
        (never for the ``baseline`` validation of the untrained model)."""
        if not ctx.is_main or len(valid_set) == 0:
            return False
        distance, z, audio = trainer.validate(valid_loader, seed, audio_examples)
        record = {"step": step, "validation": distance}
        if z is not None and len(z):
            mean, pca, fidelity = latent_statistics(z)
            model.latent_mean.copy_(mean)
            model.latent_pca.copy_(pca)
            model.fidelity.copy_(fidelity)
            record.update(fidelity_dimensions(model.fidelity))
        result.validations.append(record)
        for k, v in record.items():
            if k != "step":
                writer.add_scalar(k, v, step)
        if audio is not None:
            _write_audio(run_dir / "version_0" / "audio" / f"step_{step}.wav", audio, int(model.sr))
            writer.add_audio("audio_val", audio.mean(0).clamp(-1, 1), step, sample_rate=int(model.sr))
        writer.flush()
        if baseline:
            return False
        improved = result.best_validation is None or distance < result.best_validation
        if improved:
            result.best_validation = distance
        return improved

    bar = None
    if ctx.is_main and progress:
        from tqdm import tqdm
        bar = tqdm(total=max_steps, initial=start_step, unit="step", desc=name, dynamic_ncols=True)
    persistent = model.state_dict(keep_vars=True)
    buffers = [b for name, b in model.named_buffers() if name in persistent]
    if start_step == 0:
        validate(0, baseline=True)  # where training starts from (Lightning's sanity check)
        ctx.broadcast_tensors(buffers)
    model.train()
    t0, steps_done = time.perf_counter(), 0
    shown = t0   # when the progress bar's losses were last updated
    stopper = _StopRequest()
    iterator, interrupted = None, False
    try:
        with stopper:
            iterator = iter(loader)
            while step < max_steps:
                try:
                    x = next(iterator)
                except RuntimeError:
                    if stopper.requested:  # a signal took the data workers down
                        interrupted = True
                        break
                    raise
                x = x.to(device, non_blocking=True)
                try:
                    logs, stop = trainer.step(x, step, stopper.requested)
                except TrainingError as err:
                    raise TrainingError(_divergence_message(err, last_saved)) from None
                step += 1
                steps_done += 1
                logs["step"] = step
                history.append(logs)
                if writer is not None and step % log_every == 0:
                    for k, v in logs.items():
                        if k != "step":
                            writer.add_scalar(k, v, step)
                if bar is not None:
                    bar.update(1)
                    # every 10 steps, or every 2 s when steps are slow (a full-size v3 on CPU)
                    if step % 10 == 0 or step == max_steps or time.perf_counter() - shown > 2:
                        bar.set_postfix({short: f"{logs[k]:.3g}" for k, short in PROGRESS_KEYS.items()
                                         if k in logs}, refresh=False)
                        shown = time.perf_counter()
                at_val = step % val_every == 0 or step == max_steps
                periodic = step % save_every == 0
                if at_val or periodic or stop:
                    failed: Optional[OSError] = None
                    try:
                        improved = validate(step) if at_val else False
                    except OSError as err:  # its audio; the ranks still gather in save()
                        failed, improved = err, False
                    try:
                        save(step, periodic, improved, write=failed is None)
                    except OSError as err:
                        failed = err
                    # Rank 0 alone writes: the other ranks learn of its failure here, and
                    # stop with it, instead of waiting for it at the next collective.
                    message = ctx.broadcast(
                        None if failed is None else _write_failure_message(failed, last_saved))
                    if message is not None:
                        raise TrainingError(message) from failed
                    if at_val:
                        # Rank 0's buffers (latent statistics, BatchNorm running stats, which
                        # each rank updates from its own batches) everywhere: every rank
                        # then holds the model that was saved.
                        ctx.broadcast_tensors(buffers)
                if stop:
                    interrupted = True
                    break
            if interrupted and step < max_steps:
                if last_saved is None or last_saved[1] != step:
                    save(step, False, False)
                raise TrainingInterrupted(
                    f"interrupted at step {step}: saved {ckpt_dir / 'last.ckpt'}; run the same "
                    "command again to resume", ckpt_dir / "last.ckpt", stopper.signal)
    finally:
        del iterator
        trainer.drop_ddp_wrappers()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    elapsed = time.perf_counter() - t0
    result.global_step = step
    result.epoch = sampler.epoch_of(step)
    result.history = list(history)
    result.steps_done = steps_done
    result.steps_per_second = steps_done / elapsed if elapsed > 0 and steps_done else 0.0
    model.eval()
    return result


def _kept(last_saved: Optional[Tuple[Path, int]], what: str = "last good checkpoint") -> str:
    """What a failed training leaves to resume from."""
    if last_saved is None:
        return "no checkpoint was written yet"
    return f"the {what} is {last_saved[0]} (step {last_saved[1]})"


def _divergence_message(err: TrainingError, last_saved: Optional[Tuple[Path, int]]) -> str:
    return (f"training diverged: {err}.\n{_kept(last_saved)}; re-run to resume from it "
            "(another --seed changes the data order), or check the dataset for clipped or "
            "corrupt audio")


def _file_stamp(path: Path) -> Optional[Tuple[int, int]]:
    """``(size, mtime_ns)`` of ``path``, None if it is not there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _warn_no_validation(db_path: Path, n_windows: int, n_signal: int,
                        valid_fraction: float, variational: bool) -> None:
    """No window is held out: no validation distance, so no ``best.ckpt``, and the latent
    statistics (which export uses to choose the latent size) are never computed."""
    why = (f"valid_fraction is {valid_fraction}" if valid_fraction <= 0 else
           f"{db_path} holds {n_windows} window{'s' * (n_windows != 1)} of {n_signal} samples, "
           "and one must stay for training")
    fix = ("" if valid_fraction <= 0 else
           "; add audio, or give a shorter --n_signal, so that two windows or more fit")
    latent = (", and never compute the latent statistics, so its exports keep one latent "
              "dimension unless exported with --fidelity 1" if variational else "")
    warnings.warn(f"no validation set ({why}): this run will write no best.ckpt{latent}{fix}")


def _write_failure_message(err: OSError, last_saved: Optional[Tuple[Path, int]]) -> str:
    """A checkpoint or validation file could not be written (a full disk, a folder made
    read-only): what failed, and what the user can resume from."""
    keep = _kept(last_saved, "last checkpoint") + (", intact" if last_saved else "")
    return (f"cannot write {describe_os_error(err)}\n{keep}; fix that, then run the "
            "same command again to resume")


def _check_signal_multiple(model: nn.Module, n_signal: int) -> None:
    """A window is encoded into whole latent frames: ``n_signal`` must be a multiple of the
    model's ratio (PQMF bands times the encoder's strides)."""
    ratio = int(model.ratio)
    if n_signal % ratio:
        lower = n_signal // ratio * ratio
        examples = " or ".join(str(v) for v in (lower, lower + ratio) if v > 0)
        raise TrainingArgumentError(f"--n_signal must be a multiple of {ratio} (the model's "
                                    f"samples per latent frame), got {n_signal}: use e.g. "
                                    f"{examples}")


_CHANNELS_BINDING = re.compile(r"^\s*(?:[\w.]*\.)?RAVE\.n_channels\s*=\s*(\d+)\s*$", re.MULTILINE)


def _check_channels(config_text: str, channels: int, db_path: Path,
                    resume_path: Optional[Path]) -> None:
    """A run trained on N channels resumes on a dataset of N channels only."""
    found = _CHANNELS_BINDING.findall(config_text)
    if not found or int(found[-1]) == channels:
        return
    trained = int(found[-1])
    what = f"the checkpoint {resume_path}" if resume_path else "the run"
    raise TrainingArgumentError(
        f"dataset {db_path} has {channels} channel(s) but {what} was trained on {trained}: "
        f"preprocess the audio with --channels {trained} to resume it, or start a new run "
        "(another --name, with --config)")


def _channels_note(path: Path, channels: int) -> str:
    """`` (the dataset has 2 channels, the checkpoint's run 1)`` when that explains a
    checkpoint that does not fit; else empty."""
    try:
        found = _CHANNELS_BINDING.findall(read_text_file(find_config(Path(path))))
    except (RunError, ConfigError, OSError):
        return ""
    if not found or int(found[-1]) == channels:
        return ""
    return (f" (the dataset has {channels} channel(s), the checkpoint's run {found[-1]}: "
            f"preprocess with --channels {found[-1]} to resume it)")


def _check_signal_length(model: nn.Module, n_signal: int) -> None:
    """The spectral distances need windows longer than half their largest STFT."""
    short = _signal_shortfall(model, n_signal)
    if short is None:
        return
    ratio, shortest = int(model.ratio), n_signal
    while _signal_shortfall(model, shortest) is not None and shortest < 1 << 26:
        shortest += ratio - shortest % ratio   # the next multiple of the ratio
    raise TrainingArgumentError(
        f"--n_signal {n_signal} is too short for this config: {short}; use --n_signal "
        f"{shortest} or more (a multiple of {ratio}), or override rave.core.MultiScaleSTFT.scales")


def _signal_shortfall(model: nn.Module, n_signal: int) -> Optional[str]:
    """Why windows of ``n_signal`` samples are too short for the spectral distances, or
    None."""
    n_band = int(model.pqmf.n_band)
    left, right = (int(v) for v in model.receptive_field) if model.valid_signal_crop else (0, 0)
    frames = cropped_length(n_signal, n_band, n_band * int(model.n_channels), left, right)
    for module, length, label in ((getattr(model, "multiband_audio_distance", None), frames,
                                   "per band"),
                                  (getattr(model, "audio_distance", None), n_signal, "")):
        stft = getattr(module, "multiscale_stft", None)
        scales = getattr(stft, "scales", None)
        if not scales:
            continue
        need = max(scales) // 2 + 1
        if length < need:
            crop = " after the receptive-field crop" if label and (left or right) else ""
            seen = f"{length} samples {label}{crop}" if length > 0 else f"nothing {label}{crop}"
            return f"the spectral distance sees {seen} but its largest STFT ({max(scales)}) needs {need}"
    return None


class _NoTensorBoard:
    """Stands in for TensorBoard's writer where it cannot write: takes every call, writes
    nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _tensorboard_writer(log_dir: Path):
    """TensorBoard's writer for ``log_dir``; where TensorBoard cannot write, a warning and
    a writer that writes nothing. Its file layer takes UTF-8 names only: a run in a folder
    named in Latin-1 failed with UnicodeEncodeError before its first step."""
    try:
        str(log_dir).encode("utf-8")
    except UnicodeEncodeError:
        warnings.warn(f"TensorBoard cannot write in {printable(str(log_dir))}, a name that is "
                      "not UTF-8: this run keeps no TensorBoard logs (its checkpoints and audio "
                      "examples are written as usual); train in a folder with a UTF-8 name to "
                      "have them")
        return _NoTensorBoard()
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(log_dir))


def _write_audio(path: Path, audio: torch.Tensor, sr: int) -> None:
    """``(channels, time)`` float audio to a WAV file, atomically."""
    import io

    import soundfile as sf
    # encoded in memory (seconds of audio): libsndfile reports a full disk as "System
    # error.", Python's own write names the error and the file
    wav = io.BytesIO()
    sf.write(wav, audio.clamp(-1, 1).t().numpy(), sr, format="WAV", subtype="FLOAT")
    replace_atomically(path, lambda f: f.write(wav.getvalue()))

