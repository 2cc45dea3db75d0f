"""Teach a v3 export its style at export time, from audio files.

nn~ users teach a v3 file a style live, through its attributes (see
:mod:`rave_deploy.style_transfer`). Hosts that send no attributes cannot: the RAVE VST,
the SuperCollider RAVE UGens, every ONNX host. ``rave-deploy export --style-target
T.wav --style-source S.wav`` teaches the model before it ships, exactly as nn~ would learn
it: each file is played through ``forward`` block by block (deterministic, streaming
state from silence), the target with ``learn_target`` on, then the source with
``learn_source`` on. A folder stands for every audio file under it, played one after
the other (each from silence, the running averages going on: longer files weigh more;
files shorter than one block are skipped). The statistics learned by the first batch row
are then given to every row, so batched hosts (Max's ``mc.nn~``) transfer on every row
too.

Every target exports the taught model: TorchScript files start from those statistics
(the host can still learn, or reset either side), ONNX graphs apply them. The sidecar
names the two files (or folders) with their SHA-256, and ``rave-deploy check`` teaches
its reference again from them.
"""
from __future__ import annotations

import hashlib
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from rave_core.data import DataError
from rave_core.data.preprocess import read_audio, search_audio
from rave_core.nn.weight_norm import copy_model
from rave_core.run import sha256_of

from .model import DeployError
from .sidecar import path_for_sidecar, path_from_sidecar, shown_path
from .style_transfer import adain_layers, style_layers

SIDES = ("target", "source")


@dataclass
class StyleAudio:
    """The audio a model is taught from (a file or a folder per side), the host block it
    learns at (samples at the model's rate) and the export's ``--fidelity`` (the decoder's
    layers learn from the latent the file decodes)."""

    target: Optional[Path] = None
    source: Optional[Path] = None
    block_size: int = 2048
    fidelity: float = 0.95
    _fingerprints: Optional[Dict[str, str]] = field(default=None, init=False, repr=False,
                                                    compare=False)

    def as_sidecar(self, folder: Path) -> Dict[str, object]:
        """The ``style`` field of a sidecar in ``folder``: each side's path, relative to
        ``folder`` (:func:`~rave_deploy.sidecar.path_for_sidecar`: no home folder in a
        shared file), and SHA-256 (a folder's: of its files' names and SHA-256s, see
        :func:`fingerprint`; computed once, whatever the number of targets)."""
        if self._fingerprints is None:
            self._fingerprints = {side: fingerprint(Path(p)) for side in SIDES
                                  if (p := getattr(self, side)) is not None}
        files = {side: {"path": path_for_sidecar(Path(getattr(self, side)), folder),
                        "sha256": digest} for side, digest in self._fingerprints.items()}
        return {**files, "block_size": self.block_size, "fidelity": self.fidelity}

    @classmethod
    def from_sidecar(cls, style: Dict[str, object], sidecar: Path) -> "StyleAudio":
        """The files named in the ``style`` field of the sidecar file ``sidecar`` (paths
        relative to its folder, or absolute as older versions wrote them); a file that is
        missing or has changed since the export raises :class:`StyleAudioError`."""
        paths = {}
        for side in SIDES:
            entry = style.get(side)
            if not entry:
                continue
            recorded = str(entry["path"])
            path = path_from_sidecar(recorded, sidecar)
            shown = shown_path(path, recorded)
            if not path.exists():
                raise StyleAudioError(f"the style {side} {shown}, which the file was taught "
                                      "from, is gone: put it back, or export again")
            if fingerprint(path) != entry.get("sha256"):
                raise StyleAudioError(f"the style {side} {shown} changed since the export "
                                      "(SHA-256 differs): put the original back, or export "
                                      "again")
            paths[side] = path
        return cls(block_size=int(style.get("block_size", 2048)),
                   fidelity=float(style.get("fidelity", 0.95)), **paths)


#: below this peak (-80 dBFS) style audio is taken for silence
SILENT_PEAK = 1e-4


class StyleAudioError(DeployError):
    """A style file cannot be used (unreadable, too short, or not the one exported with)."""


#: what a style path is, for each kind that is neither a file nor a folder
_OTHER_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def style_files(path: Path, side: Optional[str] = None) -> List[Path]:
    """``path`` itself, or the audio files under the folder ``path`` (sorted, as
    ``rave-core preprocess`` finds them). A subfolder that cannot be entered raises
    :class:`StyleAudioError`: teaching from part of the folder would go unnoticed; so does
    a folder without audio files, and a path that is neither a file nor a folder
    (``/dev/null``). ``side``: the messages start ``--style-SIDE PATH:``, the option the
    path was given to (``--style-target`` and ``--style-source`` may both be folders)."""
    path = Path(path)
    prefix = f"--style-{side} " if side else ""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # search_audio says what is wrong with it
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = next((what for test, what in _OTHER_KINDS if test(mode)), "a special file")
        raise StyleAudioError(f"{prefix}{path}: not a file or folder (it is {kind}): give an "
                              "audio file, or a folder of them")
    try:
        search = search_audio([str(path)], remedy="give an audio file, or a folder of them")
    except DataError as err:
        message = str(err)
        if prefix:  # (the path said once)
            message = f"{prefix}{path}: " + message.replace(f" found in {path}", " found in it", 1)
        raise StyleAudioError(message) from None
    if search.unreadable:
        folder, reason = search.unreadable[0]
        shown = f"{path}: {folder}" if prefix and Path(folder) != path else f"{folder}"
        raise StyleAudioError(f"{prefix}{shown}: {reason}")
    return search.files


