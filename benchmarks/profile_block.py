"""Where one streaming block's time goes: per-op profile of an exported file, one thread.

    python benchmarks/profile_block.py exports/brave.nn_tilde.ts --block 128
    python benchmarks/profile_block.py exports/brave.onnx_streaming.onnx --block 2048 --top 20

A TorchScript file (``.ts``) is profiled with ``torch.profiler`` over its ``forward``; an
``onnx_streaming`` graph (``.onnx``) with ONNX Runtime's own profiler, states fed back.
Both print the median block time measured *without* the profiler (the profiler itself
adds about a microsecond per op), then one table per file: op type -> calls per block,
microseconds per block and share of the profiled time, and, for the matrix products
and convolutions that usually dominate, the heaviest shapes. Random input, warm-up first.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

#: Ops whose shapes are listed: the arithmetic a streaming call cannot avoid.
PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::conv1d",
               "aten::_convolution", "aten::_embedding_bag_forward_only", "aten::_embedding_bag",
               "Conv", "FusedConv", "MatMul", "Gemm", "NchwcConv")


def median_block_ms(step: Callable[[], None], block: int, seconds: float = 2.0) -> float:
    """Median wall time (ms) of ``step`` over ``seconds`` of audio at 44.1 kHz, after a
    warm-up of 20 calls."""
    for _ in range(20):
        step()
    n = max(int(seconds * 44100 / block), 30)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def profile_torchscript(path: Path, block: int, calls: int) -> Tuple[float, List[Dict]]:
    """``(median ms, rows)``: one row per (op, input shapes), self time per block (us)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    module = torch.jit.load(str(path)).eval()
    channels = int(getattr(module, "n_channels", 1)) if hasattr(module, "n_channels") else 1
    x = torch.randn(1, channels, block) * 0.1
    with torch.inference_mode():
        ms = median_block_ms(lambda: module(x), block)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(calls):
                module(x)
    rows = [{"op": e.key, "shape": str(e.input_shapes), "calls": e.count / calls,
             "us": e.self_cpu_time_total / calls}
            for e in prof.key_averages(group_by_input_shape=True)
            if e.key not in ("forward",)]
    return ms, rows


def profile_onnx(path: Path, block: int, calls: int) -> Tuple[float, List[Dict]]:
    """As :func:`profile_torchscript`, for an explicit-state ONNX graph."""
    import onnxruntime as ort

    from rave_deploy.onnx_runtime import session

    def feeder(sess) -> Callable[[], None]:
        inputs = sess.get_inputs()
        names = [o.name for o in sess.get_outputs()]
        fixed = inputs[0].shape[2]
        n = fixed if isinstance(fixed, int) else block
        states = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                  for i in inputs[1:]}
        x = (np.random.default_rng(0).standard_normal((1, 1, n)) * 0.1).astype(np.float32)

        def step() -> None:
            out = sess.run(names, {inputs[0].name: x, **states})
            for name, value in zip(states, out[1:]):
                states[name] = value
        return step

    ms = median_block_ms(feeder(session(path)), block)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        step = feeder(sess)
        for _ in range(calls):
            step()
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    per: Dict[Tuple[str, str], List[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["args"]["op_name"], str(e["args"].get("input_type_shape", "")))
            per[key][0] += e["dur"]
            per[key][1] += 1
    # the first call also runs (profiled) before the loop's first timed one: same count
    rows = [{"op": op, "shape": shape, "calls": n / calls, "us": dur / calls}
            for (op, shape), (dur, n) in per.items()]
    return ms, rows


def print_tables(path: Path, block: int, ms: float, rows: List[Dict], top: int) -> None:
    by_op: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        by_op[r["op"]][0] += r["us"]
        by_op[r["op"]][1] += r["calls"]
    total = sum(v[0] for v in by_op.values()) or 1.0
    print(f"{path.name} @ block {block}: {ms:.3f} ms per block unprofiled "
          f"({block / 44.1 / ms:.2f}x real time at 44.1 kHz); profiled ops {total / 1000:.3f} ms")
    print(f"{'op':28s} {'calls':>7s} {'us/block':>9s} {'share':>6s}")
    for op, (us, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{op[:28]:28s} {n:7.0f} {us:9.1f} {100 * us / total:5.1f}%")
    heavy = sorted((r for r in rows if r["op"] in PRODUCT_OPS), key=lambda r: -r["us"])[:top]
    if heavy:
        print(f"\nheaviest products ({'op':s}, input shapes, calls and us per block):")
        for r in heavy:
            print(f"  {r['op']:34s} {r['calls']:4.0f} {r['us']:8.1f}  {r['shape'][:90]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help=".ts (TorchScript) or .onnx "
                                                       "(onnx_streaming) files")
    p.add_argument("--block", type=int, default=2048, help="host block size (samples)")
    p.add_argument("--calls", type=int, default=50, help="profiled calls (after warm-up)")
    p.add_argument("--top", type=int, default=12, help="rows per table")
    args = p.parse_args(argv)
    for path in args.files:
        if not path.is_file():
            p.error(f"{path}: no such file")
        if path.suffix == ".onnx":
            ms, rows = profile_onnx(path, args.block, args.calls)
        elif path.suffix in (".ts", ".pt"):
            ms, rows = profile_torchscript(path, args.block, args.calls)
        else:
            p.error(f"{path}: expected a .ts (TorchScript) or .onnx (onnx_streaming) file")
        print_tables(path, args.block, ms, rows, args.top)
        print()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
