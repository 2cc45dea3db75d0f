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
``audio/step_<n>.wav`` reconstructions). Re-running the same name resumes it exactly
(:mod:`~rave_core.training.resume`).

Multi-process: run under ``torchrun`` (``python -m rave_core.train``); each process
trains on its shard of every epoch, gradients are averaged by
:class:`~torch.nn.parallel.DistributedDataParallel` (NCCL on GPUs, gloo on CPU) and only
rank 0 validates, logs and writes files.
"""
from __future__ import annotations

import collections
import contextlib
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
from typing import Any, Deque, Dict, List, NoReturn, Optional, Sequence, Tuple

import gin
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..config import ConfigError, parse_config, read_text_file
from ..data import AudioDataset, DataError, load_metadata
from ..models.encoders import VariationalEncoder
from ..os_errors import describe_os_error
from ..run import RunError, find_config
from ..text import printable
from .analysis import cropped_length, fidelity_dimensions, latent_statistics, receptive_field
from .checkpoint import (capture_rng, copy_checkpoint, replace_atomically, restore_rng,
                         save_checkpoint, write_text_atomically)
from .distributed import DistContext
from .errors import TrainingArgumentError, TrainingError, TrainingInterrupted
from .resume import ResumeSource, ResumeState, check_channels, read_resume_checkpoint
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


# ============================================================================ train()
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


@dataclass(frozen=True)
class _RunSettings:
    """:func:`train`'s arguments as one training process uses them: checked, converted,
    and ``device`` this process's own (``cuda:<local rank>`` under torchrun)."""

    configs: Sequence[str]
    db_path: Path
    name: str
    out_path: Path
    max_steps: int
    batch: int
    n_signal: int
    val_every: int
    save_every: int
    device: torch.device
    workers: int
    ckpt: Any
    overrides: List[str]
    seed: int
    progress: bool
    valid_fraction: float
    log_every: int
    audio_examples: int
    keep_history: int

    @property
    def run_dir(self) -> Path:
        return self.out_path / self.name

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR


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
            run = _RunSettings(
                configs=configs, db_path=Path(db_path), name=name, out_path=Path(out_path),
                max_steps=int(max_steps), batch=int(batch), n_signal=int(n_signal),
                val_every=int(val_every), save_every=int(save_every), device=dev,
                workers=int(workers), ckpt=ckpt, overrides=list(overrides), seed=int(seed),
                progress=progress, valid_fraction=valid_fraction, log_every=log_every,
                audio_examples=audio_examples, keep_history=keep_history)
            return _train(ctx, lock, run)
    finally:
        ctx.close()


# ============================================================================ _train's steps
def _train(ctx: DistContext, lock: RunLock, run: _RunSettings) -> TrainResult:
    """One training process, from its arguments to its result; every rank runs all of it.

    Whatever can refuse the training (config, dataset, checkpoint) is checked before
    rank 0 claims the run's folder, so a refused training leaves no folder behind. The
    order of RNG use is part of an exact resume: the weights are seeded alike on every
    rank as they are built, then each process's RNGs are restored (or seeded by rank)
    before the receptive field is measured and the data loaders are made.
    """
    meta = load_metadata(run.db_path)
    source = ResumeSource.find(run.ckpt, run.ckpt_dir / "last.ckpt")

    # ---- config and model
    built = _build_run_model(run, meta, source)
    model = built.model

    # ---- data
    train_set, valid_set = _datasets(run, model, ctx)

    # ---- optimisation state
    trainer = RAVETrainer(model, built.beta, run.device, ctx)
    resumed = ResumeState()  # a new run's
    if source.path is not None:
        resumed = read_resume_checkpoint(source.path, model, trainer, ctx, batch=run.batch,
                                         seed=run.seed, n_signal=run.n_signal)
    if resumed.start_step >= run.max_steps and ctx.is_main:
        warnings.warn(f"{source.path} is at step {resumed.start_step}, --max_steps is "
                      f"{run.max_steps}: nothing to train; raise --max_steps to go on")
    _seed_this_process(resumed.rng_state, run.seed, ctx)

    # ---- receptive field (RAVE measures it before training; valid_signal_crop uses it)
    _measure_receptive_field(model)
    _check_signal_length(model, run.n_signal)

    # ---- data loaders
    sampler, loader, valid_loader = _data_loaders(run, train_set, valid_set, ctx,
                                                  resumed.start_step)

    # ---- run directory (written by rank 0 only)
    writer = _claim_run_dir(ctx, lock, run, built, source, resumed.start_step)

    loop = _TrainingLoop(ctx, run, model, trainer, sampler, valid_loader, writer, resumed,
                         source.path)
    return loop.run(loader)


