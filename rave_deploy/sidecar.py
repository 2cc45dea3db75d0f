"""The JSON sidecar written next to every artefact: what it is and where it came from."""
from __future__ import annotations

import errno
import json
import os
import platform
import stat
from pathlib import Path
from typing import Dict, List, Optional

import torch

import rave_core
from rave_core.run import Run

from .io import write_json
from .model import DeployModel

FORMAT = "rave-deploy-sidecar/1"
FOLDER_SIDECAR = "rave-deploy.json"


def sidecar_path(artifact: Path, folder: Optional[bool] = None) -> Path:
    """``model.ts`` -> ``model.ts.json``; a folder artefact keeps it inside. ``folder``:
    whether the artefact is a folder (default: whether one is there now)."""
    artifact = Path(artifact)
    if artifact.is_dir() if folder is None else folder:
        return artifact / FOLDER_SIDECAR
    return artifact.with_name(artifact.name + ".json")


def host_block_sizes(ratio: int, largest: int = 4096) -> List[int]:
    """Block sizes a host may use: powers of two from ``max(64, ratio)`` up to ``largest``."""
    sizes, n = [], max(64, ratio)
    while n <= max(largest, ratio):
        sizes.append(n)
        n *= 2
    return sizes


def path_for_sidecar(path: Path, folder: Path) -> str:
    """``path`` as a sidecar in ``folder`` records it: relative to ``folder``, both taken as
    real paths (links resolved), in POSIX form (``../runs/brave/config.gin``), so that a
    project folder moved or shared whole keeps it right and a shared sidecar tells nobody
    where the files were (``/home/alice/...``); absolute only where no relative path
    exists (another Windows drive)."""
    real = os.path.realpath(path)
    try:
        return Path(os.path.relpath(real, os.path.realpath(folder))).as_posix()
    except ValueError:  # on Windows, another drive
        return real


def path_from_sidecar(recorded: str, sidecar: Path) -> Path:
    """A path the sidecar file ``sidecar`` records (:func:`path_for_sidecar`), to open:
    relative to the real folder of that file (links resolved: the sidecar read beside a
    symbolic link's target, see :func:`find_sidecar`, or a sidecar that is itself a
    link); an absolute one, as older versions wrote, as it is. (Its ``..`` are taken off
    by name: they lead up from a real folder, where the system does the same.)"""
    path = Path(recorded)
    if path.is_absolute():
        return path
    folder = os.path.dirname(os.path.realpath(sidecar))
    return Path(os.path.normpath(os.path.join(folder, path)))


def shown_path(path: Path, recorded: str) -> str:
    """``path`` as its user recognises it, for messages and reports: relative to the
    current folder where it is inside it, or where that is shorter than ``recorded`` (the
    path as it was written: in a sidecar, or on the command line), else ``recorded``;
    never made absolute (a report is shared: ``/home/alice/...`` stays out of it)."""
    try:
        here = os.path.relpath(path)
    except (ValueError, OSError):  # another Windows drive; no current folder any more
        return str(recorded)
    inside = here != os.pardir and not here.startswith(os.pardir + os.sep)
    return here if inside or len(here) < len(str(recorded)) else str(recorded)


def build_sidecar(target: str, artifact: Path, run: Run, core: DeployModel,
                  extra: Dict[str, object], sidecar_folder: Path) -> Dict[str, object]:
    """The sidecar of ``artifact``. ``sidecar_folder``: the folder its file goes in (the
    artefact's own for a folder artefact: :func:`sidecar_path`), against which the run's
    paths are recorded (:func:`path_for_sidecar`)."""
    return {
        "format": FORMAT,
        "target": target,
        "artifact": Path(artifact).name,
        "source": {
            "checkpoint": path_for_sidecar(run.checkpoint_path, sidecar_folder),
            "checkpoint_sha256": run.checkpoint_sha256,
            "config": path_for_sidecar(run.config_path, sidecar_folder),
            "step": run.step,
            "ema_weights": run.ema,
        },
        "sample_rate": core.sr,
        "channels": core.n_channels,
        "ratio": core.ratio,
        "latent_size": core.latent_size,
        "full_latent_size": core.full_latent_size,
        "fidelity": core.fidelity_threshold,
        # discrete: the latent channels carry code indices, 0..codebook_size - 1
        "latent_kind": core.latent_kind,
        **({"codebook_size": core.codebooks.codebook_size} if core.codebooks is not None else {}),
        "deterministic": bool(core.deterministic),
        "latency_samples": core.latency_samples,
        "encode_latency_samples": core.encode_delay,
        "decode_latency_samples": core.decode_delay,
        "block_multiple": core.ratio,
        "block_sizes": host_block_sizes(core.ratio),
        "versions": {
            "rave_deploy": rave_core.__version__,
            "torch": torch.__version__.split("+")[0],
            "python": platform.python_version(),
        },
        **extra,
    }


def write_sidecar(artifact: Path, data: Dict[str, object]) -> Path:
    path = sidecar_path(artifact)
    write_json(path, data)
    return path


def find_sidecar(artifact: Path) -> Optional[Path]:
    """The sidecar describing ``artifact``: beside it (:func:`sidecar_path`), else, for a
    symbolic link, beside the file it links to; None when there is none, as when the
    sidecar's name would be longer than a file name can be (no file can have it).

    Raises:
        OSError: the sidecar's folder cannot be searched (e.g. permission denied).
    """
    artifact = Path(artifact)
    candidates = [sidecar_path(artifact)]
    if artifact.is_symlink():
        candidates.append(sidecar_path(Path(os.path.realpath(artifact))))
    return next((path for path in candidates if _is_file(path)), None)


def sidecar_file_of(artifact: Path) -> Path:
    """The sidecar file of ``artifact`` as messages name it and recorded paths are taken
    from: the one :func:`find_sidecar` finds (beside a symbolic link's target, for a
    link), else where it belongs (also when its folder cannot be searched)."""
    try:
        return find_sidecar(artifact) or sidecar_path(artifact)
    except OSError:
        return sidecar_path(artifact)


def recorded_path(artifact: Path, recorded: str) -> Path:
    """A path the sidecar of ``artifact`` records (``source.checkpoint``, a style file),
    to open: :func:`path_from_sidecar` from :func:`sidecar_file_of`."""
    return path_from_sidecar(recorded, sidecar_file_of(artifact))


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file; False where no file can be (a name too long)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
            return False
        raise


def read_sidecar(artifact: Path) -> Dict[str, object]:
    """The parsed sidecar of ``artifact`` (:func:`find_sidecar`).

    Raises:
        FileNotFoundError: ``artifact`` has none.
        OSError, ValueError, UnicodeDecodeError: it cannot be read, or is not JSON.
    """
    path = find_sidecar(artifact)
    if path is None:
        raise FileNotFoundError(sidecar_path(artifact))
    return json.loads(path.read_text())
