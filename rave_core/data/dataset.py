"""Fixed-length windows over a preprocessed dataset, read by memmap in constant memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from ..dataset_limits import not_a_dataset
from . import DataError, DataInputError
from .preprocess import AUDIO_FILE, FORMAT, INDEX_FILE, METADATA_FILE

_REQUIRED_KEYS = ("channels", "n_seconds", "sr", "format")
_FIX = "re-run `rave-core preprocess` to rebuild it"


def load_metadata(db_path: str | Path) -> dict:
    """Read and check ``metadata.yaml`` of a dataset folder written by ``preprocess``."""
    db = Path(db_path)
    why_not = not_a_dataset(db)   # a folder of audio, an empty folder, a file...
    if why_not is not None:
        raise DataInputError(f"{db} is not a dataset: {why_not}")
    if not db.is_dir():
        raise DataError(f"dataset not found: {db}; run `rave-core preprocess` to create it")
    meta_path = db / METADATA_FILE
    if not meta_path.is_file():
        raise DataInputError(f"dataset {db} is incomplete (no {METADATA_FILE}); {_FIX}")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise _damaged(db, METADATA_FILE, err) from None
    missing = [k for k in _REQUIRED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise DataInputError(f"dataset {db} is damaged: {METADATA_FILE} lacks "
                             f"{', '.join(missing)}; {_FIX}")
    if meta["format"] != FORMAT:
        raise DataInputError(f"dataset {db}: unsupported format {meta['format']!r}; {_FIX}")
    for key in ("channels", "sr"):
        if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 1:
            raise DataInputError(f"dataset {db} is damaged: {METADATA_FILE} has {key} "
                                 f"{meta[key]!r}, not a positive integer; {_FIX}")
    return meta


def _damaged(db: Path, name: str, err: BaseException) -> DataInputError:
    """A dataset file that cannot be parsed: bad input (exit 2), with its first line."""
    first = " ".join(str(err).split())[:160] or type(err).__name__
    return DataInputError(f"dataset {db} is damaged: {name} is unreadable ({first}); {_FIX}")


class AudioDataset(Dataset):
    """Non-overlapping windows of ``n_signal`` frames, each a ``(channels, n_signal)`` float32 tensor.

    Windows tile the concatenated audio of all files (a window may span a file
    boundary, as in RAVE's own preprocessing). The split is by whole windows: a
    seeded permutation sends ``valid_fraction`` of them (at least one when there are
    two or more) to ``'valid'`` and the rest to ``'train'``, so the two never overlap
    and the split is the same on every run for the same data, ``n_signal`` and ``seed``.

    ``random_gain_db > 0`` scales each training window by a random gain in
    ``[-random_gain_db, 0]`` dB (torch RNG, so DataLoader worker seeding applies);
    the default 0 and the valid split are augmentation-free.
    """

    def __init__(
        self,
        db_path: str | Path,
        n_signal: int,
        split: str = "train",
        valid_fraction: float = 0.02,
        seed: int = 0,
        random_gain_db: float = 0.0,
    ):
        if split not in ("train", "valid"):
            raise DataError(f"split must be 'train' or 'valid', got {split!r}")
        if n_signal < 1:
            raise DataError(f"n_signal must be >= 1, got {n_signal}")
        if not 0.0 <= valid_fraction < 1.0:
            raise DataError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
        self.db_path = Path(db_path)
        meta = load_metadata(self.db_path)
        self.channels = int(meta["channels"])
        self.sr = int(meta["sr"])
        self.n_signal = int(n_signal)
        self.split = split
        self.random_gain_db = float(random_gain_db)
        self.n_frames = self._count_frames()
        self.n_seconds = self.n_frames / self.sr

        n_windows = self.n_frames // self.n_signal
        if n_windows == 0:
            raise DataError(
                f"dataset {self.db_path} has {self.n_seconds:.2f} s of audio but one window of "
                f"n_signal={self.n_signal} needs {self.n_signal / self.sr:.2f} s at {self.sr} Hz; "
                "add more audio or lower n_signal"
            )
        train, valid = split_windows(n_windows, valid_fraction, seed)
        #: Start frame of each window in this split, ascending.
        self.starts = (train if split == "train" else valid) * self.n_signal
        self._audio: np.memmap | None = None  # opened lazily, once per worker process

    def _count_frames(self) -> int:
        """Frames in audio.bin, checked against index.json so a damaged dataset fails early."""
        audio_path = self.db_path / AUDIO_FILE
        if not audio_path.is_file():
            raise DataInputError(f"dataset {self.db_path} is damaged: it has no {AUDIO_FILE}; "
                                 f"{_FIX}")
        frame_bytes = 4 * self.channels
        n_frames, remainder = divmod(audio_path.stat().st_size, frame_bytes)
        index_path = self.db_path / INDEX_FILE
        if index_path.is_file():
            try:
                with open(index_path, encoding="utf-8") as f:
                    indexed = sum(int(entry["length"]) for entry in json.load(f)["files"])
            except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
                raise _damaged(self.db_path, INDEX_FILE, err) from None
            if indexed != n_frames or remainder:
                raise DataInputError(
                    f"dataset {self.db_path}: {AUDIO_FILE} holds {n_frames} frames but "
                    f"{INDEX_FILE} lists {indexed}; {_FIX}"
                )
        return n_frames

    @property
    def audio(self) -> np.memmap:
        """The whole dataset as a read-only ``(time, channels)`` float32 memmap."""
        if self._audio is None:
            self._audio = np.memmap(
                self.db_path / AUDIO_FILE, dtype="<f4", mode="r", shape=(self.n_frames, self.channels)
            )
        return self._audio

    def __getstate__(self) -> dict:
        # Pickling a memmap copies its data; DataLoader workers reopen it instead.
        state = self.__dict__.copy()
        state["_audio"] = None
        return state

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> torch.Tensor:
        """Window ``i`` as a ``(channels, n_signal)`` float32 tensor."""
        start = int(self.starts[i])
        # One contiguous read of (n_signal, channels), transposed to (channels, n_signal).
        window = np.array(self.audio[start : start + self.n_signal]).T
        x = torch.from_numpy(np.ascontiguousarray(window))
        if self.split == "train" and self.random_gain_db > 0:
            gain_db = -self.random_gain_db * torch.rand(())
            x = x * (10.0 ** (gain_db / 20.0))
        return x


def split_windows(n_windows: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically split window indices ``0..n_windows-1`` into sorted (train, valid)."""
    n_valid = 0
    if n_windows >= 2 and valid_fraction > 0:
        n_valid = min(n_windows - 1, max(1, round(n_windows * valid_fraction)))
    order = np.random.default_rng(seed).permutation(n_windows)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])