@dataclass
class _RunModel:
    """The model a training trains, with its beta schedule and its config."""

    model: nn.Module
    beta: BetaWarmup
    operative: str          # the operative config: what config.gin holds once training starts
    stored: Optional[str]   # the run's config.gin as this training found it (None: none yet)


def _build_run_model(run: _RunSettings, meta: Dict[str, Any], source: ResumeSource) -> _RunModel:
    """Build the model from the configs and overrides (or, with no config given, from the
    config of the run resumed), check it against the run and the dataset, and move it to
    this process's device.

    Seeds torch's RNG with ``run.seed``: every rank builds the same initial weights. Writes
    nothing. Raises ConfigError, DataError, TrainingArgumentError or TrainingError.
    """
    channels = int(meta["channels"])
    config_gin = run.run_dir / "config.gin"
    stored = read_text_file(config_gin) if config_gin.exists() else None
    text = _resumed_config_text(run.configs, source.path)
    if text is not None:
        check_channels(text, channels, run.db_path, source.path)
    model, beta, operative = _build(run.configs, run.overrides, text, channels, run.seed)
    _check_signal_multiple(model, run.n_signal)
    _check_config_change(run, source, stored, operative)
    if int(model.sr) != int(meta["sr"]):
        raise DataError(f"dataset {run.db_path} is at {meta['sr']} Hz but the config at "
                        f"{model.sr} Hz; re-run `rave-core preprocess --sampling_rate {model.sr}`, "
                        f"or --override 'SAMPLING_RATE={meta['sr']}'")
    model.to(run.device)
    return _RunModel(model, beta, operative, stored)


def _resumed_config_text(configs: Sequence[str], resume_path: Optional[Path]) -> Optional[str]:
    """The config to build from when no ``--config`` is given: the one the checkpoint's
    run was trained with. None when configs are given."""
    if configs:
        return None
    if resume_path is None:
        raise TrainingArgumentError("no --config given: choose one or more of "
                                    "`rave-core configs` (e.g. --config v2_small)")
    try:
        return read_text_file(find_config(resume_path))
    except RunError as err:
        raise TrainingError(str(err)) from None


def _check_config_change(run: _RunSettings, source: ResumeSource, stored: Optional[str],
                         operative: str) -> None:
    """A run resumed by its name keeps its config: another ``--config`` is refused; an
    ``--override`` alone is taken, with a warning that config.gin is updated."""
    if not (source.by_name and stored is not None and operative != stored):
        return
    if run.configs:
        raise TrainingArgumentError(
            f"run {run.run_dir} exists and was trained with another config "
            f"({_first_difference(stored, operative)}); leave out --config"
            f"{' and --override' if run.overrides else ''} to resume it, or choose a new --name")
    if run.overrides:
        warnings.warn(f"resuming {run.run_dir} with "
                      f"{' '.join('--override ' + o for o in run.overrides)}: "
                      f"its config.gin is updated ({_first_difference(stored, operative)})")


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


