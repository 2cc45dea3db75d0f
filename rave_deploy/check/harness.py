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
  - ``latency.forward`` (:mod:`rave_deploy.check.latency`): structural latency,
    what the target's host adds at each host block (where its contract states it:
    :meth:`~rave_deploy.targets.base.Target.host_latency`), and the latency measured on
    clicks and note onsets placed at 16 positions inside a block;

* :func:`~rave_deploy.check.timing.run_forward_timing`, which adds ``rtf.forward``:
  the smallest block size ``N`` at which one CPU thread keeps up with the host (each
  ``N``'s figures in ``summary["rtf"]``).

Each method's test input, length, delay and warm-up come from its plan
(:mod:`rave_deploy.check.plan`), the pass thresholds from
:class:`~rave_deploy.check.tolerances.Tolerances`.

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
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from .latency import best_lag, check_latency, to_ms
from .plan import (Plan, Units, decode_signal, eager_output, events_geometry, forward_signal,
                   lcm, make_plan, measured_span, round_up, units_of)
from .result import CheckReport
from .runner import EagerReference, Runner
from .signals import musical_signal
from .tolerances import Tolerances, tolerances_of

#: An impulse response "starts" at its first sample above this share of its peak.
ONSET_REL = 1e-3


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


def _first_above(diff: np.ndarray, tol: float) -> Optional[int]:
    """First time index where any channel of ``diff`` ``(channels, time)`` exceeds ``tol``."""
    hit = np.nonzero((np.abs(diff) > tol).any(0))[0]
    return int(hit[0]) if len(hit) else None


# --------------------------------------------------------------------------- runs
def _run(runner: Runner, x: np.ndarray, block: int, n_out: int, units: Units) -> np.ndarray:
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
    u = units_of(reference, method)
    shape = (int(runner.in_channels), int(runner.in_ratio), int(runner.out_channels), int(runner.out_ratio))
    if shape != (u.in_channels, u.in_ratio, u.out_channels, u.out_ratio):
        msg = (f"{method} of the artefact takes {shape[0]} channels at ratio {shape[1]} and "
               f"returns {shape[2]} at ratio {shape[3]}; the model's {method} is "
               f"[{u.in_channels}, {u.in_ratio}, {u.out_channels}, {u.out_ratio}]: it was "
               "exported from another checkpoint or fidelity")
        report.add(f"parity.{method}", False, msg)
        return
    plan = make_plan(report, reference, method, block_sizes, options)
    if method == "forward":   # room for the latency excitations after the warm-up
        pre, _, _, lag_lo, _, length = events_geometry(plan)
        need = plan.warmup + pre - lag_lo + length + plan.host_block
        plan.n_audio = max(plan.n_audio, round_up(need, lcm(plan.blocks + [plan.ratio])))
    sr = plan.sr
    report.signals["sr"] = sr

    events = None
    if method == "forward":
        x, events = forward_signal(plan, reference.n_channels)
    elif method == "encode":
        x = musical_signal(sr, plan.n_audio, reference.n_channels)[None]
    else:
        x = decode_signal(reference, plan)
    eager = eager_output(reference, method, x, plan.n_out)

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
    _parity(report, plan, x, eager, compared[n0], tol, near_ties=taken.get(n0, 0),
            reference=reference)
    _blocks(report, plan, compared, errors, tol)
    if method in ("forward", "encode"):
        _causality(report, runner, reference, plan, x, eager, outputs, tol)
    if method == "forward":
        check_latency(report, plan, eager, compared[n0], events, tol)


def _on_eager_choices(report: CheckReport, reference: EagerReference, plan: Plan, x,
                      eager, outputs):
    """``outputs`` of a discrete model mapped back onto the eager model's picks at the
    near-ties of its encoding (:mod:`rave_deploy.check.near_ties`), and how many near-ties
    each block size took the other way; ``outputs`` as they are for other models."""
    method = plan.units.method
    if not reference.discrete or method not in ("encode", "forward"):
        return outputs, {}
    context = 0
    if method == "forward":  # the decoder's receptive field, in latent frames
        lookahead, memory = measured_span(report, reference, "decode")
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
def failed_silent(report: CheckReport, method: str, peak: float, reference=None,
                  after_warmup: bool = True, **fields) -> bool:
    """Fail ``parity.<method>`` when the eager output it compares with is silent (``peak``
    0: any silent artefact would match it, so parity proves nothing), with the likely
    cause; ``fields`` go to :meth:`~rave_deploy.check.result.CheckReport.add`. Returns
    whether it failed. The rule of every target's parity (streaming and offline)."""
    if peak != 0:
        return False
    when = " after the warm-up" if after_warmup else ""
    report.add(f"parity.{method}", False, f"the eager {method} output is silent{when}: "
               f"nothing to compare ({silent_cause(reference)})", **fields)
    return True


def silent_cause(reference=None) -> str:
    """Why the eager model of ``reference`` is silent: its codebooks never set (a discrete
    checkpoint saved before training started, as its export warned), or all-zero weights;
    both, as a question, when ``reference`` does not show its model (an
    :class:`EagerReference`'s ``core``, or that of the one a host's reference wraps as
    ``base``)."""
    core = getattr(reference, "core", None)
    if core is None:
        core = getattr(getattr(reference, "base", None), "core", None)
    codebooks = getattr(core, "codebooks", None)
    if codebooks is not None and not codebooks.initialised:
        return ("this checkpoint's codebooks were never initialised: it was saved before "
                "training started, and every latent maps to code 0; export a checkpoint "
                "saved after training started")
    if core is not None:
        return "a model with all-zero weights?"
    return ("a model with all-zero weights, or a discrete checkpoint saved before training "
            "started, whose codebooks were never initialised?")


def _parity(report, plan: Plan, x, eager, exported, tol: Tolerances,
            near_ties: int = 0, reference: Optional[EagerReference] = None) -> None:
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
    if failed_silent(report, method, peak, reference, value=snr, threshold=threshold,
                     details=details):
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
def _blocks(report, plan: Plan, outputs, errors, tol: Tolerances) -> None:
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
def _causality(report, runner, reference, plan: Plan, x, eager, outputs, tol: Tolerances) -> None:
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
            t = round_up(warm_audio, nmax) + j * round_up(3 * plan.ratio, nmax) + off
            t_out = t // u.out_ratio
            xp = x.copy()
            xp[..., t:] = -xp[..., t:] + 0.5 * rng.standard_normal(xp[..., t:].shape).astype(np.float32)
            diff_e = (eager_output(reference, method, xp, plan.n_out) - eager)[0]
            # Exact boundary of the eager receptive field: before it the eager output is
            # bit-identical, so an exact streaming artefact is too (before it + delay).
            e_t = _first_above(diff_e, 0.0)
            if e_t is None:
                continue   # the model ignores this change: nothing to learn here
            expected = e_t + d
            audible = (_first_above(diff_e, eps) or e_t) + d
            n_run = min(round_up((expected + margin) * u.out_ratio, nmax), plan.n_audio)
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


def _impulse(report, runner, reference, plan: Plan, nmax: int):
    """Impulse response of ``forward``: click after silence, minus silence (a decoder
    with biases outputs something even for silence)."""
    d, sr, ratio = plan.delay, plan.sr, plan.ratio
    c = reference.n_channels
    click = round_up(plan.warmup, nmax) + nmax // 3
    # enough to see the onset and the start of the tail (the whole tail costs time)
    n = round_up(click + d + plan.lookahead + min(plan.memory, 8192) + 2 * ratio, nmax)
    sil = np.zeros((1, c, n), np.float32)
    clk = sil.copy()
    clk[..., click] = 0.8
    u = plan.units
    r_s = (_run(runner, clk, nmax, n, u) - _run(runner, sil, nmax, n, u))[0]
    r_e = (eager_output(reference, "forward", clk, n) - eager_output(reference, "forward", sil, n))[0]
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
    ms = to_ms(onset_s - click, sr)
    if onset_s_strict is not None and onset_s_strict < lo or onset_s < click:
        return False, (f"the impulse response starts {onset_s - click} samples ({ms:.2f} ms) after the "
                       f"click, before the reported latency allows ({lo - click} samples)"), info
    if onset_s > hi:
        return False, (f"the impulse response starts {onset_s - click} samples ({ms:.2f} ms) after the "
                       f"click, later than the reported latency {d} allows ({lo - click}..{hi - click})"), info
    # (the model's own response to a click starts some samples after it, depending on the
    # click's place in the ratio's frame: the latency is the delay on top of that)
    late = f" (and {onset_s - lo} samples more: within one ratio, {ratio})" if onset_s > lo else ""
    return True, (f"impulse response starts {onset_s - click} samples ({ms:.2f} ms) after the "
                  f"click: where the eager model's starts ({onset_e - click:+d}), delayed by the "
                  f"latency {d}{late}"), info


__all__ = ["run_method_checks", "torch_threads"]
