"""Resuming a run: which checkpoint a training starts from, and what it restores from it.

A training resumes from ``--ckpt``, else from its run's own ``last.ckpt`` when there is
one (:class:`ResumeSource`). The checkpoint gives back the weights, the optimisers, the
step, the best validation distance and this process's RNG states
(:func:`read_resume_checkpoint`); what it cannot give back exactly (weights only, another
number of processes, another batch, seed or window length) is said in a warning, and
training goes on.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..config import ConfigError, read_text_file
from ..run import RunError, extract_state_dict, find_config
from .checkpoint import load_checkpoint
from .distributed import DistContext
from .errors import TrainingArgumentError
from .step import RAVETrainer

__all__ = ["ResumeSource", "ResumeState", "check_channels", "read_resume_checkpoint"]

#: ``(size, mtime_ns)`` of a file: tells whether it was written since it was looked at
FileStamp = Tuple[int, int]


def _file_stamp(path: Path) -> Optional[FileStamp]:
    """``(size, mtime_ns)`` of ``path``, None if it is not there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class ResumeSource:
    """What a training starts from, decided before anything is built.

    ``path``: the checkpoint to resume (None: a new run, from scratch). ``by_name``: it is
    the run's own ``last.ckpt``, found by the run's name (no ``--ckpt``).
    ``last_stamp``: the run's ``last.ckpt`` as this training found it, to notice another
    training of the run saving while this one starts.
    """

    path: Optional[Path]
    by_name: bool
    last_ckpt: Path
    last_stamp: Optional[FileStamp]

    @classmethod
    def find(cls, ckpt, last_ckpt: Path) -> "ResumeSource":
        """``ckpt`` (``--ckpt``) if given, else the run's ``last_ckpt`` if it exists.

        Raises:
            TrainingArgumentError: the checkpoint to resume is not a file.
        """
        seen = _file_stamp(last_ckpt)
        by_name = ckpt is None and seen is not None
        path = Path(ckpt) if ckpt is not None else (last_ckpt if by_name else None)
        if path is not None and not path.is_file():
            raise TrainingArgumentError(f"--ckpt {path}: no such checkpoint file")
        return cls(path, by_name, last_ckpt, seen)

    def run_saved_since(self) -> bool:
        """True when the run's ``last.ckpt`` changed since :meth:`find` looked at it."""
        return _file_stamp(self.last_ckpt) != self.last_stamp


# ============================================================================ channels
_CHANNELS_BINDING = re.compile(r"^\s*(?:[\w.]*\.)?RAVE\.n_channels\s*=\s*(\d+)\s*$", re.MULTILINE)


def check_channels(config_text: str, channels: int, db_path: Path,
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


# ============================================================================ the checkpoint
@dataclass
class ResumeState:
    """Where training restarts: the defaults are a new run's."""

    start_step: int = 0
    best_validation: Optional[float] = None
    #: this process's RNG states as saved (None: seed them afresh)
    rng_state: Optional[Dict[str, Any]] = None


def read_resume_checkpoint(path: Path, model: nn.Module, trainer: RAVETrainer, ctx: DistContext,
                           batch: int, seed: int, n_signal: int) -> ResumeState:
    """Load the checkpoint at ``path`` into ``model`` (weights) and ``trainer`` (optimisers,
    schedulers), and return the step, best distance and RNG states it restarts from.

    Every rank calls it (no collective). A plain state dict
    (``torch.save(model.state_dict(), ...)``) restarts from its weights at step 0; state
    that does not carry over is warned about (by rank 0: every rank finds the same), not
    refused.

    Raises:
        TrainingArgumentError: the checkpoint holds no weights, or they do not fit the
            model (its discriminator alone may be missing).
    """
    with ctx.warnings_of_rank_0():
        return _read_resume_checkpoint(path, model, trainer, ctx, batch, seed, n_signal)


def _read_resume_checkpoint(path: Path, model: nn.Module, trainer: RAVETrainer,
                            ctx: DistContext, batch: int, seed: int,
                            n_signal: int) -> ResumeState:
    state = load_checkpoint(path)
    if "state_dict" in state:
        weights = state["state_dict"]
    else:  # a plain state dict (torch.save(model.state_dict(), ...)): weights only
        try:
            weights, _ = extract_state_dict(state)
        except RunError as err:
            raise TrainingArgumentError(f"--ckpt {path}: {err}") from None
        state = {}
    if not isinstance(weights, dict):
        raise TrainingArgumentError(f"--ckpt {path}: its 'state_dict' is not a dict "
                                    "of tensors; give a checkpoint written by training")
    _load_model_weights(model, weights, path)
    resumed = ResumeState(start_step=int(state.get("global_step", 0) or 0),
                          best_validation=state.get("best_validation"))
    if not state:
        warnings.warn(f"{path} holds weights only (a plain state dict): training "
                      "starts from them at step 0, with fresh optimisers")
    elif not trainer.load_state_dict(state):
        warnings.warn(f"{path}: no usable optimiser state; optimisers start afresh")
    rngs = state.get("rng_states") or []
    if len(rngs) == ctx.world_size:
        resumed.rng_state = rngs[ctx.rank]
    elif rngs:
        warnings.warn(f"{path} was saved by {len(rngs)} processes, this run has "
                      f"{ctx.world_size}: noise and data order will differ from an "
                      "uninterrupted run")
    _warn_loader_changes(path, state.get("loader") or {}, batch, seed, n_signal)
    return resumed


def _warn_loader_changes(path: Path, loader_state: Dict[str, Any], batch: int, seed: int,
                         n_signal: int) -> None:
    """The data stream resumes exactly only with the batch, seed and window length it
    was saved with; another one is said, and used."""
    if loader_state and (loader_state.get("batch"), loader_state.get("seed")) != (batch, seed):
        warnings.warn(f"{path} was trained with batch {loader_state.get('batch')} and seed "
                      f"{loader_state.get('seed')}: the data order changes")
    trained_signal = loader_state.get("n_signal")
    if trained_signal is not None and int(trained_signal) != n_signal:
        warnings.warn(f"{path} was trained on windows of {trained_signal} samples, "
                      f"this run uses --n_signal {n_signal}: validation windows change too, "
                      "so distances before and after this step are not comparable (best.ckpt "
                      "is replaced only by a distance lower than the one carried over)")


#: what to do when a checkpoint's weights do not fit the model built for it
_FIT_HINT = ("resume with the config the run was trained with (leave out --config, and any "
             "--override of the model's sizes)")


def _load_model_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state_dict`` into ``model``, refusing weights that do not fit it (only the
    discriminator may be missing: it then starts fresh)."""
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
