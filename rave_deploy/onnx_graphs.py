"""ONNX graphs of a :class:`~rave_deploy.model.DeployModel`, for hosts without TorchScript.

Three forms of the same traced core (never a second implementation of the model):

* **offline**: ``audio_in (1, C, T) -> audio_out (1, C, T)`` for a whole signal, ``T`` a
  dynamic multiple of the ratio (the non-streaming model, padding included).
* **explicit state** (streaming): ``(audio_in, state_in_0, ..., state_in_{K-1}) ->
  (audio_out, state_out_0, ..., state_out_{K-1})``. Every stateful layer of
  :func:`rave_core.nn.streaming_layers` that the method uses owns one state tensor
  ``(1, channels, length)``; the graph reads the previous states and returns the next
  ones, so any ONNX runtime streams it without hidden state. Initial states are zeros.
* **flat state** (anira): the same per-layer states flattened and concatenated into one
  float32 ``(1, S)`` tensor ``state_in`` / ``state_out``; the layout (layer, offset,
  shape) is recorded in the metadata and the sidecar.

All graphs are traced from the *deterministic* core (posterior mean, zero noise, zeros
for the latent dimensions beyond the fidelity cut unless a ``fill_in`` input is given),
batch 1. Metadata (sample rate, ratio, latent size, latency, block multiple, state names
and shapes) goes into the model's ``metadata_props``.

Real-time hosts call these graphs every few milliseconds on one thread, so the traced
graph is rewritten (exactly, up to float rounding; the checks compare with the eager
model) into what ONNX Runtime's CPU provider runs fastest:

* :func:`tail_slices_as_constants`: a layer keeps the last ``c`` samples of
  ``cat(state, block)``; traced with a dynamic time axis that bound costs four small
  nodes per layer per call; ``-c`` costs none;
* :func:`conv_transpose_as_conv`: transposed convolutions become plain convolutions with
  one output channel group per phase, interleaved;
* :func:`conv1d_as_conv2d`: 1-D convolutions become 2-D ones over a height-1 image, which
  ONNX Runtime runs with weights re-ordered once at load (NCHWc) instead of re-packed at
  every call (2.3x faster per convolution at a few frames; 15-20 % on a whole model);
* :func:`activations_into_convs`: the activation after such a convolution moves onto its
  4-D output, where ONNX Runtime fuses it into the convolution.

At small blocks a model is bound by reading its weights once per call (BRAVE: 17 MB per
block), so a block's time has a floor set by the CPU's memory bandwidth.
"""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

import rave_core
from rave_core.nn.streaming import StreamingModule, streaming_layers

from .model import DeployModel

OPSET = 17
METHODS = ("encode", "decode", "forward")
#: Keys always present in ``metadata_props`` (host contract 22).
REQUIRED_METADATA = ("sample_rate", "ratio", "latent_size", "latency_samples", "block_multiple")
DETERMINISTIC_NOTE = ("ONNX graphs are traced from the deterministic model: posterior mean "
                      "instead of a sample, no noise branch, latent dimensions beyond the "
                      "fidelity cut filled with zeros (or the graph's fill_in input)")


class OnnxExportError(RuntimeError):
    """The model could not be traced to ONNX; the message says why and what to do."""


# ------------------------------------------------------------------ states
@dataclass(frozen=True)
class StateSlot:
    """One layer's streaming state in a graph.

    ``index``: position among the state tensors (input ``state_in_<index>``, output
    ``state_out_<index>`` of an explicit-state graph); ``layer``: the module's path in
    the :class:`DeployModel`; ``shape``: ``(1, channels, length)``; ``offset``: where its
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


def method_layers(core: DeployModel, method: str) -> List[Tuple[str, StreamingModule]]:
    """The stateful layers ``method`` uses, in :func:`streaming_layers` order.

    Found by running the method once: a layer is used if its ``state`` was replaced
    (states are replaced, never written in place). The core is reset afterwards.
    """
    layers = streaming_layers(core)
    core.reset(1)
    before = {name: m.state for name, m in layers}
    with torch.inference_mode():
        getattr(core, method)(_example_input(core, method, core.ratio))
    used = [(name, m) for name, m in layers if m.state is not before[name]]
    core.reset(1)
    return used


def state_slots(core: DeployModel, method: str) -> List[StateSlot]:
    """State tensors of ``method``'s streaming graphs, with their flat-state offsets."""
    slots, offset = [], 0
    for i, (name, m) in enumerate(method_layers(core, method)):
        shape = tuple(int(s) for s in m.state_shape())
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


