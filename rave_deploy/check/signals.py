"""The deterministic test signals of ``rave-deploy check``.

Audio is ``(channels, time)``, latent trajectories ``(channels, frames)``, both float32;
the same arguments give the same signal on every machine (seeded NumPy generators). The
generic checks (:mod:`rave_deploy.check.plan`, :mod:`rave_deploy.check.timing`) feed them
to the artefact and the eager model; the targets' own checks and the host runners
(``targets/nn_tilde/run_in_pd.py``, ``targets/supercollider/run_in_scsynth.py``) play
:func:`musical_signal` through the real host.
"""
from __future__ import annotations

import math

import numpy as np


def musical_signal(sr: int, n: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A deterministic musical test signal ``(channels, n)``, peak 0.7.

    A slow logarithmic chirp (40 Hz to 16 kHz), harmonic notes with sharp attacks and
    exponential decays, and short noise bursts: broadband, with onsets, sustained tones
    and silence-free dynamics, so every part of a model is exercised.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    out = np.zeros((channels, n))
    dur = max(n / sr, 1e-3)
    f0, f1 = 40.0, min(16000.0, 0.45 * sr)
    phase = 2 * np.pi * f0 * dur / math.log(f1 / f0) * (np.exp(t / dur * math.log(f1 / f0)) - 1)
    for c in range(channels):
        out[c] += 0.15 * np.sin(phase + c * 0.5)
        # notes: one every ~0.2 s, 0.15-0.6 s long
        start = 0.0
        while start < dur:
            i0 = int(start * sr)
            length = int(rng.uniform(0.15, 0.6) * sr)
            f = 440.0 * 2 ** ((rng.integers(36, 85) - 69) / 12)
            tt = np.arange(min(length, n - i0)) / sr
            env = np.minimum(tt / 0.002, 1.0) * np.exp(-tt / rng.uniform(0.05, 0.3))
            tone = sum(np.sin(2 * np.pi * f * k * tt) / k for k in range(1, 7) if f * k < 0.45 * sr)
            out[c, i0:i0 + len(tt)] += 0.25 * env * tone
            start += rng.uniform(0.12, 0.3)
        # noise bursts: 30-80 ms every ~0.6 s
        start = rng.uniform(0.1, 0.4)
        while start < dur:
            i0 = int(start * sr)
            length = min(int(rng.uniform(0.03, 0.08) * sr), n - i0)
            out[c, i0:i0 + length] += 0.2 * np.hanning(length) * rng.standard_normal(length)
            start += rng.uniform(0.4, 0.8)
    peak = np.abs(out).max()
    return (0.7 * out / peak if peak > 0 else out).astype(np.float32)


def struck_note(sr: int, n: int, f: float) -> np.ndarray:
    """A note ``(n,)`` at ``f`` Hz (three harmonics) with an instantaneous attack (cosine
    phase) decaying over ~40 ms."""
    tt = np.arange(n) / sr
    return (np.exp(-tt / 0.04) * sum(np.cos(2 * np.pi * f * k * tt) / k for k in (1, 2, 3))).astype(np.float32)


def smooth_random_walk(channels: int, frames: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """A smooth latent trajectory ``(channels, frames)``: integrated, low-passed noise
    with standard deviation ``scale`` per channel."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((channels, frames)), -1)
    kernel = np.hanning(9)
    walk = np.stack([np.convolve(w, kernel / kernel.sum(), mode="same") for w in walk])
    walk -= walk.mean(-1, keepdims=True)
    std = walk.std(-1, keepdims=True)
    return (scale * walk / np.where(std > 0, std, 1)).astype(np.float32)


__all__ = ["musical_signal", "smooth_random_walk", "struck_note"]