def fingerprint(path: Path) -> str:
    """SHA-256 of a file; of a folder, over each audio file's relative path and SHA-256
    (a file added, removed, renamed or changed changes it)."""
    path = Path(path)
    if path.is_file():
        return sha256_of(path)
    listing = "".join(f"{f.relative_to(path).as_posix()}\t{sha256_of(f)}\n"
                      for f in style_files(path))
    # a name that is not UTF-8 hashes as its own bytes (strict UTF-8 would fail on it)
    return hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()


def has_style_layers(model: torch.nn.Module) -> bool:
    """Whether ``model`` has AdaIN layers (v3) that can learn a style."""
    return bool(adain_layers(model))


def teaching_block(block_size: int, ratio: int) -> int:
    """The block a style is taught at: ``block_size`` (samples at the model's rate)
    rounded up to a multiple of the model's ``ratio`` (``forward`` takes only those)."""
    return max(ratio, -(-int(block_size) // ratio) * ratio)


def teach_style(model: torch.nn.Module, style: StyleAudio,
                progress: bool = False) -> torch.nn.Module:
    """A copy of ``model`` whose AdaIN layers learned ``style`` as nn~ would learn it
    (module docstring). ``model`` is left as it is.

    Raises :class:`StyleAudioError` for a model without AdaIN layers, an unreadable file,
    or a file shorter than one block.
    """
    from .torchscript import build_scripted_rave  # torchscript imports this package's model

    if not has_style_layers(model):
        raise StyleAudioError("--style-target / --style-source: this model has no AdaIN "
                              "layers; only v3 models (config v3) learn a style")
    block = teaching_block(style.block_size, int(model.ratio))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run's warnings are the export's to give
        host = build_scripted_rave(model, fidelity=style.fidelity, deterministic=True,
                                   tuned_block=block).eval()
    for side in SIDES:
        path = getattr(style, side)
        if path is None:
            continue
        getattr(host, f"set_reset_{side}")(True)  # what the checkpoint learned: forgotten
        getattr(host, f"set_learn_{side}")(True)
        taught_blocks, peak = 0, 0.0
        for file in style_files(Path(path), side):
            audio = _read(file, side, int(model.sr), int(model.n_channels))
            starts = range(0, audio.shape[-1] - block + 1, block)  # whole blocks only
            if len(starts):
                peak = max(peak, float(audio[..., :starts[-1] + block].abs().max()))
            host.reset()  # each file from silence
            with torch.inference_mode():
                for start in tqdm(starts, unit="block", desc=f"style {side}", leave=False,
                                  disable=None if progress else True):  # None: off if no TTY
                    host.forward(audio[..., start:start + block])
            taught_blocks += len(starts)
        getattr(host, f"set_learn_{side}")(False)
        if not taught_blocks:
            raise StyleAudioError(
                f"--style-{side} {path}: shorter than one block ({block} samples, "
                f"{1000 * block / int(model.sr):.0f} ms at {int(model.sr)} Hz)"
                f"{'' if Path(path).is_file() else ', every file of it'}: give a few seconds "
                "of the sound")
        if peak < SILENT_PEAK:
            # AdaIN would divide by the statistics of silence: the file plays silence
            # (style target) or a blown-up output (style source)
            level = f"{20 * math.log10(peak):.0f} dBFS" if peak > 0 else "digital silence"
            raise StyleAudioError(
                f"--style-{side} {path}: silent (peak {level}): a style is learnt from "
                "the sound itself; give a recording of it")

    taught = copy_model(model)
    learned = style_layers(host)
    adains = adain_layers(taught)
    if len(learned) != len(adains):  # the export's layers are the model's, in its order
        raise DeployError(f"teaching found {len(learned)} style layers for the model's "
                          f"{len(adains)} AdaIN layers: report this")
    with torch.no_grad():
        for (_, layer), (_, adain) in zip(learned, adains):
            for name in ("mean_x", "std_x", "mean_y", "std_y"):
                # row 0 learned (batch 1): every batch row gets it
                getattr(adain, name).copy_(getattr(layer, name)[:1].expand_as(getattr(adain, name)))
            for name in ("num_update_x", "num_update_y"):
                getattr(adain, name).copy_(getattr(layer, name))
    return taught


def _read(path: Path, side: str, sr: int, channels: int) -> torch.Tensor:
    """``(1, channels, time)`` at the model's rate."""
    try:
        audio = read_audio(path, sr, channels)
    except DataError as err:
        raise StyleAudioError(f"--style-{side} {err}") from None
    return torch.from_numpy(audio)[None]
