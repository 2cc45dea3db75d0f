"""The real-time factor of a streamed ``forward``: how long one CPU thread takes for each
host block, against the time the block lasts (``rtf.forward``, ``summary["rtf"]``,
``summary["realtime_block"]``).
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np

from .harness import torch_threads
from .result import CheckReport
from .runner import EagerReference, Runner
from .signals import musical_signal


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


__all__ = ["run_forward_timing"]
