"""Deterministic synthetic training set: pitched notes, chords and snare-like noise hits.

Writes mono 16-bit WAV files with numpy and the standard library only, so the same
seed gives byte-identical files on every run::

    python examples/synth_dataset.py --out data/synth --seconds 180 --seed 0
"""

from __future__ import annotations

import argparse
import math
import wave
from pathlib import Path

import numpy as np

SECONDS_PER_FILE = 15.0
PEAK = 0.8
MAJOR_PENTATONIC = (0, 2, 4, 7, 9)
MINOR_PENTATONIC = (0, 3, 5, 7, 10)


def synthesize(
    out_dir: str | Path,
    seconds: float = 180,
    sr: int = 44100,
    seed: int = 0,
    *,
    n_files: int | None = None,
) -> list[Path]:
    """Write about ``seconds`` of audio as ``n_files`` WAVs (default: ~15 s each) in ``out_dir``.

    Returns the written paths, ``synth_000.wav``, ``synth_001.wav``, ... in order.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if n_files is None:
        n_files = max(1, math.ceil(seconds / SECONDS_PER_FILE))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = int(round(seconds * sr))
    lengths = [total // n_files + (1 if i < total % n_files else 0) for i in range(n_files)]
    paths = []
    for i, length in enumerate(lengths):
        # Seeding per file keeps each file independent of how many files there are.
        rng = np.random.default_rng([seed, i])
        path = out / f"synth_{i:03d}.wav"
        write_wav(path, normalise(render_track(length, sr, rng)), sr)
        paths.append(path)
    return paths


def render_track(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A ``(time,)`` float64 track of ``n`` samples: notes, chords and hits on an eighth-note grid."""
    track = np.zeros(n)
    step = 60.0 / rng.uniform(90, 140) / 2  # eighth note at a random tempo
    root = int(rng.integers(45, 60))
    scale = MAJOR_PENTATONIC if rng.random() < 0.5 else MINOR_PENTATONIC
    n_steps = max(1, int(n / sr / step))
    for k in range(n_steps):
        start = int(k * step * sr)
        kind = "note" if k == 0 else rng.choice(["note", "chord", "hit", "rest"], p=[0.45, 0.15, 0.25, 0.15])
        if kind == "rest":
            continue
        if kind == "hit":
            event = noise_hit(sr, rng)
        else:
            degrees = [int(rng.integers(0, 10))] if kind == "note" else [0, 2, 4] + [int(rng.integers(5, 8))]
            pitches = [root + 12 * (d // 5) + scale[d % 5] for d in degrees]
            duration = step * int(rng.integers(1, 5))
            event = tone([midi_to_hz(p) for p in pitches], duration, sr, rng)
        _mix_into(track, event * rng.uniform(0.5, 1.0), start)
    return track


def tone(freqs: list[float], duration: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A note or chord: harmonic voices at ``freqs`` with shared vibrato and ADSR envelope.

    Lasts ``duration`` s plus the release.
    """
    attack, decay = rng.uniform(0.005, 0.03), rng.uniform(0.05, 0.2)
    sustain, release = rng.uniform(0.4, 0.8), rng.uniform(0.05, 0.3)
    env = adsr(duration, attack, decay, sustain, release, sr)
    t = np.arange(len(env)) / sr
    # Vibrato fades in so note onsets stay on pitch.
    depth = rng.uniform(0.0, 0.006) * np.minimum(1.0, t / 0.3)
    vibrato = 1.0 + depth * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t)
    rolloff = rng.uniform(1.0, 2.0)
    n_harmonics = int(rng.integers(3, 7))
    voices = np.zeros(len(env))
    for freq in freqs:
        phase = 2 * np.pi * np.cumsum(freq * vibrato) / sr
        for k in range(1, n_harmonics + 1):
            if k * freq < sr / 2:  # no aliasing
                voices += k**-rolloff * np.sin(k * phase)
    return env * voices / len(freqs)


def adsr(duration: float, attack: float, decay: float, sustain: float, release: float, sr: int) -> np.ndarray:
    """Linear attack and decay, flat sustain until ``duration`` s, then a linear release to zero.

    A note shorter than attack + decay is cut off mid-envelope and released from there.
    """
    n_hold = max(int(duration * sr), 1)
    rise = np.linspace(0.0, 1.0, max(1, int(attack * sr)), endpoint=False)
    fall = np.linspace(1.0, sustain, max(1, int(decay * sr)), endpoint=False)
    head = np.concatenate([rise, fall])[:n_hold]
    body = np.full(n_hold - len(head), sustain)
    level = body[-1] if len(body) else head[-1]
    tail = np.linspace(level, 0.0, max(1, int(release * sr)))
    return np.concatenate([head, body, tail])


def noise_hit(sr: int, rng: np.random.Generator) -> np.ndarray:
    """A snare-like burst: bright decaying noise over a short pitched body."""
    n = int(rng.uniform(0.15, 0.3) * sr)
    t = np.arange(n) / sr
    noise = rng.standard_normal(n)
    bright = np.diff(noise, prepend=0.0)  # first difference tilts the noise upwards
    rattle = (0.4 * noise + 0.6 * bright) * np.exp(-t / rng.uniform(0.03, 0.08))
    body = np.sin(2 * np.pi * rng.uniform(150, 250) * t) * np.exp(-t / 0.03)
    return 0.5 * rattle + 0.8 * body


def midi_to_hz(note: int) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def normalise(x: np.ndarray, peak: float = PEAK) -> np.ndarray:
    top = np.abs(x).max()
    return x * (peak / top) if top > 0 else x


def write_wav(path: Path, x: np.ndarray, sr: int) -> None:
    """Write a ``(time,)`` signal in [-1, 1] as mono 16-bit PCM."""
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def _mix_into(track: np.ndarray, event: np.ndarray, start: int) -> None:
    end = min(len(track), start + len(event))
    track[start:end] += event[: end - start]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the WAV files")
    parser.add_argument("--seconds", type=float, default=180, help="total seconds of audio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sr", type=int, default=44100)
    args = parser.parse_args(argv)
    paths = synthesize(args.out, seconds=args.seconds, sr=args.sr, seed=args.seed)
    print(f"wrote {len(paths)} files to {args.out}")


if __name__ == "__main__":
    main()
