"""Reports of ``rave-deploy check``: a terminal table, JSON, and one self-contained HTML page.

The HTML page has everything inline (plots as base64 PNG, audio as base64 WAV), so it can
be mailed, attached to a CI run or opened offline. First, in plain words, what a pass means
and what each group of checks tests (:data:`_GROUPS`). Per artefact: the pass/fail table of
checks (values with their units where known), exported-vs-eager waveforms and spectrograms,
the impulse response with the latency marked, the latency jitter histogram, the real-time
factor per block size, and players for the input, the eager output and the exported output.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

import rave_core
from rave_core.text import printable

from ..io import atomic_file
from .output import jsonable
from .result import CheckReport

#: Longest audio excerpt embedded per player (seconds): keeps the page small.
MAX_AUDIO_SECONDS = 6.0

#: What a page of ours begins with (:func:`is_report`): ``--report`` replaces such a file,
#: and refuses any other.
_PAGE_START = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
               "<meta name=generator content='rave-deploy check")
#: The start of the pages written before the generator tag: a report of an older version
#: is replaced too.
_OLD_PAGE_START = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
                   "<meta name=viewport content='width=device-width, initial-scale=1'>"
                   "<title>rave-deploy check: ")


def is_report(path) -> bool:
    """Whether ``path`` is a page :func:`write_html_report` wrote (False when it cannot be
    read): ``--report`` must not replace anything else, such as a checkpoint or an
    artefact given there by mistake."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_OLD_PAGE_START))
    except OSError:
        return False
    return head.startswith((_PAGE_START.encode(), _OLD_PAGE_START.encode()))


# --------------------------------------------------------------------------- text / JSON
def _size_of(path: Path) -> Optional[int]:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return None


