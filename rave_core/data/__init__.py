"""Training data: turn folders of audio into a flat binary dataset, and read it back.

On-disk dataset (a folder written by :func:`preprocess`):

- ``audio.bin``: every kept file, resampled and channel-converted, concatenated as
  little-endian float32 samples laid out ``(time, channels)`` (channels interleaved).
  A window of ``n`` frames starting at frame ``s`` is one contiguous read of
  ``n * channels`` floats, so ``numpy.memmap`` random access is cheap.
- ``index.json``: ``{"layout": ..., "files": [{"path", "offset", "length",
  "source_sr", "source_channels"}, ...]}`` with offsets/lengths in frames.
- ``skipped.txt``: one ``path<TAB>reason`` line per skipped file, and per folder that
  could not be entered (may be empty). A name that is not UTF-8 keeps its own bytes.
- ``metadata.yaml``: ``channels``, ``n_seconds``, ``sr``, ``lazy`` (false), ``files``,
  ``format`` ("float32"). Written last: a folder without it is incomplete.
"""


class DataError(ValueError):
    """A problem with input audio or a dataset, with a one-line message saying what to do."""


class DataInputError(DataError):
    """Unusable input given by the user (bad usage: exit code 2), e.g. an output folder
    that holds other files, or a dataset that is damaged."""


# Imported after DataError because both modules import it from this package.
from .dataset import AudioDataset, load_metadata  # noqa: E402
from .preprocess import AUDIO_EXTENSIONS, PreprocessReport, preprocess  # noqa: E402

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioDataset",
    "DataError",
    "DataInputError",
    "PreprocessReport",
    "load_metadata",
    "preprocess",
]
