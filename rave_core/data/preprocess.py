"""Stream folders of audio into one flat float32 file (see :mod:`rave_core.data` for the format).

Memory stays flat whatever the file lengths: audio is decoded in blocks, resampled with
a streaming resampler and appended to ``audio.bin`` block by block.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf
import soxr
import yaml
from tqdm import tqdm

# bounds of --channels, --sampling_rate, the dataset's file names, the audio extensions
# and the default training window (a module of their own: the CLI reads them)
from ..dataset_limits import (AUDIO_EXTENSIONS, AUDIO_FILE, DEFAULT_N_SIGNAL, INDEX_FILE,
                              MAC_FOLDER_FILE, MAC_METADATA_PREFIX, MAX_CHANNELS,
                              MAX_SAMPLING_RATE, METADATA_FILE, MIN_CHANNELS,
                              MIN_SAMPLING_RATE, SKIPPED_FILE)
from ..folder_lock import pid_alive
from ..text import listed, printable
from . import DataError, DataInputError

FORMAT = "float32"
LAYOUT = "(time, channels) interleaved, little-endian float32"

SILENCE_PEAK = 1e-4
#: Float files may hold samples beyond full scale (1.0); a hair above it (decoder
#: overshoot, rounding) is common and harmless, so only peaks beyond this get a note.
OVER_FULL_SCALE_PEAK = 1.01
BLOCK_FRAMES = 65536
# Files an earlier (interrupted) run of ours may leave in an output folder.
_OWN_FILES = frozenset({AUDIO_FILE, INDEX_FILE, SKIPPED_FILE, METADATA_FILE})


@dataclass
class PreprocessReport:
    """What :func:`preprocess` wrote and what it skipped (``skipped``: (path, reason)
    pairs, folders that could not be entered first); ``warnings``: (path, note) pairs for
    files kept as they are but worth a look (samples beyond full scale)."""

    output_path: Path
    channels: int
    sr: int
    n_frames: int = 0
    kept: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_seconds(self) -> float:
        return self.n_frames / self.sr

    @property
    def too_short(self) -> str | None:
        """A note when the dataset is shorter than one training window of the default
        ``--n_signal`` (training would refuse it), else None."""
        return short_dataset_note(self.n_frames, self.sr)

    def __str__(self) -> str:
        n_files = len(self.kept)
        lines = [
            f"{n_files} file{'s' * (n_files != 1)}, {self.n_seconds:.1f} s of audio "
            f"({self.channels} ch, {self.sr} Hz) -> {self.output_path}"
        ]
        if self.too_short:
            lines.append(f"warning {self.output_path}: {self.too_short}")
        lines += [f"warning {path}: {note}" for path, note in self.warnings]
        lines += [f"skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(printable(line) for line in lines)


#: The shortest window :func:`short_dataset_note` suggests: a power of two that the BRAVE
#: and v1 configs take (their ratios divide it, their STFTs need 18432 samples or fewer);
#: the v2 family needs 37376 (v2_small) to 71680 (v2, v3).
_SHORTEST_SUGGESTED_WINDOW = 32768


def short_dataset_note(n_frames: int, sr: int) -> str | None:
    """Why a dataset of ``n_frames`` frames at ``sr`` Hz cannot train with the default
    ``--n_signal`` (it is shorter than one window), and the ``--n_signal`` and ``--batch``
    it could train with (two windows or more: one for training, one for validation);
    None when it is long enough."""
    if n_frames >= DEFAULT_N_SIGNAL:
        return None
    have = f"{n_frames} sample{'s' * (n_frames != 1)} ({n_frames / sr:.2f} s)"
    need = (f"(--n_signal, {DEFAULT_N_SIGNAL} samples by default: {DEFAULT_N_SIGNAL / sr:.2f} s "
            f"at {sr} Hz), which `rave-core train` needs at least")
    window = _SHORTEST_SUGGESTED_WINDOW
    if n_frames >= 2 * window:   # (then fewer than 4 windows: DEFAULT_N_SIGNAL is 4 of them)
        batch = min(8, n_frames // window - 1)
        fix = (f"train with --n_signal {window} --batch {batch} (a config that takes windows "
               "that short: brave and v1 do, v2 configs need longer ones), or add audio")
    else:
        least = 2 * _SHORTEST_SUGGESTED_WINDOW
        fix = (f"add audio: {least / sr:.1f} s or more trains brave or v1 with --n_signal "
               f"{_SHORTEST_SUGGESTED_WINDOW} --batch 1, {9 * DEFAULT_N_SIGNAL / sr:.0f} s or "
               "more any config with the defaults")
    return f"{have} of audio, less than one training window {need}; {fix}"


@dataclass
class AudioSearch:
    """What :func:`search_audio` found: the audio files, the folders it could not enter
    (``unreadable``: (folder, reason) pairs) and how many other files it passed over, by
    extension (``others``; macOS metadata files are not counted)."""

    files: list[Path] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    others: Counter = field(default_factory=Counter)


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
    search = search_audio(input_paths)
    output = Path(output_path)
    _check_input_outside_output(input_paths, output)
    _check_output_replaceable(output)
    _remove_stale_partials(output)

    partial = output.with_name(f"{output.name}.partial-{os.getpid()}")
    if partial.exists():  # left by an earlier process that had our pid
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        report = _build(search, partial, channels, sampling_rate, progress)
        _replace_dir(partial, output)
    except BaseException:  # KeyboardInterrupt included: never leave a partial dataset
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report.output_path = output
    return report


def find_audio_files(input_paths: list[str]) -> list[Path]:
    """Audio files under ``input_paths`` (files kept as given), sorted per folder, deduplicated."""
    return search_audio(input_paths).files


def search_audio(input_paths: list[str],
                 remedy: str = "point preprocess at a folder of audio") -> AudioSearch:
    """Walk ``input_paths`` for audio files (see :class:`AudioSearch`). Folders are walked
    in sorted order, following symbolic links to folders, each real folder once (a link
    to an ancestor does not loop); files given directly are kept as given.

    Raises:
        DataError: no input paths, a missing one, or no audio file found (the message
            says which other files were there, ending with ``remedy``).
    """
    if isinstance(input_paths, (str, os.PathLike)):
        input_paths = [input_paths]
    if not input_paths:
        raise DataError("no input paths given; pass one or more folders of audio files")
    search = AudioSearch()
    found: list[Path] = []
    for raw in input_paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"input path not found: {path}; check the path (a folder or an audio file)")
        found.extend([path] if path.is_file() else _walk_audio(path, search))
    seen: set[Path] = set()
    for path in found:  # overlapping inputs must not duplicate audio
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            search.files.append(path)
    if not search.files:
        raise DataError(f"{_no_audio_message(input_paths, search)}; {remedy}")
    return search


def _walk_audio(root: Path, search: AudioSearch) -> Iterator[Path]:
    """Audio files under ``root``; other files and unenterable folders go to ``search``."""
    visited = {_folder_id(root)}

    def unreadable(err: OSError) -> None:  # os.walk would otherwise drop the folder silently
        search.unreadable.append((err.filename or str(root), _folder_reason(err)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        # in place, so os.walk descends in a deterministic order and enters each real
        # folder once (links to an ancestor or to a folder already walked are passed over)
        dirnames[:] = [d for d in sorted(dirnames) if _first_visit(Path(dirpath) / d, visited)]
        for name in sorted(filenames):
            extension = Path(name).suffix.lower()
            if name.startswith(MAC_METADATA_PREFIX) or name == MAC_FOLDER_FILE:
                continue
            if extension in AUDIO_EXTENSIONS:
                yield Path(dirpath) / name
            else:
                search.others[extension or "(no extension)"] += 1


def _folder_id(path: Path):
    """A folder's identity whatever the path (links included); None when it cannot be
    stat'ed (os.walk then reports it through onerror)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _first_visit(path: Path, visited: set) -> bool:
    key = _folder_id(path)
    if key is None:  # let os.walk try it, and report why it cannot
        return True
    if key in visited:
        return False
    visited.add(key)
    return True


