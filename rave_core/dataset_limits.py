"""The bounds of a dataset's channels and sampling rate (``rave-core preprocess``).

Apart from :mod:`rave_core.data.preprocess` (which imports NumPy, soundfile, soxr), so
that the CLI shows them in ``--help`` and checks its options without importing those;
``rave_core.data.preprocess`` takes them from here.
"""
#: Bounds that catch typos (--sampling_rate 441, --channels 100) before an hour of work.
MIN_CHANNELS, MAX_CHANNELS = 1, 64
MIN_SAMPLING_RATE, MAX_SAMPLING_RATE = 8000, 384000