def _trace(module: nn.Module, args: Tuple[torch.Tensor, ...], path: Path,
           input_names: List[str], output_names: List[str],
           dynamic_axes: Optional[Dict[str, Dict[int, str]]]) -> onnx.ModelProto:
    """Trace ``module`` with the TorchScript-based exporter (``dynamo=False``) and load it.

    The tracer records Python control flow as taken for the example inputs, which is what
    we want (batch 1, deterministic: the layers' reset-on-new-batch branch is not taken),
    and follows the inputs assigned to the layers' ``state`` attributes through the model.
    """
    with warnings.catch_warnings():
        # Tracer warnings about Python ints and the exporter's deprecation notice are
        # expected here: shapes are fixed by design, and the checks prove the graph.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, do_constant_folding=True,
                              external_data=False)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise OnnxExportError(
                f"tracing {type(module).__name__} to ONNX (opset {OPSET}) failed: "
                f"{type(err).__name__}: {err}") from err
    return onnx.load(str(path))


def _prepared(core: DeployModel, streaming: bool) -> DeployModel:
    if not core.deterministic:
        raise OnnxExportError("ONNX graphs are exported from a deterministic DeployModel "
                              "(DeployModel(model, deterministic=True))")
    if bool(core.streaming) != streaming:
        raise OnnxExportError(f"this graph needs a DeployModel built with streaming={streaming}")
    return core


# ------------------------------------------------------------------ graph rewrite
def conv1d_as_conv2d(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every 1-D ``Conv`` with a constant weight as a 2-D ``Conv`` on ``(N, C, 1, T)``.

    ONNX Runtime's CPU provider converts 2-D convolutions to its blocked NCHWc layout
    with weights re-ordered once at load time, while 1-D ones re-pack their weights on
    every call: for the few frames of a small block the 2-D form is about twice as fast
    on one thread. ``Unsqueeze``/``Squeeze`` around each convolution cost little.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    axis = "rave_deploy_axis_2"
    nodes, reshaped, used = [], set(), False
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 3:
            nodes.append(node)
            continue
        if weight.name not in reshaped:
            arr = numpy_helper.to_array(weight)
            weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr[:, :, None, :]),
                                                    weight.name))
            reshaped.add(weight.name)
        attrs = {}
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if a.name in ("kernel_shape", "strides", "dilations"):
                v = [1, *v]
            elif a.name == "pads":
                v = [0, v[0], 0, v[1]]
            attrs[a.name] = v
        x2d, y2d = f"{node.output[0]}__2d_in", f"{node.output[0]}__2d_out"
        nodes.append(helper.make_node("Unsqueeze", [node.input[0], axis], [x2d],
                                      name=f"{node.name}__unsqueeze"))
        nodes.append(helper.make_node("Conv", [x2d, *node.input[1:]], [y2d], name=node.name,
                                      **attrs))
        nodes.append(helper.make_node("Squeeze", [y2d, axis], [node.output[0]],
                                      name=f"{node.name}__squeeze"))
        used = True
    # A shared weight used by a Conv and by something else would break: refuse.
    others = {i for n in nodes if n.op_type != "Conv" for i in n.input}
    if reshaped & others:
        raise OnnxExportError(f"weights {sorted(reshaped & others)} are used outside Conv")
    del graph.node[:]
    graph.node.extend(nodes)
    if used:
        graph.initializer.append(helper.make_tensor(axis, onnx.TensorProto.INT64, [1], [2]))
    for vi in list(graph.value_info):  # shapes of rewritten weights are stale
        if vi.name in reshaped:
            graph.value_info.remove(vi)
    return model