def _datasets(run: _RunSettings, model: nn.Module,
              ctx: DistContext) -> Tuple[AudioDataset, AudioDataset]:
    """The training and validation windows of the dataset (rank 0 warns when no window
    is held out for validation)."""
    train_set = AudioDataset(run.db_path, run.n_signal, "train", run.valid_fraction)
    valid_set = AudioDataset(run.db_path, run.n_signal, "valid", run.valid_fraction)
    if len(valid_set) == 0 and ctx.is_main:
        _warn_no_validation(run.db_path, len(train_set), run.n_signal, run.valid_fraction,
                            isinstance(model.encoder, VariationalEncoder))
    return train_set, valid_set


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


def _seed_this_process(rng_state: Optional[Dict[str, Any]], seed: int, ctx: DistContext) -> None:
    """This process's RNGs, for the noise of training: as a resumed run saved them, else
    seeded by rank."""
    if rng_state is not None:
        restore_rng(rng_state)
    else:
        # Per-rank noise (reparametrisation, filtered noise); weights were seeded alike.
        torch.manual_seed(seed + ctx.rank)
        np.random.seed(seed + ctx.rank)
        random.seed(seed + ctx.rank)


def _measure_receptive_field(model: nn.Module) -> None:
    """Record the model's receptive field in its ``receptive_field`` buffer, unless it
    holds one already (a resumed model)."""
    if not int(model.receptive_field.sum()):
        left, right = receptive_field(model)
        model.receptive_field.copy_(torch.tensor([left, right], device=model.receptive_field.device))


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


def _data_loaders(run: _RunSettings, train_set: AudioDataset, valid_set: AudioDataset,
                  ctx: DistContext, start_step: int
                  ) -> Tuple[ResumableSampler, DataLoader, DataLoader]:
    """This process's share of the training windows, from batch ``start_step`` on (the
    sampler, and its loader), and rank 0's validation loader."""
    sampler = ResumableSampler(train_set, run.batch, ctx.world_size, ctx.rank, run.seed,
                               start_step)
    loader = DataLoader(train_set, batch_size=run.batch, sampler=sampler, drop_last=True,
                        num_workers=run.workers, pin_memory=run.device.type == "cuda",
                        generator=torch.Generator().manual_seed(run.seed))
    valid_loader = DataLoader(valid_set, batch_size=run.batch, shuffle=False, num_workers=0)
    return sampler, loader, valid_loader


def _claim_run_dir(ctx: DistContext, lock: RunLock, run: _RunSettings, built: _RunModel,
                   source: ResumeSource, start_step: int):
    """Rank 0 locks the run, refuses it if another training of it saved a checkpoint
    while this one was starting, and opens it (:func:`_open_run_dir`); returns rank 0's
    TensorBoard writer (None on the other ranks).

    Every rank must call this: it broadcasts rank 0's refusal or write failure, and every
    rank raises it (rank 0 its own error, the others a :class:`TrainingError` with its
    words) instead of waiting for rank 0 at the next collective.

    Raises:
        TrainingArgumentError: the run is being trained by another process, or changed.
        OSError: (rank 0) the run's folder cannot be written.
    """
    refused: Optional[Exception] = None
    writer = None
    if ctx.is_main:
        try:
            lock.acquire()
            if source.run_saved_since():
                # another training of this run saved while this one was starting
                raise TrainingArgumentError(
                    f"run {run.run_dir} changed while this training was starting (another "
                    "training of it saved a checkpoint): run the command again to resume from it")
            writer = _open_run_dir(run, built, start_step)
        except TrainingArgumentError as err:
            refused = err
        except OSError as err:  # a read-only or full disk
            refused = err
    # (the other ranks raise the same class: a refusal is a usage error, exit code 2)
    said = ctx.broadcast(None if refused is None else (
        (TrainingArgumentError, str(refused)) if isinstance(refused, TrainingArgumentError)
        else (TrainingError, f"cannot write {describe_os_error(refused)}")))
    if said is not None:
        if refused is not None:
            raise refused
        error_class, message = said
        raise error_class(message)
    return writer


