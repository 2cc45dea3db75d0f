"""ONNX Runtime as hosts run the exported graphs: sessions, runners for the check
harness, and the checks the ONNX targets share."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .onnx_graphs import REQUIRED_METADATA


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