def _folder_reason(err: OSError) -> str:
    why = ("permission denied" if err.errno in (errno.EACCES, errno.EPERM)
           else err.strerror or _one_line(err))
    return f"folder not searched ({why}): make it readable, or move it out of the input"


def _no_audio_message(input_paths, search: AudioSearch) -> str:
    """``no audio files (...) found in X``, with what was there instead."""
    names = ", ".join(str(p) for p in input_paths)
    exts = ", ".join(sorted(e.lstrip(".") for e in AUDIO_EXTENSIONS))
    message = f"no audio files ({exts}) found in {names}"
    if search.others:
        counts = search.others.most_common()
        shown = ", ".join(f"{n} {ext}" for ext, n in counts[:5])
        shown += f" and {len(counts) - 5} more extensions" if len(counts) > 5 else ""
        total = sum(search.others.values())
        message += (f": {'it has' if len(input_paths) == 1 else 'they have'} {total} "
                    f"file{'s' if total != 1 else ''} with other extensions ({shown}); convert "
                    "any audio among them to .wav or .flac")
    if search.unreadable:
        folder, reason = search.unreadable[0]
        more = f" and {len(search.unreadable) - 1} more" if len(search.unreadable) > 1 else ""
        message += f"; {folder}{more}: {reason}"
    return message


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
    shown = listed(extra, 3)
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
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)


