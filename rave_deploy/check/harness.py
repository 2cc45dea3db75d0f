"""The generic checks of ``rave-deploy check``, the same for every target.

A target wraps its artefact in :class:`~rave_deploy.check.runner.Runner` objects (one per
method, driven block by block as its host drives it) and calls

* :func:`run_method_checks` once per method, which adds

  - ``parity.<method>``: the streamed output equals the eager (offline, deterministic)
    output delayed by the reported delay, once past the warm-up;
  - ``causality.<method>`` (methods with audio input): a change of the input at sample
    ``t`` never reaches the output before ``t`` + delay (and, for ``forward``, the
    impulse response of a click starts where the reported latency says it should);
  - ``blocks.<method>``: every host block size gives the same output;
  - ``latency.forward``: structural latency, what the target's host adds at each host
    block (where its contract states it:
    :meth:`~rave_deploy.targets.base.Target.host_latency`), and the latency measured on
    clicks and note onsets placed at 16 positions inside a block;

* :func:`run_forward_timing`, which adds ``rtf.forward``: the smallest block size ``N``
  at which one CPU thread keeps up with the host (each ``N``'s figures in
  ``summary["rtf"]``).

Units: audio signals are ``(batch, channels, time)`` float32; latents are
``(batch, latent_size, frames)``. Delays and latencies are in *output* units of the method
(audio samples for ``forward`` and ``decode``, latent frames for ``encode``), as
:meth:`~rave_deploy.check.runner.EagerReference.delay_of` reports them.

The waveforms, impulse response and per-position latencies land in
``report.signals`` for :mod:`rave_deploy.check.report`:

* ``signals["sr"]``: sample rate;
* ``signals["waveforms"][method]``: ``input``, ``eager`` (raw), ``aligned`` (eager
  delayed by the delay), ``exported`` (each ``(channels, time)``), ``delay``, ``warmup``,
  ``unit``, ``block``;
* ``signals["impulse"]``: ``response`` and ``eager`` (click minus silence, exported and
  eager), ``click`` (index), ``latency``, ``onset``, ``ratio``;
* ``signals["jitter"]``: ``positions`` (offset inside the host block), ``latencies``
  (samples, one per excitation), ``kinds``, ``block``, ``structural``.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, fields, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import signal as sps

from ..nn_tilde_emulation import nn_tilde_latency
from .result import CheckReport
from .runner import EagerReference, Runner

#: Excitations placed inside one host block to measure latency jitter.
N_JITTER = 16
#: An impulse response "starts" at its first sample above this share of its peak.
ONSET_REL = 1e-3


@dataclass
class Tolerances:
    """Pass thresholds of the generic checks.

    A target whose runtime is not bit-exact with PyTorch (ONNX Runtime's fused kernels, a
    NumPy re-implementation) loosens ``parity_*``; the defaults expect float32 PyTorch.
    Pass them with ``run_method_checks(..., tolerances=Tolerances(parity_max_rel=1e-3))``
    or as ``options.tolerances`` (a :class:`Tolerances` or a dict of its fields).
    """

    #: max |exported - eager| / peak |eager| after the warm-up.
    parity_max_rel: float = 1e-4
    #: minimum signal-to-error ratio of the exported output, dB.
    parity_min_snr_db: float = 80.0
    #: max |output at N - output at N0| / peak: blocks must not change the result.
    #: Float32 rounding of differently sized products stays near 1e-6 in small models
    #: and reaches 5e-5 in a full-size c128_r10 (4.6e-14 in float64): the bound is the
    #: parity bound; state carried wrongly across calls shows as 1e-3 or more.
    blocks_max_rel: float = 1e-4
    #: a change smaller than this share of the output peak is "no change"
    #: (streaming is exact: a causal artefact shows exactly 0).
    causality_max_rel: float = 1e-6
    #: allowed |measured - structural| latency, samples (streaming is exact: 0).
    latency_max_error: int = 0


def tolerances_of(options, override: Optional[Tolerances] = None) -> Tolerances:
    """The tolerances to use: ``override``, else ``options.tolerances``, else defaults."""
    if override is not None:
        return override
    tol = getattr(options, "tolerances", None)
    if isinstance(tol, Tolerances):
        return tol
    if isinstance(tol, dict):
        known = {f.name for f in fields(Tolerances)}
        unknown = set(tol) - known
        if unknown:
            raise ValueError(f"unknown tolerance(s) {sorted(unknown)}: expected some of {sorted(known)}")
        return replace(Tolerances(), **tol)
    return Tolerances()


# --------------------------------------------------------------------------- signals
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


def _note(sr: int, n: int, f: float) -> np.ndarray:
    """A note with an instantaneous attack (cosine phase) decaying over ~40 ms."""
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


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def _lcm(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out = out * int(v) // math.gcd(out, int(v))
    return out


def _first_above(diff: np.ndarray, tol: float) -> Optional[int]:
    """First time index where any channel of ``diff`` ``(channels, time)`` exceeds ``tol``."""
    hit = np.nonzero((np.abs(diff) > tol).any(0))[0]
    return int(hit[0]) if len(hit) else None


def _ms(samples: float, sr: int) -> float:
    return 1000.0 * samples / sr


@dataclass
class _Units:
    """How one method maps audio samples to its input and output units."""

    method: str
    in_ratio: int
    out_ratio: int
    in_channels: int
    out_channels: int

    @property
    def unit(self) -> str:
        return "frames" if self.out_ratio > 1 else "samples"


def _units(reference: EagerReference, method: str) -> _Units:
    r, c, latent = reference.ratio, reference.n_channels, reference.latent_size
    return {"forward": _Units("forward", 1, 1, c, c),
            "encode": _Units("encode", 1, r, c, latent),
            "decode": _Units("decode", r, 1, latent, c)}[method]


def _eager(reference: EagerReference, method: str, x: np.ndarray, n_out: int) -> np.ndarray:
    """Eager output of ``x`` ``(batch, channels, time)``, cut to ``n_out`` output units."""
    y = reference(method, x)
    if y.shape[-1] < n_out:
        raise RuntimeError(f"eager {method} returned {y.shape[-1]} steps for {n_out} expected")
    return y[..., :n_out]


def impulse_span(reference: EagerReference, method: str) -> Tuple[int, int]:
    """``(lookahead, memory)`` of the eager model, in output units: how far before and
    after an input impulse its output changes (the receptive field, seen from the output).

    Measured exactly: outside the receptive field the outputs for an impulse and for
    silence are bit-identical.
    """
    u = _units(reference, method)
    n_audio = max(1 << 16, 64 * reference.ratio)
    while True:
        n_in, n_out = n_audio // u.in_ratio, n_audio // u.out_ratio
        k = n_in // 2
        base = np.zeros((1, u.in_channels, n_in), np.float32)
        imp = base.copy()
        imp[..., k] = 1.0
        diff = (_eager(reference, method, imp, n_out) - _eager(reference, method, base, n_out))[0]
        hit = np.nonzero((diff != 0).any(0))[0]
        if not len(hit):
            return 0, 0
        centre = k * u.in_ratio // u.out_ratio
        inside = hit[0] > 0 and hit[-1] < n_out - 1
        if inside or n_audio >= 1 << 21:
            return max(0, centre - int(hit[0])), max(0, int(hit[-1]) - centre)
        n_audio *= 2


def _span(report: CheckReport, reference: EagerReference, method: str) -> Tuple[int, int]:
    """:func:`impulse_span` of ``reference``'s ``method``, measured once for all the
    methods ``report`` checks: a discrete model's ``forward`` needs ``decode``'s (the
    decoder's reach around a near-tie), which checking ``decode`` measured already (the
    same computation: the same reference and method, so the same lengths and input)."""
    known = report.spans.get(method)
    if known is not None and known[0] is reference:
        return known[1]
    span = impulse_span(reference, method)
    report.spans[method] = (reference, span)
    return span


def best_lag(exported: np.ndarray, eager: np.ndarray, start: int, length: int,
             lo: int, hi: int, prefer: int) -> Tuple[int, float]:
    """The shift ``d`` in ``[lo, hi]`` that best explains ``exported[start + d + i] ==
    eager[start + i]`` for ``0 <= i < length`` (least squares, all channels), and the
    relative error ``max|error| / peak`` at that shift. Ties go to the shift nearest
    ``prefer`` (a window with no detail cannot tell shifts apart)."""
    lo = max(lo, -start)
    hi = min(hi, exported.shape[-1] - start - length)
    e = eager[:, start:start + length].astype(np.float64)
    seg = exported[:, start + lo:start + hi + length].astype(np.float64)
    corr = sum(sps.correlate(s, w, mode="valid", method="fft") for s, w in zip(seg, e))
    power = np.concatenate([np.zeros(1), np.cumsum((seg ** 2).sum(0))])
    energy = power[length:] - power[:-length]
    sse = energy - 2 * corr + (e ** 2).sum()
    # FFT rounding: confirm the best few candidates exactly.
    cand = np.argsort(sse)[:8]
    exact = [(float(((seg[:, c:c + length] - e) ** 2).sum()), abs(lo + int(c) - prefer), lo + int(c))
             for c in cand]
    best_sse = min(x[0] for x in exact)
    scale = max((e ** 2).sum(), 1e-300)
    ties = [x for x in exact if x[0] <= best_sse + 1e-9 * scale]
    lag = min(ties, key=lambda x: x[1])[2]
    peak = np.abs(e).max()
    err = np.abs(exported[:, start + lag:start + lag + length] - e).max()
    return lag, float(err / peak) if peak > 0 else float("inf")


# --------------------------------------------------------------------------- plan
@dataclass
class _Plan:
    """Geometry of one method's test: lengths, delay and warm-up (output units)."""

    units: _Units
    sr: int
    ratio: int
    delay: int
    lookahead: int
    memory: int
    warmup: int           # output units skipped before comparing
    n_audio: int          # test signal length in audio samples
    blocks: List[int]
    host_block: int

    @property
    def n_in(self) -> int:
        return self.n_audio // self.units.in_ratio

    @property
    def n_out(self) -> int:
        return self.n_audio // self.units.out_ratio


