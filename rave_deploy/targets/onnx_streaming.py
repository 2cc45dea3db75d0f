"""ONNX, streaming: ``forward`` as a graph with its state passed in and out explicitly.

Host contract 22: ``(audio_in, state_in_0, ..., state_in_{K-1}) -> (audio_out,
state_out_0, ..., state_out_{K-1})``, batch 1, states zeros at start, each call's
``state_out_k`` fed back as the next ``state_in_k``. Any ONNX runtime can then stream the
model block by block without hidden state. The time axis is dynamic (any multiple of the
ratio per call) unless ``--block-size`` fixes it. Metadata (sample rate, ratio, latent
size, latency, block multiple, the states' layers and shapes) is in ``metadata_props``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, List, Optional

from rave_core.models.rave import RAVE

from .. import onnx_graphs as og
from .. import onnx_runtime as ort_host
from ..model import DeployModel
from .base import CheckOptions, ExportOptions, Target, register, usable_block_sizes


def streaming_only_reason(options: ExportOptions) -> Optional[str]:
    """Why a streaming-graph target refuses ``--no-streaming`` (None when streaming)."""
    if options.streaming:
        return None
    return ("its graph takes one block and the states of the previous call: it is a "
            "streaming export; the offline graph is -t onnx (drop --no-streaming)")


def onnx_unsupported_reason(model: RAVE, options: ExportOptions) -> Optional[str]:
    """Why the ONNX targets cannot serve ``model`` with ``options`` (``None`` if they can)."""
    problems = []
    if options.sr is not None and int(options.sr) != int(model.sr):
        problems.append(f"--sr {options.sr}: the graphs run at the model's rate ({model.sr} Hz); "
                        "resample in the host instead")
    if options.channels is not None and int(options.channels) != int(model.n_channels):
        problems.append(f"--channels {options.channels}: the graphs take the model's "
                        f"{model.n_channels} channel(s)")
    return "; ".join(problems) or None


def fidelity_of(sidecar: Dict[str, object], meta: Dict[str, object]) -> float:
    """The fidelity the artefact was exported with (sidecar, else graph metadata)."""
    return float(sidecar.get("fidelity", meta.get("fidelity", 0.95)))


def references(model: RAVE, fidelity: float, twin: bool = True, fold_latent: bool = True):
    """The eager deterministic reference and (``twin``) a streaming twin of the exported
    core, to know which states the graphs must carry, at the exported fidelity
    (``fold_latent``: as the graph was exported, see its ``latent_folded`` metadata)."""
    from ..check.runner import EagerReference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # latent-statistics warnings were shown at export
        core = DeployModel(model, fidelity=fidelity, deterministic=True, streaming=True,
                           fold_latent=fold_latent) if twin else None
        return EagerReference(model, fidelity), core


def streaming_block_sizes(ratio: int, fixed: Optional[int], requested: List[int],
                          report=None) -> List[int]:
    """Block sizes to check: the requested (or sidecar's) ones the graph can take, else
    its smallest block and four times it (:func:`~rave_deploy.targets.base.usable_block_sizes`:
    with ``report``, the requested sizes it cannot take are a failed ``blocks.sizes``)."""
    unit = fixed or ratio
    takes = (f"multiples of the graph's fixed block {fixed}" if fixed
             else f"multiples of the ratio {ratio}") + ": the graph cannot run them"
    return usable_block_sizes(requested, unit, [unit, 4 * unit], report, takes)


@register
class OnnxStreamingTarget(Target):
    name = "onnx_streaming"
    suffix = ".onnx"
    description = ("ONNX streaming graph: one block and the previous states in, the output "
                   "block and the next states out (any ONNX runtime)")
    host = "ONNX runtimes"
    host_latency_note = ("the host's own buffering comes on top: host contract 22 states no "
                         "figure")

    def unsupported_reason(self, model: RAVE, options: ExportOptions) -> Optional[str]:
        reason = streaming_only_reason(options) or onnx_unsupported_reason(model, options)
        if reason is None and options.block_size is not None and options.block_size % int(model.ratio):
            reason = (f"--block-size {options.block_size} is not a multiple of the model's "
                      f"ratio {model.ratio}")
        return reason

    def export(self, model: RAVE, options: ExportOptions, path: Path) -> Dict[str, object]:
        core = DeployModel(model, fidelity=options.fidelity, deterministic=True, streaming=True,
                           fold_latent=True)
        meta = og.export_streaming(core, Path(path), "forward", options.block_size)
        block = options.block_size
        return {"_core": core,
                "deterministic": True,
                "deterministic_note": og.DETERMINISTIC_NOTE,
                "onnx": {"opset": og.OPSET, "graph": "streaming", "method": "forward",
                         "latent_folded": meta["latent_folded"],
                         "block_size": meta["block_size"], "batch": 1,
                         "inputs": meta["inputs"], "outputs": meta["outputs"],
                         "initial_state": "zeros", "states": meta["states"]},
                **({"block_sizes": [block * k for k in (1, 2, 4, 8)]} if block else {})}

    def check(self, artifact: Path, sidecar: Dict[str, object], model: RAVE,
              options: CheckOptions):

        artifact = Path(artifact)
        report, sess = ort_host.open_for_check(self.name, artifact)
        if sess is None:
            return report
        report.add("contract.22_loads", True, "point 22: loads in ONNX Runtime (CPU, one thread)")
        meta = og.read_metadata(sess)
        # files written before the latent was folded carry no flag: their states are unfolded
        reference, core = references(model, fidelity_of(sidecar, meta),
                                     fold_latent=bool(meta.get("latent_folded", False)))
        ok = check_streaming_contract(report, sess, core, "forward")
        check_streaming_metadata(report, meta, core, "forward", sidecar)
        if not ok:
            report.add("streaming.forward", False, "not run: the graph fails its contract "
                       "checks above (re-export it)")
            return report
        fixed = sess.get_inputs()[0].shape[2]
        fixed = fixed if isinstance(fixed, int) else None
        report.summary["block_size"] = fixed   # samples per call, where the graph fixes it
        runner = ort_host.OrtStreamingRunner(sess, "forward", reference.ratio,
                                                        reference.latent_size,
                                                        reference.n_channels)
        asked = list(options.block_sizes)   # (asked for: the sizes it cannot take fail)
        blocks = streaming_block_sizes(reference.ratio, fixed,
                                       asked or list(sidecar.get("block_sizes") or []),
                                       report if asked else None)
        ort_host.generic_checks(report, {"forward": runner}, reference, blocks, options)
        return report


def check_streaming_contract(report, sess, core: DeployModel, method: str) -> bool:
    """Point 22 on an explicit-state graph: signal first, then every state the model's
    ``method`` uses, in order, with the same shape in and out. Returns whether it can run."""
    x_name, y_name = og.io_names(method)
    ins, outs = sess.get_inputs(), sess.get_outputs()
    problems = []
    if not ins or ins[0].name != x_name:
        problems.append(f"first input is {ins[0].name if ins else None!r}, expected {x_name!r}")
    if not outs or outs[0].name != y_name:
        problems.append(f"first output is {outs[0].name if outs else None!r}, expected {y_name!r}")
    for t in list(ins) + list(outs):
        if t.type != "tensor(float)":
            problems.append(f"{t.name} is {t.type}, expected tensor(float)")
    channels = core.latent_size if method == "decode" else core.n_channels
    if ins and list(ins[0].shape[:2]) != [1, channels]:
        problems.append(f"{ins[0].name} has shape {ins[0].shape}, expected [1, {channels}, time]")
    report.add_contract("contract.22_io", problems,
                        f"{x_name} first in, {y_name} first out, all float32", label="point")

    expected = og.state_slots(core, method)
    got_in = [(i.name, list(i.shape)) for i in ins[1:]]
    out_shapes = {o.name: list(o.shape) for o in outs[1:]}
    issues = []
    names_in = [n for n, _ in got_in]
    for s in expected:
        if s.input_name not in names_in:
            issues.append(f"input {s.input_name} (state of {s.layer}, {list(s.shape)}) is missing")
        if s.output_name not in out_shapes:
            issues.append(f"output {s.output_name} (next state of {s.layer}) is missing")
    if not issues and names_in != [s.input_name for s in expected]:
        issues.append(f"state inputs {names_in} are not state_in_0..{len(expected) - 1} in order")
    if not issues and [o.name for o in outs[1:]] != [s.output_name for s in expected]:
        issues.append("state outputs are not state_out_0.. in the inputs' order")
    by_name = {s.input_name: s for s in expected}
    for name, shape in got_in:
        s = by_name.get(name)
        if s is None:
            issues.append(f"input {name} is no state of the model")
            continue
        if shape != list(s.shape):
            issues.append(f"{name} has shape {shape}, the layer {s.layer} needs {list(s.shape)}")
        if s.output_name in out_shapes and out_shapes[s.output_name] != shape:
            issues.append(f"{s.output_name} has shape {out_shapes[s.output_name]} but {name} has {shape}")
    if issues:
        more = f" (+{len(issues) - 5} more)" if len(issues) > 5 else ""
        message = ("point 22: " + "; ".join(issues[:5]) + more + ": the streaming graph must "
                   "take and return every layer's state; re-export it")
    else:
        message = (f"point 22: takes and returns all {len(expected)} states of {method} "
                   "(streaming_layers order), same shapes in and out")
    report.add("contract.22_states", not issues, message, value=float(len(got_in)),
               threshold=f"== {len(expected)}")
    return not problems and not issues


def check_streaming_metadata(report, meta: Dict[str, object], core: DeployModel, method: str,
                             sidecar: Dict[str, object]) -> None:
    """Point 22's metadata, against the run (and, for ``forward``, whose numbers the
    sidecar states, against the sidecar)."""
    expected = {"sample_rate": core.sr, "ratio": core.ratio, "latent_size": core.latent_size,
                "block_multiple": core.ratio,
                "latency_samples": og.method_latency(core, method)}
    ort_host.check_metadata(report, 22, meta, expected,
                            sidecar if method == "forward" else None)
