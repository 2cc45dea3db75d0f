"""ONNX graphs of a :class:`~rave_deploy.model.DeployModel`, for hosts without TorchScript.

Three forms of the same traced core (never a second implementation of the model):

* **offline**: ``audio_in (1, C, T) -> audio_out (1, C, T)`` for a whole signal, ``T`` a
  dynamic multiple of the ratio (the non-streaming model, padding included).
* **explicit state** (streaming): ``(audio_in, state_in_0, ..., state_in_{K-1}) ->
  (audio_out, state_out_0, ..., state_out_{K-1})``. Every stateful layer of
  :func:`rave_core.nn.streaming_layers` that the method uses owns one state tensor
  ``(rows, channels, length)`` (rows: 1, or the audio channels in a multi-channel model's
  PQMF); the graph reads the previous states and returns the next
  ones, so any ONNX runtime streams it without hidden state. Initial states are zeros.
* **flat state** (anira): the same per-layer states flattened and concatenated into one
  float32 ``(1, S)`` tensor ``state_in`` / ``state_out``; the layout (layer, offset,
  shape) is recorded in the metadata and the sidecar.

All graphs are traced from the *deterministic* core (posterior mean, zero noise, zeros
for the latent dimensions beyond the fidelity cut unless a ``fill_in`` input is given),
batch 1. Metadata (sample rate, ratio, latent size, latency, block multiple, state names
and shapes) goes into the model's ``metadata_props``.

The ONNX targets' ``forward`` graphs are traced from a core whose latent path is folded
into the convolutions around it (:mod:`rave_deploy.latent_folding`: fewer weights per
call). Traced graphs are then rewritten for ONNX Runtime's CPU provider
(:mod:`rave_deploy.onnx_rewrites`); :mod:`rave_deploy.onnx_runtime` runs them as hosts do.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
import torch.nn as nn

import rave_core
from rave_core.nn.streaming import StreamingModule, streaming_layers

from .model import DeployModel
from .onnx_rewrites import OnnxExportError, optimize_for_runtime

OPSET = 17
METHODS = ("encode", "decode", "forward")
#: Keys always present in ``metadata_props`` (host contract 22).
REQUIRED_METADATA = ("sample_rate", "ratio", "latent_size", "latency_samples", "block_multiple")
DETERMINISTIC_NOTE = ("ONNX graphs are traced from the deterministic model: posterior mean "
                      "instead of a sample, no noise branch, latent dimensions beyond the "
                      "fidelity cut filled with zeros (or the graph's fill_in input)")


# ------------------------------------------------------------------ states
@dataclass(frozen=True)
class StateSlot:
    """One layer's streaming state in a graph.

    ``index``: position among the state tensors (input ``state_in_<index>``, output
    ``state_out_<index>`` of an explicit-state graph); ``layer``: the module's path in
    the :class:`DeployModel`; ``shape``: ``(rows, channels, length)``; ``offset``: where its
    flattened values start in the flat state of an anira graph.
    """

    index: int
    layer: str
    shape: Tuple[int, int, int]
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def input_name(self) -> str:
        return f"state_in_{self.index}"

    @property
    def output_name(self) -> str:
        return f"state_out_{self.index}"

    def as_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d.update(input=self.input_name, output=self.output_name, size=self.size)
        return d


def io_names(method: str) -> Tuple[str, str]:
    """Names of the signal input and output of ``method``'s graphs."""
    return ("latent_in" if method == "decode" else "audio_in",
            "latent_out" if method == "encode" else "audio_out")


