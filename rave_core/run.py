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
import hashlib
import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .config import ConfigError, build_model, read_text_file
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
    """The checkpoint to use in a run directory: ``best.ckpt``, else ``last.ckpt``, else the newest."""
    ckpts = sorted(run_dir.rglob("*.ckpt"))
    if not ckpts:
        raise RunError(f"no checkpoint (*.ckpt) found under {run_dir}: train the model first "
                       "(rave-core train) or pass the checkpoint file itself")
    for name in CHECKPOINT_PREFERENCE:
        named = [c for c in ckpts if c.name == name]
        if named:
            return max(named, key=lambda p: p.stat().st_mtime)
    return max(ckpts, key=lambda p: p.stat().st_mtime)


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


def _damaged(path: Path, detail: str) -> RunError:
    detail = detail.split(". ")[0].rstrip(".")   # torch's advice after its first sentence
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
        first = str(err).strip().splitlines()[0][:200]
        raise RunError(f"refusing to load {path}: it contains pickled objects other than tensors "
                       f"and plain values ({first}). Only load checkpoints you trust; re-save it "
                       "as a plain state dict with torch.save(model.state_dict(), ...)") from None
    except Exception as err:  # noqa: BLE001 - any parse failure means a damaged file
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise _damaged(path, first) from None
    if not isinstance(ckpt, dict):
        raise RunError(f"{path} is not a checkpoint: expected a dict with a 'state_dict'")
    sd = ckpt.get("state_dict", ckpt)
    if isinstance(sd, dict):
        check_finite(sd, path)
    return ckpt, digest


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
    """The model's weights from a checkpoint dict (Lightning, ours, or a bare state dict)."""
    if ema:
        callbacks = ckpt.get("callbacks") or {}
        for name, state in callbacks.items() if isinstance(callbacks, dict) else []:
            if "EMA" in str(name) and isinstance(state, dict):
                weights = state.get("weights") or state.get("state_dict") or state
                if isinstance(weights, dict) and weights and all(
                        isinstance(v, torch.Tensor) for v in weights.values()):
                    return dict(weights), True
        raise RunError("--ema_weights: this checkpoint carries no EMA weights; export without "
                       "--ema_weights")
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise RunError("checkpoint has no 'state_dict' of tensors")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}, False


def load_weights(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor],
                 source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` (training-only keys may be absent or ignored).

    Any other missing key, unexpected key or shape mismatch is an error naming the first
    key that differs, and both shapes.
    """
    expected = model.state_dict()
    skip = TRAINING_ONLY_PREFIXES if getattr(model, "discriminator", None) is None else ()
    given = {k: v for k, v in state_dict.items() if not k.startswith(skip or ("\0", ))}
    for key, value in expected.items():
        if key.startswith(TRAINING_ONLY_PREFIXES) and key not in given:
            continue
        if key not in given:
            raise RunError(f"{source} does not fit the config: key {key!r} (shape "
                           f"{tuple(value.shape)}) is missing; was it trained with another config?")
        if tuple(given[key].shape) != tuple(value.shape):
            raise RunError(f"{source} does not fit the config: {key!r} has shape "
                           f"{tuple(given[key].shape)} in the checkpoint but {tuple(value.shape)} "
                           "in the model built from config.gin")
    extra = sorted(k for k in given if k not in expected and not k.startswith(TRAINING_ONLY_PREFIXES))
    if extra:
        raise RunError(f"{source} does not fit the config: unexpected key {extra[0]!r} "
                       f"({len(extra)} in all); was it trained with another config?")
    model.load_state_dict({k: v for k, v in given.items() if k in expected}, strict=False)


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
    ckpt, digest = read_checkpoint_file(checkpoint)  # the file's one read
    sd, used_ema = extract_state_dict(ckpt, ema=ema)
    if used_ema:
        check_finite(sd, f"{checkpoint} (EMA weights)")
    load_weights(model, sd, source=str(checkpoint))
    model.eval()
    if streaming:
        model.set_streaming(True)
    return Run(model=model, config_path=config_path, checkpoint_path=checkpoint, config_text=text,
               checkpoint_sha256=digest, step=int(ckpt.get("global_step", 0) or 0),
               epoch=int(ckpt.get("epoch", 0) or 0), ema=used_ema)
