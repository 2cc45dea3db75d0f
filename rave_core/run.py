"""Load a trained run (ours or acids-rave's ``rave train``) into an eval-mode model.

A run directory holds ``config.gin`` and, somewhere below it, Lightning-style checkpoints
(``version_0/checkpoints/best.ckpt``). Checkpoints are untrusted files: they are read with
``torch.load(weights_only=True)``, which refuses any pickle that would run code.

A checkpoint is read from disk once (:func:`read_checkpoint_file`): its bytes are hashed,
their CRCs checked and the weights loaded from that one copy in memory, so the SHA-256 a
sidecar records names the very bytes the model came from, even if the file is replaced
or rewritten meanwhile.
"""
from __future__ import annotations

import errno
import filecmp
import hashlib
import io
import json
import math
import os
import pickle
import re
import shlex
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import gin
import torch

from .config import ConfigError, build_model, read_text_file
from .dataset_limits import MAX_CHANNELS
from .file_kinds import PICKLE_OPCODE, WHAT_A_RUN_IS, ZIP_SIGNATURE, is_torchscript_archive
from .text import listed

# Keys of the training-only modules: not needed (nor built) to run the model.
TRAINING_ONLY_PREFIXES = ("discriminator.", "audio_distance.", "multiband_audio_distance.")
CHECKPOINT_PREFERENCE = ("best.ckpt", "last.ckpt")
class RunError(ValueError):
    """A run directory or checkpoint that cannot be loaded; the message says what to do."""


@dataclass
class Run:
    """A loaded run: the model plus where it came from."""

    model: torch.nn.Module
    config_path: Path
    checkpoint_path: Path
    config_text: str
    checkpoint_sha256: str
    step: int = 0
    epoch: int = 0
    ema: bool = False
    extra: Dict[str, object] = field(default_factory=dict)
    #: whether the checkpoint records its step (``global_step``); a bare state dict does not
    step_recorded: bool = True


def find_config(path: Path) -> Path:
    """``config.gin`` of a run: in the run directory, or up to three levels above a checkpoint."""
    start = path if path.is_dir() else path.parent
    for folder in [start, *start.parents][:4]:
        candidate = folder / "config.gin"
        if candidate.exists():
            return candidate
    raise RunError(f"no config.gin found in or above {path}: a run directory holds the "
                   "config.gin written at training time; copy it next to the checkpoint")