def _example_input(core: DeployModel, method: str, block: int) -> torch.Tensor:
    if method == "decode":
        return torch.zeros(1, core.latent_size, block // core.ratio)
    return torch.zeros(1, core.n_channels, block)


def method_layers(core: DeployModel, method: str) -> List[Tuple[str, StreamingModule, Tuple[int, ...]]]:
    """The stateful layers ``method`` uses, in :func:`streaming_layers` order, each with
    the shape of its state for a batch of one.

    Found by running the method once on a batch of one: a layer is used if its ``state``
    was replaced (states are replaced, never written in place), and its shape is the one
    it then holds: the PQMF of a stereo model sees one row per channel, so its states
    have a batch of 2. The core is reset afterwards.
    """
    layers = streaming_layers(core)
    core.reset(1)
    before = {name: m.state for name, m in layers}
    with torch.inference_mode():
        getattr(core, method)(_example_input(core, method, core.ratio))
    used = [(name, m, tuple(int(s) for s in m.state.shape)) for name, m in layers
            if m.state is not before[name]]
    core.reset(1)
    return used


def state_slots(core: DeployModel, method: str) -> List[StateSlot]:
    """State tensors of ``method``'s streaming graphs, with their flat-state offsets."""
    slots, offset = [], 0
    for i, (name, _, shape) in enumerate(method_layers(core, method)):
        slots.append(StateSlot(i, name, shape, offset))
        offset += int(np.prod(shape))
    return slots


# ------------------------------------------------------------------ traced modules
class _MethodGraph(nn.Module):
    """Shared part of the traced wrappers: the method, with an optional fill input."""

    def __init__(self, core: DeployModel, method: str, fill: bool) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.core = core
        self.method = method
        self.fill = fill

    def _call(self, x: torch.Tensor, fill: Optional[torch.Tensor]) -> torch.Tensor:
        # A full-size latent makes DeployModel.decode skip its own fill: the given
        # dimensions beyond the cut go through the same PCA and decoder.
        if self.method == "encode":
            return self.core.encode(x)
        z = x if self.method == "decode" else self.core.encode(x)
        if fill is not None:
            z = torch.cat([z, fill], 1)
        return self.core.decode(z)


class ExplicitStateGraph(_MethodGraph):
    """``forward(x, *states[, fill]) -> (y, *next_states)`` for tracing.

    Each input state is assigned to its layer's ``state`` (the layers of ``slots``, in
    order), the method runs, and the layers' new states are returned. Batch 1 only: the
    layers' reset-on-new-batch branch is never taken because the states have batch 1.
    """

    def __init__(self, core: DeployModel, method: str, slots: Sequence[StateSlot],
                 fill: bool = False) -> None:
        super().__init__(core, method, fill)
        modules = dict(core.named_modules())
        self._layers = [modules[s.layer] for s in slots]  # plain list: already submodules

    def forward(self, x: torch.Tensor, *args: torch.Tensor):
        n = len(self._layers)
        for layer, state in zip(self._layers, args[:n]):
            layer.state = state
        y = self._call(x, args[n] if self.fill else None)
        return (y, *[layer.state for layer in self._layers])


class FlatStateGraph(_MethodGraph):
    """``forward(x, state[, fill]) -> (y, next_state)`` with one flat ``(1, S)`` state,
    the concatenation of the flattened per-layer states of ``slots``."""

    def __init__(self, core: DeployModel, method: str, slots: Sequence[StateSlot],
                 fill: bool = False) -> None:
        super().__init__(core, method, fill)
        modules = dict(core.named_modules())
        self._layers = [modules[s.layer] for s in slots]
        self._shapes = [s.shape for s in slots]
        self._sizes = [s.size for s in slots]

    def forward(self, x: torch.Tensor, state: torch.Tensor, *fill: torch.Tensor):
        parts = torch.split(state, self._sizes, 1) if self._sizes else []
        for layer, part, shape in zip(self._layers, parts, self._shapes):
            layer.state = part.reshape(shape)
        y = self._call(x, fill[0] if self.fill else None)
        if not self._layers:
            return y, state
        return y, torch.cat([layer.state.reshape(1, -1) for layer in self._layers], 1)


class OfflineGraph(_MethodGraph):
    """``forward(x[, fill]) -> y`` of the non-streaming core."""

    def forward(self, x: torch.Tensor, *fill: torch.Tensor) -> torch.Tensor:
        return self._call(x, fill[0] if self.fill else None)


@contextlib.contextmanager
def _zero_noise_synthesis(core: DeployModel) -> Iterator[None]:
    """While tracing a deterministic core, replace filtered-noise synthesis by zeros.

    The noise branches (v1, v2_small) are computed even when their output is discarded
    (v2's ``zeros_like(noise)`` keeps them live), and their FFT has no ONNX export.
    Deterministic output never uses their values, so zeros of the same shape are exact.
    """
    patched = []
    if core.deterministic:
        for m in core.modules():
            if hasattr(m, "_synthesize") and hasattr(m, "target_size"):
                def stub(amp: torch.Tensor, bands: int, _m=m) -> torch.Tensor:
                    z = torch.zeros_like(amp[:, :bands]).unsqueeze(-1)
                    z = z.expand(-1, -1, -1, int(_m.target_size))
                    return z.reshape(z.shape[0], z.shape[1], -1)
                m._synthesize = stub
                patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m._synthesize


def _trace(module: nn.Module, args: Tuple[torch.Tensor, ...], input_names: List[str],
           output_names: List[str],
           dynamic_axes: Optional[Dict[str, Dict[int, str]]]) -> onnx.ModelProto:
    """Trace ``module`` with the TorchScript-based exporter (``dynamo=False``), in memory.

    The tracer records Python control flow as taken for the example inputs, which is what
    we want (batch 1, deterministic: the layers' reset-on-new-batch branch is not taken),
    and follows the inputs assigned to the layers' ``state`` attributes through the model.
    The graph is only written by :func:`_finish`: the exporter takes no path that is not
    UTF-8 (a folder named in Latin-1), and its failed writes hid a full disk.
    """
    graph = io.BytesIO()
    with warnings.catch_warnings():
        # Tracer warnings about Python ints and the exporter's deprecation notice are
        # expected here: shapes are fixed by design, and the checks prove the graph.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, graph, dynamo=False, opset_version=OPSET,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, do_constant_folding=True,
                              external_data=False)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise OnnxExportError(
                f"tracing {type(module).__name__} to ONNX (opset {OPSET}) failed: "
                f"{type(err).__name__}: {err}") from err
    return onnx.load_model_from_string(graph.getvalue())