def _open_run_dir(run: _RunSettings, built: _RunModel, start_step: int):
    """Rank 0, once the run is claimed: create the checkpoint folder, write config.gin
    (atomically, when it changed) and return the TensorBoard writer (a new run logs its
    config there)."""
    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    if built.stored != built.operative:
        write_text_atomically(run.run_dir / "config.gin", built.operative)
    writer = _tensorboard_writer(run.run_dir / "version_0")
    if start_step == 0:
        writer.add_text("config", "```\n" + built.operative + "\n```")
    return writer


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


class _TrainingLoop:
    """The steps of one training process, from the start step to ``max_steps``.

    Holds what a run keeps while it trains: the checkpoint last saved (what a failure
    leaves to resume from), rank 0's TensorBoard writer and progress bar, the logged
    history and the :class:`TrainResult`. Every rank runs it in step with the others:
    rank 0 alone validates and writes, and the other ranks learn of its failures at the
    collectives that follow.
    """

    def __init__(self, ctx: DistContext, settings: _RunSettings, model: nn.Module,
                 trainer: RAVETrainer, sampler: ResumableSampler, valid_loader: DataLoader,
                 writer, resumed: ResumeState, resume_path: Optional[Path]) -> None:
        self.ctx, self.settings, self.model, self.trainer = ctx, settings, model, trainer
        self.sampler, self.valid_loader, self.writer = sampler, valid_loader, writer
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
        stopper = _StopRequest()
        iterator, interrupted = None, False
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
                        self._validate_and_save(at_val, periodic)
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
        except TrainingError as err:
            raise TrainingError(_divergence_message(err, self.last_saved)) from None
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

    def _validate_and_save(self, at_val: bool, periodic: bool) -> None:
        """Validate (at ``at_val``) and save this step.

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
        self._stop_if_rank_0_failed(failed)
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

    def _stop_if_rank_0_failed(self, failed: Optional[OSError]) -> None:
        """Every rank: raise rank 0's write failure ``failed`` (None on the other ranks, and
        where it wrote) as the same :class:`TrainingError`. Rank 0 alone writes: the other
        ranks learn of its failure here, and stop with it, instead of waiting for it at the
        next collective."""
        message = self.ctx.broadcast(
            None if failed is None else _write_failure_message(failed, self.last_saved))
        if message is not None:
            raise TrainingError(message) from failed

    def _save_and_stop(self, stopper: _StopRequest) -> NoReturn:
        """Every rank, when a signal stopped training before ``max_steps``: save this step
        (unless it is saved already) and raise :class:`TrainingInterrupted`."""
        if self.last_saved is None or self.last_saved[1] != self.step:
            self.save(self.step, False, False)
        raise TrainingInterrupted(
            f"interrupted at step {self.step}: saved {self.ckpt_dir / 'last.ckpt'}; run the same "
            "command again to resume", self.ckpt_dir / "last.ckpt", stopper.signal)

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
    return (f"training diverged: {err}.\n{_kept(last_saved)}; re-run to resume from it "
            "(another --seed changes the data order), or check the dataset for clipped or "
            "corrupt audio")


def _write_failure_message(err: OSError, last_saved: Optional[Tuple[Path, int]]) -> str:
    """A checkpoint or validation file could not be written (a full disk, a folder made
    read-only): what failed, and what the user can resume from."""
    keep = _kept(last_saved, "last checkpoint") + (", intact" if last_saved else "")
    return (f"cannot write {describe_os_error(err)}\n{keep}; fix that, then run the "
            "same command again to resume")


def _write_audio(path: Path, audio: torch.Tensor, sr: int) -> None:
    """``(channels, time)`` float audio to a WAV file, atomically."""
    import io

    import soundfile as sf
    # encoded in memory (seconds of audio): libsndfile reports a full disk as "System
    # error.", Python's own write names the error and the file
    wav = io.BytesIO()
    sf.write(wav, audio.clamp(-1, 1).t().numpy(), sr, format="WAV", subtype="FLOAT")
    replace_atomically(path, lambda f: f.write(wav.getvalue()))