def _fmt_size(n: Optional[int]) -> str:
    """Decimal units, as `rave-deploy export` prints sizes."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def _host_rtf(report: CheckReport) -> Optional[Dict[str, Any]]:
    """The timing row of the smallest host block that keeps up (``rtf.forward`` passed
    there), else of the smallest block timed (then below real time, and the check fails)."""
    table = report.summary.get("rtf") or {}
    if not table:
        return None
    keeping_up = [k for k, row in table.items() if isinstance(row, dict) and row.get("passed")]
    return table[min(keeping_up or table, key=lambda k: int(k))]


def _parity_snr(report: CheckReport) -> Optional[float]:
    parity = report.summary.get("parity") or {}
    values = [v.get("snr_db") for v in parity.values() if isinstance(v, dict) and v.get("snr_db") is not None]
    values = [float(v) for v in values]
    return min(values) if values else None


def _fmt_snr(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "exact" if v > 0 else "-inf dB"
    return f"{v:.1f} dB"


def _row(report: CheckReport) -> Dict[str, str]:
    s = report.summary
    size = s.get("size_bytes")
    size = int(size) if size is not None else _size_of(Path(report.artifact))
    lat = s.get("latency_ms")
    rtf = _host_rtf(report)
    fails = report.failures()
    return {
        "target": report.target,
        "file": Path(report.artifact).name,
        "size": _fmt_size(size),
        "latency": f"{lat:.2f} ms" if lat is not None else "-",
        "rtf": f"{rtf['rtf']:.2f}x @{rtf['block']}" if rtf else "-",
        "snr": _fmt_snr(_parity_snr(report)),
        "result": "PASS" if report.passed else (f"FAIL ({len(fails)})" if fails else "NO CHECKS"),
    }


_COLUMNS = [("target", "target"), ("file", "file"), ("size", "size"), ("latency", "latency"),
            ("rtf", "RTF @host block"), ("snr", "parity SNR"), ("result", "result")]


def format_table(reports: Sequence[CheckReport]) -> str:
    """A plain-text table, one line per artefact, then the failed checks."""
    rows = [_row(r) for r in reports]
    widths = {k: max([len(title)] + [len(r[k]) for r in rows]) for k, title in _COLUMNS}
    line = lambda cells: "  ".join(c.ljust(widths[k]) for (k, _), c in zip(_COLUMNS, cells)).rstrip()
    out = [line([t for _, t in _COLUMNS]), line(["-" * widths[k] for k, _ in _COLUMNS])]
    out += [line([r[k] for k, _ in _COLUMNS]) for r in rows]
    for rep in reports:
        for f in rep.failures():
            out.append(f"  FAIL {Path(rep.artifact).name} {f.name}: {f.message}")
    return "\n".join(out)


def reports_to_json(reports: Sequence[CheckReport]) -> Dict[str, Any]:
    """All reports as a JSON-ready dict (no NaN/inf: they become strings)."""
    return jsonable({"passed": bool(reports) and all(r.passed for r in reports),
                      "reports": [r.as_dict() for r in reports]})


# --------------------------------------------------------------------------- figures
_EAGER, _EXPORT, _ERR, _MARK = "#1f77b4", "#e4572e", "#6c757d", "#2a9d8f"


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.titlesize": 10, "axes.titleweight": "bold", "legend.frameon": True,
                         "legend.framealpha": 0.9, "legend.edgecolor": "0.85", "legend.fontsize": 8})
    return plt


def _png(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _envelope(y: np.ndarray, sr: int, points: int = 2000):
    """Min/max envelope of ``y`` for plotting: ``points`` columns instead of every
    sample (fast to draw, and every peak still visible)."""
    n = len(y)
    if n <= 2 * points:
        return np.arange(n) / sr, y
    hop = n // points
    m = y[:hop * points].reshape(points, hop)
    with np.errstate(all="ignore"):
        lo, hi = np.nanmin(m, 1), np.nanmax(m, 1)
    t = (np.arange(points) * hop + hop / 2) / sr
    return np.repeat(t, 2), np.stack([lo, hi], 1).ravel()


def _fig_waveform(w: Dict[str, Any], sr: int, method: str) -> str:
    plt = _plt()
    y, a = np.asarray(w["exported"])[0], np.asarray(w["aligned"])[0]
    warm, d = int(w["warmup"]), int(w["delay"])
    t = np.arange(len(y)) / sr
    err = np.where(np.isnan(a), 0.0, y - a)
    err[:warm] = 0
    peak = np.nanmax(np.abs(a[warm:])) if len(a) > warm else 0
    fig, ax = plt.subplots(3, 1, layout='constrained', figsize=(11, 6.2), gridspec_kw={"height_ratios": [2, 2, 1.2]})
    import warnings
    with warnings.catch_warnings():   # all-NaN columns before the delay
        warnings.simplefilter("ignore", RuntimeWarning)
        ax[0].plot(*_envelope(a, sr), color=_EAGER, lw=0.6, label=f"eager, delayed by {d}")
    ax[0].plot(*_envelope(y, sr), color=_EXPORT, lw=0.6, alpha=0.7, label="exported")
    ax[0].axvspan(0, warm / sr, color="0.92", zorder=0, label="warm-up (not compared)")
    ax[0].set_title(f"{method}: exported vs eager (block {w['block']})", loc="left")
    ax[0].set_xlabel("time (s)")
    ax[0].legend(loc="lower right", bbox_to_anchor=(1, 1), ncol=3, frameon=False)
    ax[0].set_xlim(0, t[-1] if len(t) else 1)
    # zoom where the error is largest (or mid-signal if exact)
    if len(y) > warm + 16:
        c = warm + int(np.argmax(np.abs(err[warm:]))) if np.any(err[warm:]) else (warm + len(y)) // 2
        half = int(0.01 * sr)
        lo, hi = max(warm, c - half), min(len(y), c + half)
        ms = 1000 * np.arange(lo, hi) / sr
        ax[1].plot(ms, a[lo:hi], color=_EAGER, lw=1.4, label="eager (aligned)")
        ax[1].plot(ms, y[lo:hi], color=_EXPORT, lw=1.0, ls="--", label="exported")
        ax[1].set_title("zoom: 20 ms around the largest error", loc="left")
        ax[1].set_xlabel("time (ms)")
        ax[1].legend(loc="lower right", bbox_to_anchor=(1, 1), ncol=2, frameon=False)
    ax[2].plot(*_envelope(err, sr), color=_ERR, lw=0.6)
    rel = np.abs(err).max() / peak if peak else float("nan")
    ax[2].set_title(f"error (exported − aligned eager), max {rel:.2g} of peak", loc="left")
    ax[2].set_xlabel("time (s)")
    ax[2].set_xlim(0, t[-1] if len(t) else 1)
    return _png(fig)


def _fig_latents(w: Dict[str, Any]) -> str:
    plt = _plt()
    y, a = np.asarray(w["exported"]), np.asarray(w["aligned"])   # (latent, frames)
    warm = int(w["warmup"])
    fig, ax = plt.subplots(1, 2, layout='constrained', figsize=(11, 3.2))
    n = min(4, y.shape[0])
    frames = np.arange(y.shape[-1])
    for i in range(n):
        ax[0].plot(frames, a[i], color=f"C{i}", lw=1.4, alpha=0.5)
        ax[0].plot(frames, y[i], color=f"C{i}", lw=0.8, ls="--")
    ax[0].axvspan(0, warm, color="0.92", zorder=0)
    ax[0].set_title(f"encode: first {n} latent dims (solid eager, dashed exported)")
    ax[0].set_xlabel("latent frame")
    err = np.where(np.isnan(a), 0.0, y - a)
    err[:, :warm] = 0
    im = ax[1].imshow(np.abs(err), aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax[1], label="|error|")
    ax[1].set_title("|exported − eager| per latent dim")
    ax[1].set_xlabel("latent frame")
    ax[1].set_ylabel("dim")
    return _png(fig)


def _fig_spectrograms(w: Dict[str, Any], sr: int, method: str) -> str:
    from scipy import signal as sps
    plt = _plt()
    warm = int(w["warmup"])
    y = np.asarray(w["exported"])[0, warm:].astype(np.float64)
    a = np.nan_to_num(np.asarray(w["aligned"])[0, warm:]).astype(np.float64)
    nper = 1024 if len(y) >= 4096 else max(16, len(y) // 4)
    f, t, sa = sps.spectrogram(a, sr, nperseg=nper, noverlap=nper * 3 // 4)
    _, _, sy = sps.spectrogram(y, sr, nperseg=nper, noverlap=nper * 3 // 4)
    ref = max(sa.max(), sy.max(), 1e-30)
    fig, ax = plt.subplots(1, 2, layout='constrained', figsize=(11, 3.4), sharey=True)
    extent = (warm / sr + t[0], warm / sr + t[-1], 0, f[-1] / 1000)
    for axis, s, title in ((ax[0], sa, "eager (aligned)"), (ax[1], sy, "exported")):
        im = axis.imshow(10 * np.log10(s / ref + 1e-12), vmin=-100, vmax=0, origin="lower",
                         aspect="auto", extent=extent, cmap="magma", interpolation="nearest")
        axis.set_title(f"{method}: {title}")
        axis.set_xlabel("time (s)")
    ax[0].set_ylabel("kHz")
    fig.colorbar(im, ax=ax, label="dB relative to the peak", fraction=0.03)
    return _png(fig)


def _fig_impulse(imp: Dict[str, Any], sr: int) -> str:
    plt = _plt()
    r, e = np.asarray(imp["response"])[0], np.asarray(imp["eager"])[0]
    click, d, ratio = int(imp["click"]), int(imp["latency"]), int(imp.get("ratio", 128))
    onset = imp.get("onset")
    x = np.arange(len(r)) - click
    ed = np.full_like(e, np.nan)
    if d < len(e):
        ed[d:] = e[:len(e) - d]
    fig, ax = plt.subplots(1, 2, layout='constrained', figsize=(11, 3.4), gridspec_kw={"width_ratios": [3, 2]})
    lo = -min(ratio, 256)
    hi = max((onset - click) if onset is not None else d, d) + 4 * ratio
    sel = (x >= lo) & (x <= hi)
    ax[0].plot(x[sel], ed[sel], color=_EAGER, lw=1.6, alpha=0.6, label=f"eager, delayed by {d}")
    ax[0].plot(x[sel], r[sel], color=_EXPORT, lw=0.9, label="exported")
    ax[0].axvline(0, color="k", lw=0.8, ls=":", label="click")
    ax[0].axvline(d, color=_MARK, lw=1.2, ls="--", label=f"reported latency {d} ({1000 * d / sr:.2f} ms)")
    if onset is not None:
        ax[0].axvline(onset - click, color=_EXPORT, lw=0.8, ls="-.",
                      label=f"onset {onset - click} ({1000 * (onset - click) / sr:.2f} ms)")
    ax[0].set_title("impulse response (click minus silence)")
    ax[0].set_xlabel("samples after the click")
    ax[0].set_ylabel("output amplitude (1 = full scale)")
    ax[0].legend(loc="upper left", fontsize=8)
    mag = 20 * np.log10(np.abs(r) / max(np.abs(r).max(), 1e-30) + 1e-12)
    ax[1].plot(1000 * x / sr, mag, color=_EXPORT, lw=0.5)
    ax[1].axvline(1000 * d / sr, color=_MARK, lw=1.2, ls="--")
    ax[1].set_ylim(-120, 5)
    ax[1].set_xlim(1000 * lo / sr, 1000 * x[-1] / sr)
    ax[1].set_title("whole response, dB")
    ax[1].set_xlabel("ms after the click")
    ax[1].set_ylabel("dB relative to the peak")
    return _png(fig)


def _fig_jitter(j: Dict[str, Any], sr: int) -> str:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    lat = np.asarray(j["latencies"], dtype=float)
    pos = np.asarray(j["positions"])
    d = int(j["structural"])
    kinds = list(j.get("kinds", ["excitation"] * len(lat)))
    fig, ax = plt.subplots(1, 2, layout='constrained', figsize=(11, 3.0))
    lo, hi = int(min(lat.min(), d)) - 2, int(max(lat.max(), d)) + 3
    ax[0].hist(lat, bins=np.arange(lo, hi) - 0.5, color=_EXPORT, rwidth=0.8)
    ax[0].axvline(d, color=_MARK, ls="--", lw=1.2, label=f"structural {d}")
    ax[0].set_title(f"measured latency, {len(lat)} onsets in a {j['block']}-sample block")
    ax[0].set_xlabel("latency (samples)")
    ax[0].set_ylabel("count")
    ax[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    ax[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    ax[0].legend()
    for kind, marker in (("click", "o"), ("note", "s")):
        sel = np.array([k == kind for k in kinds])
        if sel.any():
            ax[1].plot(pos[sel], lat[sel], marker, color=_EXPORT if kind == "click" else _EAGER, label=kind)
    ax[1].axhline(d, color=_MARK, ls="--", lw=1.2)
    ax[1].set_ylim(lo, hi)
    ax[1].yaxis.set_major_locator(MaxNLocator(integer=True))
    ax[1].set_title("latency vs position of the onset in the block")
    ax[1].set_xlabel("offset inside the host block (samples)")
    ax[1].set_ylabel("latency (samples)")
    ax[1].legend()
    return _png(fig)


def _fig_rtf(table: Dict[str, Dict[str, Any]]) -> str:
    plt = _plt()
    rows = [table[k] for k in sorted(table, key=int)]
    labels = [str(r["block"]) for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(layout='constrained', figsize=(11, 3.0))
    mean = [100 * r["mean_ms"] / r["budget_ms"] for r in rows]
    p99 = [100 * r["p99_ms"] / r["budget_ms"] for r in rows]
    ax.bar(x - 0.18, mean, 0.36, color=_EAGER, label="mean block time")
    ax.bar(x + 0.18, p99, 0.36, color=[_EXPORT if not r["passed"] else "#f4a261" for r in rows],
           label="p99 block time")
    ax.axhline(100, color="k", ls="--", lw=1, label="budget (block duration)")
    for i, r in enumerate(rows):
        ax.text(i, max(mean[i], p99[i], 100) + 4,
                f"{r['rtf']:.2f}x real time\np99 {r['p99_ms']:.2f} ms of {r['budget_ms']:.2f} ms",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_xlabel("host block size (samples)")
    ax.set_ylabel("% of the block's budget")
    ax.set_ylim(0, max(p99 + mean + [100]) * 1.3 + 20)
    ax.set_title("compute time per block, one thread (below the dashed line: real time)")
    ax.legend(loc="upper right")
    return _png(fig)


# --------------------------------------------------------------------------- audio
def _wav(x: np.ndarray, sr: int, gain: float) -> str:
    import soundfile as sf
    x = np.nan_to_num(np.asarray(x, dtype=np.float32))[:, :int(MAX_AUDIO_SECONDS * sr)]
    buf = io.BytesIO()
    sf.write(buf, np.clip(gain * x.T, -1, 1), sr, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _db(gain: float) -> str:
    return f"{20 * math.log10(gain):+.0f} dB"


def _players(w: Dict[str, Any], sr: int, method: str) -> str:
    """Players for the input (at its own level, turned down only if it clips) and the
    eager and exported outputs (one gain for both, so that their levels compare)."""
    warm = int(w["warmup"])
    y = np.asarray(w["exported"])[:, warm:]
    a = np.nan_to_num(np.asarray(w["aligned"]))[:, warm:]
    peak = max(float(np.abs(y).max()), float(np.abs(a).max()), 1e-12)
    gain = 0.9 / peak if peak < 0.05 or peak > 1.0 else 1.0   # quiet random models / clipping
    items = []
    if w.get("in_unit", "samples") == "samples":
        xin = np.asarray(w["input"])[:, warm:]
        pin = max(float(np.abs(xin).max()), 1e-12)
        gain_in = 1.0 if pin <= 1 else 0.9 / pin
        own = f"{_db(gain_in)} on its own" if gain_in != 1 else "at its own level"
        items.append((f"input, {own}", _wav(xin, sr, gain_in)))
    shared = f", {_db(gain)}" if gain != 1 else ""
    items += [("eager" + shared, _wav(a, sr, gain)), ("exported" + shared, _wav(y, sr, gain))]
    note = f" (eager and exported share one gain, {_db(gain)})" if gain != 1 else ""
    cells = "".join(
        f'<figure class="player"><figcaption>{html.escape(name)}</figcaption>'
        f'<audio controls preload="none" src="data:audio/wav;base64,{data}"></audio></figure>'
        for name, data in items)
    return (f'<div class="players"><h4>{html.escape(method)}{html.escape(note)}</h4>'
            f'<div class="row">{cells}</div></div>')


# --------------------------------------------------------------------------- HTML
_CSS = """
:root { --ok:#1b7f3b; --ok-bg:#e6f4ea; --bad:#b3261e; --bad-bg:#fce8e6; --ink:#1d2330;
        --muted:#5f6b7a; --line:#e3e7ee; --card:#ffffff; --bg:#f5f7fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width:1180px; margin:0 auto; padding:28px 24px 60px; }
header h1 { margin:0 0 4px; font-size:24px; }
header p { margin:0; color:var(--muted); }
section.card { background:var(--card); border:1px solid var(--line); border-radius:10px;
               padding:20px 24px; margin:22px 0; box-shadow:0 1px 2px rgba(0,0,0,.04); }
h2 { margin:0 0 12px; font-size:19px; display:flex; align-items:center; gap:10px; flex-wrap:wrap; }
h2 code { font-size:15px; color:var(--muted); font-weight:normal; }
h3 { font-size:15px; margin:26px 0 8px; padding-top:14px; border-top:1px solid var(--line); }
h4 { font-size:13px; margin:10px 0 6px; color:var(--muted); font-weight:600; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:#f0f3f7; font-weight:600; white-space:nowrap; }
td.num { font-variant-numeric:tabular-nums; white-space:nowrap; }
td.name { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space:nowrap; }
tr.fail td { background:var(--bad-bg); }
.badge { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12px; font-weight:700;
         letter-spacing:.02em; }
.badge.pass { color:var(--ok); background:var(--ok-bg); }
.badge.fail { color:var(--bad); background:var(--bad-bg); }
dl.facts { display:grid; grid-template-columns:repeat(auto-fill, minmax(150px, 1fr)); gap:8px 18px;
           margin:0 0 16px; }
dl.facts div { background:#f8fafc; border:1px solid var(--line); border-radius:8px; padding:8px 12px; }
dl.facts dt { color:var(--muted); font-size:12px; }
dl.facts dd { margin:0; font-size:16px; font-weight:600; overflow-wrap:anywhere; }
img { max-width:100%; display:block; margin:6px 0 10px; }
details { margin-top:3px; }
details summary { cursor:pointer; color:var(--muted); font-size:12px; }
details pre { white-space:pre-wrap; font-size:11px; background:#f8fafc; padding:8px; border-radius:6px;
              max-height:260px; overflow:auto; }
.players .row { display:flex; flex-wrap:wrap; gap:14px; }
figure.player { margin:0; background:#f8fafc; border:1px solid var(--line); border-radius:8px;
                padding:8px 12px; }
figure.player figcaption { font-size:12px; color:var(--muted); margin-bottom:4px; }
audio { width:300px; }
p.note { color:var(--muted); font-size:12px; margin:4px 0; }
dl.about dt { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-weight:600;
              margin-top:10px; }
dl.about dd { margin:2px 0 0 18px; }
td.name a { color:inherit; text-decoration:none; }
td.name a:hover { text-decoration:underline; }
nav ul { margin:6px 0 0; padding-left:18px; }
"""

#: What a pass means, for someone who will play the artefact live (the page's first words
#: after the overview).
_PASS_MEANS = (
    "PASS means every check of the artefact passed: in plain words, it loads in its host the "
    "way the host loads it, sounds the same as the trained model (run offline in Python: the "
    "<i>eager</i> model), sounds the same whatever buffer size the host uses, never reacts to "
    "sound it has not received yet, is exactly as late as it says (so the host can compensate "
    "its latency), and, where its host's runtime is timed here, computes fast enough on one "
    "CPU thread of this machine at the host block shown. It says nothing about whether the "
    "model sounds good: the players are for that.")

#: Each group of checks, by the prefix of its names (before the dot), in plain words: what
#: it tests, and what a failure sounds like or does in the host. The page explains the
#: groups its reports hold, in this order.
_GROUPS = {
    "contract": (
        "Host contract: the file has what its host needs to load and run it (file format, "
        "ops, methods, attributes, shapes, batches of voices, the sidecar's latency, rate and "
        "ratio). contract.&lt;point&gt;_&lt;what&gt; names the point of the host's contract "
        "(each point: docs/host-contracts.md in rave-deploy). A "
        "failure: the host refuses the file, stops with an error, or runs it wrongly (at the "
        "wrong rate, uncompensated, silent)."),
    "device": (
        "Every weight moves with the model when the host moves it to another device (nn~'s "
        "<code>gpu</code> message). A failure: the <code>gpu</code> message breaks the model."),
    "executor": (
        "The file gives the same output under libtorch's legacy graph executor, which the RAVE "
        "UGens switch all of scsynth to. A failure: with the RAVE UGens installed, NN.ar errors "
        "or sounds different."),
    "style": (
        "The style attributes work: learning a target passes audio through, learning a source "
        "then transfers, the resets give the plain output back. A failure: the style messages "
        "do nothing, or the model stays stuck in a style."),
    "parity": (
        "Parity: the export sounds the same as the trained model run in Python, method by "
        "method (forward: audio in, audio out; encode: audio to latents; decode: latents to "
        "audio). The value is the signal-to-error ratio in dB (the overview's parity SNR: the "
        "worst method's); the higher, the closer, and the threshold gives the bar. A failure: "
        "the export sounds different from what was trained (noise, distortion, another "
        "sound), or is shifted in time."),
    "blocks": (
        "Block-size invariance: the output is the same whatever block (buffer) size the host "
        "processes, from the smallest to the largest tried. The value is the largest "
        "difference between block sizes, as a share of the output's peak. A failure: the sound "
        "changes when you change the buffer size, or clicks where blocks meet."),
    "causality": (
        "Causality: a change of the input never reaches the output before it is due (its time "
        "plus the latency), and a click's response starts where the trained model's does, "
        "delayed by the latency. The value is how far too early the output moved (0: never). "
        "A failure: the file reads sound it cannot have yet; live, what you hear depends on how "
        "the host cuts the stream, and the latency it reports is wrong."),
    "latency": (
        "Latency: how late the output answers the input, in samples at the host's rate (and "
        "ms), measured on clicks and note onsets at 16 places inside a host block. It must "
        "equal the latency the file reports, with no jitter. The host's buffering adds to it "
        "(the total latency table below the plots). A failure: sound arrives at another time "
        "than the file says, so delay compensation is off, or timing wobbles from note to "
        "note."),
    "rtf": (
        "Real-time factor: how many times faster than real time the file computes on one CPU "
        "thread of this machine. '1.5x @256' (the overview's RTF @host block) means that at a "
        "host block of 256 samples a block takes on average two thirds of the time it lasts. It passes "
        "when at some block size even the slowest 1% of blocks (p99) finish in time; the "
        "smallest such block is shown. A failure (or a smaller block, or a slower or busier "
        "machine): the host misses its deadlines, and you hear crackles and dropouts."),
    "precision": (
        "The plugin's float32 arithmetic stays as close to the float64 model as the threshold "
        "says. A failure: rounding noise or distortion in the plugin's output."),
    "streaming": (
        "Whether the streaming checks could run. A failure: they could not (the message says "
        "why; often a failed contract above), so parity, blocks, causality, latency and speed "
        "are unknown."),
}

#: The unit of a check's value, by the check's name, else the prefix before its dot, as
#: the code that adds the check computes it; a value whose unit is not here is shown bare.
#: (``parity.*``: :func:`_unit`.)
_UNITS = {
    "latency": " samples",                        # the mean measured latency (check.latency)
    "rtf": "x real time",                         # check.timing, the offline ONNX graph's
    "blocks": " of peak",                         # max difference / peak (check.harness)
    "precision": " of peak",                      # Minifusion's float32 max error / peak
    "contract.4_streaming": " of peak",
    "causality.forward": " samples",              # earliest change before it is due
    "causality.encode": " latent frames",
    "contract.sample_rate": " Hz",
    "contract.14_ratio": " samples per latent frame",
}


def _group(name: str) -> str:
    return name.split(".", 1)[0]


def _unit(r) -> str:
    """The unit of ``r.value`` (with its leading space), or ``""`` where it is not known.
    ``parity.*`` is the SNR in dB where its details say so (the offline ONNX graph's is a
    max error instead, and says nothing)."""
    if _group(r.name) == "parity":
        return " dB" if "snr_db" in r.details else ""
    return _UNITS.get(r.name, _UNITS.get(_group(r.name), ""))


def _about_checks(reports: Sequence[CheckReport]) -> str:
    """The card that says, in plain words, what a pass means and what each group of checks
    in ``reports`` tests (each check's name links to its group's entry)."""
    present = {_group(r.name) for rep in reports for r in rep.results}
    entries = "".join(f"<dt id=check-{g}>{g}.*</dt><dd>{text}</dd>"
                      for g, text in _GROUPS.items() if g in present)
    return (f"<section class=card id=about-checks><h2>what the checks mean</h2><p>{_PASS_MEANS}</p>"
            "<p>Each check in full, and every field of its details: docs/check.md in "
            f"rave-deploy.</p><dl class=about>{entries}</dl></section>")


def _fmt_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return html.escape(str(v))


def _details_json(details: Dict[str, Any]) -> str:
    text = json.dumps(jsonable(details), indent=1, ensure_ascii=False)  # the page is UTF-8
    if len(text) > 4000:
        text = text[:4000] + "\n…"
    return f"<details><summary>details</summary><pre>{html.escape(text)}</pre></details>" if details else ""


def _value(r) -> str:
    """``r``'s value with its unit, and for ``latency.forward`` in ms too."""
    if r.value is None:
        return ""
    text = _fmt_value(r.value) + html.escape(_unit(r))
    if _group(r.name) == "latency" and r.details.get("mean_ms") is not None:
        text += f" ({r.details['mean_ms']:.2f} ms)"
    return text


def _check_name(name: str) -> str:
    """The check's exact name, linked to the explanation of its group where there is one."""
    if _group(name) not in _GROUPS:
        return html.escape(name)
    return f"<a href=#check-{_group(name)}>{html.escape(name)}</a>"


def _checks_table(report: CheckReport) -> str:
    rows = []
    for r in report.results:
        badge = '<span class="badge pass">pass</span>' if r.passed else '<span class="badge fail">FAIL</span>'
        rows.append(
            f'<tr class="{"pass" if r.passed else "fail"}"><td class="name">{_check_name(r.name)}</td>'
            f"<td>{badge}</td><td class=num>{_value(r)}</td>"
            f"<td>{html.escape(r.threshold or '')}</td>"
            f"<td>{html.escape(r.message)}{_details_json(r.details)}</td></tr>")
    return ("<table class=checks><thead><tr><th>check</th><th>result</th><th>value</th>"
            "<th>threshold</th><th>message</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _facts(report: CheckReport) -> str:
    row = _row(report)
    s = report.summary
    facts = [("size", row["size"]), ("model latency", row["latency"])]
    if s.get("sample_rate") and s.get("ratio"):
        facts.insert(1, ("sample rate", f"{s['sample_rate']} Hz, ratio {s['ratio']}"))
    if s.get("latency_samples") is not None:
        facts[-1] = ("model latency", f"{row['latency']} ({s['latency_samples']} samples)")
    m = s.get("latency_measured")
    if m:
        facts.append(("measured latency", f"{m['mean']:.0f} samples, jitter {m['jitter']}"))
    if s.get("checkpoint"):  # the run it was checked against (not made absolute)
        facts.append(("checkpoint", str(s["checkpoint"])))
    for side, path in (s.get("style") or {}).items():
        facts.append((f"style {side}", path))
    facts += [("RTF at host block", row["rtf"]), ("parity SNR (worst)", row["snr"]),
              ("checks", f"{sum(r.passed for r in report.results)}/{len(report.results)} passed")]
    cells = "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in facts)
    return f'<dl class="facts">{cells}</dl>'


def _host_latency_table(report: CheckReport, sr: int) -> str:
    """The total latency in the host of ``report``'s target: the model's plus what the host
    adds, as ``latency.forward``'s details state it (the target's
    :meth:`~rave_deploy.targets.base.Target.host_latency`). A figure that is the same at
    every host block is one line, the others a column per host block. A host whose
    contract states no figure: its note; no ``latency.forward``: nothing."""
    lat = next((r for r in report.results if r.name == "latency.forward"), None)
    details = lat.details if lat is not None else {}
    host, d = details.get("host"), details.get("structural_samples")
    if d is None:
        return ""
    if not host:
        note = details.get("host_note")
        return f"<p class=note>in the host: {html.escape(note)}</p>" if note else ""
    added = details.get(host["key"]) or {}
    blocks = sorted(added, key=int)
    if not blocks:
        return ""
    name = html.escape(host["name"])

    def total(samples: int) -> str:
        return f"{d + samples} samples ({1000.0 * (d + samples) / sr:.2f} ms)"

    fixed = [m for m in host["modes"] if len({added[b][m] for b in blocks}) == 1]
    per_block = [m for m in host["modes"] if m not in fixed]
    lines = "".join(f"<p>{html.escape(host['modes'][m].format(block=blocks[0]))}: "
                    f"{total(added[blocks[0]][m])}</p>" for m in fixed)
    table = ""
    if per_block:
        head = "".join(f"<th>{html.escape(host['modes'][m].format(block='N'))}</th>"
                       for m in per_block)
        rows = "".join("<tr><td class=num>" + b + "</td>" + "".join(
            f"<td class=num>{total(added[b][m])}</td>" for m in per_block) + "</tr>"
            for b in blocks)
        table = ("<table><thead><tr><th>host block N</th>" + head + "</tr></thead><tbody>"
                 + rows + "</tbody></table>")
    return (f"<h4>total latency in {name} (model + what {name} adds)</h4>"
            f"<p class=note>{html.escape(host['source'])}</p>" + lines + table)


def _section(i: int, report: CheckReport) -> str:
    sig = report.signals
    sr = int(sig.get("sr", 44100))
    status = '<span class="badge pass">PASS</span>' if report.passed else '<span class="badge fail">FAIL</span>'
    parts = [f'<section class="card" id="artifact-{i}"><h2>{html.escape(report.target)} '
             f"<code>{html.escape(str(report.artifact))}</code>{status}</h2>",
             _facts(report), _checks_table(report)]

    def figure(title: str, fn, *args) -> None:
        try:
            parts.append(f"<h3>{html.escape(title)}</h3>" + _img(fn(*args), title))
        except Exception as exc:   # a plot must never hide the verdict
            parts.append(f"<h3>{html.escape(title)}</h3><p class=note>plot failed: {html.escape(str(exc))}</p>")

    waves = sig.get("waveforms") or {}
    for method in ("forward", "decode"):
        if method in waves:
            figure(f"{method}: waveforms", _fig_waveform, waves[method], sr, method)
            figure(f"{method}: spectrograms", _fig_spectrograms, waves[method], sr, method)
    if "encode" in waves:
        figure("encode: latent trajectories", _fig_latents, waves["encode"])
    if "impulse" in sig:
        figure("impulse response", _fig_impulse, sig["impulse"], sr)
    if "jitter" in sig:
        figure("latency and jitter", _fig_jitter, sig["jitter"], sr)
    parts.append(_host_latency_table(report, sr))
    if report.summary.get("rtf"):
        figure("real-time factor per host block size", _fig_rtf, report.summary["rtf"])
    players = [_players(waves[m], sr, m) for m in ("forward", "decode") if m in waves]
    if players:
        parts.append("<h3>listen</h3><p class=note>after the warm-up; eager = the offline model "
                     "delayed by the reported latency.</p>" + "".join(players))
    parts.append("</section>")
    return "".join(parts)


def write_html_report(reports: Sequence[CheckReport], path) -> Path:
    """Write one self-contained HTML page for ``reports`` at ``path`` and return it."""
    path = Path(path)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    passed = sum(r.passed for r in reports)
    overview_rows = "".join(
        f'<tr class="{"pass" if r.passed else "fail"}">'
        + "".join(f"<td>{'<a href=#artifact-%d>%s</a>' % (i, html.escape(v)) if k == 'file' else html.escape(v)}</td>"
                  for k, v in ((k, _row(r)[k]) for k, _ in _COLUMNS))
        + "</tr>" for i, r in enumerate(reports))
    overview = ("<section class=card><h2>overview</h2><table><thead><tr>"
                + "".join(f"<th>{html.escape(t)}</th>" for _, t in _COLUMNS)
                + f"</tr></thead><tbody>{overview_rows}</tbody></table></section>")
    body = _about_checks(reports) + "".join(_section(i, r) for i, r in enumerate(reports))
    page = (f"{_PAGE_START} {html.escape(rave_core.__version__)}'>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>rave-deploy check: {passed}/{len(reports)} passed</title><style>{_CSS}</style></head>"
            f"<body><main><header><h1>rave-deploy check</h1><p>{passed} of {len(reports)} artefact(s) "
            f"passed · {when}</p></header>{overview}{body}</main></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(printable(page), encoding="utf-8")  # paths that are not UTF-8
    return path


__all__ = ["format_table", "is_report", "reports_to_json", "write_html_report"]
