"""anira: the real-time inference library for C++ audio plugins (and its ``anira~`` external
for Max/PureData). Host contracts 23-24.

The artefact is a folder with one stateless ONNX graph per method and one anira JSON each::

    <name>.anira/
        encode.onnx   encode.json     audio_in (1, C, N), state_in (1, S)  -> latent_out (1, L, N/R), state_out
        decode.onnx   decode.json     latent_in (1, L, N/R), state_in[, fill_in] -> audio_out (1, C, N), state_out
        forward.onnx  forward.json    audio_in (1, C, N), state_in[, fill_in] -> audio_out (1, C, N), state_out
        rave-deploy.json              sidecar (state layout, latency, provenance)

The state is one flat float32 ``(1, S)`` tensor (the per-layer states of
:mod:`rave_deploy.onnx_graphs`, flattened and concatenated), zeros at start; anira feeds
``state_out`` back to ``state_in`` (``state_config.state_pairs``). ``fill_in`` takes the
latent dimensions beyond the fidelity cut (zeros: deterministic; noise: variation). The
block ``N`` is fixed per graph: ``--block-size`` (a multiple of the ratio, default the ratio).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from rave_core.models.rave import RAVE

from .. import onnx_graphs as og
from .. import onnx_runtime as ort_host
from ..model import DeployModel
from .base import CheckOptions, ExportOptions, Target, register, usable_block_sizes
from .onnx_streaming import (fidelity_of, onnx_unsupported_reason, references,
                             streaming_only_reason)

ENGINES = ("onnx", )
EXECUTORCH_REASON = (
    "--engine executorch: anira has no ExecuTorch backend yet (its JSON loader, v2.2, "
    "accepts ONNX, TFLITE, LITERT, LIBTORCH and CUSTOM), so no .pte is written; use "
    "--engine onnx (the default)")


def graph_json(method: str, meta: Dict[str, object], graph_file: str) -> Dict[str, object]:
    """anira's JSON config of one flat-state graph (contract 24), from its metadata."""
    block, ratio = int(meta["block_size"]), int(meta["ratio"])
    frames, size = block // ratio, int(meta["state_size"])
    channels, latent = int(meta["channels"]), int(meta["latent_size"])
    signal_in = [1, latent, frames] if method == "decode" else [1, channels, block]
    signal_out = [1, latent, frames] if method == "encode" else [1, channels, block]
    inputs: List[List[int]] = [signal_in, [1, size]]
    if "fill_in" in meta["inputs"]:
        inputs.append([1, int(meta["full_latent_size"]) - latent, frames])
    outputs = [signal_out, [1, size]]
    streamed_in = [signal_in[1]] + [1] * (len(inputs) - 1)
    latency = int(meta["latency_samples"])
    sr = int(meta["sample_rate"])
    return {
        "context_config": {"num_threads": 1},
        "inference_config": {
            "model_data": [{"model_path": graph_file, "inference_backend": "ONNX"}],
            "tensor_shape": [{"input_shape": inputs, "output_shape": outputs}],
            "processing_spec": {
                # Per tensor; state (and fill) tensors are not streamed: size 0.
                "preprocess_input_channels": streamed_in,
                "postprocess_output_channels": [signal_out[1], 1],
                "preprocess_input_size": [signal_in[2]] + [0] * (len(inputs) - 1),
                "postprocess_output_size": [signal_out[2], 0],
                "internal_model_latency": [latency, 0],
            },
            # The block's duration: anira's real-time budget for one inference.
            "max_inference_time": round(1000.0 * block / sr, 3),
            "warm_up": 2,
            # The state flows from one call to the next: one processor at a time.
            "session_exclusive_processor": True,
        },
        "state_config": {"state_pairs": [{"output_tensor": 1, "input_tensor": 1}],
                         "initial_state": "zeros"},
        "resampler_config": {"model_sample_rate": sr,
                             "latent_resampling": "hold" if method != "forward" else "none"},
    }


