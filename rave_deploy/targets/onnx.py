"""ONNX, offline: ``forward`` of the whole signal in one call (host contract 22).

``audio_in (1, C, T) -> audio_out (1, C, T)``, ``T`` dynamic (a multiple of the ratio),
the non-streaming model with its zero padding: for batch processing, sound design tools
and any runtime that reads ONNX. For real-time use, export ``onnx_streaming``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from rave_core.models.rave import RAVE

from .. import onnx_graphs as og
from .. import onnx_runtime as ort_host
from ..model import DeployModel
from .base import CheckOptions, ExportOptions, Target, register
from .onnx_streaming import fidelity_of, onnx_unsupported_reason, references


@register
class OnnxTarget(Target):
    name = "onnx"
    suffix = ".onnx"
    description = "ONNX offline graph: a whole signal of any length in one call"
    host = "ONNX runtimes"

    def unsupported_reason(self, model: RAVE, options: ExportOptions) -> Optional[str]:
        return onnx_unsupported_reason(model, options)

    def ignored_options(self, options: ExportOptions) -> List[str]:
        # (with --style-*, --block-size is the block the style is taught at: it applies)
        ignored = super().ignored_options(options)
        if options.block_size is None or options.style_target or options.style_source:
            return ignored
        return ignored + [f"--block-size does not apply to onnx (offline graph): it takes a whole "
                "signal of any length (a multiple of the ratio) in one call, so "
                f"--block-size {options.block_size} was not used; -t onnx_streaming "
                "--block-size fixes a graph's block"]

    def export(self, model: RAVE, options: ExportOptions, path: Path) -> Dict[str, object]:
        core = DeployModel(model, fidelity=options.fidelity, deterministic=True, streaming=False,
                           fold_latent=True)
        meta = og.export_offline(core, Path(path), "forward")
        return {"_core": core,
                "deterministic": True,
                "deterministic_note": og.DETERMINISTIC_NOTE,
                # Offline: the output is aligned with the input, no streaming delay.
                "latency_samples": 0,
                "streaming_latency_samples": core.latency_samples,
                "onnx": {"opset": og.OPSET, "graph": "offline", "method": "forward",
                         "latent_folded": meta["latent_folded"],
                         "batch": 1, "length": "dynamic, a multiple of the ratio",
                         "inputs": meta["inputs"], "outputs": meta["outputs"]}}

    def check(self, artifact: Path, sidecar: Dict[str, object], model: RAVE,
              options: CheckOptions):
        from ..check.harness import failed_silent
        from ..check.signals import musical_signal

        artifact = Path(artifact)
        report, sess = ort_host.open_for_check(self.name, artifact)
        if sess is None:
            return report
        meta = og.read_metadata(sess)
        if meta.get("graph") == "streaming":
            # A streaming graph without its sidecar is identified by its suffix only.
            from . import get_target
            return get_target("onnx_streaming").check(artifact, sidecar, model, options)
        report.add("contract.22_loads", True, "point 22: loads in ONNX Runtime (CPU, one thread)")
        reference, _ = references(model, fidelity_of(sidecar, meta), twin=False)
        ratio, sr = reference.ratio, reference.sr

        ins, outs = sess.get_inputs(), sess.get_outputs()
        problems = []
        if [i.name for i in ins] != ["audio_in"] or [o.name for o in outs] != ["audio_out"]:
            problems.append(f"inputs {[i.name for i in ins]} / outputs {[o.name for o in outs]}, "
                            "expected ['audio_in'] / ['audio_out']")
        elif isinstance(ins[0].shape[2], int) or isinstance(outs[0].shape[2], int):
            problems.append(f"time axis is fixed ({ins[0].shape} -> {outs[0].shape}): the "
                            "offline graph must take a signal of any length")
        report.add("contract.22_io", not problems, "point 22: " + (
            "; ".join(problems) if problems else "one graph, audio_in -> audio_out, dynamic length"))
        ort_host.check_metadata(report, 22, meta, {
            "sample_rate": sr, "ratio": ratio, "latent_size": reference.latent_size,
            "block_multiple": ratio, "latency_samples": 0}, sidecar)
        if problems:
            report.add("parity.forward", False, "not run: the graph fails its contract checks")
            return report

        # Parity on a whole signal and on a second length (the time axis is dynamic).
        n = -(-int(options.seconds * sr) // ratio) * ratio
        x = musical_signal(sr, n, reference.n_channels)[None].astype(np.float32)
        short = x[..., :max(ratio, (n // 3) // ratio * ratio)]
        if options.block_sizes:   # (they were passed over without a word)
            report.add("blocks.sizes", True, f"--block-size {', '.join(map(str, options.block_sizes))}"
                       f" does not apply to the offline graph: it runs a whole signal in one "
                       f"call, checked at lengths {n} and {short.shape[-1]}; check the "
                       "onnx_streaming graph for host blocks")
        t0 = time.perf_counter()
        y = sess.run(None, {"audio_in": x})[0]
        seconds = time.perf_counter() - t0
        ref = reference("forward", x)
        peak = float(np.max(np.abs(ref)))
        y2 = sess.run(None, {"audio_in": short})[0]
        ref2 = reference("forward", short)
        err, err2 = (float(np.max(np.abs(out - r))) / peak
                     if out.shape == r.shape and peak > 0 else float("inf")
                     for out, r in ((y, ref), (y2, ref2)))
        worst = max(err, err2)
        # a silent eager output fails, as in the streaming targets' parity: any silent
        # graph would match it
        if not failed_silent(report, "forward", peak, reference, after_warmup=False,
                             value=worst, threshold=f"<= {ort_host.PARITY:g}"):
            report.add("parity.forward", worst <= ort_host.PARITY,
                       f"offline graph vs the eager deterministic model: max error {worst:.2e} "
                       f"of peak at lengths {n} and {short.shape[-1]} (output shapes {y.shape}, "
                       f"{y2.shape})", value=worst, threshold=f"<= {ort_host.PARITY:g}")
        rtf = (n / sr) / max(seconds, 1e-9)
        report.add("rtf.forward", True, f"offline: {rtf:.1f}x real time on {n / sr:.1f} s in "
                   "one call (ONNX Runtime, one thread)", value=rtf)
        err_seg = y - ref if y.shape == ref.shape else ref
        snr = 10 * np.log10(max(float(np.sum(ref**2)), 1e-30) / max(float(np.sum(err_seg**2)), 1e-30))
        report.summary.update({"sample_rate": sr, "ratio": ratio, "latency_samples": 0, "latency_ms": 0.0,
                               "parity": {"forward": {"snr_db": snr, "max_rel_error": worst}}})
        # offline: one call on the whole signal, no host block; not the summary's "rtf",
        # which is a host's streaming speed
        report.target_specific["rtf_offline"] = rtf
        report.signals["sr"] = sr
        if y.shape == ref.shape:
            report.signals.setdefault("waveforms", {})["forward"] = {
                "input": x[0], "eager": ref[0], "aligned": ref[0], "exported": y[0], "delay": 0,
                "warmup": 0, "unit": "samples", "block": n, "in_unit": "samples"}
        return report