def _build(search: AudioSearch, out_dir: Path, channels: int, sr: int, progress: bool) -> PreprocessReport:
    """Write audio.bin, index.json and skipped.txt, then metadata.yaml last."""
    files = search.files
    report = PreprocessReport(output_path=out_dir, channels=channels, sr=sr,
                              skipped=list(search.unreadable))
    index = []
    bar = tqdm(total=len(files), unit="file", desc="preprocess", disable=not progress)
    with open(out_dir / AUDIO_FILE, "wb") as fh, bar:
        for path in files:
            try:
                info, length, note = _append_file(fh, path, report.n_frames, channels, sr, bar)
            except _SkipFile as skip:  # listed once, in the summary and skipped.txt
                report.skipped.append((str(path), str(skip)))
            else:
                if note:
                    report.warnings.append((str(path), note))
                index.append({"path": str(path), "offset": report.n_frames, "length": length, **info})
                report.kept.append(str(path))
                report.n_frames += length
            bar.update(1)
            bar.set_postfix_str(f"{report.n_frames / sr:.0f} s audio")

    _write_skipped(out_dir / SKIPPED_FILE, report.skipped)
    if not report.kept:
        first_path, first_reason = report.skipped[len(search.unreadable)]
        which = ("the only audio file was skipped (" if len(files) == 1 else
                 f"all {len(files)} audio files were skipped (e.g. ")
        raise DataError(f"{which}{first_path}: {first_reason}); fix or replace the input audio")
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
) -> tuple[dict, int, str | None]:
    """Append one file to ``fh``; return (source info, frames written, a note on its
    level or None) or raise _SkipFile.

    On a skip, ``fh`` is truncated back to where this file started, so a file that
    turns out silent or corrupt halfway leaves no trace.
    """
    start_byte = start_frame * channels * 4
    written = 0
    peak = 0.0
    source = _Decoded()
    try:
        with _open_audio(path) as audio:
            if audio.frames == 0:
                raise _SkipFile("empty (0 frames)")
            info = {"source_sr": audio.samplerate, "source_channels": audio.channels}
            header_frames, header_log = audio.frames, audio.extra_info
            for block in _resampled_blocks(audio, channels, sr, source):
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
        raise _SkipFile(_silence_reason(peak, source.peak, info["source_channels"], channels))
    notes = [_level_note(source.peak),
             _truncation_note(source.frames, header_frames, header_log, info["source_sr"])]
    return info, written, "; ".join(n for n in notes if n) or None


@dataclass
class _Decoded:
    """What a file gave as decoded, before its channels are converted: its largest sample
    and its number of frames."""

    peak: float = 0.0
    frames: int = 0


def _silence_reason(peak: float, source_peak: float, source_channels: int, channels: int) -> str:
    """Why a file is silent: itself, or only once its channels were mixed or dropped."""
    level = f"peak {peak:.1e} < {SILENCE_PEAK:.0e}"
    if source_channels <= channels or source_peak < SILENCE_PEAK:
        return f"silent ({level})"
    if channels == 1:  # the mixdown averages channels: opposite polarities cancel
        return (f"silent after mixing to mono ({level}): its {source_channels} channels cancel "
                f"(peak {source_peak:.2f} before mixing; one is likely polarity-inverted); "
                "invert one channel's polarity, or keep the channels with --channels "
                f"{source_channels}")
    return (f"silent in the {channels} channels kept ({level}): only its other channels "
            f"have sound (peak {source_peak:.2f}); use --channels {source_channels}")


def _level_note(source_peak: float) -> str | None:
    """A note for a file whose samples go beyond full scale (float files can)."""
    if source_peak <= OVER_FULL_SCALE_PEAK:
        return None
    return (f"peak {source_peak:.2f} ({20 * math.log10(source_peak):+.1f} dBFS) is above full "
            "scale (1.0): kept as is, neither clipped nor normalised; the model will learn "
            "this level and may output it, which clips in hosts; normalise the file if the "
            "level is not intended")


#: a data chunk whose stated size exceeds the file, as libsndfile logs it while opening
#: (WAV: ``data : 705600 (should be 352778)``; AIFF: ``SSND``)
_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
#: sizes a recorder writes before it knows the length (streamed WAV): not a truncation
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