def activations_into_convs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Apply a ``LeakyRelu`` that alone reads a 2-D convolution's output (made by
    :func:`conv1d_as_conv2d`) before the ``Squeeze``, on the 4-D output.

    ONNX Runtime then fuses it into the NCHWc convolution (one kernel, one node less per
    layer). Exact: the activation is pointwise.
    """
    graph = model.graph
    order = [onnx.NodeProto() for _ in graph.node]  # detached copies, rewired below
    for dst, src in zip(order, graph.node):
        dst.CopyFrom(src)
    readers: Dict[str, List[int]] = {}
    for i, node in enumerate(order):
        for name in node.input:
            readers.setdefault(name, []).append(i)
    outputs = {o.name for o in graph.output}
    for i, squeeze in enumerate(list(order)):
        if squeeze.op_type != "Squeeze" or not squeeze.name.endswith("__squeeze"):
            continue
        users = readers.get(squeeze.output[0], [])
        if len(users) != 1 or order[users[0]].op_type != "LeakyRelu" or squeeze.output[0] in outputs:
            continue
        j = users[0]
        act = order[j]
        result = act.output[0]
        act.input[0] = squeeze.input[0]
        act.output[0] = f"{result}__2d"
        squeeze.input[0] = act.output[0]
        squeeze.output[0] = result
        order[i], order[j] = act, squeeze  # the squeeze now reads the activation
    del graph.node[:]
    graph.node.extend(order)
    return model


def conv_transpose_as_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite each 1-D ``ConvTranspose`` (stride ``s``, kernel ``m * s``) as a stride-1
    ``Conv`` with ``s`` output phases, interleaved by ``Reshape``/``Transpose``.

    Output sample ``t * s + r`` of a transposed convolution is
    ``sum_j W[:, :, j * s + r]^T x[t - j]``: a plain convolution over ``m`` input frames,
    one output channel group per phase ``r``. ONNX Runtime runs that convolution with
    pre-packed weights (after :func:`conv1d_as_conv2d`), faster than its transposed one.
    Exact up to float rounding; padding is cropped afterwards.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "ConvTranspose" else None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = weight is not None and len(weight.dims) == 3
        if ok:
            c_in, c_out, k = (int(d) for d in weight.dims)
            s = int(attrs.get("strides", [1])[0])
            pads = list(attrs.get("pads", [0, 0]))
            ok = (k % s == 0 and attrs.get("group", 1) == 1
                  and list(attrs.get("dilations", [1])) == [1]
                  and not any(attrs.get("output_padding", [0]))
                  and "output_shape" not in attrs and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
        if not ok:
            nodes.append(node)
            continue
        m = k // s
        w = numpy_helper.to_array(weight)                          # (c_in, c_out, m * s)
        # w2[c_out * s + r, c_in, i] = w[c_in, c_out, (m - 1 - i) * s + r]
        w2 = w.reshape(c_in, c_out, m, s)[:, :, ::-1, :].transpose(1, 3, 0, 2)
        w2 = np.ascontiguousarray(w2.reshape(c_out * s, c_in, m), dtype=np.float32)
        base = f"{node.name or node.output[0]}__as_conv"
        graph.initializer.append(numpy_helper.from_array(w2, f"{base}_weight"))
        inputs = [node.input[0], f"{base}_weight"]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(inits[node.input[2]]) if node.input[2] in inits else None
            if bias is None:
                nodes.append(node)
                continue
            graph.initializer.append(numpy_helper.from_array(
                np.repeat(bias.astype(np.float32), s), f"{base}_bias"))
            inputs.append(f"{base}_bias")
        for name, value in ((f"{base}_shape4", [0, c_out, s, -1]), (f"{base}_shape3", [0, c_out, -1])):
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
        nodes.append(helper.make_node("Conv", inputs, [f"{base}_phases"], name=f"{base}",
                                      kernel_shape=[m], pads=[m - 1, m - 1]))
        nodes.append(helper.make_node("Reshape", [f"{base}_phases", f"{base}_shape4"],
                                      [f"{base}_grouped"], name=f"{base}_reshape4"))
        nodes.append(helper.make_node("Transpose", [f"{base}_grouped"], [f"{base}_interleaved"],
                                      name=f"{base}_transpose", perm=[0, 1, 3, 2]))
        full = node.output[0] if not any(pads) else f"{base}_full"
        nodes.append(helper.make_node("Reshape", [f"{base}_interleaved", f"{base}_shape3"],
                                      [full], name=f"{base}_reshape3"))
        if any(pads):
            for name, value in ((f"{base}_start", [pads[0]]), (f"{base}_end", [-pads[1] if pads[1] else
                                                                                np.iinfo(np.int64).max]),
                                (f"{base}_axis", [2])):
                graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
            nodes.append(helper.make_node("Slice", [full, f"{base}_start", f"{base}_end", f"{base}_axis"],
                                          [node.output[0]], name=f"{base}_crop"))
    del graph.node[:]
    graph.node.extend(nodes)
    _remove_dead_nodes(model)
    return model


def tail_slices_as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace ``x[..., x.shape[-1] - c:]``-style slice bounds by the constant ``-c``.

    A streaming layer keeps the last ``c`` samples of ``cat(state, block)``; traced with
    a dynamic time axis, the bound is computed at run time (``Shape``, ``Gather``,
    ``Sub``, ``Unsqueeze``: four small nodes per layer that a real-time host pays on every
    call). Slicing from ``-c`` is the same whenever the axis holds at least ``c`` samples,
    which ``cat(state, block)`` always does. Unused nodes are removed afterwards.
    """
    graph = model.graph
    consts: Dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {}
    for node in graph.node:
        for out in node.output:
            producer[out] = node
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)

    def bound_offset(name: str, data: str, axis: int) -> Optional[int]:
        # name = Unsqueeze(Sub(Gather(Shape(data), axis), c)) -> c
        u = producer.get(name)
        if u is None or u.op_type != "Unsqueeze":
            return None
        sub = producer.get(u.input[0])
        if sub is None or sub.op_type != "Sub" or sub.input[1] not in consts:
            return None
        gather = producer.get(sub.input[0])
        if gather is None or gather.op_type != "Gather" or gather.input[1] not in consts:
            return None
        shape = producer.get(gather.input[0])
        if shape is None or shape.op_type != "Shape" or shape.input[0] != data or shape.attribute:
            return None
        index = int(np.asarray(consts[gather.input[1]]).reshape(-1)[0])
        if index != axis:
            return None
        c = int(np.asarray(consts[sub.input[1]]).reshape(-1)[0])
        return c if c > 0 else None

    ranks = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
            if vi.type.tensor_type.HasField("shape"):
                ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    except Exception:  # noqa: BLE001 - without ranks, only non-negative axes match
        pass

    changed = False
    for node in graph.node:
        if node.op_type != "Slice" or len(node.input) < 4 or node.input[3] not in consts:
            continue
        axes = np.asarray(consts[node.input[3]]).reshape(-1)
        if axes.size != 1:
            continue
        axis = int(axes[0])
        candidates = {axis}
        rank = ranks.get(node.input[0])
        if rank is not None:
            candidates |= {axis % rank, axis % rank - rank}
        for k in (1, 2):
            for a in candidates:
                c = bound_offset(node.input[k], node.input[0], a)
                if c is not None:
                    name = f"{node.name or node.output[0]}__bound{k}"
                    graph.initializer.append(numpy_helper.from_array(np.array([-c], np.int64), name))
                    node.input[k] = name
                    changed = True
                    break
    if changed:
        _remove_dead_nodes(model)
    return model


