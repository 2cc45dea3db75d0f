"""Training checkpoints: plain, safe to load, written atomically, enough to resume exactly.

A checkpoint is a dict of tensors and plain Python values only, so
``torch.load(path, weights_only=True)`` reads it (and :func:`rave_core.run.open_run`
loads the model from it). Keys follow PyTorch Lightning's layout, which acids-rave's
runs use, minus ``pytorch-lightning_version``:

- ``state_dict``: the whole model (discriminator included);
- ``global_step``, ``epoch``;
- ``optimizer_states`` (generator, then discriminator), ``lr_schedulers``;
- ``callbacks``: ``{"BetaWarmupCallback": {"training_steps": n}}``;
- ``rng_states``: one entry per process (torch, CUDA, numpy, python RNGs);
- ``loader``: where the data stream is (batches taken, batch size, world size, seed);
- ``best_validation``: the lowest validation distance so far (``best.ckpt``'s).
"""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict

import numpy as np
import torch

from ..os_errors import os_error_in
from ..run import read_checkpoint

__all__ = ["capture_rng", "copy_checkpoint", "restore_rng", "save_checkpoint", "load_checkpoint",
           "replace_atomically"]


def capture_rng() -> Dict[str, Any]:
    """This process's RNG states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(state), gauss],
    }


def restore_rng(state: Dict[str, Any]) -> None:
    """Undo :func:`capture_rng` (CUDA states only where CUDA is there)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def replace_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through ``write`` to a temporary sibling, fsync, then rename over ``path``:
    a reader (or a crash) sees the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        # (a read-only folder refuses even to remove a file that is not there: EROFS)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = os_error_in(err)
        if cause is None:
            raise
        # The file the user knows is ``path``, not the temporary file an open, write, fsync
        # or rename names (or a failed write, which names none); another file (the source
        # of a copy) keeps its name. torch.save's zip writer reports a failed write (a full
        # disk) as "unexpected pos": the file-system error in its chain is raised instead.
        named = cause.filename
        if named is None or _same_file_name(named, tmp):
            raise OSError(cause.errno, cause.strerror, str(path)) from err
        if cause is not err:
            raise OSError(cause.errno, cause.strerror, named) from err
        raise


def _same_file_name(name: object, path: Path) -> bool:
    """Whether an error's ``filename`` (text, bytes or a path) names ``path``."""
    try:
        return Path(os.fsdecode(name)) == path  # type: ignore[arg-type]
    except TypeError:  # a file descriptor
        return False


def save_checkpoint(path: Path, checkpoint: Dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` atomically."""
    replace_atomically(path, lambda f: torch.save(_to_cpu(checkpoint), f))


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Atomically copy a saved checkpoint (cheaper than serialising it again)."""
    replace_atomically(dst, lambda f: f.write(Path(src).read_bytes()))


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (raises :class:`~rave_core.run.RunError`)."""
    return read_checkpoint(Path(path))


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small text file (the run's ``config.gin``) atomically."""
    replace_atomically(path, lambda f: f.write(text.encode()))
