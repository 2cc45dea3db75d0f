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

This module sets a training up (its settings, the model, the datasets, the run folder);
the steps themselves are :class:`~rave_core.training.loop.TrainingLoop`'s.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..config import ConfigError, acids_dataset_bindings, parse_config, read_text_file
from ..data import AudioDataset, DataInputError, load_metadata
from ..dataset_limits import DEFAULT_N_SIGNAL
from ..models.encoders import VariationalEncoder
from ..os_errors import describe_os_error
from ..run import RunError, find_config
from ..text import listed, printable
from .analysis import cropped_length, receptive_field
from .checkpoint import restore_rng, write_text_atomically
from .distributed import DistContext, on_every_rank, raised_on_every_rank
from .errors import TrainingArgumentError, TrainingError, TrainingInterrupted
from .loop import TrainingLoop, TrainResult
from .resume import ResumeSource, ResumeState, check_channels, read_resume_checkpoint
from .run_lock import RunLock
from .sampler import ResumableSampler
from .schedule import BetaWarmup
from .step import RAVETrainer
from .tensorboard_log import open_tensorboard_log

__all__ = ["TrainingError", "TrainingArgumentError", "TrainingInterrupted", "TrainResult",
           "RAVETrainer", "train"]

CHECKPOINT_DIR = Path("version_0") / "checkpoints"


# ============================================================================ config
def _macros(text: str) -> List[str]:
    used = re.findall(r"%([A-Za-z_]\w*)", text)
    return sorted(set(_defined_macros(text)) | set(used))


def _defined_macros(text: str) -> List[str]:
    return sorted(set(re.findall(r"^\s*([A-Za-z_]\w*)\s*=", text, flags=re.MULTILINE)))


def _selectors() -> List[str]:
    return sorted(sel for sel, _ in gin.config._REGISTRY.items())


def _macro_references(value: str) -> List[str]:
    """The macros a gin value refers to (``%NAME``; not ``%module.CONSTANT``, nor a ``%``
    inside a quoted string)."""
    code = re.sub(r"'[^']*'|\"[^\"]*\"", "''", value)
    return re.findall(r"%([A-Za-z_]\w*)(?![\w.])", code)


def check_overrides(config_text: str, overrides: Sequence[str]) -> None:
    """Refuse overrides that would fail deep inside gin, or that name nothing.

    ``NAME = value`` must name a macro of the config (gin would accept a typo as a new,
    unused macro); ``[scope/]module.Class.param = value`` must name a configurable and
    one of its parameters; a ``%MACRO`` in a value must be one of the config's macros.
    Errors name the nearest valid keys. Whether an override reaches what the config
    builds is for :func:`check_overrides_used`, once it is built.
    """
    given_macros = [o.split("=", 1)[0].strip() for o in overrides if "=" in o]
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not of the form 'KEY=VALUE' "
                              "(e.g. --override 'CAPACITY=32')")
        key, value = (part.strip() for part in override.split("=", 1))
        if not key:
            raise ConfigError(f"override {override!r} has no key before '=': give KEY=VALUE, a "
                              "macro or a binding and its value (e.g. --override 'CAPACITY=32')")
        defined = sorted(set(_defined_macros(config_text))
                         | {k for k in given_macros if k and "." not in k and "/" not in k})
        for name in _macro_references(value):
            if name not in defined:
                close = difflib.get_close_matches(name, defined, n=3, cutoff=0.5)
                hint = (f"nearest: {', '.join(close)}" if close else
                        f"macros: {', '.join(defined) or 'none'}")
                raise ConfigError(f"override {override.strip()!r}: its value refers to %{name}, "
                                  f"but the config has no macro {name}; {hint}")
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


def _scope_parts(scope: str) -> List[str]:
    return scope.split("/") if scope else []


