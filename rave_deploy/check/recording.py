"""A real host's recording of an exported file against the output expected of it: what
the scripts that play files in real hosts (``targets/nn_tilde/run_in_pd.py``,
``targets/supercollider/run_in_scsynth.py``) report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np


@dataclass
class RecordingComparison:
    """``host``'s recording against ``expected_name`` over the recorded span."""

    host: str               # who recorded: "Pd", "scsynth"
    expected_name: str      # what it is compared with: "emulation", "expected"
    samples: int
    peak: float             # the expected output's
    host_peak: float
    max_error: float
    first_sound_host: Optional[int]
    first_sound_expected: Optional[int]
    host_delay: int         # samples the host's buffering adds
    delayed_by: str         # who adds them: "nn~", "the UGen"

    def agrees(self, tolerance: float) -> bool:
        """Not silent, and within ``tolerance`` of the expected peak everywhere."""
        return self.host_peak > 0 and self.max_error <= tolerance * self.peak

    def lines(self) -> List[str]:
        if self.max_error == 0:
            same = "identical samples"
        elif self.max_error < self.peak:
            same = (f"max |{self.host} - {self.expected_name}| {self.max_error:.3g} "
                    f"({20 * np.log10(self.peak / self.max_error):.1f} dB below the peak)")
        else:
            same = (f"max |{self.host} - {self.expected_name}| {self.max_error:.3g}, "
                    "not below the peak")
        return [f"recorded {self.samples} samples; peak {self.peak:.3g}; {same}",
                f"first sound: {self.host} at sample {self.first_sound_host}, "
                f"{self.expected_name} at {self.first_sound_expected} "
                f"({self.delayed_by} adds {self.host_delay} samples)"]


def first_sound(y: np.ndarray) -> Optional[int]:
    """Index of the first sample of ``y`` ``(T,)`` or ``(channels, T)`` that is not zero
    (in any channel), ``None`` if all are zero."""
    idx = np.flatnonzero(np.atleast_2d(y).any(0))
    return int(idx[0]) if idx.size else None


def compare_recording(recorded: np.ndarray, expected: np.ndarray, host: str,
                      expected_name: str, host_delay: int,
                      delayed_by: str) -> RecordingComparison:
    """Compare ``recorded`` with ``expected`` sample by sample, both ``(T,)`` or both
    ``(channels, T)``: one peak and one maximum error over every channel."""
    if recorded.shape != expected.shape:
        raise ValueError(f"recorded {recorded.shape} and expected {expected.shape} "
                         "must have the same shape")
    empty = expected.size == 0
    return RecordingComparison(
        host=host, expected_name=expected_name, samples=int(recorded.shape[-1]),
        peak=0.0 if empty else float(np.abs(expected).max()),
        host_peak=0.0 if empty else float(np.abs(recorded).max()),
        max_error=0.0 if empty else float(np.abs(recorded - expected).max()),
        first_sound_host=first_sound(recorded), first_sound_expected=first_sound(expected),
        host_delay=host_delay, delayed_by=delayed_by)