def _plan(report: CheckReport, reference: EagerReference, method: str,
          block_sizes: Sequence[int], options) -> _Plan:
    u = _units(reference, method)
    blocks = sorted({int(b) for b in block_sizes})
    if not blocks:
        raise ValueError("run_method_checks needs at least one block size")
    for b in blocks:
        if b <= 0 or b % u.in_ratio or b % u.out_ratio:
            raise ValueError(f"block size {b} is not a multiple of {method}'s ratios "
                             f"(in {u.in_ratio}, out {u.out_ratio}): pass host block sizes "
                             f"that are multiples of the model's ratio {reference.ratio}")
    ratio, sr = reference.ratio, reference.sr
    delay = int(reference.delay_of(method))
    lookahead, memory = _span(report, reference, method)
    # Streaming starts from silent state where eager pads with zeros: the first outputs
    # differ until the model's memory has been filled by real input.
    warm = max(delay + memory + -(-ratio // u.out_ratio), delay + 2 * ratio * 32 // u.out_ratio)
    warm_audio = warm * u.out_ratio
    seconds = max(float(getattr(options, "seconds", 2.0) or 2.0), 2.0)
    n_audio = max(int(seconds * sr), 3 * warm_audio)
    n_audio = _round_up(n_audio, _lcm(blocks + [ratio]))
    return _Plan(u, sr, ratio, delay, lookahead, memory, warm, n_audio, blocks, blocks[0])


@dataclass
class _Events:
    """Clicks and note onsets at :data:`N_JITTER` positions inside the host block."""

    times: List[int]
    positions: List[int]
    kinds: List[str]
    pre: int
    window: int
    lag_lo: int
    lag_hi: int


def _events_geometry(plan: _Plan) -> Tuple[int, int, int, int, int, int]:
    n0, ratio, delay = plan.host_block, plan.ratio, plan.delay
    pre = min(ratio, 256)
    window = max(4 * ratio, 1024)
    spacing = _round_up(window + pre, n0)
    slack = 2 * max(n0, ratio)
    lag_lo, lag_hi = -slack, delay + slack
    length = N_JITTER * spacing + n0 + window + lag_hi + n0
    return pre, window, spacing, lag_lo, lag_hi, length


def _forward_signal(plan: _Plan, channels: int) -> Tuple[np.ndarray, _Events]:
    """Music, then silence with clicks and note onsets at 16 offsets in the host block."""
    n0, sr = plan.host_block, plan.sr
    pre, window, spacing, lag_lo, lag_hi, length = _events_geometry(plan)
    x = musical_signal(sr, plan.n_audio, channels)
    base = ((plan.n_audio - length) // n0) * n0
    fade = min(int(0.02 * sr), base)
    x[:, base - fade:base] *= np.linspace(1, 0, fade, dtype=np.float32)
    x[:, base:] = 0
    count = min(N_JITTER, n0)
    times, positions, kinds = [], [], []
    for i in range(count):
        offset = (i * n0) // count
        t = base + n0 + i * spacing + offset
        if i % 2 == 0:
            x[:, t] = 0.8
            kinds.append("click")
        else:
            n = min(spacing - pre, plan.n_audio - t)
            x[:, t:t + n] += 0.5 * _note(sr, n, 220.0 * 2 ** (i / 12))
            kinds.append("note")
        times.append(t)
        positions.append(offset)
    return x[None], _Events(times, positions, kinds, pre, window, lag_lo, lag_hi)


def _decode_signal(reference: EagerReference, plan: _Plan) -> np.ndarray:
    """Latents of the encoded musical signal plus a smooth random walk ``(1, L, T)``."""
    frames = plan.n_in
    audio = musical_signal(plan.sr, frames * plan.ratio, reference.n_channels, seed=1)[None]
    z = reference("encode", audio)[..., :frames]
    if z.shape[-1] < frames:
        z = np.pad(z, ((0, 0), (0, 0), (0, frames - z.shape[-1])), mode="edge")
    scale = float(max(z.std(), 0.5))
    return (z + smooth_random_walk(z.shape[1], frames, seed=2, scale=0.5 * scale)[None]).astype(np.float32)


# --------------------------------------------------------------------------- runs
def _run(runner: Runner, x: np.ndarray, block: int, n_out: int, units: _Units) -> np.ndarray:
    """``runner.run`` with the output shape checked (a wrong size is a silent failure
    in nn~, so it is an error here)."""
    y = np.asarray(runner.run(x, block))
    expected = (x.shape[0], units.out_channels, n_out)
    if y.ndim != 3 or tuple(y.shape) != expected:
        raise RuntimeError(f"{units.method} at block {block} returned shape {tuple(y.shape)}, "
                           f"expected {expected}")
    if not np.all(np.isfinite(y)):
        raise RuntimeError(f"{units.method} at block {block} returned non-finite values")
    return y.astype(np.float32, copy=False)


def _aligned(eager: np.ndarray, delay: int, n: int) -> np.ndarray:
    """``eager`` ``(channels, T)`` delayed by ``delay`` steps, length ``n`` (NaN before)."""
    out = np.full((eager.shape[0], n), np.nan, np.float32)
    if delay >= 0:
        out[:, delay:] = eager[:, :max(n - delay, 0)]
    else:
        out[:, :n + delay] = eager[:, -delay:n]
    return out


def _snr_db(ref: np.ndarray, err: np.ndarray) -> float:
    p_err = float((err.astype(np.float64) ** 2).sum())
    p_ref = float((ref.astype(np.float64) ** 2).sum())
    if p_err == 0:
        return float("inf")
    if p_ref == 0:
        return float("-inf")
    return 10 * math.log10(p_ref / p_err)


def run_method_checks(report: CheckReport, runner: Runner, reference: EagerReference,
                      method: str, block_sizes: Sequence[int], options=None, *,
                      tolerances: Optional[Tolerances] = None) -> None:
    """Parity, causality, block-size invariance (and latency, for ``forward``) of one
    method of an artefact.

    Args:
        report: results are added to it (``parity.<method>``, ``causality.<method>``,
            ``blocks.<method>``, ``latency.forward``), and signals for the HTML report.
        runner: the artefact's method, driven block by block as its host drives it.
        reference: the eager deterministic model of the same checkpoint and fidelity.
        method: ``"encode"``, ``"decode"`` or ``"forward"``.
        block_sizes: host block sizes in audio samples (multiples of the model's ratio);
            the smallest is "the host block": parity and latency jitter are measured
            there, causality at the largest (cheapest per second of audio).
        options: a :class:`~rave_deploy.targets.base.CheckOptions` (``seconds``: test
            signal length, at least 2 s and 3 warm-ups; ``tolerances``: optional).
        tolerances: overrides ``options.tolerances``.
    """
    if method not in ("encode", "decode", "forward"):
        raise ValueError(f"unknown method {method!r}: expected encode, decode or forward")
    tol = tolerances_of(options, tolerances)
    _one_reference(report, reference, method)
    with torch_threads(1):   # one thread is faster for small blocks, and reproducible
        _method_checks(report, runner, reference, method, block_sizes, options, tol)


def _one_reference(report: CheckReport, reference: EagerReference, method: str) -> None:
    """Record the rate and ratio ``report``'s methods are checked at, and give the summary
    its ``sample_rate`` and ``ratio`` (what the host sees: a file exported with ``--sr``
    runs at a multiple of the model's rate) where the target has not (a value it read off
    its file stays: its contract checks compare that with the model).

    One reference per report: the methods' results are shown under one rate (the
    summary's, the plots' ``signals["sr"]``), so a method checked at another rate would
    be shown at the first one's (the summary kept the first, the plots took the last).

    Raises:
        ValueError: ``reference`` has another rate or ratio than an earlier method's.
    """
    here = (int(reference.sr), int(reference.ratio))
    if report.reference is not None and report.reference != here:
        raise ValueError(f"{method} of {report.artifact} is checked at {here[0]} Hz, ratio "
                         f"{here[1]}, its other methods at {report.reference[0]} Hz, ratio "
                         f"{report.reference[1]}: one report holds the checks of one model")
    report.reference = here
    for key, value in (("sample_rate", here[0]), ("ratio", here[1])):
        if report.summary.get(key) is None:
            report.summary[key] = value


def _method_checks(report, runner, reference, method, block_sizes, options, tol) -> None:
    u = _units(reference, method)
    shape = (int(runner.in_channels), int(runner.in_ratio), int(runner.out_channels), int(runner.out_ratio))
    if shape != (u.in_channels, u.in_ratio, u.out_channels, u.out_ratio):
        msg = (f"{method} of the artefact takes {shape[0]} channels at ratio {shape[1]} and "
               f"returns {shape[2]} at ratio {shape[3]}; the model's {method} is "
               f"[{u.in_channels}, {u.in_ratio}, {u.out_channels}, {u.out_ratio}]: it was "
               "exported from another checkpoint or fidelity")
        report.add(f"parity.{method}", False, msg)
        return
    plan = _plan(report, reference, method, block_sizes, options)
    if method == "forward":   # room for the latency excitations after the warm-up
        pre, _, _, lag_lo, _, length = _events_geometry(plan)
        need = plan.warmup + pre - lag_lo + length + plan.host_block
        plan.n_audio = max(plan.n_audio, _round_up(need, _lcm(plan.blocks + [plan.ratio])))
    sr = plan.sr
    report.signals["sr"] = sr

    events = None
    if method == "forward":
        x, events = _forward_signal(plan, reference.n_channels)
    elif method == "encode":
        x = musical_signal(sr, plan.n_audio, reference.n_channels)[None]
    else:
        x = _decode_signal(reference, plan)
    eager = _eager(reference, method, x, plan.n_out)

    outputs: Dict[int, np.ndarray] = {}
    errors: Dict[int, str] = {}
    for n in plan.blocks:
        try:
            outputs[n] = _run(runner, x, n, plan.n_out, u)
        except Exception as exc:  # the artefact failed: a result, not a crash
            errors[n] = f"{type(exc).__name__}: {exc}"

    n0 = plan.host_block
    if n0 not in outputs:
        for name in (f"parity.{method}", f"blocks.{method}"):
            report.add(name, False, f"{method} failed at block {n0}: {errors[n0]}")
        return

    # a discrete model's near-ties: outputs mapped back onto the eager model's picks
    # (causality compares the artefact's raw runs with each other: it keeps them raw)
    compared, taken = _on_eager_choices(report, reference, plan, x, eager, outputs)
    _parity(report, plan, x, eager, compared[n0], tol, near_ties=taken.get(n0, 0))
    _blocks(report, plan, compared, errors, tol)
    if method in ("forward", "encode"):
        _causality(report, runner, reference, plan, x, eager, outputs, tol)
    if method == "forward":
        _latency(report, plan, eager, compared[n0], events, tol)


def _on_eager_choices(report: CheckReport, reference: EagerReference, plan: _Plan, x,
                      eager, outputs):
    """``outputs`` of a discrete model mapped back onto the eager model's picks at the
    near-ties of its encoding (:mod:`rave_deploy.check.near_ties`), and how many near-ties
    each block size took the other way; ``outputs`` as they are for other models."""
    method = plan.units.method
    if not reference.discrete or method not in ("encode", "forward"):
        return outputs, {}
    context = 0
    if method == "forward":  # the decoder's receptive field, in latent frames
        lookahead, memory = _span(report, reference, "decode")
        context = -(-(lookahead + memory) // plan.ratio) + 1
    segments = reference.near_tie_outputs(method, x, context)
    if not segments:
        return outputs, {}
    from .near_ties import to_eager_choices

    d, n = plan.delay, plan.n_out
    base = _aligned(eager[0], d, n)
    # only where parity compares: in the warm-up the states differ from the eager
    # model's padding anyway, and other picks there are no near-ties
    shifted = [(start + d, values) for start, values in segments if start + d >= plan.warmup]
    compared, taken = {}, {}
    for block, y in outputs.items():
        mapped, taken[block] = to_eager_choices(y[0], base, shifted)
        compared[block] = mapped[None]
    return compared, taken


# --------------------------------------------------------------------------- parity
def _parity(report, plan: _Plan, x, eager, exported, tol: Tolerances,
            near_ties: int = 0) -> None:
    method, d, w = plan.units.method, plan.delay, plan.warmup
    y, e = exported[0], eager[0]
    aligned = _aligned(e, d, plan.n_out)
    report.signals.setdefault("waveforms", {})[method] = {
        "input": x[0], "eager": e, "aligned": aligned, "exported": y, "delay": d,
        "warmup": w, "unit": plan.units.unit, "block": plan.host_block,
        "in_unit": "frames" if plan.units.in_ratio > 1 else "samples"}
    ref_seg, out_seg = aligned[:, w:], y[:, w:]
    peak = float(np.abs(ref_seg).max())
    err = out_seg - ref_seg
    max_err = float(np.abs(err).max())
    rel = max_err / peak if peak > 0 else float("inf")
    snr = _snr_db(ref_seg, err)
    threshold = f"max error <= {tol.parity_max_rel:g} of peak, SNR >= {tol.parity_min_snr_db:g} dB"
    details = {"max_abs_error": max_err, "max_rel_error": rel, "snr_db": snr, "peak": peak,
               "delay": d, "warmup": w, "unit": plan.units.unit, "block": plan.host_block,
               "compared": int(ref_seg.shape[-1]), "lookahead": plan.lookahead,
               "memory": plan.memory}
    summary = report.summary.setdefault("parity", {})
    summary[method] = {"snr_db": snr, "max_rel_error": rel}
    if peak == 0:
        report.add(f"parity.{method}", False,
                   f"the eager {method} output is silent after the warm-up: nothing to compare "
                   "(a model with all-zero weights?)", value=snr, threshold=threshold, details=details)
        return
    passed = rel <= tol.parity_max_rel and snr >= tol.parity_min_snr_db
    where = f"at block {plan.host_block}, {plan.units.unit} {w}..{plan.n_out} vs eager delayed by {d}"
    if near_ties:
        details["near_ties_taken_the_other_way"] = near_ties
        where += (f"; {near_ties} near-tie(s) between codes taken the other way, compared "
                  "as the eager model's pick")
    if passed:
        msg = f"SNR {_fmt_db(snr)}, max error {rel:.2g} of peak ({where})"
    else:
        span = 4 * max(plan.ratio, plan.host_block) // plan.units.out_ratio
        lag, lag_err = best_lag(y, e, w - d, plan.n_out - w - span, d - span, d + span, d)
        details["best_lag"] = lag
        msg = f"SNR {_fmt_db(snr)}, max error {rel:.2g} of peak ({where})"
        if lag != d and lag_err <= max(tol.parity_max_rel, 1e-3):
            msg += (f": the output is shifted by {lag - d:+d} {plan.units.unit[:-1]}(s) (it matches eager "
                    f"delayed by {lag}, not the reported {d}); fix the delay the artefact reports "
                    "or the padding of its streaming layers")
        else:
            msg += ": the exported output differs from the eager model"
    report.add(f"parity.{method}", passed, msg, value=snr, threshold=threshold, details=details)


def _fmt_db(v: float) -> str:
    return "exact (inf dB)" if v == float("inf") else f"{v:.1f} dB"


# --------------------------------------------------------------------------- blocks
def _blocks(report, plan: _Plan, outputs, errors, tol: Tolerances) -> None:
    method, n0 = plan.units.method, plan.host_block
    name = f"blocks.{method}"
    threshold = f"max difference <= {tol.blocks_max_rel:g} of peak"
    ref = outputs[n0]
    peak = float(np.abs(ref).max()) or 1.0
    diffs = {n: float(np.abs(y - ref).max()) for n, y in outputs.items() if n != n0}
    details = {"reference_block": n0, "max_abs_diff": {str(n): v for n, v in diffs.items()},
               "errors": {str(n): e for n, e in errors.items()}}
    if errors:
        report.add(name, False, "; ".join(f"block {n}: {e}" for n, e in errors.items()),
                   threshold=threshold, details=details)
        return
    if not diffs:
        report.add(name, True, f"only one block size ({n0}) to compare", value=0.0,
                   threshold=threshold, details=details)
        return
    worst = max(diffs.values()) / peak
    bad = [n for n, v in diffs.items() if v / peak > tol.blocks_max_rel]
    if bad:
        msg = (f"the output depends on the block size: block(s) {', '.join(map(str, bad))} differ from "
               f"block {n0} by up to {worst:.2g} of peak, more than float32 rounding gives "
               f"({tol.blocks_max_rel:g}): streaming state is not carried exactly across calls")
    else:
        sizes = ", ".join(map(str, plan.blocks))
        msg = f"blocks {sizes} give the same output (max difference {worst:.2g} of peak)"
    report.add(name, not bad, msg, value=worst, threshold=threshold, details=details)


# --------------------------------------------------------------------------- causality
def _causality(report, runner, reference, plan: _Plan, x, eager, outputs, tol: Tolerances) -> None:
    u, d = plan.units, plan.delay
    method = u.method
    name = f"causality.{method}"
    nmax = max(n for n in plan.blocks if n in outputs) if outputs else plan.host_block
    base_out = outputs[nmax][0]
    peak = float(np.abs(base_out).max())
    eps = tol.causality_max_rel * peak
    threshold = f"no output change before t + delay (|change| <= {tol.causality_max_rel:g} of peak)"
    margin = max(4 * plan.ratio // u.out_ratio, 4)
    warm_audio = plan.warmup * u.out_ratio
    rng = np.random.default_rng(7)
    probes, problems, late = [], [], []
    offsets = (1, nmax // 2 + 1, nmax - 1)
    try:
        for j, off in enumerate(offsets):
            t = _round_up(warm_audio, nmax) + j * _round_up(3 * plan.ratio, nmax) + off
            t_out = t // u.out_ratio
            xp = x.copy()
            xp[..., t:] = -xp[..., t:] + 0.5 * rng.standard_normal(xp[..., t:].shape).astype(np.float32)
            diff_e = (_eager(reference, method, xp, plan.n_out) - eager)[0]
            # Exact boundary of the eager receptive field: before it the eager output is
            # bit-identical, so an exact streaming artefact is too (before it + delay).
            e_t = _first_above(diff_e, 0.0)
            if e_t is None:
                continue   # the model ignores this change: nothing to learn here
            expected = e_t + d
            audible = (_first_above(diff_e, eps) or e_t) + d
            n_run = min(_round_up((expected + margin) * u.out_ratio, nmax), plan.n_audio)
            if n_run <= t:
                continue
            yp = _run(runner, xp[..., :n_run], nmax, n_run // u.out_ratio, u)[0]
            s_t = _first_above(yp - base_out[:, :yp.shape[-1]], eps)
            probe = {"t": t, "t_out": t_out, "eager_first_change": e_t, "expected": expected,
                     "first_change": s_t, "block": nmax}
            probes.append(probe)
            if s_t is not None and s_t < expected:
                # how far ahead it looks: where the change really starts (bit-exact)
                probe["first_change"] = min(s_t, _first_above(yp - base_out[:, :yp.shape[-1]], 0.0))
                problems.append(probe)
            elif s_t is None or s_t > audible + max(plan.ratio // u.out_ratio, 1):
                late.append(probe)
    except Exception as exc:
        report.add(name, False, f"{method} failed while probing causality: {type(exc).__name__}: {exc}",
                   threshold=threshold)
        return

    details: Dict[str, object] = {"probes": probes}
    msgs: List[str] = []
    passed = not problems
    if problems:
        worst = max(p["expected"] - p["first_change"] for p in problems)
        p = min(problems, key=lambda q: q["first_change"] - q["expected"])
        msgs.append(f"not causal: a change of the input at {p['t']} (audio sample) changed the output at "
                    f"{p['first_change']} {u.unit}, {worst} {u.unit} before t + delay allows "
                    f"({p['expected']}): the artefact looks ahead (a non-causal layer, or future "
                    "input leaking into the stream)")
    else:
        msgs.append(f"causal: input changes at {len(probes)} positions never reach the output "
                    f"before they reach the eager model + {d} {u.unit}")
    if late:
        msgs.append(f"{len(late)} change(s) reached the output later than the reported delay")
    value = float(max([p["expected"] - p["first_change"] for p in problems], default=0))

    if method == "forward":
        ok, msg, imp = _impulse(report, runner, reference, plan, nmax)
        details["impulse"] = imp
        passed = passed and ok
        msgs.append(msg)
    report.add(name, passed, "; ".join(msgs), value=value, threshold=threshold, details=details)


def _impulse(report, runner, reference, plan: _Plan, nmax: int):
    """Impulse response of ``forward``: click after silence, minus silence (a decoder
    with biases outputs something even for silence)."""
    d, sr, ratio = plan.delay, plan.sr, plan.ratio
    c = reference.n_channels
    click = _round_up(plan.warmup, nmax) + nmax // 3
    # enough to see the onset and the start of the tail (the whole tail costs time)
    n = _round_up(click + d + plan.lookahead + min(plan.memory, 8192) + 2 * ratio, nmax)
    sil = np.zeros((1, c, n), np.float32)
    clk = sil.copy()
    clk[..., click] = 0.8
    u = plan.units
    r_s = (_run(runner, clk, nmax, n, u) - _run(runner, sil, nmax, n, u))[0]
    r_e = (_eager(reference, "forward", clk, n) - _eager(reference, "forward", sil, n))[0]
    peak = float(np.abs(r_e).max())
    thr = ONSET_REL * peak
    onset_e = _first_above(r_e, thr)
    onset_s = _first_above(r_s, thr)
    onset_s_strict = _first_above(r_s, 2 * thr)
    info = {"click": click, "latency": d, "eager_onset": onset_e, "onset": onset_s, "block": nmax,
            "threshold_rel": ONSET_REL}
    report.signals["impulse"] = {"response": r_s, "eager": r_e, "click": click, "latency": d,
                                 "onset": onset_s, "eager_onset": onset_e, "ratio": ratio}
    if peak == 0 or onset_e is None:
        return True, "the eager model does not respond to a click (impulse not checked)", info
    if onset_s is None:
        return False, "the exported forward does not respond to a click at all", info
    lo, hi = onset_e + d, onset_e + d + ratio
    ms = _ms(onset_s - click, sr)
    if onset_s_strict is not None and onset_s_strict < lo or onset_s < click:
        return False, (f"the impulse response starts {onset_s - click} samples ({ms:.2f} ms) after the "
                       f"click, before the reported latency allows ({lo - click} samples)"), info
    if onset_s > hi:
        return False, (f"the impulse response starts {onset_s - click} samples ({ms:.2f} ms) after the "
                       f"click, later than the reported latency {d} allows ({lo - click}..{hi - click})"), info
    return True, (f"impulse response starts {onset_s - click} samples ({ms:.2f} ms) after the click "
                  f"(eager onset {onset_e - click:+d} + latency {d})"), info


# --------------------------------------------------------------------------- latency
def nn_tilde_total_latency(latency: int, block_sizes: Sequence[int], ratio: int,
                           sr: int) -> Dict[str, Dict]:
    """The total latency in nn~ of a model of ``latency`` samples: the model's latency plus
    :func:`nn_tilde_latency`, unthreaded (buffer argument 0: one figure) and threaded at
    each host block, ``{"unthreaded": {"samples": int, "ms": float}, "threaded": {block:
    {"samples": int, "ms": float}}}`` (a summary's ``host_latency``, written by the
    targets whose files nn~ loads)."""
    def total(added: int) -> Dict[str, float]:
        return {"samples": latency + added, "ms": _ms(latency + added, sr)}

    blocks = sorted({int(b) for b in block_sizes})
    return {"unthreaded": total(nn_tilde_latency(ratio, ratio)["unthreaded"]),
            "threaded": {str(n): total(nn_tilde_latency(n, ratio)["threaded"])
                         for n in blocks}}


def _host_latency(report: CheckReport, plan: _Plan, details: Dict[str, object]) -> str:
    """What the host of ``report``'s target adds to the model's latency (the target's
    :meth:`~rave_deploy.targets.base.Target.host_latency`), for ``latency.forward``'s
    message (returned: ``"; in <host>: ..."``, or the target's note where its host's
    contract states no figure) and its ``details`` (updated: ``host`` and the figures
    under the host's key; ``host`` None and ``host_note`` otherwise). A report of no
    registered target (an in-process check) states the model's latency alone."""
    from ..targets import registry

    target = registry().get(report.target)
    host = target.host_latency(plan.ratio, plan.blocks) if target is not None else None
    if host is None:
        note = target.host_latency_note if target is not None else None
        details.update({"host": None, "host_note": note})
        return f"; {note}" if note else ""
    details["host"] = {"name": host.host, "source": host.source, "modes": dict(host.modes),
                       "key": host.key}
    details[host.key] = host.added
    d, n0, sr = plan.delay, plan.host_block, plan.sr
    parts = []
    for i, (mode, label) in enumerate(host.modes.items()):
        total = d + host.added[str(n0)][mode]
        label = label.format(block=n0)
        # the first figure (the headline) in ms too
        parts.append(f"{total} samples {label} ({_ms(total, sr):.2f} ms)" if i == 0
                     else f"{total} {label}")
    return f"; in {host.host}: " + ", ".join(parts)


def _latency(report, plan: _Plan, eager, exported, events: _Events, tol: Tolerances) -> None:
    d, sr, n0 = plan.delay, plan.sr, plan.host_block
    lags, errs = [], []
    for t in events.times:
        lag, err = best_lag(exported[0], eager[0], t - events.pre, events.window,
                            events.lag_lo, events.lag_hi, d)
        lags.append(lag)
        errs.append(err)
    lags_a = np.asarray(lags)
    report.signals["jitter"] = {"positions": list(events.positions), "latencies": lags,
                                "kinds": list(events.kinds), "block": n0, "structural": d,
                                "sr": sr}
    stats = {"mean": float(lags_a.mean()), "min": int(lags_a.min()), "max": int(lags_a.max()),
             "jitter": int(lags_a.max() - lags_a.min())}
    report.summary["latency_samples"] = d
    report.summary["latency_ms"] = _ms(d, sr)
    report.summary["latency_measured"] = {k: v for k, v in stats.items()}
    details = {"structural_samples": d, "structural_ms": _ms(d, sr), "block": n0,
               "positions": list(events.positions), "latencies": lags, "match_error": errs,
               "kinds": list(events.kinds),
               **{f"{k}_samples": v for k, v in stats.items()},
               **{f"{k}_ms": _ms(v, sr) for k, v in stats.items()}}
    off = lags_a - d
    passed = bool(np.all(np.abs(off) <= tol.latency_max_error))
    base = f"model {d} samples ({_ms(d, sr):.2f} ms)" + _host_latency(report, plan, details)
    if passed:
        msg = (f"{base}; measured {stats['mean']:.0f} samples at all {len(lags)} positions in a "
               f"{n0}-sample block (jitter {stats['jitter']})")
    elif float(np.median(errs)) > 0.1:
        msg = (f"latency not measurable: around the test onsets the exported output matches the "
               f"eager model at no shift near the reported {d} samples (best {stats['min']}..{stats['max']}"
               f", see parity.forward); {base}")
    else:
        offs = sorted(set(int(o) for o in off))
        msg = (f"measured latency {stats['mean']:.1f} samples (min {stats['min']}, max {stats['max']}, "
               f"jitter {stats['jitter']}) != structural {d}: off by "
               f"{', '.join(f'{o:+d}' for o in offs)} sample(s); {base}")
    report.add("latency.forward", passed, msg, value=stats["mean"],
               threshold=f"measured == structural {d} +- {tol.latency_max_error} samples, no jitter",
               details=details)


# --------------------------------------------------------------------------- timing
def run_forward_timing(report: CheckReport, runner: Runner, reference: EagerReference,
                       block_sizes: Sequence[int], options=None) -> None:
    """Real-time factor of ``forward`` on one thread at each host block size.

    For each ``N``: reset, warm up, then time every call over ``options.rtf_seconds`` of
    the musical test signal; the row (RTF, mean / p99 / max ms, budget ``N / sr``) goes to
    ``report.summary["rtf"][str(N)]``. One check, ``rtf.forward``, passes when the host
    keeps up (p99 block time under budget) at one host block size at least, and names the
    smallest such block (``report.summary["realtime_block"]``, None if none): speed is a property of this machine as much as of the artefact,
    so the check says which block size to use rather than failing a correct export. PyTorch
    runs on one thread; an ONNX Runtime runner configures its own session threads.
    """
    sr = reference.sr
    seconds = float(getattr(options, "rtf_seconds", 2.0) or 2.0)
    table = report.summary.setdefault("rtf", {})
    errors = []
    with torch_threads(1):
        for n in sorted({int(b) for b in block_sizes}):
            budget = 1000.0 * n / sr
            n_blocks = max(int(math.ceil(seconds * sr / n)), 8)
            n_warm = max(8, int(math.ceil(0.1 * sr / n)))
            x = musical_signal(sr, (n_blocks + n_warm) * n, reference.n_channels, seed=3)[None]
            times = []
            try:
                runner.reset(1)
                for i in range(n_warm):
                    runner.process(np.ascontiguousarray(x[..., i * n:(i + 1) * n]))
                for i in range(n_warm, n_warm + n_blocks):
                    block = np.ascontiguousarray(x[..., i * n:(i + 1) * n])
                    t0 = time.perf_counter()
                    runner.process(block)
                    times.append(time.perf_counter() - t0)
            except Exception as exc:
                errors.append(f"block {n}: {type(exc).__name__}: {exc}")
                continue
            ms = 1000.0 * np.asarray(times)
            rtf = (n_blocks * n / sr) / max(float(np.sum(times)), 1e-12)
            row = {"block": n, "rtf": rtf, "mean_ms": float(ms.mean()), "p99_ms": float(np.percentile(ms, 99)),
                   "max_ms": float(ms.max()), "budget_ms": budget, "blocks_timed": n_blocks}
            row["passed"] = row["p99_ms"] < budget
            table[str(n)] = row
    rows = [table[k] for k in sorted(table, key=int)]
    per_block = "; ".join(f"{r['block']}: {r['rtf']:.2f}x (p99 {r['p99_ms']:.2f}/{r['budget_ms']:.2f} ms)"
                          for r in rows)
    if errors:
        report.add("rtf.forward", False, "forward failed while timing: " + "; ".join(errors))
        return
    ok = [r for r in rows if r["passed"]]
    report.summary["realtime_block"] = ok[0]["block"] if ok else None
    if ok:
        best = ok[0]
        msg = (f"real time from block {best['block']} on one thread ({best['rtf']:.2f}x, p99 "
               f"{best['p99_ms']:.2f} ms of {best['budget_ms']:.2f} ms); {per_block}")
        report.add("rtf.forward", True, msg, value=best["rtf"], threshold="p99 < block budget",
                   details={"smallest_realtime_block": best["block"]})
    else:
        report.add("rtf.forward", False, "no host block size keeps up on one thread: at each, "
                   "the slowest 1% of calls (p99) took longer than the block lasts, and the host "
                   f"would drop those blocks, even where the mean is faster than real time: "
                   f"{per_block}. Timings depend on this machine's load: check again on a quiet "
                   "machine, or the one that will play it", threshold="p99 < block budget")


__all__ = ["Tolerances", "best_lag", "impulse_span", "musical_signal", "nn_tilde_latency",
           "nn_tilde_total_latency", "run_forward_timing", "run_method_checks",
           "smooth_random_walk", "tolerances_of", "torch_threads"]
