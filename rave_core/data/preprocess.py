"""Stream folders of audio into one flat float32 file (see :mod:`rave_core.data` for the format).

Memory stays flat whatever the file lengths: audio is decoded in blocks, resampled with
a streaming resampler and appended to ``audio.bin`` block by block.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf
import soxr
import yaml
from tqdm import tqdm

from . import DataError, DataInputError

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".aiff", ".aif", ".ogg", ".mp3"})
AUDIO_FILE = "audio.bin"
INDEX_FILE = "index.json"
SKIPPED_FILE = "skipped.txt"
METADATA_FILE = "metadata.yaml"
FORMAT = "float32"
LAYOUT = "(time, channels) interleaved, little-endian float32"

#: Bounds that catch typos (--sampling_rate 441, --channels 100) before an hour of work.
MIN_CHANNELS, MAX_CHANNELS = 1, 64
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 8000, 384000
SILENCE_PEAK = 1e-4
BLOCK_FRAMES = 65536
# Files an earlier (interrupted) run of ours may leave in an output folder.
_OWN_FILES = frozenset({AUDIO_FILE, INDEX_FILE, SKIPPED_FILE, METADATA_FILE})


@dataclass
class PreprocessReport:
    """What :func:`preprocess` wrote and what it skipped (``skipped``: (path, reason) pairs)."""

    output_path: Path
    channels: int
    sr: int
    n_frames: int = 0
    kept: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_seconds(self) -> float:
        return self.n_frames / self.sr

    def __str__(self) -> str:
        lines = [
            f"{len(self.kept)} files, {self.n_seconds:.1f} s of audio "
            f"({self.channels} ch, {self.sr} Hz) -> {self.output_path}"
        ]
        lines += [f"skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


class _SkipFile(Exception):
    """Internal: this file is not usable; the message is the reason."""


def preprocess(
    input_paths: list[str],
    output_path: str,
    channels: int = 1,
    sampling_rate: int = 44100,
    progress: bool = True,
) -> PreprocessReport:
    """Decode, convert and resample all audio under ``input_paths`` into a dataset folder.

    Folders are walked recursively in sorted order; files may also be given directly.
    Every file becomes ``(time, channels)`` float32 at ``sampling_rate`` appended to
    ``audio.bin``. Unreadable, empty and silent files are skipped with a reason.

    The dataset is built in ``<output_path>.partial-<pid>`` and renamed into place only
    when complete, replacing an existing dataset at ``output_path``; an interrupted run
    removes its partial folder and leaves any previous dataset untouched.

    Raises:
        DataError: bad arguments, a missing input path, no audio found, every file
            skipped. DataInputError: an ``output_path`` that exists and is not a dataset
            (it holds other files), or an input inside ``output_path``.
    """
    if not MIN_CHANNELS <= channels <= MAX_CHANNELS:
        raise DataError(f"channels must be {MIN_CHANNELS} to {MAX_CHANNELS} (1 mono, 2 stereo, "
                        f"more for multichannel or ambisonic audio), got {channels}")
    if not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE:
        raise DataError(f"sampling_rate must be {MIN_SAMPLING_RATE} to {MAX_SAMPLING_RATE} Hz "
                        f"(the config's SAMPLING_RATE, e.g. 44100 or 48000), got {sampling_rate}")
    files = find_audio_files(input_paths)
    output = Path(output_path)
    _check_input_outside_output(input_paths, output)
    _check_output_replaceable(output)
    _remove_stale_partials(output)

    partial = output.with_name(f"{output.name}.partial-{os.getpid()}")
    if partial.exists():  # left by an earlier process that had our pid
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        report = _build(files, partial, channels, sampling_rate, progress)
        _replace_dir(partial, output)
    except BaseException:  # KeyboardInterrupt included: never leave a partial dataset
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report.output_path = output
    return report


def find_audio_files(input_paths: list[str]) -> list[Path]:
    """Audio files under ``input_paths`` (files kept as given), sorted per folder, deduplicated."""
    if isinstance(input_paths, (str, os.PathLike)):
        input_paths = [input_paths]
    if not input_paths:
        raise DataError("no input paths given; pass one or more folders of audio files")
    found: list[Path] = []
    for raw in input_paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"input path not found: {path}; check the path (a folder or an audio file)")
        found.extend([path] if path.is_file() else _walk_audio(path))
    seen: set[Path] = set()
    unique = []
    for path in found:  # overlapping inputs must not duplicate audio
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    if not unique:
        names = ", ".join(str(p) for p in input_paths)
        exts = ", ".join(sorted(e.lstrip(".") for e in AUDIO_EXTENSIONS))
        raise DataError(f"no audio files ({exts}) found in {names}; point preprocess at a folder of audio")
    return unique


def _walk_audio(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # in-place, so os.walk descends in a deterministic order
        for name in sorted(filenames):
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                yield Path(dirpath) / name


def _check_input_outside_output(input_paths, output: Path) -> None:
    """Replacing ``output`` deletes what is in it: refuse when an input lies there."""
    if isinstance(input_paths, (str, os.PathLike)):
        input_paths = [input_paths]
    target = output.resolve()
    for raw in input_paths:
        source = Path(raw).resolve()
        if source == target or target in source.parents:
            raise DataInputError(
                f"--input_path {raw} is inside --output_path {output}: writing the dataset "
                "there would delete the input audio; choose an output folder that does not hold it")


def _check_output_replaceable(output: Path) -> None:
    """Refuse to overwrite anything that is not (an earlier attempt at) one of our datasets:
    an existing folder is replaced only when it holds nothing but the files preprocess
    writes (audio.bin, index.json, skipped.txt, metadata.yaml)."""
    if not output.exists():
        return
    if not output.is_dir():
        raise DataError(f"output path {output} is a file; choose a folder path for the dataset")
    extra = sorted(p.name + ("/" if p.is_dir() else "") for p in output.iterdir()
                   if p.name not in _OWN_FILES or not p.is_file())
    if not extra:
        return
    shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
    raise DataInputError(
        f"output path {output} exists and is not a dataset written by preprocess: it also "
        f"holds {shown}, which replacing it would delete; choose a new or empty folder for "
        "--output_path, or remove them")


def _remove_stale_partials(output: Path) -> None:
    """Delete ``.partial-<pid>`` / ``.old-<pid>`` siblings left by killed runs whose process is gone."""
    if not output.parent.exists():
        return
    leftovers = [*output.parent.glob(f"{output.name}.partial-*"), *output.parent.glob(f"{output.name}.old-*")]
    for sibling in leftovers:
        pid = sibling.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _build(files: list[Path], out_dir: Path, channels: int, sr: int, progress: bool) -> PreprocessReport:
    """Write audio.bin, index.json and skipped.txt, then metadata.yaml last."""
    report = PreprocessReport(output_path=out_dir, channels=channels, sr=sr)
    index = []
    bar = tqdm(total=len(files), unit="file", desc="preprocess", disable=not progress)
    with open(out_dir / AUDIO_FILE, "wb") as fh, bar:
        for path in files:
            try:
                info, length = _append_file(fh, path, report.n_frames, channels, sr, bar)
            except _SkipFile as skip:
                report.skipped.append((str(path), str(skip)))
                logger.warning("skipped %s: %s", path, skip)
            else:
                index.append({"path": str(path), "offset": report.n_frames, "length": length, **info})
                report.kept.append(str(path))
                report.n_frames += length
            bar.update(1)
            bar.set_postfix_str(f"{report.n_frames / sr:.0f} s audio")

    _write_skipped(out_dir / SKIPPED_FILE, report.skipped)
    if not report.kept:
        first_path, first_reason = report.skipped[0]
        raise DataError(
            f"all {len(report.skipped)} audio files were skipped (e.g. {first_path}: {first_reason}); "
            "fix or replace the input audio"
        )
    with open(out_dir / INDEX_FILE, "w") as f:
        json.dump({"layout": LAYOUT, "files": index}, f, indent=1)
    metadata = {
        "channels": channels,
        "n_seconds": float(report.n_seconds),
        "sr": sr,
        "lazy": False,
        "files": len(report.kept),
        "format": FORMAT,
    }
    _write_atomically(out_dir / METADATA_FILE, yaml.safe_dump(metadata, sort_keys=False))
    return report


def _append_file(
    fh: BinaryIO, path: Path, start_frame: int, channels: int, sr: int, bar: tqdm
) -> tuple[dict, int]:
    """Append one file to ``fh``; return (source info, frames written) or raise _SkipFile.

    On a skip, ``fh`` is truncated back to where this file started, so a file that
    turns out silent or corrupt halfway leaves no trace.
    """
    start_byte = start_frame * channels * 4
    written = 0
    peak = 0.0
    try:
        with _open_audio(path) as audio:
            if audio.frames == 0:
                raise _SkipFile("empty (0 frames)")
            info = {"source_sr": audio.samplerate, "source_channels": audio.channels}
            for block in _resampled_blocks(audio, channels, sr):
                peak = max(peak, float(np.abs(block).max(initial=0.0)))
                _write_block(fh, block)
                written += len(block)
                bar.set_postfix_str(f"{(start_frame + written) / sr:.0f} s audio", refresh=False)
    except _SkipFile:
        _truncate(fh, start_byte)
        raise
    if written == 0:
        _truncate(fh, start_byte)
        raise _SkipFile("empty (0 frames after decoding)")
    if peak < SILENCE_PEAK:
        _truncate(fh, start_byte)
        raise _SkipFile(f"silent (peak {peak:.1e} < {SILENCE_PEAK:.0e})")
    return info, written


# Decoding errors: sf.LibsndfileError is a RuntimeError; truncated files may raise the others.
_DECODE_ERRORS = (RuntimeError, OSError, ValueError, EOFError)


def _open_audio(path: Path) -> sf.SoundFile:
    try:
        return sf.SoundFile(str(path))
    except _DECODE_ERRORS as err:
        raise _SkipFile(f"unreadable or not audio ({_one_line(err)})") from err


def _read_block(audio: sf.SoundFile) -> np.ndarray:
    """Next ``(time, source_channels)`` float32 block; decode errors become skips.

    Only reads are guarded: a write error (disk full) must stop the run, not skip a file.
    """
    try:
        return audio.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
    except _DECODE_ERRORS as err:
        raise _SkipFile(f"corrupt audio data ({_one_line(err)})") from err


def _resampled_blocks(audio: sf.SoundFile, channels: int, sr: int) -> Iterator[np.ndarray]:
    """Yield ``(time, channels)`` float32 blocks of ``audio`` converted to ``channels`` at ``sr``."""
    resampler = None
    if audio.samplerate != sr:
        resampler = soxr.ResampleStream(audio.samplerate, sr, channels, dtype="float32", quality="HQ")
    while True:
        block = _read_block(audio)
        if len(block) == 0:
            break
        if not np.isfinite(block).all():
            bad = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            at = (audio.tell() - len(block) + bad) / audio.samplerate
            raise _SkipFile(f"non-finite samples (NaN or infinity) at {at:.2f} s: the file is "
                            "damaged; fix or remove it")
        block = convert_channels(block, channels)
        if resampler is not None:
            block = resampler.resample_chunk(block)
        if len(block):
            yield block
    if resampler is not None:  # flush the filter tail
        tail = resampler.resample_chunk(np.zeros((0, channels), np.float32), last=True)
        if len(tail):
            yield tail


def read_audio(path: Path, sr: int, channels: int) -> np.ndarray:
    """One audio file as ``(channels, time)`` float32 at ``sr``, converted as the dataset
    converts it (:func:`convert_channels`, the same resampler). Raises
    :class:`~rave_core.data.DataError` naming the file when it cannot be decoded."""
    path = Path(path)
    try:
        with _open_audio(path) as audio:
            blocks = list(_resampled_blocks(audio, channels, sr))
    except _SkipFile as err:
        raise DataError(f"{path}: {err}; give a .wav, .flac, .aiff, .ogg or .mp3 file "
                        "soundfile can decode") from None
    if not blocks:
        return np.zeros((channels, 0), np.float32)
    return np.ascontiguousarray(np.concatenate(blocks).T)


def convert_channels(block: np.ndarray, channels: int) -> np.ndarray:
    """Map a ``(time, source_channels)`` block to ``(time, channels)``.

    Mono output averages all source channels; otherwise source channels are taken in
    order and repeated cyclically when there are fewer of them (mono -> stereo duplicates).
    """
    source = block.shape[1]
    if source == channels:
        return block
    if channels == 1:
        return block.mean(axis=1, keepdims=True, dtype=np.float32)
    picks = np.arange(channels) % source
    return block[:, picks]


def _write_block(fh: BinaryIO, block: np.ndarray) -> None:
    """Append one ``(time, channels)`` block as little-endian float32 (a seam tests patch)."""
    fh.write(memoryview(np.ascontiguousarray(block, dtype="<f4")).cast("B"))


def _truncate(fh: BinaryIO, size: int) -> None:
    fh.flush()
    fh.seek(size)
    fh.truncate(size)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    with open(path, "w") as f:
        f.writelines(f"{p}\t{reason}\n" for p, reason in skipped)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished ``new`` folder to ``target``, replacing an old dataset there.

    Directory renames cannot overwrite a non-empty folder, so the old one is renamed
    aside first; at no point does ``target`` hold a mix of old and new files.
    """
    if not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)  # put the previous dataset back
        raise
    shutil.rmtree(old, ignore_errors=True)
