"""The latency of a streamed ``forward``: measured on the output, compared with the
structural delay the artefact reports, and what the target's host adds to it.

* ``check_latency``: the ``latency.forward`` check. Around each click and note onset of the
  plan's test input (:data:`~rave_deploy.check.plan.N_JITTER` positions inside the host
  block) the shift that best aligns the exported output with the eager one
  (:func:`best_lag`, which ``parity.<method>`` also uses to name a shifted output) is
  that excitation's latency; all must equal the structural delay
  (``report.signals["jitter"]``, ``summary["latency_samples"]``, ``["latency_ms"]``,
  ``["latency_measured"]``);
* ``_host_latency``: what the target's host adds at each host block, where its contract
  states it (:meth:`~rave_deploy.targets.base.Target.host_latency`);
* :func:`nn_tilde_total_latency`: the total latency in nn~ of a file nn~ loads (a
  summary's ``host_latency``).

Latencies are in audio samples, and in ms at the model's rate; signals are
``(channels, time)``.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import signal as sps

from ..nn_tilde_emulation import nn_tilde_latency
from .plan import Events, Plan
from .result import CheckReport
from .tolerances import Tolerances


def to_ms(samples: float, sr: int) -> float:
    return 1000.0 * samples / sr


def best_lag(exported: np.ndarray, eager: np.ndarray, start: int, length: int,
             lo: int, hi: int, prefer: int) -> Tuple[int, float]:
    """The shift ``d`` in ``[lo, hi]`` that best explains ``exported[start + d + i] ==
    eager[start + i]`` for ``0 <= i < length`` (both ``(channels, time)``; least squares,
    all channels), and the relative error ``max|error| / peak`` at that shift. Ties go to
    the shift nearest ``prefer`` (a window with no detail cannot tell shifts apart)."""
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


def nn_tilde_total_latency(latency: int, block_sizes: Sequence[int], ratio: int,
                           sr: int) -> Dict[str, Dict]:
    """The total latency in nn~ of a model of ``latency`` samples: the model's latency plus
    :func:`nn_tilde_latency`, unthreaded (buffer argument 0: one figure) and threaded at
    each host block, ``{"unthreaded": {"samples": int, "ms": float}, "threaded": {block:
    {"samples": int, "ms": float}}}`` (a summary's ``host_latency``, written by the
    targets whose files nn~ loads)."""
    def total(added: int) -> Dict[str, float]:
        return {"samples": latency + added, "ms": to_ms(latency + added, sr)}

    blocks = sorted({int(b) for b in block_sizes})
    return {"unthreaded": total(nn_tilde_latency(ratio, ratio)["unthreaded"]),
            "threaded": {str(n): total(nn_tilde_latency(n, ratio)["threaded"])
                         for n in blocks}}


def _host_latency(report: CheckReport, plan: Plan, details: Dict[str, object]) -> str:
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
        parts.append(f"{total} samples {label} ({to_ms(total, sr):.2f} ms)" if i == 0
                     else f"{total} {label}")
    return f"; in {host.host}: " + ", ".join(parts)


def check_latency(report, plan: Plan, eager, exported, events: Events, tol: Tolerances) -> None:
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
    report.summary["latency_ms"] = to_ms(d, sr)
    report.summary["latency_measured"] = {k: v for k, v in stats.items()}
    details = {"structural_samples": d, "structural_ms": to_ms(d, sr), "block": n0,
               "positions": list(events.positions), "latencies": lags, "match_error": errs,
               "kinds": list(events.kinds),
               **{f"{k}_samples": v for k, v in stats.items()},
               **{f"{k}_ms": to_ms(v, sr) for k, v in stats.items()}}
    off = lags_a - d
    passed = bool(np.all(np.abs(off) <= tol.latency_max_error))
    base = f"model {d} samples ({to_ms(d, sr):.2f} ms)" + _host_latency(report, plan, details)
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


__all__ = ["best_lag", "check_latency", "nn_tilde_total_latency", "to_ms"]