def _remove_dead_nodes(model: onnx.ModelProto) -> None:
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    unused = [i for i in graph.initializer if i.name not in needed]
    for init in unused:
        graph.initializer.remove(init)


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
        tail_slices_as_constants(model)
        conv_transpose_as_conv(model)
        conv1d_as_conv2d(model)
        activations_into_convs(model)
    write_metadata(model, metadata)
    model.producer_name = "rave-deploy"
    model.producer_version = rave_core.__version__
    model.doc_string = DETERMINISTIC_NOTE
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


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
        model = _trace(OfflineGraph(core, method, fill=False).eval(), (x,), Path(path),
                       [x_name], [y_name], {x_name: {2: time_in}, y_name: {2: time_out}})
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
                           Path(path), inputs, outputs, dynamic)
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
                           Path(path), inputs, outputs, None)
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


# ------------------------------------------------------------------ running
def session(path, threads: int = 1):
    """An ONNX Runtime CPU session as a real-time host opens one: ``threads`` intra-op
    threads (1: no thread pool hand-offs), sequential execution, all graph optimisations,
    denormals flushed to zero."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    # A trained model's decaying states reach denormal floats, many times slower on CPU
    # (what audio hosts do too: flush them to zero).
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_for_check(target: str, artifact: Path):
    """A fresh report for ``artifact`` and its ONNX Runtime session, loaded as a host
    loads it (``None`` when it cannot load: the report then says why, point 22)."""
    from .check.result import CheckReport
    artifact = Path(artifact)
    report = CheckReport(artifact, target)
    report.summary["size_bytes"] = artifact.stat().st_size if artifact.exists() else 0
    try:
        sess = session(artifact)
    except Exception as err:  # noqa: BLE001 - any load failure is the finding
        report.add("contract.22_loads", False, f"point 22: ONNX Runtime cannot load "
                   f"{artifact.name}: {err}")
        return report, None
    return report, sess


def block_time(sess, feeds: Dict[str, np.ndarray], state_pairs: Dict[str, str],
               runs: int = 200, warmup: int = 20) -> Dict[str, float]:
    """Wall time of one call, state fed back each call: median, 95th percentile, minimum
    (ms). ``state_pairs``: output name -> input name."""
    feeds = dict(feeds)
    names = [o.name for o in sess.get_outputs()]
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        out = sess.run(None, feeds)
        dt = time.perf_counter() - t0
        for name, value in zip(names, out):
            if name in state_pairs:
                feeds[state_pairs[name]] = value
        if i >= warmup:
            times.append(dt * 1e3)
    t = np.asarray(times)
    return {"median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
            "min_ms": float(t.min())}


def _shape(arg, fallback: int) -> List[int]:
    return [d if isinstance(d, int) else fallback for d in arg.shape]


class _OrtRunnerMixin:
    """Shared part of the ONNX Runtime runners: one session, states per batch row.

    The graphs are batch 1 (as hosts call them); a batch of ``B`` rows is run as ``B``
    independent streams, each with its own states.
    """

    def _setup(self, sess, method: str, ratio: int, latent_size: int, n_channels: int) -> None:
        self.session = sess
        self.method = method
        self.in_name = sess.get_inputs()[0].name
        self.output_names = [o.name for o in sess.get_outputs()]
        self.in_channels = latent_size if method == "decode" else n_channels
        self.out_channels = latent_size if method == "encode" else n_channels
        self.in_ratio = ratio if method == "decode" else 1
        self.out_ratio = ratio if method == "encode" else 1
        self._rows: List[Dict[str, np.ndarray]] = []

    def _call(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        return self.session.run(None, feeds)


class _StreamingRunnerMixin(_OrtRunnerMixin):
    """An explicit-state graph (``onnx_streaming``), states fed back by name."""

    def __init__(self, sess, method: str, ratio: int, latent_size: int, n_channels: int) -> None:
        self._setup(sess, method, ratio, latent_size, n_channels)
        self.state_inputs = [i for i in sess.get_inputs()[1:]]
        # state_out_<k> -> state_in_<k>; the contract check proves the pairing exists.
        self.pairs = {o: o.replace("state_out_", "state_in_", 1)
                      for o in self.output_names[1:]}
        fixed = sess.get_inputs()[0].shape[2]
        self.graph_block = fixed if isinstance(fixed, int) else None

    def reset(self, batch: int = 1) -> None:
        self._rows = [{i.name: np.zeros(_shape(i, 1), np.float32) for i in self.state_inputs}
                      for _ in range(batch)]

    def process(self, block: np.ndarray) -> np.ndarray:
        outs = []
        for b, states in enumerate(self._rows):
            pieces = []
            step = self.graph_block or block.shape[-1]
            for i in range(0, block.shape[-1], step):
                res = self._call({self.in_name: np.ascontiguousarray(block[b:b + 1, :, i:i + step]),
                                  **states})
                for name, value in zip(self.output_names[1:], res[1:]):
                    states[self.pairs[name]] = value
                pieces.append(res[0])
            outs.append(np.concatenate(pieces, -1))
        return np.concatenate(outs, 0)


class _FlatRunnerMixin(_OrtRunnerMixin):
    """A flat-state graph as anira runs it: fixed block, ``state_out`` fed back to
    ``state_in`` (per the JSON's state pairs), ``fill_in`` zeros. Host blocks must be
    multiples of the graph's block (anira's own re-blocking adds latency, not checked here).
    """

    def __init__(self, sess, method: str, ratio: int, latent_size: int, n_channels: int,
                 pairs: Optional[Dict[int, int]] = None) -> None:
        self._setup(sess, method, ratio, latent_size, n_channels)
        inputs = sess.get_inputs()
        self.inputs = inputs
        # output index -> input index (anira's state_config.state_pairs)
        self.pairs = pairs if pairs is not None else {1: 1}
        self.graph_block = int(inputs[0].shape[2])

    def reset(self, batch: int = 1) -> None:
        self._rows = [{i.name: np.zeros(_shape(i, 1), np.float32) for i in self.inputs[1:]}
                      for _ in range(batch)]

    def process(self, block: np.ndarray) -> np.ndarray:
        step = self.graph_block
        if block.shape[-1] % step:
            raise ValueError(f"block of {block.shape[-1]} is not a multiple of the graph's "
                             f"fixed block {step} ({self.in_name})")
        outs = []
        for b, feeds in enumerate(self._rows):
            pieces = []
            for i in range(0, block.shape[-1], step):
                feeds[self.in_name] = np.ascontiguousarray(block[b:b + 1, :, i:i + step])
                res = self._call(feeds)
                for o, i_ in self.pairs.items():
                    feeds[self.inputs[i_].name] = res[o]
                pieces.append(res[0])
            outs.append(np.concatenate(pieces, -1))
        return np.concatenate(outs, 0)


_RUNNERS: Dict[str, type] = {}


def runner_classes() -> Dict[str, type]:
    """``{"streaming": OrtStreamingRunner, "flat": OrtFlatRunner}``, subclasses of
    :class:`rave_deploy.check.runner.Runner`.

    Created on first use: ``rave_deploy.check`` imports the target registry, which
    imports this module, so this module cannot import ``rave_deploy.check`` at load time.
    """
    if not _RUNNERS:
        from .check.runner import Runner

        class OrtStreamingRunner(_StreamingRunnerMixin, Runner):
            __doc__ = _StreamingRunnerMixin.__doc__

        class OrtFlatRunner(_FlatRunnerMixin, Runner):
            __doc__ = _FlatRunnerMixin.__doc__

        for cls in (OrtStreamingRunner, OrtFlatRunner):
            cls.__module__ = __name__
        _RUNNERS.update(streaming=OrtStreamingRunner, flat=OrtFlatRunner)
    return _RUNNERS


def __getattr__(name: str):
    # ``from rave_deploy.onnx_graphs import OrtStreamingRunner`` (PEP 562).
    if name in ("OrtStreamingRunner", "OrtFlatRunner"):
        return runner_classes()["streaming" if name == "OrtStreamingRunner" else "flat"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------ checks
#: Offline graph vs eager model, share of the peak (ONNX Runtime vs PyTorch float32).
PARITY = 1e-4


def check_metadata(report, point: int, meta: Dict[str, object], expected: Dict[str, object]) -> None:
    """``contract.<point>_metadata``: required keys present, values as expected."""
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    wrong = {k: (meta.get(k), v) for k, v in expected.items()
             if k in meta and str(meta.get(k)) != str(v)}
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        parts += [f"{k} is {got} but the run says {want}" for k, (got, want) in wrong.items()]
        report.add(f"contract.{point}_metadata", False,
                   f"point {point}: metadata_props: {'; '.join(parts)}: re-export the model")
    else:
        report.add(f"contract.{point}_metadata", True,
                   f"point {point}: metadata_props carry "
                   + ", ".join(f"{k}={meta[k]}" for k in REQUIRED_METADATA))


def generic_checks(report, runners: Dict[str, object], reference, block_sizes: Sequence[int],
                   options) -> None:
    """The shared harness on each method's runner (parity, causality, blocks, latency),
    then real-time factor of ``forward`` on one thread."""
    from .check.harness import run_forward_timing, run_method_checks

    for method, runner in runners.items():
        run_method_checks(report, runner, reference, method, list(block_sizes), options)
    if "forward" in runners:
        run_forward_timing(report, runners["forward"], reference, list(block_sizes), options)