def _prepared(core: DeployModel, streaming: bool) -> DeployModel:
    if not core.deterministic:
        raise OnnxExportError("ONNX graphs are exported from a deterministic DeployModel "
                              "(DeployModel(model, deterministic=True))")
    if bool(core.streaming) != streaming:
        raise OnnxExportError(f"this graph needs a DeployModel built with streaming={streaming}")
    return core


# ------------------------------------------------------------------ metadata
def common_metadata(core: DeployModel, method: str, latency: int) -> Dict[str, object]:
    return {
        "producer": f"rave-deploy {rave_core.__version__}",
        "method": method,
        "sample_rate": core.sr,
        "channels": core.n_channels,
        "ratio": core.ratio,
        "latent_size": core.latent_size,
        "full_latent_size": core.full_latent_size,
        "latency_samples": latency,
        "block_multiple": core.ratio,
        "deterministic": True,
        "fidelity": core.fidelity_threshold,
        # the latent path lives in the first decoder conv (whose state has latent_size + 1
        # channels): see rave_deploy.latent_folding
        "latent_folded": bool(core.latent_folded),
    }


def method_latency(core: DeployModel, method: str) -> int:
    """Streaming delay of ``method`` in its output's samples (latent frames for encode)."""
    if method == "encode":
        return core.encode_delay // core.ratio
    return core.decode_delay if method == "decode" else core.latency_samples