def check_overrides_used(overrides: Sequence[str]) -> None:
    """Refuse an override that the model just built never read: it would silently do
    nothing. To be called once everything the training builds with gin is built (the
    model with its discriminator, the beta schedule, a call of each training-time loss),
    with gin's record of those calls (its operative config) still there.

    A binding ``[scope/]Class.param`` takes effect where ``Class`` was called in that scope
    (or one within it), ``param`` not given by the code itself, and no binding of a more
    specific scope of the config covering it; a macro, where one of those calls evaluated
    it. (gin applies ``scope/`` bindings to calls within that scope and scopes below it.)
    """
    operative = gin.config._OPERATIVE_CONFIG
    bound = gin.config._CONFIG
    calls: Dict[str, List[str]] = {}   # selector -> the scopes it was called in
    for scope, selector in operative:
        calls.setdefault(selector, []).append(scope)
    evaluated = {_scope_parts(scope)[-1] for scope in calls.get("gin.macro", []) if scope}
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        shown = f"--override {override.strip()!r}"
        if "." not in key:
            if key not in evaluated:
                raise ConfigError(f"{shown}: nothing this config builds uses the macro {key} "
                                  "(only bindings of configurables it does not use refer to "
                                  "it, if any), so the override would do nothing")
            continue
        scope, _, rest = key.rpartition("/")
        selector, param = rest.rsplit(".", 1)
        try:
            full = gin.config._REGISTRY.get_match(selector).selector
        except (KeyError, ValueError):
            continue   # (check_overrides and gin answered for it)
        if (full, param) == ("rave.model.RAVE", "n_channels"):
            raise ConfigError(f"{shown}: the dataset sets the channel count (--db_path); "
                              "preprocess the audio with --channels N instead")
        scopes = calls.get(full, [])
        if not scopes:
            module = full.rsplit(".", 1)[0]
            used = sorted(s for s in calls if s.rsplit(".", 1)[0] == module)
            close = difflib.get_close_matches(full, used, n=3, cutoff=0.6)
            hint = (f"; of {module} it uses {', '.join(close or used)}" if used else "")
            raise ConfigError(f"{shown}: this config does not use {full} (it builds none), so "
                              f"the override would do nothing{hint}")
        wanted = _scope_parts(scope)
        within = [c for c in scopes if _scope_parts(c)[:len(wanted)] == wanted]
        if not within:
            where = ", ".join(sorted(f"scope {c}" if c else "no scope" for c in set(scopes)))
            raise ConfigError(f"{shown}: this config uses {full} in {where}, never in scope "
                              f"{scope}, so the override would do nothing")
        if not any(param in operative[(c, full)] for c in within):
            raise ConfigError(f"{shown}: the code always gives {full} its {param} itself, so "
                              "the override would do nothing")
        shadows = set()
        reached = False
        for c in within:
            parts = _scope_parts(c)
            deeper = ["/".join(parts[:n]) for n in range(len(wanted) + 1, len(parts) + 1)
                      if param in bound.get(("/".join(parts[:n]), full), {})]
            if deeper:
                shadows.add(deeper[-1])
            elif param in operative[(c, full)]:
                reached = True
        if not reached and shadows:
            winner = sorted(shadows)[0]
            raise ConfigError(f"{shown}: the config binds {winner}/{full}.{param}, which wins "
                              f"over it, so the override would do nothing; override "
                              f"'{winner}/{full}.{param}' instead")


def _build(configs: Sequence[str], overrides: Sequence[str], text: Optional[str],
           channels: int, seed: int, *, unused: Optional[List[ConfigError]] = None):
    """Parse the config, build the model with its discriminator, and the beta schedule.

    Returns ``(model, beta, operative config text)``. An override the model never read
    (:func:`check_overrides_used`) raises its ConfigError, or with ``unused`` (a list) is
    appended there: the training says so once every other check has passed.
    """
    from ..models.rave import RAVE
    full = parse_config(configs, (), text)
    check_overrides(full, overrides)
    # The dataset decides the channel count, as in acids-rave's `rave train`.
    parse_config(configs, [*overrides, f"rave.model.RAVE.n_channels = {channels}"], text)
    ignored = acids_dataset_bindings()
    if ignored:
        warnings.warn(f"the config binds {listed(ignored)}: acids-rave's dataset settings, "
                      "which rave-core train does not read (its data are set by --db_path, "
                      "--n_signal and --valid_fraction); they are ignored", stacklevel=2)
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
    try:
        check_overrides_used(overrides)
    except ConfigError as err:
        if unused is None:
            raise
        unused.append(err)
    return model, beta, gin.operative_config_str()