@register
class AniraTarget(Target):
    name = "anira"
    suffix = ""
    kind = "folder"
    description = ("anira (C++ plugins, anira~ for Max/PureData): stateless ONNX graphs "
                   "with one flat state tensor and anira JSON configs")
    host = "anira"
    chooses_engine = True   # --engine: its graphs' runtime
    host_latency_note = ("anira's buffering comes on top, which anira reports to the plugin "
                         "(InferenceHandler::get_latency()): host contracts 23-24 state no "
                         "figure")

    def unsupported_reason(self, model: RAVE, options: ExportOptions) -> Optional[str]:
        if options.engine not in ENGINES:
            if options.engine == "executorch":
                return EXECUTORCH_REASON
            return f"--engine {options.engine}: anira graphs are written for ONNX Runtime (--engine onnx)"
        reason = streaming_only_reason(options) or onnx_unsupported_reason(model, options)
        if reason is None and options.block_size is not None and (
                options.block_size <= 0 or options.block_size % int(model.ratio)):
            reason = (f"--block-size {options.block_size} is not a positive multiple of the "
                      f"model's ratio {model.ratio}: use {model.ratio} or a multiple")
        return reason

    def folder_files(self, sidecar: Dict[str, object]) -> Set[str]:
        """One ONNX graph and one anira JSON per method (as :meth:`export` writes them),
        and the files the sidecar's ``anira.graphs`` names (plain names only)."""
        names = {f"{method}{ext}" for method in og.METHODS for ext in (".onnx", ".json")}
        anira = sidecar.get("anira") if isinstance(sidecar, dict) else None
        graphs = anira.get("graphs") if isinstance(anira, dict) else None
        for entry in (graphs.values() if isinstance(graphs, dict) else ()):
            for key in ("graph", "config"):
                name = entry.get(key) if isinstance(entry, dict) else None
                if isinstance(name, str) and name and Path(name).name == name:
                    names.add(name)
        return names

    def export(self, model: RAVE, options: ExportOptions, path: Path) -> Dict[str, object]:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        core = DeployModel(model, fidelity=options.fidelity, deterministic=True, streaming=True)
        block = int(options.block_size or core.ratio)
        graphs = {}
        for method in og.METHODS:
            meta = og.export_flat(core, path / f"{method}.onnx", method, block)
            config = graph_json(method, meta, f"{method}.onnx")
            (path / f"{method}.json").write_text(json.dumps(config, indent=2) + "\n")
            graphs[method] = {"graph": f"{method}.onnx", "config": f"{method}.json",
                              "inputs": meta["inputs"], "outputs": meta["outputs"],
                              "state_size": meta["state_size"],
                              "latency_samples": meta["latency_samples"],
                              "state_layout": meta["state_layout"]}
        return {"_core": core,
                "deterministic": True,
                "deterministic_note": og.DETERMINISTIC_NOTE,
                "block_size": block,
                "block_sizes": [block],
                "anira": {"engine": "onnx", "opset": og.OPSET, "block_size": block,
                          "latency_note": "anira adds its own buffering on top of "
                                          "latency_samples (see targets/anira/README.md)",
                          "graphs": graphs}}

    def check(self, artifact: Path, sidecar: Dict[str, object], model: RAVE,
              options: CheckOptions):
        from ..check.result import CheckReport

        folder = Path(artifact)
        report = CheckReport(folder, self.name)
        report.summary["size_bytes"] = sum(p.stat().st_size for p in folder.glob("*") if p.is_file())
        loaded = check_folder_contract(report, folder, model)
        if loaded is None:
            report.add("streaming.anira", False, "not run: the folder fails its contract "
                       "checks above (re-export it)")
            return report
        meta = og.read_metadata(loaded["forward"][0])
        reference, _ = references(model, fidelity_of(sidecar, meta), twin=False)
        runners = {}
        for method, (sess, config) in loaded.items():
            pairs = {int(p["output_tensor"]): int(p["input_tensor"])
                     for p in config["state_config"]["state_pairs"]}
            runners[method] = ort_host.OrtFlatRunner(
                sess, method, reference.ratio, reference.latent_size, reference.n_channels, pairs)
        block = int(loaded["forward"][0].get_inputs()[0].shape[2])
        # what the JSON configs and graphs say (checked above), for contract.sidecar
        report.summary.update({"sample_rate": int(model.sr), "block_size": block,
                               "ratio": int(model.ratio)})
        blocks = usable_block_sizes(options.block_sizes, block, [block, 4 * block], report,
                                    f"multiples of the graphs' fixed block {block}: anira "
                                    "cannot run them")
        ort_host.generic_checks(report, runners, reference, blocks, options)
        return report


