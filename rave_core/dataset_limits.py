"""What the command line knows of datasets without importing NumPy: the bounds of their
channels and sampling rate, the files a dataset folder holds, the default training
window, and what a path given as a dataset is when it is none.

Apart from :mod:`rave_core.data.preprocess` (which imports NumPy, soundfile, soxr), so
that the CLI shows them in ``--help`` and checks its options without importing those;
``rave_core.data`` takes them from here.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Optional

#: Bounds that catch typos (--sampling_rate 441, --channels 100) before an hour of work.
MIN_CHANNELS, MAX_CHANNELS = 1, 64
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 8000, 384000

#: `rave-core train --n_signal`'s default: samples per training window.
DEFAULT_N_SIGNAL = 131072

#: The files of a dataset folder, as ``rave-core preprocess`` writes them (metadata.yaml last).
AUDIO_FILE = "audio.bin"
INDEX_FILE = "index.json"
SKIPPED_FILE = "skipped.txt"
METADATA_FILE = "metadata.yaml"
DATASET_FILES = (AUDIO_FILE, INDEX_FILE, SKIPPED_FILE, METADATA_FILE)

#: What a folder walk takes for audio: the usual extensions of the formats libsndfile
#: decodes (``soundfile.available_formats()``), spelled out so the list stays predictable.
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".rf64", ".w64",           # WAV and its 64-bit variants
    ".aiff", ".aif", ".aifc", ".caf",           # Apple
    ".flac", ".ogg", ".oga", ".opus", ".mp3",   # compressed
})
#: macOS metadata written beside audio on foreign disks (AppleDouble ``._name.wav``,
#: Finder's ``.DS_Store``): never audio, so a walk passes over them without a word.
MAC_METADATA_PREFIX, MAC_FOLDER_FILE = "._", ".DS_Store"
#: files looked at, at most, to count the audio of a folder given as a dataset
_COUNT_LIMIT = 100_000

_MAKE_ONE = ("give the folder written by `rave-core preprocess --input_path AUDIO_DIR "
             "--output_path DB`")


def is_audio_name(name: str) -> bool:
    """Whether a file of that name is taken for audio by a folder walk."""
    return (not name.startswith(MAC_METADATA_PREFIX)
            and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS)


def not_a_dataset(path) -> Optional[str]:
    """What ``path``, given as a dataset, is instead, and what to do, as ``it is ...``;
    None when it holds one of a dataset's files (a dataset, or an incomplete one) or does
    not exist. A folder of audio is the common mistake: it is counted, and the command
    that makes a dataset of it is given."""
    path = Path(path)
    if path.is_file():
        parent = path.parent
        if path.name in DATASET_FILES and (parent / METADATA_FILE).is_file():
            return f"it is a file of the dataset {parent}: give the folder, --db_path {parent}"
        if is_audio_name(path.name):
            return f"it is an audio file; {_make_dataset(path, 'it')}"
        return f"it is a file, not a folder; {_MAKE_ONE}"
    if not path.is_dir():
        return f"it is not a folder; {_MAKE_ONE}" if path.exists() else None
    if any((path / name).exists() for name in DATASET_FILES):
        return None
    try:
        entries = sorted(os.listdir(path))
    except OSError:
        return None   # load_metadata says what it cannot read
    if not entries:
        return ("it is an empty folder; make a dataset there with `rave-core preprocess "
                f"--input_path AUDIO_DIR --output_path {_quoted(path)}`")
    inner = [path / name for name in entries if (path / name / METADATA_FILE).is_file()]
    if inner:
        if len(inner) == 1:
            return f"it is a folder holding the dataset {inner[0]}: give --db_path {inner[0]}"
        shown = ", ".join(str(p) for p in inner[:3]) + (", ..." if len(inner) > 3 else "")
        return (f"it is a folder holding {len(inner)} datasets ({shown}): give one of them "
                "as --db_path")
    count, complete = _count_audio(path)
    if count:
        files = f"{'' if complete else 'at least '}{count} audio file{'s' * (count != 1)}"
        return f"it is a folder of {files}; {_make_dataset(path, 'them')}"
    return (f"it is a folder holding none of a dataset's files ({AUDIO_FILE}, {INDEX_FILE}, "
            f"{METADATA_FILE}) and no audio files; {_MAKE_ONE}")


def _count_audio(folder: Path):
    """``(audio files under folder, whether all were counted)``; links to folders are not
    followed (a hint need not walk a cycle)."""
    count = seen = 0
    for _, _, names in os.walk(folder):
        for name in names:
            seen += 1
            count += is_audio_name(name)
            if seen >= _COUNT_LIMIT:
                return count, False
    return count, True


def _make_dataset(source: Path, pronoun: str) -> str:
    """The command making a dataset of ``source`` (audio), in a folder beside it."""
    named = source.resolve() if source.name in ("", ".", "..") else source
    output = named.with_name(f"{named.stem if named.is_file() else named.name}_db")
    return (f"make a dataset of {pronoun} with `rave-core preprocess --input_path "
            f"{_quoted(source)} --output_path {_quoted(output)}`, then train with --db_path "
            f"{_quoted(output)}")


def _quoted(path: Path) -> str:
    return shlex.quote(str(path))