_BINDING_START = re.compile(r"^([A-Za-z_][\w./%-]*)\s*=\s*(.*)$")


def _bindings(text: str) -> Dict[str, str]:
    """A gin text's bindings, ``{key: value}`` in their order (a value spread over several
    lines joined into one, its spacing normalised; comments and imports left out)."""
    found: Dict[str, List[str]] = {}
    key = None
    for line in text.splitlines():
        code = line.split("#", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        start = _BINDING_START.match(code)
        if start and not code[0].isspace():
            key = start.group(1)
            found[key] = [start.group(2)]
        elif code.strip() and key is not None and code[0].isspace():
            found[key].append(code.strip())   # a value continued on the next lines
        elif code.strip():
            key = None                        # an import or include line
    return {k: " ".join(" ".join(v).split()) for k, v in found.items()}


def _first_difference(a: str, b: str) -> str:
    """The first binding that differs between gin texts ``a`` and ``b``, shown as
    ``'KEY = value-in-a' vs 'KEY = value-in-b'``: one bound to another value, else one
    bound in a single text (``vs no binding of KEY``)."""
    old, new = _bindings(a), _bindings(b)

    def shown(key: str, value: str) -> str:
        text = f"{key} = {value}"
        return repr(text if len(text) <= 80 else text[:77] + "...")

    for key, value in old.items():
        if key in new and new[key] != value:
            return f"{shown(key, value)} vs {shown(key, new[key])}"
    for key, value in old.items():
        if key not in new:
            return f"{shown(key, value)} vs no binding of {key}"
    for key, value in new.items():
        if key not in old:
            return f"no binding of {key} vs {shown(key, value)}"
    return "the same bindings, written differently"


# ============================================================================ train()
def train(configs: Sequence[str], db_path, name: str, out_path="runs", max_steps: int = 6_000_000,
          batch: int = 8, n_signal: int = DEFAULT_N_SIGNAL, val_every: int = 10_000,
          save_every: int = 500_000, device: str = "auto", workers: int = 8,
          ckpt=None, overrides: Sequence[str] = (), seed: int = 0, progress: bool = True, *,
          valid_fraction: float = 0.02, log_every: int = 50, audio_examples: int = 4,
          keep_history: int = 10_000,
          report_error: Optional[Callable[[BaseException], None]] = None) -> TrainResult:
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
        report_error: called with the error that ends the training (the one then raised),
            before this process leaves its process group: the CLI says it there, so that
            under torchrun the process that failed says why first, before the others say
            that it failed.

    Raises:
        ConfigError: unknown config or override. DataError: missing or too short dataset
        (DataInputError: not a dataset, damaged, or at another sampling rate than the config).
        TrainingArgumentError: unusable argument, or a checkpoint that does not fit the
        config. TrainingError: diverged (non-finite loss; the last good checkpoint is kept).
        TrainingInterrupted: Ctrl-C / SIGTERM (``last.ckpt`` saved first).

    Under torchrun, a process whose connection to another process was lost (that process
    failed) raises a :class:`TrainingError` saying so.
    """
    _check_arguments(name, max_steps, batch, n_signal, val_every, save_every, workers)
    dev = _resolve_device(device)
    with _denormals_flushed():
        return _train_on_device(configs, db_path, name, out_path, max_steps, batch, n_signal, val_every,
                      save_every, dev, workers, ckpt, overrides, seed, progress,
                      valid_fraction=valid_fraction, log_every=log_every,
                      audio_examples=audio_examples, keep_history=keep_history,
                      report_error=report_error)


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
class RunSettings:
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
                     valid_fraction, log_every, audio_examples, keep_history,
                     report_error=None) -> TrainResult:
    ctx: Optional[DistContext] = None
    try:
        ctx = DistContext.from_environment(dev.type == "cuda")
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed window shapes: let cuDNN pick kernels
            if ctx.enabled:
                dev = torch.device("cuda", ctx.local_rank)
        with RunLock(Path(out_path) / name) as lock:
            run = RunSettings(
                configs=configs, db_path=Path(db_path), name=name, out_path=Path(out_path),
                max_steps=int(max_steps), batch=int(batch), n_signal=int(n_signal),
                val_every=int(val_every), save_every=int(save_every), device=dev,
                workers=int(workers), ckpt=ckpt, overrides=list(overrides), seed=int(seed),
                progress=progress, valid_fraction=valid_fraction, log_every=log_every,
                audio_examples=audio_examples, keep_history=keep_history)
            result = _train(ctx, lock, run)
    except BaseException as err:
        said = _stop(ctx, err, report_error)
        try:
            if said is err:
                raise
            raise said from err
        finally:
            # no reference cycle through this frame: the error's traceback holds the
            # frames of the step that failed (a DDP wrapper, which holds the process
            # group's threads), freed with the error, not at the next garbage collection
            del said, err
    ctx.close()
    return result


def _stop(ctx: Optional[DistContext], err: BaseException,
          report_error: Optional[Callable[[BaseException], None]]) -> BaseException:
    """This process stops on ``err``: say it (``report_error``), leave the process group
    (``ctx``: None where it was not joined), and return the error to raise: ``err``, or
    where another process failed, the :class:`TrainingError` that says so.

    Said first: leaving may wait for the other processes (a bounded barrier, when every
    rank raised the error), and a process that stops alone leaves at once, which makes
    the others fail at their next collective: its reason comes before their "another
    training process failed"."""
    said = err if ctx is None else ctx.explain(err)
    if said is not err:
        said.__cause__ = err   # (--debug shows the backend's error and where)
    try:
        if report_error is not None:
            report_error(said)
    finally:
        if ctx is not None:
            ctx.close(together=raised_on_every_rank(err))
    return said


# ============================================================================ _train's steps
def _train(ctx: DistContext, lock: RunLock, run: RunSettings) -> TrainResult:
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
    with ctx.warnings_of_rank_0():   # (what the config says, every rank finds alike)
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
    measure_receptive_field(model)
    _check_signal_length(model, run.n_signal)

    # ---- data loaders
    sampler, loader, valid_loader = _data_loaders(run, train_set, valid_set, ctx,
                                                  resumed.start_step)

    # ---- an override that would do nothing: the last refusal, before the run's folder
    if built.unused_overrides:
        raise built.unused_overrides[0]

    # ---- run directory (written by rank 0 only)
    writer = _claim_run_dir(ctx, lock, run, built, source, resumed.start_step)

    loop = TrainingLoop(ctx, run, model, trainer, sampler, valid_loader, writer, resumed,
                        source.path)
    return loop.run(loader)


@dataclass
class _RunModel:
    """The model a training trains, with its beta schedule and its config."""

    model: nn.Module
    beta: BetaWarmup
    operative: str          # the operative config: what config.gin holds once training starts
    stored: Optional[str]   # the run's config.gin as this training found it (None: none yet)
    #: an --override the model never read: refused after the other checks (the checkpoint's)
    unused_overrides: List[ConfigError] = field(default_factory=list)


def _build_run_model(run: RunSettings, meta: Dict[str, Any], source: ResumeSource) -> _RunModel:
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
    unused: List[ConfigError] = []
    model, beta, operative = _build(run.configs, run.overrides, text, channels, run.seed,
                                    unused=unused)
    _check_signal_multiple(model, run.n_signal)
    _check_config_change(run, source, stored, operative)
    if int(model.sr) != int(meta["sr"]):
        # the inputs disagree: a usage error (exit 2), as a channel count that differs
        raise DataInputError(f"dataset {run.db_path} is at {meta['sr']} Hz but the config at "
                             f"{model.sr} Hz; re-run `rave-core preprocess --sampling_rate "
                             f"{model.sr}`, or --override 'SAMPLING_RATE={meta['sr']}'")
    model.to(run.device)
    return _RunModel(model, beta, operative, stored, unused)


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


def _check_config_change(run: RunSettings, source: ResumeSource, stored: Optional[str],
                         operative: str) -> None:
    """A run resumed by its name keeps its config: another ``--config`` is refused; an
    ``--override`` alone is taken (:func:`_open_run_dir` says so, once it wrote config.gin:
    the checkpoint may yet not fit the model it builds)."""
    if not (source.by_name and stored is not None and operative != stored):
        return
    if run.configs:
        raise TrainingArgumentError(
            f"run {run.run_dir} exists and was trained with another config "
            f"({_first_difference(stored, operative)}); leave out --config"
            f"{' and --override' if run.overrides else ''} to resume it, or choose a new --name")


def _check_signal_multiple(model: nn.Module, n_signal: int) -> None:
    """A window is encoded into whole latent frames: ``n_signal`` must be a multiple of the
    model's ratio (PQMF bands times the encoder's strides)."""
    ratio = int(model.ratio)
    if n_signal % ratio:
        lower = n_signal // ratio * ratio
        # the values suggested must pass the length check too (_check_signal_length)
        if model.valid_signal_crop:   # (then the length check needs the receptive field)
            measure_receptive_field(model)
        passing = [v for v in (lower, lower + ratio)
                   if v > 0 and _signal_shortfall(model, v) is None]
        examples = (" or ".join(str(v) for v in passing) if passing else
                    f"{shortest_signal(model, lower + ratio)} or more (the shortest window "
                    "this config takes)")
        raise TrainingArgumentError(f"--n_signal must be a multiple of {ratio} (the model's "
                                    f"samples per latent frame), got {n_signal}: use e.g. "
                                    f"{examples}")


def _datasets(run: RunSettings, model: nn.Module,
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


def measure_receptive_field(model: nn.Module) -> None:
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
    raise TrainingArgumentError(
        f"--n_signal {n_signal} is too short for this config: {short}; use --n_signal "
        f"{shortest_signal(model, n_signal)} or more (a multiple of {int(model.ratio)}), or "
        "override rave.core.MultiScaleSTFT.scales")


def shortest_signal(model: nn.Module, n_signal: int) -> int:
    """The shortest window from ``n_signal`` on that the spectral distances take: a
    multiple of the model's ratio (the receptive field measured already)."""
    ratio, shortest = int(model.ratio), n_signal
    while (shortest % ratio or _signal_shortfall(model, shortest) is not None) \
            and shortest < 1 << 26:
        shortest += ratio - shortest % ratio   # the next multiple of the ratio
    return shortest


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


def _data_loaders(run: RunSettings, train_set: AudioDataset, valid_set: AudioDataset,
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


def _claim_run_dir(ctx: DistContext, lock: RunLock, run: RunSettings, built: _RunModel,
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
            writer = _open_run_dir(run, built, source, start_step)
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
            raise on_every_rank(refused)
        error_class, message = said
        raise on_every_rank(error_class(message))
    return writer


def _open_run_dir(run: RunSettings, built: _RunModel, source: ResumeSource, start_step: int):
    """Rank 0, once the run is claimed: create the checkpoint folder, write config.gin
    (atomically, when it changed; a run resumed by its name with an ``--override`` then
    says so) and return the TensorBoard writer (a new run logs its config there)."""
    run.ckpt_dir.mkdir(parents=True, exist_ok=True)
    if built.stored != built.operative:
        write_text_atomically(run.run_dir / "config.gin", built.operative)
        if source.by_name and built.stored is not None and run.overrides:
            change = _first_difference(built.stored, built.operative)
            warnings.warn(f"resuming {run.run_dir} with "
                          f"{' '.join('--override ' + o for o in run.overrides)}: its "
                          f"config.gin is updated ({change})")
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
    # a folder TensorBoard cannot write (read-only, a full disk): a warning, and no logs
    return open_tensorboard_log(log_dir)
