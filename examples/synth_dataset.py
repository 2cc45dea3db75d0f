"""Deterministic synthetic training set: pitched notes, chords and snare-like noise hits.

Writes mono 16-bit WAV files with numpy and the standard library only, so the same
seed gives byte-identical files on every run::

    python examples/synth_dataset.py --out data/synth --seconds 180 --seed 0

The folder then holds exactly what was asked for: ``synth_000.wav``, ``synth_001.wav``, ...
Files of that name left by an earlier run that asked for more are removed (other files
are left alone). Each file is written under a temporary name and renamed into place once
complete, after every file of the run is rendered: an interrupted run leaves the folder
as it was, never a half-written WAV.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import wave
from pathlib import Path
from typing import NamedTuple

import numpy as np

SECONDS_PER_FILE = 15.0
#: The most audio one run writes: an hour, 20 times the quickstart's default (318 MB of
#: WAV at 44.1 kHz, 2.8 GB at the highest --sr). This is a test and demo set; beyond
#: this, train on real audio. (A typo such as 1e9 wrote gigabytes before this bound.)
MAX_SECONDS = 3600.0
#: Sampling rates accepted, those of `rave-core preprocess --sampling_rate`
#: (rave_core.dataset_limits).
MIN_SR, MAX_SR = 8000, 384000
#: The names this module writes (and the only files it ever removes).
FILE_NAME = re.compile(r"synth_(\d{3,})\.wav")
PEAK = 0.8
MAJOR_PENTATONIC = (0, 2, 4, 7, 9)
MINOR_PENTATONIC = (0, 3, 5, 7, 10)


class Written(NamedTuple):
    """What :func:`write_dataset` did: the files written, in order, and the stale
    ``synth_NNN.wav`` files of an earlier run it removed."""

    paths: list[Path]
    removed: list[Path]


def synthesize(
    out_dir: str | Path,
    seconds: float = 180,
    sr: int = 44100,
    seed: int = 0,
    *,
    n_files: int | None = None,
) -> list[Path]:
    """Write about ``seconds`` of audio as ``n_files`` WAVs (default: ~15 s each) in ``out_dir``.

    Returns the written paths, ``synth_000.wav``, ``synth_001.wav``, ... in order (see
    :func:`write_dataset`: stale files of that name are removed).
    """
    return write_dataset(out_dir, seconds, sr, seed, n_files=n_files).paths


def argument_problem(seconds: float, sr: int, seed: int = 0, n_files: int | None = None) -> str | None:
    """Why :func:`write_dataset` cannot write these, or None."""
    if not math.isfinite(seconds) or seconds <= 0:
        return f"seconds must be a finite number > 0, got {seconds}"
    if seconds > MAX_SECONDS:
        return (f"seconds must be at most {MAX_SECONDS:.0f} (an hour of synthetic audio; "
                f"train on real audio beyond that), got {seconds:g}")
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or not MIN_SR <= sr <= MAX_SR:
        return f"sr must be a whole number of Hz from {MIN_SR} to {MAX_SR}, got {sr}"
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        return f"seed must be a whole number >= 0, got {seed}"
    if n_files is not None and n_files < 1:
        return f"n_files must be >= 1, got {n_files}"
    files = n_files or _default_files(seconds)
    if int(round(seconds * sr)) < files:
        return (f"seconds must give at least {files} sample{'s' * (files != 1)} at {sr} Hz "
                f"(one per file), got {seconds:g} ({int(round(seconds * sr))} samples)")
    return None


def _default_files(seconds: float) -> int:
    return max(1, math.ceil(seconds / SECONDS_PER_FILE))


def write_dataset(
    out_dir: str | Path,
    seconds: float = 180,
    sr: int = 44100,
    seed: int = 0,
    *,
    n_files: int | None = None,
) -> Written:
    """Write about ``seconds`` of audio as ``n_files`` WAVs (default: ~15 s each) in
    ``out_dir`` (created if needed): ``synth_000.wav``, ``synth_001.wav``, ...

    The folder then holds exactly these: ``synth_NNN.wav`` files of an earlier run beyond
    them are removed (and reported); no other file is touched. Every file is rendered to a
    temporary name first and renamed into place once all are complete, so an interrupted
    or failed run leaves the folder as it was.

    Raises:
        ValueError: unusable arguments (:func:`argument_problem`).
        OSError: the folder cannot be written (its temporary files are removed).
    """
    problem = argument_problem(seconds, sr, seed, n_files)
    if problem is not None:
        raise ValueError(problem)
    n_files = n_files or _default_files(seconds)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = int(round(seconds * sr))
    lengths = [total // n_files + (1 if i < total % n_files else 0) for i in range(n_files)]
    paths = [out / f"synth_{i:03d}.wav" for i in range(n_files)]
    temporaries: list[Path] = []
    try:
        for i, (path, length) in enumerate(zip(paths, lengths)):
            # Seeding per file keeps each file independent of how many files there are.
            rng = np.random.default_rng([seed, i])
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporaries.append(temporary)
            write_wav(temporary, normalise(render_track(length, sr, rng)), sr)
        removed = _stale_files(out, {p.name for p in paths})
        for stale in removed:
            stale.unlink()
        for temporary, path in zip(temporaries, paths):
            os.replace(temporary, path)
    finally:
        for temporary in temporaries:   # left only when the run did not complete
            try:
                temporary.unlink()
            except FileNotFoundError:
                pass
    return Written(paths, removed)


def _stale_files(out: Path, keep: set[str]) -> list[Path]:
    """The ``synth_NNN.wav`` files in ``out`` not among ``keep`` (an earlier run's)."""
    return sorted(p for p in out.iterdir()
                  if FILE_NAME.fullmatch(p.name) and p.name not in keep and p.is_file()
                  and not p.is_symlink())


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


def output_problem(out: str | Path) -> str | None:
    """Why ``out`` cannot be the output folder (a file in the way), or None."""
    path = Path(out)
    for parent in [path, *path.parents]:
        if parent.is_dir():
            return None
        if parent.exists() or parent.is_symlink():
            where = f"{path}" if parent == path else f"{path}: {parent}"
            return f"{where} is a file, not a folder; choose another folder"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the WAV files (created if needed)")
    parser.add_argument("--seconds", type=float, default=180,
                        help=f"total seconds of audio, at most {MAX_SECONDS:.0f} (default 180)")
    parser.add_argument("--seed", type=int, default=0, help="a whole number >= 0 (default 0)")
    parser.add_argument("--sr", type=int, default=44100,
                        help=f"sampling rate in Hz, {MIN_SR} to {MAX_SR} (default 44100)")
    args = parser.parse_args(argv)
    # checked before anything is created: bad input leaves no folder behind
    problem = argument_problem(args.seconds, args.sr, args.seed)
    if problem is not None:
        parser.error("--" + problem)
    problem = output_problem(args.out)
    if problem is not None:
        parser.error(f"--out {problem}")
    try:
        written = write_dataset(args.out, seconds=args.seconds, sr=args.sr, seed=args.seed)
    except OSError as err:
        print(f"Error: cannot write {args.out}: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"Interrupted: {args.out} is as it was.", file=sys.stderr)
        return 130
    print(f"wrote {len(written.paths)} file{'s' * (len(written.paths) != 1)} to {args.out}")
    if written.removed:
        names = ", ".join(p.name for p in written.removed)
        print(f"removed {len(written.removed)} stale file{'s' * (len(written.removed) != 1)} "
              f"of an earlier run: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
