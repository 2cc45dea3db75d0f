"""The plan of one method's generic checks: what
:func:`~rave_deploy.check.harness.run_method_checks` feeds the artefact, and from where
on it compares the output with the eager model's.

* ``Units`` (``units_of``): how ``encode``, ``decode`` or ``forward`` maps audio samples
  to its input and output units (audio samples, or latent frames at the model's ratio);
* :func:`impulse_span`: the eager model's receptive field ``(lookahead, memory)``, seen
  from the output, measured once per report (``measured_span``, kept in ``report.spans``);
* ``Plan`` (``make_plan``): the test length, the reported delay, the warm-up skipped before
  comparing (streaming starts from silent state where eager pads with zeros) and the
  host block sizes;
* the test input: :func:`~rave_deploy.check.signals.musical_signal` for ``encode``; for
  ``forward`` the same music then silence with clicks and note onsets at :data:`N_JITTER`
  positions inside the host block (``Events``: where ``latency.forward`` measures); for
  ``decode`` the encoded music plus a smooth random walk.

Lengths, delays and warm-ups are in output units of the method (audio samples for
``forward`` and ``decode``, latent frames for ``encode``); audio signals are
``(batch, channels, time)`` float32, latents ``(batch, latent_size, frames)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from .result import CheckReport
from .runner import EagerReference
from .signals import musical_signal, smooth_random_walk, struck_note

#: Excitations placed inside one host block to measure latency jitter.
N_JITTER = 16


def round_up(n: int, multiple: int) -> int:
    return -(-int(n) // multiple) * multiple


def lcm(values: Sequence[int]) -> int:
    return math.lcm(*(int(v) for v in values))


@dataclass
class Units:
    """How one method maps audio samples to its input and output units."""

    method: str
    in_ratio: int
    out_ratio: int
    in_channels: int
    out_channels: int

    @property
    def unit(self) -> str:
        return "frames" if self.out_ratio > 1 else "samples"


def units_of(reference: EagerReference, method: str) -> Units:
    r, c, latent = reference.ratio, reference.n_channels, reference.latent_size
    return {"forward": Units("forward", 1, 1, c, c),
            "encode": Units("encode", 1, r, c, latent),
            "decode": Units("decode", r, 1, latent, c)}[method]


def eager_output(reference: EagerReference, method: str, x: np.ndarray, n_out: int) -> np.ndarray:
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
    u = units_of(reference, method)
    n_audio = max(1 << 16, 64 * reference.ratio)
    while True:
        n_in, n_out = n_audio // u.in_ratio, n_audio // u.out_ratio
        k = n_in // 2
        base = np.zeros((1, u.in_channels, n_in), np.float32)
        imp = base.copy()
        imp[..., k] = 1.0
        diff = (eager_output(reference, method, imp, n_out) - eager_output(reference, method, base, n_out))[0]
        hit = np.nonzero((diff != 0).any(0))[0]
        if not len(hit):
            return 0, 0
        centre = k * u.in_ratio // u.out_ratio
        inside = hit[0] > 0 and hit[-1] < n_out - 1
        if inside or n_audio >= 1 << 21:
            return max(0, centre - int(hit[0])), max(0, int(hit[-1]) - centre)
        n_audio *= 2


def measured_span(report: CheckReport, reference: EagerReference, method: str) -> Tuple[int, int]:
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


@dataclass
class Plan:
    """Geometry of one method's test: lengths, delay and warm-up (output units)."""

    units: Units
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


def make_plan(report: CheckReport, reference: EagerReference, method: str,
          block_sizes: Sequence[int], options) -> Plan:
    u = units_of(reference, method)
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
    lookahead, memory = measured_span(report, reference, method)
    # Streaming starts from silent state where eager pads with zeros: the first outputs
    # differ until the model's memory has been filled by real input.
    warm = max(delay + memory + -(-ratio // u.out_ratio), delay + 2 * ratio * 32 // u.out_ratio)
    warm_audio = warm * u.out_ratio
    seconds = max(float(getattr(options, "seconds", 2.0) or 2.0), 2.0)
    n_audio = max(int(seconds * sr), 3 * warm_audio)
    n_audio = round_up(n_audio, lcm(blocks + [ratio]))
    return Plan(u, sr, ratio, delay, lookahead, memory, warm, n_audio, blocks, blocks[0])


@dataclass
class Events:
    """Clicks and note onsets at :data:`N_JITTER` positions inside the host block."""

    times: List[int]
    positions: List[int]
    kinds: List[str]
    pre: int
    window: int
    lag_lo: int
    lag_hi: int


def events_geometry(plan: Plan) -> Tuple[int, int, int, int, int, int]:
    n0, ratio, delay = plan.host_block, plan.ratio, plan.delay
    pre = min(ratio, 256)
    window = max(4 * ratio, 1024)
    spacing = round_up(window + pre, n0)
    slack = 2 * max(n0, ratio)
    lag_lo, lag_hi = -slack, delay + slack
    length = N_JITTER * spacing + n0 + window + lag_hi + n0
    return pre, window, spacing, lag_lo, lag_hi, length


def forward_signal(plan: Plan, channels: int) -> Tuple[np.ndarray, Events]:
    """Music, then silence with clicks and note onsets at 16 offsets in the host block."""
    n0, sr = plan.host_block, plan.sr
    pre, window, spacing, lag_lo, lag_hi, length = events_geometry(plan)
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
            x[:, t:t + n] += 0.5 * struck_note(sr, n, 220.0 * 2 ** (i / 12))
            kinds.append("note")
        times.append(t)
        positions.append(offset)
    return x[None], Events(times, positions, kinds, pre, window, lag_lo, lag_hi)


def decode_signal(reference: EagerReference, plan: Plan) -> np.ndarray:
    """Latents of the encoded musical signal plus a smooth random walk ``(1, L, T)``."""
    frames = plan.n_in
    audio = musical_signal(plan.sr, frames * plan.ratio, reference.n_channels, seed=1)[None]
    z = reference("encode", audio)[..., :frames]
    if z.shape[-1] < frames:
        z = np.pad(z, ((0, 0), (0, 0), (0, frames - z.shape[-1])), mode="edge")
    scale = float(max(z.std(), 0.5))
    return (z + smooth_random_walk(z.shape[1], frames, seed=2, scale=0.5 * scale)[None]).astype(np.float32)


__all__ = ["Events", "N_JITTER", "Plan", "Units", "decode_signal", "eager_output",
           "events_geometry", "forward_signal", "impulse_span", "lcm", "make_plan",
           "measured_span", "round_up", "units_of"]