def find_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to use in a run directory: ``best.ckpt``, else ``last.ckpt``, else the
    newest, by modification time (of several ``best.ckpt`` in ``version_N`` folders, the
    newest). acids-rave's ``rave export`` takes the newest ``*.ckpt`` instead:
    :func:`newer_checkpoint` finds one newer than ours, for export to name."""
    ckpts = sorted(run_dir.rglob("*.ckpt"))
    if not ckpts:
        raise RunError(f"no checkpoint (*.ckpt) found under {run_dir}: train the model first "
                       "(rave-core train) or pass the checkpoint file itself")
    for name in CHECKPOINT_PREFERENCE:
        named = [c for c in ckpts if c.name == name]
        if named:
            return max(named, key=lambda p: p.stat().st_mtime)
    return max(ckpts, key=lambda p: p.stat().st_mtime)


def newer_checkpoint(run_dir: Path, chosen: Path) -> Optional[Path]:
    """The newest checkpoint under ``run_dir`` modified after ``chosen`` (what
    :func:`find_checkpoint` took), leaving out byte-for-byte copies of it (our trainer
    copies an improved ``best.ckpt`` to ``last.ckpt``: such a copy is read in full); None
    when there is none, or ``run_dir`` is the checkpoint itself."""
    if Path(run_dir).is_file():
        return None
    def mtime(p: Path) -> int:
        try:
            return p.stat().st_mtime_ns
        except OSError:
            return -1
    since = mtime(chosen)
    newer = sorted((p for p in Path(run_dir).rglob("*.ckpt")
                    if p != chosen and mtime(p) > since >= 0), key=mtime, reverse=True)
    for candidate in newer:
        try:
            if filecmp.cmp(candidate, chosen, shallow=False):
                continue   # the same weights under another name
        except OSError:
            pass
        return candidate
    return None


#: SHA-256 of files by (path, inode, size, modification time): `rave-deploy check exports/*`
#: compares every artefact's checkpoint, then loads it, and teaches the style audio, in
#: one process; each file is read once unless it is rewritten meanwhile
_SHA256: Dict[Tuple[str, int, int, int], str] = {}
_SHA256_KEPT = 64


def sha256_of(path: Path) -> str:
    """SHA-256 of the file ``path``, cached per path, inode, size and modification time
    (a file replaced by a rename, as our checkpoints and exports are, is a new inode)."""
    key = _sha256_key(path, Path(path).stat())
    if key not in _SHA256:
        _remember_sha256(key, _read_sha256(Path(path)))
    return _SHA256[key]


def _sha256_key(path: Path, st: os.stat_result) -> Tuple[str, int, int, int]:
    return (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def _remember_sha256(key: Tuple[str, int, int, int], digest: str) -> None:
    if key not in _SHA256 and len(_SHA256) >= _SHA256_KEPT:
        _SHA256.pop(next(iter(_SHA256)))
    _SHA256[key] = digest


def _read_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _another_checkpoint(path: Path) -> str:
    """What to do instead of reading the damaged checkpoint ``path``: the other
    checkpoints beside it, by name, where there are some."""
    others = sorted(q.name for q in Path(path).parent.glob("*.ckpt")
                    if q.name != Path(path).name)
    if others:
        shown = ", ".join(others[:3]) + (f" or {len(others) - 3} more" if len(others) > 3 else "")
        return f"use another checkpoint of the run: {shown} beside it (give its path)"
    return "use another checkpoint of the run, or train it again"


#: terminal escape sequences (torch's messages put words in bold)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _plain(text: str) -> str:
    """``text`` without terminal escape sequences."""
    return _ANSI.sub("", text)


def _damaged(path: Path, detail: str) -> RunError:
    detail = _plain(detail).split(". ")[0].rstrip(".")   # torch's advice after its first sentence
    return RunError(f"cannot read checkpoint {path}: the file is truncated or corrupted "
                    f"({detail}); {_another_checkpoint(path)}")


def _empty(path: Path) -> RunError:
    """A checkpoint of 0 bytes (an interrupted copy or save, a full disk): said as such,
    not as a parse error."""
    return RunError(f"cannot read checkpoint {path}: the file is empty (0 bytes), as an "
                    f"interrupted copy or save leaves it; copy it again, or "
                    f"{_another_checkpoint(path)}")


def _unreadable(path: Path, err: OSError) -> RunError:
    """A file we may not open is not a damaged one: say what stops it."""
    if err.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied: make it readable (chmod +r), or run as its owner"
    else:
        why = err.strerror or type(err).__name__
    return RunError(f"cannot read checkpoint {path}: {why}")


def _check_crc(path: Path, data: bytes) -> None:
    """A checkpoint is a zip archive whose entries carry CRCs that ``torch.load`` does not
    check: flipped bits in the weights would load silently. One pass over ``data``, the
    bytes of ``path`` (named in messages)."""
    try:
        if not zipfile.is_zipfile(io.BytesIO(data)):
            return  # a legacy (pre-1.6) checkpoint, or not one at all: torch.load decides
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError,
            NotImplementedError) as err:
        raise _damaged(path, str(err).strip() or type(err).__name__) from None
    if bad is not None:
        raise _damaged(path, f"CRC mismatch in {bad}")


def check_finite(state_dict: Dict[str, object], path) -> None:
    """Refuse weights holding NaN or infinity: a model from a diverged run plays noise or
    silence, and training resumed from it diverges again."""
    bad = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor)
           and (v.is_floating_point() or v.is_complex()) and v.numel()
           and not bool(torch.isfinite(v).all())]
    if bad:
        names = listed([repr(k) for k in bad], 3)
        raise RunError(f"{path} holds NaN or infinite weights ({names}): the training diverged "
                       "before this checkpoint was saved; pick an earlier checkpoint of the run "
                       "(e.g. an epoch_<step>.ckpt)")


def read_checkpoint(path: Path) -> Dict[str, object]:
    """Read a checkpoint without executing any pickled code. Corrupted bytes (a CRC
    mismatch) and non-finite weights are refused (:class:`RunError`)."""
    return read_checkpoint_file(path)[0]


def read_checkpoint_file(path: Path) -> Tuple[Dict[str, object], str]:
    """:func:`read_checkpoint`, and the SHA-256 of the bytes it loaded: the file is read
    once (hashed, its CRCs checked and loaded from that copy in memory), so the digest
    names what was loaded even if the file changes on disk meanwhile."""
    data, digest = _read_bytes(path)
    if not data:
        raise _empty(path)
    _check_crc(path, data)
    if is_torchscript_archive(io.BytesIO(data)):   # torch.load would warn, then refuse it
        raise exported_file_error(Path(path), "TorchScript",
                                  advice="give a checkpoint of the run it came from")
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _untrusted(Path(path), str(err)) from None
    except Exception as err:  # noqa: BLE001 - any parse failure means a damaged file
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise _damaged(path, first) from None
    if not isinstance(ckpt, dict):
        raise RunError(f"{path} is not a checkpoint: expected a dict with a 'state_dict'")
    sd = ckpt.get("state_dict", ckpt)
    if isinstance(sd, dict):
        check_finite(sd, path)
    return ckpt, digest


def _untrusted(path: Path, detail: str) -> RunError:
    """A checkpoint that ``torch.load(weights_only=True)`` refused (``detail``: torch's
    message): what it holds that only code could rebuild (torch names it on a later line,
    ``Unsupported global: GLOBAL numpy._core.multiarray.scalar ...``). Where that is one
    of NumPy's values (Lightning keeps a callback's monitored score as one), a one-liner,
    for a file the user trusts, that keeps its weights, step and EMA weights in a plain
    checkpoint to use instead (for export and for training alike); anything else would
    run code when loaded, and is said so. The file itself is never loaded otherwise."""
    detail = _plain(detail)
    # "Unsupported global: GLOBAL numpy...scalar was not an allowed global", "Trying to
    # load unsupported GLOBAL posix.system whose module posix is blocked"
    found = re.search(r"\bGLOBAL ([A-Za-z_][\w.]*)", detail)
    if found:
        what = f"unsupported global {found.group(1)}"
    else:   # another refusal: torch's reason, after "WeightsUnpickler error:" if it says one
        after = detail.split("WeightsUnpickler error:", 1)
        lines = [line.strip() for line in after[-1].splitlines() if line.strip()]
        why = lines[0].split(". ")[0].rstrip(".")[:200] if lines else ""
        what = f"torch's safe loader says: {why}" if why else "torch's safe loader refused it"
    refused = (f"refusing to load {path}: it holds pickled objects other than tensors and "
               f"plain values ({what}), which only running code could rebuild")
    if not (found and found.group(1).startswith("numpy.")):
        return RunError(f"{refused}: loading it could run any code; use another checkpoint "
                        "of the run, or ask whoever made the file for one saved with "
                        "torch.save of plain tensors")
    weights = path.with_name(f"{path.stem}_weights.ckpt")
    code = (f"import torch; c = torch.load({json.dumps(str(path))}, weights_only=False); "
            'kept = {k: c[k] for k in ("state_dict", "global_step", "epoch") if k in c}; '
            'kept["callbacks"] = {k: v for k, v in (c.get("callbacks") or {}).items() '
            'if "EMA" in k}; '
            f"torch.save(kept, {json.dumps(str(weights))})")
    return RunError(f"{refused}. If you trust the file, keep its weights in a plain "
                    f"checkpoint: python -c {shlex.quote(code)}, then give "
                    f"{shlex.quote(str(weights))} in place of this file")


def _read_bytes(path: Path) -> Tuple[bytes, str]:
    """The bytes of the checkpoint ``path``, read in one pass, and their SHA-256, which
    :func:`sha256_of` then answers with unless the file changed while it was read."""
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            data = f.read()
            after = os.fstat(f.fileno())
    except OSError as err:
        raise _unreadable(path, err) from None
    digest = hashlib.sha256(data).hexdigest()
    if (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, len(data)):
        _remember_sha256(_sha256_key(path, after), digest)
    return data, digest


def exported_file_error(path: Path, kind: str, origin: Optional[str] = None,
                        advice: str = "export from the run it came from") -> RunError:
    """``path``, given where a run or checkpoint is read, is an export (``kind``:
    ``"TorchScript"``, ``"ONNX"``, a folder export's target...): ``advice``, and where its
    run is (``origin``: what its sidecar names, which :mod:`rave_deploy` reads)."""
    origin = origin or "a run directory holding config.gin, or one of its .ckpt files"
    what, instead = ("folder", "run directory") if path.is_dir() else ("file", "checkpoint")
    return RunError(f"{path} is an exported {what} ({kind}), not a training {instead}: "
                    f"{advice} ({origin})")


def _looks_like_checkpoint(path: Path) -> bool:
    """A zip archive (torch >= 1.6) or a pickle (older torch) by its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True  # let the loader report it
    return head.startswith(ZIP_SIGNATURE) or head[:1] == PICKLE_OPCODE


def extract_state_dict(ckpt: Dict[str, object], ema: bool = False) -> Tuple[Dict[str, torch.Tensor], bool]:
    """The model's weights from a checkpoint dict (Lightning, ours, or a bare state dict),
    and whether EMA weights were used. ``ema``: the EMA weights laid over the state dict.

    acids-rave's ``rave train --ema`` keeps, as its ``EMA`` callback's state, the averages
    of the model's parameters only (``named_parameters``: no buffers, so no latent PCA,
    PQMF filters, BatchNorm statistics or codebooks); a callback state holding every
    weight works the same. rave-core train keeps no EMA.

    Raises:
        RunError: no state dict of tensors; ``ema`` and no EMA weights, or EMA weights
            whose keys or shapes the state dict does not have (named).
    """
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RunError("checkpoint has no 'state_dict' of tensors")
    weights = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not ema:
        return weights, False
    averaged = _ema_weights(ckpt)
    unknown = [k for k in averaged if k not in weights]
    if unknown:
        raise RunError(f"--ema_weights: the checkpoint's EMA weights hold {unknown[0]!r}, which "
                       f"its state_dict lacks ({len(unknown)} such key(s)): they are not this "
                       "model's; export without --ema_weights")
    for key, value in averaged.items():
        if tuple(value.shape) != tuple(weights[key].shape):
            raise RunError(f"--ema_weights: the checkpoint's EMA weight {key!r} has shape "
                           f"{tuple(value.shape)} but {tuple(weights[key].shape)} in its "
                           "state_dict: they are not this model's; export without --ema_weights")
    return {**weights, **averaged}, True


def _ema_weights(ckpt: Dict[str, object]) -> Dict[str, torch.Tensor]:
    """The EMA weights a checkpoint's callbacks hold (a callback whose name says EMA, its
    state a dict of tensors, or holding one as ``weights`` or ``state_dict``)."""
    callbacks = ckpt.get("callbacks") or {}
    for name, state in callbacks.items() if isinstance(callbacks, dict) else []:
        if "EMA" in str(name) and isinstance(state, dict):
            weights = state.get("weights") or state.get("state_dict") or state
            if isinstance(weights, dict) and weights and all(
                    isinstance(v, torch.Tensor) for v in weights.values()):
                return dict(weights)
    raise RunError("--ema_weights: this checkpoint carries no EMA weights (acids-rave's `rave "
                   "train --ema` saves them; rave-core train does not); export without "
                   "--ema_weights")


def load_weights(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor],
                 source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` (training-only keys may be absent or ignored).

    Any other missing key, unexpected key or shape mismatch is an error naming the first
    key that differs, and both shapes.
    """
    problem = _misfit(model, state_dict)
    if problem is not None:
        raise RunError(f"{source} does not fit the config: {problem[0]}{problem[1]}")
    expected = model.state_dict()
    given = _given(model, state_dict)
    model.load_state_dict({k: v for k, v in given.items() if k in expected}, strict=False)


def _given(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state_dict`` less the training-only keys, for a model built without them."""
    skip = TRAINING_ONLY_PREFIXES if getattr(model, "discriminator", None) is None else ()
    return {k: v for k, v in state_dict.items() if not k.startswith(skip or ("\0", ))}


_ANOTHER_CONFIG = "; was it trained with another config?"


def _misfit(model: torch.nn.Module,
            state_dict: Dict[str, torch.Tensor]) -> Optional[Tuple[str, str]]:
    """Why ``state_dict`` does not load into ``model`` (:func:`load_weights`): the first key
    missing, of another shape, or unexpected, and the question to add; None when it fits."""
    expected = model.state_dict()
    given = _given(model, state_dict)
    for key, value in expected.items():
        if key.startswith(TRAINING_ONLY_PREFIXES) and key not in given:
            continue
        if key not in given:
            return f"key {key!r} (shape {tuple(value.shape)}) is missing", _ANOTHER_CONFIG
        if tuple(given[key].shape) != tuple(value.shape):
            return (f"{key!r} has shape {tuple(given[key].shape)} in the checkpoint but "
                    f"{tuple(value.shape)} in the model built from config.gin"), ""
    extra = sorted(k for k in given if k not in expected and not k.startswith(TRAINING_ONLY_PREFIXES))
    if extra:
        return f"unexpected key {extra[0]!r} ({len(extra)} in all)", _ANOTHER_CONFIG
    return None




def _binds_channels() -> bool:
    """Whether the config gin parsed last binds ``rave.model.RAVE.n_channels``."""
    try:
        gin.query_parameter("rave.model.RAVE.n_channels")
    except ValueError:
        return False
    return True


def _channel_ratios(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> Set[int]:
    """The integer ratios (> 1) of a checkpoint's dimensions to the model's among the
    weights whose shapes differ: a k-channel run's first encoder convolution and last
    decoder layers are k times wider than a mono model's."""
    ratios: Set[int] = set()
    given = _given(model, state_dict)
    for key, value in model.state_dict().items():
        theirs = given.get(key)
        if theirs is None or theirs.dim() != value.dim() or theirs.shape == value.shape:
            continue
        for a, b in zip(theirs.shape, value.shape):
            if a != b and b > 0 and a % b == 0 and a // b > 1:
                ratios.add(a // b)
    return ratios


def _infer_channels(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], text: str,
                    overrides: Sequence[str], checkpoint: Path,
                    config_path: Path) -> torch.nn.Module:
    """``model``, built from a config.gin that does not bind ``rave.model.RAVE.n_channels``
    (acids-rave's ``rave train`` passes the channel count to ``RAVE`` itself, so gin's
    operative config leaves it out), when ``state_dict`` does not fit it: the model of the
    channel count whose every weight fits, said in a warning; else ``model``
    (:func:`load_weights` then says why it does not fit).

    The counts tried are the ratios of the checkpoint's widths to the model's (and their
    square roots: a width of ``data_size * n_channels`` whose ``data_size`` defaults to
    ``n_channels``), each checked by building its model, so whatever the encoder and
    decoder, only a count that makes every weight fit is taken.

    Raises:
        RunError: no count fits, but one makes every weight that depends on the count
            fit (the rest differs): the mismatch, that the run looks like a run of that
            many channels, and the line to add to config.gin.
    """
    ratios = _channel_ratios(model, state_dict)
    candidates = set()
    for ratio in ratios:
        candidates.add(ratio)
        root = math.isqrt(ratio)
        if root * root == ratio:
            candidates.add(root)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = _given(model, state_dict)
    looks = None   # (channels, a weight they explain, what still differs with them)
    for channels in sorted(c for c in candidates if 1 < c <= MAX_CHANNELS):
        try:
            trial = build_model(text=text, overrides=[*overrides,
                                                      f"rave.model.RAVE.n_channels = {channels}"],
                                build_discriminator=False)
        except ConfigError:
            continue
        still = _misfit(trial, state_dict)
        if still is None:
            warnings.warn(f"{config_path} does not say how many audio channels the run has "
                          "(acids-rave's rave train leaves model.RAVE.n_channels out of it): "
                          f"its checkpoint is a {channels}-channel model's, exported as such",
                          stacklevel=3)
            return trial
        # the weights whose shapes the count changes: all as the checkpoint has them?
        changed = {k: tuple(v.shape) for k, v in trial.state_dict().items()
                   if k in ours and ours[k] != tuple(v.shape)}
        if looks is None and changed and all(
                k in given and tuple(given[k].shape) == shape for k, shape in changed.items()):
            looks = channels, next(iter(changed)), still[0]
    if looks is None:
        return model
    channels, key, still = looks
    raise RunError(f"{checkpoint} does not fit the config: {key!r} has shape "
                   f"{tuple(given[key].shape)} in the checkpoint but {ours[key]} in the model "
                   f"built from config.gin: the run looks like a {channels}-channel run, which "
                   "its config.gin does not say (acids-rave's rave train leaves "
                   "model.RAVE.n_channels out), but even as one it does not fit ("
                   f"{still}); add the line `model.RAVE.n_channels = {channels}` to "
                   f"{config_path}, and make its other settings the run's")


def load_run(path, streaming: bool = False, ema: bool = False,
             overrides: Optional[List[str]] = None) -> torch.nn.Module:
    """Load a run directory or checkpoint made by ``rave-core train`` or acids-rave's
    ``rave train`` and return its eval-mode :class:`~rave_core.models.rave.RAVE`
    (streaming if asked; built without discriminator)."""
    return open_run(path, streaming=streaming, ema=ema, overrides=overrides).model


@dataclass(frozen=True)
class RunFiles:
    """The two files a run is opened from (:func:`locate_run`)."""

    checkpoint: Path
    config: Path


def locate_run(path) -> RunFiles:
    """The checkpoint and ``config.gin`` that ``path`` (a run directory or a checkpoint
    file) names, found without loading either: a wrong path is refused in milliseconds.
    Raises :class:`RunError`."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path} does not exist: {WHAT_A_RUN_IS}")
    if path.is_file() and is_torchscript_archive(path):   # an export given back
        raise exported_file_error(path, "TorchScript")
    if path.is_file() and _is_empty(path):
        raise _empty(path)
    if path.is_file() and not _looks_like_checkpoint(path):
        raise RunError(f"{path} is not a checkpoint (nor a run directory): RUN must be a run "
                       "directory (the folder holding config.gin) or a checkpoint file (.ckpt)")
    checkpoint = path if path.is_file() else find_checkpoint(path)
    if checkpoint is not path and _is_empty(checkpoint):
        raise _empty(checkpoint)
    return RunFiles(checkpoint=checkpoint, config=find_config(path))


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False   # the loader says what stops it


def open_run(path, streaming: bool = False, ema: bool = False,
             overrides: Optional[List[str]] = None) -> Run:
    """Like :func:`load_run`, but returns the model with where it came from (:class:`Run`).
    ``path`` may be what :func:`locate_run` found already."""
    files = path if isinstance(path, RunFiles) else locate_run(path)
    checkpoint, config_path = files.checkpoint, files.config
    try:
        text = read_text_file(config_path)
    except ConfigError as err:
        raise RunError(str(err)) from None
    try:
        model = build_model(text=text, overrides=overrides or [], build_discriminator=False)
    except ConfigError as err:
        raise RunError(f"{config_path}: {err}") from None
    channels_given = _binds_channels()
    ckpt, digest = read_checkpoint_file(checkpoint)  # the file's one read
    sd, used_ema = extract_state_dict(ckpt, ema=ema)
    if used_ema:
        check_finite(sd, f"{checkpoint} (EMA weights)")
    if not channels_given and _misfit(model, sd) is not None:
        model = _infer_channels(model, sd, text, overrides or [], checkpoint, config_path)
    load_weights(model, sd, source=str(checkpoint))
    model.eval()
    if streaming:
        model.set_streaming(True)
    return Run(model=model, config_path=config_path, checkpoint_path=checkpoint, config_text=text,
               checkpoint_sha256=digest, step=int(ckpt.get("global_step", 0) or 0),
               epoch=int(ckpt.get("epoch", 0) or 0), ema=used_ema,
               step_recorded="global_step" in ckpt)