# ------------------------------------------------------------------ contract 23-24
def _load_json(report, path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        report.add("contract.24_json", False, f"point 24: {path.name} is missing: anira needs a "
                   "JSON config beside each graph")
    except ValueError as err:
        report.add("contract.24_json", False, f"point 24: {path.name} is not valid JSON: {err}")
    return None


def check_folder_contract(report, folder: Path, model: RAVE) -> Optional[Dict[str, Tuple[object, dict]]]:
    """Points 23-24, reading only the JSON configs and the graphs (as anira does).

    Returns ``{method: (session, config)}`` when every graph can be run, else ``None``.
    """
    if not folder.is_dir():
        report.add("contract.23_folder", False, f"point 23: {folder} is not a folder")
        return None
    loaded: Dict[str, Tuple[object, dict]] = {}
    ok = True
    ratio, sr = int(model.ratio), int(model.sr)
    blocks = {}
    for method in og.METHODS:
        config = _load_json(report, folder / f"{method}.json")
        if config is None:
            ok = False
            continue
        ok &= _check_one(report, folder, method, config, ratio, sr, loaded, blocks)
    if len(set(blocks.values())) > 1:
        report.add("contract.23_block", False, f"point 23: the graphs' blocks differ {blocks}: "
                   "one plugin runs them at one block size")
        ok = False
    return loaded if ok and len(loaded) == len(og.METHODS) else None


def _check_one(report, folder: Path, method: str, config: dict, ratio: int, sr: int,
               loaded: dict, blocks: dict) -> bool:
    tag = f"{method}.json"
    try:
        inference = config["inference_config"]
        model_data = inference["model_data"]
        shapes = inference["tensor_shape"][0]
        spec = inference["processing_spec"]
        pairs = config["state_config"]["state_pairs"]
        model_sr = config["resampler_config"]["model_sample_rate"]
    except (KeyError, IndexError, TypeError) as err:
        report.add(f"contract.24_json.{method}", False, f"point 24: {tag} lacks {err}: it needs "
                   "inference_config (model_data, tensor_shape, processing_spec), "
                   "state_config.state_pairs and resampler_config.model_sample_rate")
        return False
    onnx_entries = [m for m in model_data if m.get("inference_backend") == "ONNX"]
    if not onnx_entries:
        report.add(f"contract.24_json.{method}", False,
                   f"point 24: {tag} has no model_data entry with inference_backend \"ONNX\"")
        return False
    graph_path = folder / str(onnx_entries[0].get("model_path", ""))
    try:
        sess = ort_host.session(graph_path)
    except Exception as err:  # noqa: BLE001 - any load failure is the finding
        report.add(f"contract.24_model_path.{method}", False,
                   f"point 24: {tag}'s model_path {graph_path.name} does not load in ONNX "
                   f"Runtime: {err}")
        return False
    report.add(f"contract.24_json.{method}", True,
               f"point 24: {tag} names {graph_path.name} (ONNX), which loads")
    ins, outs = sess.get_inputs(), sess.get_outputs()
    g_in = [list(i.shape) for i in ins]
    g_out = [list(o.shape) for o in outs]
    ok = True

    # 24: the JSON's shapes are the graph's shapes, in tensor order.
    j_in, j_out = shapes.get("input_shape"), shapes.get("output_shape")
    if j_in != g_in or j_out != g_out:
        report.add(f"contract.24_tensor_shapes.{method}", False,
                   f"point 24: {tag} declares {j_in} -> {j_out} but {graph_path.name} has "
                   f"{g_in} -> {g_out}: anira would feed tensors of the wrong size; re-export")
        ok = False
    else:
        report.add(f"contract.24_tensor_shapes.{method}", True,
                   f"point 24: {tag} shapes {j_in} -> {j_out} equal the graph's")

    # 23: names and order, one flat float32 (1, S) state in and out.
    x_name, y_name = og.io_names(method)
    want_in = [x_name, "state_in"] + (["fill_in"] if method != "encode" else [])
    names_in, names_out = [i.name for i in ins], [o.name for o in outs]
    name_ok = (names_in[:2] == want_in[:2] and set(names_in) <= set(want_in)
               and names_out == [y_name, "state_out"])
    report.add(f"contract.23_names.{method}", name_ok,
               f"point 23: {graph_path.name} inputs {names_in}, outputs {names_out}" +
               ("" if name_ok else f": expected {want_in} (fill_in optional) and {[y_name, 'state_out']}"))
    ok &= name_ok
    state_like_in = [i for i in ins if i.name.startswith("state")]
    state_like_out = [o for o in outs if o.name.startswith("state")]
    flat_problems = []
    if len(state_like_in) != 1 or len(state_like_out) != 1:
        flat_problems.append(f"{len(state_like_in)} state input(s) and {len(state_like_out)} "
                             "state output(s), expected exactly one each")
    for t in state_like_in + state_like_out:
        if len(t.shape) != 2 or t.shape[0] != 1 or not isinstance(t.shape[1], int) or t.type != "tensor(float)":
            flat_problems.append(f"{t.name} is {t.type} {t.shape}, expected float32 [1, S]")
    if not flat_problems and state_like_in[0].shape != state_like_out[0].shape:
        flat_problems.append(f"state_in {state_like_in[0].shape} != state_out {state_like_out[0].shape}")
    report.add(f"contract.23_flat_state.{method}", not flat_problems,
               "point 23: " + ("; ".join(flat_problems) + ": anira carries one flat (1, S) "
                               "state tensor" if flat_problems else
                               f"one flat float32 state {state_like_in[0].shape} in and out"))
    ok &= not flat_problems

    # 24: state pairs join an output to an input of the same shape, never the signal.
    pair_problems = []
    if not pairs:
        pair_problems.append("no state pairs: the state would never be fed back")
    for p in pairs:
        try:
            o, i = int(p["output_tensor"]), int(p["input_tensor"])
        except (KeyError, TypeError, ValueError):
            pair_problems.append(f"pair {p} lacks output_tensor / input_tensor")
            continue
        if not (0 <= o < len(g_out)) or not (0 <= i < len(g_in)):
            pair_problems.append(f"pair {o} -> {i} is out of range ({len(g_out)} outputs, "
                                 f"{len(g_in)} inputs)")
            continue
        if o == 0 or i == 0:
            pair_problems.append(f"pair {o} -> {i} involves the signal tensor "
                                 f"({names_out[0] if o == 0 else names_in[0]})")
        if g_out[o] != g_in[i]:
            pair_problems.append(f"pair {o} -> {i} joins {names_out[o]} {g_out[o]} to "
                                 f"{names_in[i]} {g_in[i]} (different shapes)")
        elif j_in is not None and j_out is not None and len(j_in) > i and len(j_out) > o \
                and j_in[i] != j_out[o]:
            pair_problems.append(f"pair {o} -> {i} joins JSON shapes {j_out[o]} and {j_in[i]}")
    covered = {int(p.get("input_tensor", -1)) for p in pairs if isinstance(p, dict)}
    state_index = names_in.index("state_in") if "state_in" in names_in else None
    if state_index is not None and state_index not in covered:
        pair_problems.append("state_in is fed by no pair")
    report.add(f"contract.24_state_pairs.{method}", not pair_problems,
               "point 24: " + ("; ".join(pair_problems) + ": fix state_config.state_pairs"
                               if pair_problems else f"state pairs {pairs} join state_out to state_in"))
    ok &= not pair_problems

    # 24: processing spec per tensor, 0 for state tensors; 23: block a multiple of R.
    spec_problems = []
    for key, n in (("preprocess_input_channels", len(g_in)), ("postprocess_output_channels", len(g_out)),
                   ("preprocess_input_size", len(g_in)), ("postprocess_output_size", len(g_out))):
        if len(spec.get(key, [])) != n:
            spec_problems.append(f"{key} has {len(spec.get(key, []))} entries for {n} tensors")
    if not spec_problems and g_in and g_out and len(g_in[0]) == 3 and len(g_out[0]) == 3:
        if spec["preprocess_input_size"][0] != g_in[0][2] or spec["postprocess_output_size"][0] != g_out[0][2]:
            spec_problems.append("signal sizes differ from the signal tensors' time axis")
        if any(spec["preprocess_input_size"][k] for k in range(1, len(g_in))) or \
                any(spec["postprocess_output_size"][k] for k in range(1, len(g_out))):
            spec_problems.append("state/fill tensors must have size 0 (not streamed)")
    report.add(f"contract.24_processing_spec.{method}", not spec_problems,
               "point 24: " + ("; ".join(spec_problems) if spec_problems else
                               "processing_spec per tensor, 0 for the state"))
    ok &= not spec_problems

    block = None
    if g_in and len(g_in[0]) == 3 and isinstance(g_in[0][2], int):
        block = g_in[0][2] * (ratio if method == "decode" else 1)
    block_ok = block is not None and block % ratio == 0
    report.add(f"contract.23_block.{method}", block_ok,
               f"point 23: fixed block {block} " + ("is a multiple of" if block_ok else
                                                    "is not a fixed multiple of") +
               f" the ratio {ratio}")
    ok &= block_ok
    blocks[method] = block

    sr_ok = str(model_sr) == str(sr)
    report.add(f"contract.24_sample_rate.{method}", sr_ok,
               f"point 24: resampler_config.model_sample_rate is {model_sr}" +
               ("" if sr_ok else f" but the model runs at {sr} Hz"))
    ok &= sr_ok
    if ok:
        loaded[method] = (sess, config)
    return ok