def _truncation_note(decoded: int, header_frames: int, header_log: str, sr: int) -> str | None:
    """A note for a file that ends before its header says it does (an interrupted copy or
    download): what decodes is kept. mp3 and Ogg headers state frames; libsndfile sizes
    WAV and AIFF by the bytes present, so their stated data size is read from its log."""
    stated = header_frames
    short = _SHORT_CHUNK.search(header_log or "")
    if short and int(short.group(1)) not in _UNKNOWN_SIZES and int(short.group(2)) > 0:
        stated = round(decoded * int(short.group(1)) / int(short.group(2)))
    if decoded <= 0 or stated < 1.01 * decoded:
        return None
    return (f"decoded {decoded / sr:.2f} s, but its header states {stated / sr:.2f} s: the file "
            "looks truncated (an interrupted copy, download or recording); the part that "
            "decodes is kept; replace the file if it is damaged")


# Decoding errors: sf.LibsndfileError is a RuntimeError; truncated files may raise the others.
_DECODE_ERRORS = (RuntimeError, OSError, ValueError, EOFError)


def _open_audio(path: Path) -> sf.SoundFile:
    """``path`` opened for decoding, or _SkipFile saying why it cannot be."""
    _check_readable(path)
    try:
        return sf.SoundFile(_libsndfile_name(path))
    except _DECODE_ERRORS as err:
        raise _SkipFile(f"unreadable or not audio ({_decode_reason(path, err)})") from err


def _libsndfile_name(path: Path):
    """The name to give soundfile. It encodes a str strictly as UTF-8, which fails on a
    name that is not (a Latin-1 ``caf\\xe9.wav``); on POSIX the file system's own bytes
    always work."""
    return os.fsencode(path) if os.name == "posix" else str(path)


def _check_readable(path: Path) -> None:
    """Raise _SkipFile for what libsndfile would only call "System error.": a broken
    link, a file we may not read, a pipe (which would block), an empty file."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise _SkipFile(_os_reason(path, err)) from err
    if not stat.S_ISREG(info.st_mode):  # opening a pipe would wait for a writer
        raise _SkipFile("not a regular file (a pipe, socket or device): remove it from the input")
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as err:
        raise _SkipFile(_os_reason(path, err)) from err
    if info.st_size == 0:
        raise _SkipFile("empty (0 bytes)")


def _os_reason(path: Path, err: OSError) -> str:
    """Why the file system refused ``path``, and what to do."""
    if err.errno == errno.ENOENT and os.path.islink(path):
        return (f"a broken symbolic link (to {os.readlink(path)}, which does not exist): fix "
                "or remove the link")
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: make it readable (chmod +r), or remove it from the input"
    if err.errno == errno.ELOOP:
        return "a symbolic link loop: fix or remove the link"
    return f"unreadable ({err.strerror or _one_line(err)})"


def _decode_reason(path: Path, err: BaseException) -> str:
    """libsndfile's reason, unless it misleads: for a file that is not MP3 it says "File
    does not exist or is not a regular file", though we know the file is there."""
    # LibsndfileError's own text, without the "Error opening b'name': " that soundfile adds
    text = _one_line(getattr(err, "error_string", err))
    if "does not exist or is not a regular file" in text:
        return f"not a valid {path.suffix.lstrip('.').lower() or 'audio'} file: no audio found in it"
    return text


def _read_block(audio: sf.SoundFile) -> np.ndarray:
    """Next ``(time, source_channels)`` float32 block; decode errors become skips.

    Only reads are guarded: a write error (disk full) must stop the run, not skip a file.
    """
    try:
        return audio.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
    except _DECODE_ERRORS as err:
        raise _SkipFile(f"corrupt audio data ({_one_line(err)})") from err


def _resampled_blocks(audio: sf.SoundFile, channels: int, sr: int,
                      source: _Decoded | None = None) -> Iterator[np.ndarray]:
    """Yield ``(time, channels)`` float32 blocks of ``audio`` converted to ``channels`` at
    ``sr``; ``source``, when given, follows the peak of the samples as decoded."""
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
        if source is not None:
            source.peak = max(source.peak, float(np.abs(block).max(initial=0.0)))
            source.frames += len(block)
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


def _one_line(err: object) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    """One ``path<TAB>reason`` line per entry; a name that is not UTF-8 keeps its own
    bytes, so the line names the very file (``ls``, ``grep`` find it)."""
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
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
