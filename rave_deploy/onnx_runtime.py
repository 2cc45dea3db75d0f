"""ONNX Runtime as hosts run the exported graphs: sessions, runners for the check
harness, and the checks the ONNX targets share."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .check.runner import Runner
from .onnx_graphs import REQUIRED_METADATA


def session(path, threads: int = 1, profile_prefix: Optional[str] = None):
    """An ONNX Runtime CPU session as a real-time host opens one: ``threads`` intra-op
    threads (1: no thread pool hand-offs), sequential execution, all graph optimisations,
    denormals flushed to zero. ``profile_prefix``: ONNX Runtime's profiler on, writing
    there (it can only be switched on when a session is made; benchmarks/profile_block.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    # A trained model's decaying states reach denormal floats, many times slower on CPU
    # (what audio hosts do too: flush them to zero).
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    model = str(path)
    try:
        model.encode("utf-8")
    except UnicodeEncodeError:  # a folder named in Latin-1: ORT takes UTF-8 paths only
        model = Path(path).read_bytes()
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


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


def _shape(arg, fallback: int) -> List[int]:
    return [d if isinstance(d, int) else fallback for d in arg.shape]


class _OrtRunner(Runner):
    """Shared part of the ONNX Runtime runners: one session, states per batch row.

    The graphs are batch 1 (as hosts call them); a batch of ``B`` rows is run as ``B``
    independent streams, each with its own states.
    """

    def _setup(self, sess, method: str, ratio: int, latent_size: int, n_channels: int) -> None:
        self.session = sess
        self.method = method
        self.in_name = sess.get_inputs()[0].name
        self.in_channels = latent_size if method == "decode" else n_channels
        self.out_channels = latent_size if method == "encode" else n_channels
        self.in_ratio = ratio if method == "decode" else 1
        self.out_ratio = ratio if method == "encode" else 1


class BoundStreamingSession:
    """One stream through an explicit-state graph (``onnx_streaming``, or anira's flat-state
    graphs), run as a C++ host runs it: the states live in two preallocated buffer sets
    bound once with IO binding (each state output of one call is written into the buffer
    of the state input it feeds at the next, and the sets swap), and each block is copied
    into a bound input buffer. An input that no output feeds (anira's ``fill_in``) stays
    at zeros.

    Feeding NumPy states through ``sess.run`` instead converts ~50 state tensors per call on
    the Python side (BRAVE at 128 samples: 8-12 % of a call), a cost no host pays.

    Args:
        sess: an ONNX Runtime session of a batch-1 streaming graph.
        output_shape: block shape ``(1, in_channels, n)`` -> output shape; by default
            ``(1, out_channels, n)`` with the graph's declared output channels.
        pairs: output index -> the input index it feeds (anira's
            ``state_config.state_pairs``); by default ``state_out_<k>`` feeds
            ``state_in_<k>`` (the ``onnx_streaming`` contract).
    """

    def __init__(self, sess,
                 output_shape: Optional[Callable[[Tuple[int, ...]], Tuple[int, ...]]] = None,
                 pairs: Optional[Dict[int, int]] = None):
        import onnxruntime as ort

        self.session = sess
        self.inputs, self.outputs = sess.get_inputs(), sess.get_outputs()
        if pairs is None:
            index = {i.name: k for k, i in enumerate(self.inputs)}
            pairs = {k: index[o.name.replace("state_out_", "state_in_", 1)]
                     for k, o in enumerate(self.outputs) if k > 0}
        if 0 in pairs or 0 in pairs.values():
            raise ValueError(f"state pairs {pairs} join the signal: output 0 and input 0 "
                             "are the block, never a state; fix state_config.state_pairs")
        self._pairs = dict(pairs)
        self._sets = [{i.name: np.zeros(_shape(i, 1), np.float32) for i in self.inputs[1:]}
                      for _ in range(2)]
        self._output_shape = output_shape or self._same_length
        self._block: Optional[np.ndarray] = None
        self._out: Optional[np.ndarray] = None
        self._bindings: List = []
        self._calls = 0
        self._run_options = ort.RunOptions()

    def _same_length(self, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        channels = self.outputs[0].shape[1]
        return (shape[0], channels if isinstance(channels, int) else shape[1], shape[2])

    def reset(self) -> None:
        """Zero states, as at load (both sets: either may be read next)."""
        for states in self._sets:
            for value in states.values():
                value.fill(0.0)

    def _bind(self, shape: Tuple[int, ...]) -> None:
        import onnxruntime as ort

        # OrtValues made from NumPy arrays share their memory: ONNX Runtime reads the bound
        # block and states and writes the bound outputs in place
        self._block = np.zeros(shape, np.float32)
        self._out = np.zeros(self._output_shape(shape), np.float32)
        self._bindings = []
        for current, following in ((self._sets[0], self._sets[1]),
                                   (self._sets[1], self._sets[0])):
            io = self.session.io_binding()
            io.bind_ortvalue_input(self.inputs[0].name,
                                   ort.OrtValue.ortvalue_from_numpy(self._block))
            for name, value in current.items():
                io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
            io.bind_ortvalue_output(self.outputs[0].name,
                                    ort.OrtValue.ortvalue_from_numpy(self._out))
            for o, i in self._pairs.items():  # written where the next call reads it
                value = following[self.inputs[i].name]
                io.bind_ortvalue_output(self.outputs[o].name,
                                        ort.OrtValue.ortvalue_from_numpy(value))
            self._bindings.append(io)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """Process one block ``(1, in_channels, n)``; returns the output block, a view of
        the bound output buffer that the next call overwrites (copy it to keep it)."""
        if self._block is None or self._block.shape != block.shape:
            self._bind(tuple(block.shape))
        np.copyto(self._block, block)
        self.session.run_with_iobinding(self._bindings[self._calls % 2], self._run_options)
        self._calls += 1
        return self._out


class OrtStreamingRunner(_OrtRunner):
    """An explicit-state graph (``onnx_streaming``), its states bound in place as a host
    keeps them (:class:`BoundStreamingSession`, one per batch row)."""

    def __init__(self, sess, method: str, ratio: int, latent_size: int, n_channels: int) -> None:
        self._setup(sess, method, ratio, latent_size, n_channels)
        fixed = sess.get_inputs()[0].shape[2]
        self.graph_block = fixed if isinstance(fixed, int) else None
        self.pairs: Optional[Dict[int, int]] = None  # the graph's state_out_<k> -> state_in_<k>
        self._streams: List[BoundStreamingSession] = []

    def _output_shape(self, shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return (shape[0], self.out_channels, shape[2] * self.in_ratio // self.out_ratio)

    def reset(self, batch: int = 1) -> None:
        while len(self._streams) < batch:
            self._streams.append(BoundStreamingSession(self.session, self._output_shape,
                                                       self.pairs))
        del self._streams[batch:]
        for stream in self._streams:
            stream.reset()

    def process(self, block: np.ndarray) -> np.ndarray:
        step = self.graph_block or block.shape[-1]
        outs = []
        for b, stream in enumerate(self._streams):
            # copies: the stream's output buffer is overwritten by its next call
            pieces = [stream(block[b:b + 1, :, i:i + step]).copy()
                      for i in range(0, block.shape[-1], step)]
            outs.append(np.concatenate(pieces, -1))
        return np.concatenate(outs, 0)


class OrtFlatRunner(OrtStreamingRunner):
    """A flat-state graph as anira runs it: fixed block, ``state_out`` fed back to
    ``state_in`` in place (per the JSON's state pairs), ``fill_in`` zeros. Host blocks must
    be multiples of the graph's block (anira's own re-blocking adds latency, not checked
    here).
    """

    def __init__(self, sess, method: str, ratio: int, latent_size: int, n_channels: int,
                 pairs: Optional[Dict[int, int]] = None) -> None:
        super().__init__(sess, method, ratio, latent_size, n_channels)
        self.graph_block = int(sess.get_inputs()[0].shape[2])
        # output index -> input index (anira's state_config.state_pairs)
        self.pairs = pairs if pairs is not None else {1: 1}

    def process(self, block: np.ndarray) -> np.ndarray:
        if block.shape[-1] % self.graph_block:
            raise ValueError(f"block of {block.shape[-1]} is not a multiple of the graph's "
                             f"fixed block {self.graph_block} ({self.in_name})")
        return super().process(block)


# ------------------------------------------------------------------ checks
#: Offline graph vs eager model, share of the peak (ONNX Runtime vs PyTorch float32).
PARITY = 1e-4


def check_metadata(report, point: int, meta: Dict[str, object], expected: Dict[str, object],
                   sidecar: Optional[Dict[str, object]] = None) -> None:
    """``contract.<point>_metadata``: required keys present, values as the run gives them
    (``expected``), and as the sidecar states them where it states them: a host
    integrator reads the sidecar, so an edited one, or another file's, fails here."""
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    wrong = {k: (meta.get(k), v) for k, v in expected.items()
             if k in meta and str(meta.get(k)) != str(v)}
    stated = {k: sidecar[k] for k in expected if sidecar and k in sidecar
              and str(sidecar[k]) != str(expected[k])}
    if missing or wrong or stated:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        parts += [f"{k} is {got} but the run says {want}" for k, (got, want) in wrong.items()]
        parts += [f"the sidecar says {k} {v}, the run {expected[k]}" for k, v in stated.items()]
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
    from .check.harness import run_method_checks
    from .check.timing import run_forward_timing

    for method, runner in runners.items():
        run_method_checks(report, runner, reference, method, list(block_sizes), options)
    if "forward" in runners:
        run_forward_timing(report, runners["forward"], reference, list(block_sizes), options)
