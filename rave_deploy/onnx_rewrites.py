"""Exact rewrites of a traced ONNX graph into what ONNX Runtime's CPU provider runs fastest.

Real-time hosts call the graphs every few milliseconds on one thread, so per-node cost and
weight handling matter more than arithmetic. Each rewrite keeps the function (up to float
rounding; the checks compare every graph with the eager model):

* :func:`tail_slices_as_constants`: a layer keeps the last ``c`` samples of
  ``cat(state, block)``; traced with a dynamic time axis that bound costs four small
  nodes per layer per call; ``-c`` costs none;
* :func:`conv_transpose_as_conv`: transposed convolutions become plain convolutions with
  one output channel group per phase, interleaved;
* :func:`conv1d_as_conv2d`: 1-D convolutions become 2-D ones over a height-1 image, which
  ONNX Runtime runs with weights re-ordered once at load (NCHWc) instead of re-packed at
  every call (2.3x faster per convolution at a few frames; 15-20 % on a whole model);
* :func:`activations_into_convs`: the activation after such a convolution moves onto its
  4-D output, where ONNX Runtime fuses it into the convolution;
* :func:`transposed_copies_as_transposes`: a weight the exporter saved twice, as stored
  and transposed (a discrete model's codebooks), is saved once.

:func:`optimize_for_runtime` applies them in that order.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper


class OnnxExportError(RuntimeError):
    """The model could not be traced to ONNX; the message says why and what to do."""


def optimize_for_runtime(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every rewrite of this module, in place, in the order they build on each other."""
    tail_slices_as_constants(model)
    conv_transpose_as_conv(model)
    conv1d_as_conv2d(model)
    activations_into_convs(model)
    transposed_copies_as_transposes(model)
    return model


def transposed_copies_as_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Where one 2-D initializer is exactly the transpose of another, read it through a
    ``Transpose`` node of the other instead.

    The exporter's constant folding turns ``x @ w.t()`` into a product with a transposed
    copy of ``w``: a codebook that is also looked up by row (``Gather``) is then saved
    twice (8 MB of a full-size discrete model). ONNX Runtime folds the ``Transpose`` again
    when it loads the graph, so the graph runs as before; only the file is smaller. Exact.
    """
    graph = model.graph
    fed = {i.name for i in graph.input}  # an initializer listed as an input can be fed
    matrices = [i for i in graph.initializer if len(i.dims) == 2 and i.name not in fed]
    by_shape: Dict[tuple, List[onnx.TensorProto]] = {}
    for init in matrices:
        by_shape.setdefault(tuple(init.dims), []).append(init)
    arrays: Dict[str, np.ndarray] = {}

    def array(init: onnx.TensorProto) -> np.ndarray:
        if init.name not in arrays:
            arrays[init.name] = numpy_helper.to_array(init)
        return arrays[init.name]

    copies: Dict[str, str] = {}  # transposed copy -> the initializer it copies
    for init in matrices:  # graph order: the first of a pair is kept
        if init.name in copies or init.name in copies.values():
            continue
        for other in by_shape.get((init.dims[1], init.dims[0]), []):
            if (other.name != init.name and other.name not in copies
                    and other.name not in copies.values()
                    and init.data_type == other.data_type
                    and np.array_equal(array(other), array(init).T)):
                copies[other.name] = init.name
                break
    if not copies:
        return model
    transposes = [helper.make_node("Transpose", [kept], [f"{copy}__transposed"], perm=[1, 0],
                                   name=f"{copy}__transpose")
                  for copy, kept in copies.items()]
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in copies:
                node.input[k] = f"{name}__transposed"
    nodes = transposes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    for init in [i for i in graph.initializer if i.name in copies]:
        graph.initializer.remove(init)
    return model


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