def write_metadata(model: onnx.ModelProto, metadata: Dict[str, object]) -> None:
    """Store ``metadata`` in ``metadata_props``: strings as is, anything else as JSON."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def read_metadata(source) -> Dict[str, object]:
    """``metadata_props`` of a model (path, ``ModelProto`` or ONNX Runtime session),
    JSON values decoded."""
    if hasattr(source, "get_modelmeta"):
        raw = dict(source.get_modelmeta().custom_metadata_map)
    else:
        model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source),
                                                                              load_external_data=False)
        raw = {p.key: p.value for p in model.metadata_props}
    out: Dict[str, object] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def _fix_state_shapes(model: onnx.ModelProto, slots: Sequence[StateSlot]) -> None:
    """Declare the next states' static shapes: with a dynamic time axis the tracer names
    them symbolically (they are slices of ``cat(state, block)``), yet they never change."""
    shapes = {s.output_name: s.shape for s in slots}
    for out in model.graph.output:
        if out.name in shapes:
            dims = out.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[out.name]):
                dim.Clear()
                dim.dim_value = int(size)


def _finish(model: onnx.ModelProto, path: Path, metadata: Dict[str, object],
            optimize: bool) -> None:
    if optimize:
        optimize_for_runtime(model)
    write_metadata(model, metadata)
    model.producer_name = "rave-deploy"
    model.producer_version = rave_core.__version__
    model.doc_string = DETERMINISTIC_NOTE
    onnx.checker.check_model(model)
    # Python's own write: it takes any path the file system holds, and a full disk comes
    # back as the OSError it is.
    Path(path).write_bytes(model.SerializeToString())


# ------------------------------------------------------------------ exports
def export_offline(core: DeployModel, path: Path, method: str = "forward",
                   optimize: bool = True) -> Dict[str, object]:
    """Write the offline graph of ``method`` (dynamic time axis) at ``path``.

    ``core``: deterministic, ``streaming=False``. Returns the metadata written.
    """
    _prepared(core, streaming=False)
    x_name, y_name = io_names(method)
    x = _example_input(core, method, 4 * core.ratio)
    time_in = "frames" if method == "decode" else "samples"
    time_out = "frames" if method == "encode" else "samples"
    with _zero_noise_synthesis(core):
        model = _trace(OfflineGraph(core, method, fill=False).eval(), (x,), [x_name],
                       [y_name], {x_name: {2: time_in}, y_name: {2: time_out}})
    meta = common_metadata(core, method, 0)
    meta.update(graph="offline", block_size="dynamic", streaming=False,
                inputs=[x_name], outputs=[y_name],
                note="whole signal in one call; length a multiple of the ratio")
    _finish(model, Path(path), meta, optimize)
    return meta


def export_streaming(core: DeployModel, path: Path, method: str = "forward",
                     block_size: Optional[int] = None, optimize: bool = True) -> Dict[str, object]:
    """Write the explicit-state streaming graph of ``method`` at ``path``.

    ``block_size``: fixed audio block (a multiple of the ratio), or ``None`` for a
    dynamic time axis (any multiple of the ratio per call). Returns the metadata written.
    """
    _prepared(core, streaming=True)
    block = _check_block(core, block_size)
    slots = state_slots(core, method)
    x_name, y_name = io_names(method)
    inputs = [x_name] + [s.input_name for s in slots]
    outputs = [y_name] + [s.output_name for s in slots]
    states = tuple(torch.zeros(s.shape) for s in slots)
    x = _example_input(core, method, block or 2 * core.ratio)
    dynamic = None
    if block_size is None:
        dynamic = {x_name: {2: "frames" if method == "decode" else "samples"},
                   y_name: {2: "frames" if method == "encode" else "samples"}}
    try:
        with _zero_noise_synthesis(core):
            model = _trace(ExplicitStateGraph(core, method, slots).eval(), (x, *states),
                           inputs, outputs, dynamic)
    finally:
        core.reset(1)  # tracing left tracer values in the layers' states
    _fix_state_shapes(model, slots)
    meta = common_metadata(core, method, method_latency(core, method))
    meta.update(graph="streaming", streaming=True,
                block_size=block_size if block_size is not None else "dynamic",
                inputs=inputs, outputs=outputs, initial_state="zeros",
                states=[s.as_dict() for s in slots])
    _finish(model, Path(path), meta, optimize)
    return meta


def export_flat(core: DeployModel, path: Path, method: str, block_size: int,
                optimize: bool = True) -> Dict[str, object]:
    """Write the anira graph of ``method``: fixed block, one flat ``(1, S)`` state, and a
    ``fill_in`` input for the latent dimensions beyond the cut (decode, forward) when
    the cut leaves any. Returns the metadata written (with the state layout)."""
    _prepared(core, streaming=True)
    block = _check_block(core, block_size)
    slots = state_slots(core, method)
    size = sum(s.size for s in slots)
    frames = block // core.ratio
    fill = method != "encode" and core.variational and core.full_latent_size > core.latent_size
    x_name, y_name = io_names(method)
    inputs, outputs = [x_name, "state_in"], [y_name, "state_out"]
    args = [_example_input(core, method, block), torch.zeros(1, size)]
    if fill:
        inputs.append("fill_in")
        args.append(torch.zeros(1, core.full_latent_size - core.latent_size, frames))
    try:
        with _zero_noise_synthesis(core):
            model = _trace(FlatStateGraph(core, method, slots, fill).eval(), tuple(args),
                           inputs, outputs, None)
    finally:
        core.reset(1)
    meta = common_metadata(core, method, method_latency(core, method))
    meta.update(graph="flat_state", streaming=True, block_size=block, inputs=inputs,
                outputs=outputs, initial_state="zeros", state_size=size,
                state_layout=[{"layer": s.layer, "offset": s.offset, "shape": list(s.shape)}
                              for s in slots])
    _finish(model, Path(path), meta, optimize)
    return meta


def _check_block(core: DeployModel, block_size: Optional[int]) -> Optional[int]:
    if block_size is None:
        return None
    if block_size <= 0 or block_size % core.ratio:
        raise OnnxExportError(f"block size {block_size} is not a positive multiple of the "
                              f"model's ratio {core.ratio}: use {core.ratio} or a multiple")
    return int(block_size)
