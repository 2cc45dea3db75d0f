"""Where one streaming block's time goes: per-op profile of an exported file, one thread.

    python benchmarks/profile_block.py exports/brave.nn_tilde.ts --block 128
    python benchmarks/profile_block.py exports/brave.onnx_streaming.onnx --block 2048 --top 20
    python benchmarks/profile_block.py exports/brave.anira/forward.onnx    # its fixed block

A TorchScript file (``.ts``) is profiled with ``torch.profiler`` over its ``forward``; a
streaming ONNX graph (``onnx_streaming``, or an anira folder's ``forward.onnx``) with ONNX
Runtime's own profiler, run as ``rave-deploy check`` and ``streaming_rtf.py`` run it
(states bound in place: ``rave_deploy.onnx_runtime.BoundStreamingSession``). The offline
``onnx`` graph (no states) is refused: it is not what a streaming host runs. A graph with
a fixed block (anira's) is profiled at its block, whatever --block says. The sample rate
and ratio come from the export's sidecar (else from the file): --block must be a multiple
of the ratio.

Both print the median block time measured *without* the profiler, then one table per
file: op type -> calls per block, microseconds per block and share of the profiled time,
and, for the matrix products and convolutions that usually dominate, the heaviest
shapes. The profilers add their own time to every op they record: torch.profiler about
0.3 us per op, ONNX Runtime's about 3 us per node, inside each node's time (full-size BRAVE
at 128: 2.4 ms of profiled nodes against 1.0 ms unprofiled). Under ONNX Runtime the small
ops (Reshape, Slice, Concat) look heavier than they are: compare the large ops, and take
the block time from the unprofiled line. Random input; warm-up calls first, unprofiled.

Exit status: 0, 2 bad options or a file that is not a streaming export (checked before
any profiling), 130 Ctrl-C.
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
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.arguments import HelpFormatter, Parser, first_line  # noqa: E402

#: Ops whose shapes are listed: the arithmetic a streaming call cannot avoid.
PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::conv1d",
               "aten::_convolution", "aten::_embedding_bag_forward_only", "aten::_embedding_bag",
               "Conv", "FusedConv", "MatMul", "Gemm", "NchwcConv")
#: Unprofiled calls before the profiled ones (first calls allocate and pack weights).
WARMUP = 20


class Export(NamedTuple):
    """A file to profile, loaded: what its block is and how fast audio runs."""
    path: Path
    model: object                  # a TorchScript module or an ONNX Runtime session
    sr: Optional[int]              # None: neither the sidecar nor the file says
    ratio: int
    channels: int
    fixed_block: Optional[int]     # a graph that takes one block size only (anira)
    pairs: Optional[Dict[int, int]] = None   # ONNX: state output -> the input it feeds


def sidecar_of(path: Path) -> dict:
    """rave-deploy's sidecar of ``path`` (beside it, or an anira folder's for one of its
    graphs: :func:`rave_deploy.sidecar.read_sidecar`); ``{}`` when there is none or it
    cannot be read (the file's own metadata is used then)."""
    from rave_deploy.sidecar import read_sidecar
    for artifact in (path, path.parent):
        try:
            return read_sidecar(artifact)
        except (OSError, ValueError, UnicodeDecodeError):
            continue
    return {}


def open_export(p: argparse.ArgumentParser, path: Path) -> Export:
    """Load ``path``; anything but a streaming export is refused in one line (exit 2)."""
    if not path.is_file():
        p.error(f"{path}: no such file")
    if path.suffix not in (".onnx", ".ts", ".pt"):
        p.error(f"{path}: expected a .ts (TorchScript) or .onnx (onnx_streaming) file")
    sidecar = sidecar_of(path)
    try:
        if path.suffix == ".onnx":
            from rave_deploy.onnx_runtime import session
            model = session(path)  # one thread, all optimisations, no denormals
            meta = {k: json.loads(v) for k, v in
                    model.get_modelmeta().custom_metadata_map.items() if v[:1].isdigit()}
        else:
            import torch
            model = torch.jit.load(str(path)).eval()
            meta = {"sample_rate": getattr(model, "sr", None),
                    "ratio": int(model.encode_params[3]) if hasattr(model, "encode_params")
                    else None}
    except Exception as err:  # noqa: BLE001 - whatever it is, it cannot be profiled
        kind = "ONNX" if path.suffix == ".onnx" else "TorchScript"
        p.error(f"{path}: cannot be loaded as {kind} ({first_line(err)}): give a .ts or an "
                "onnx_streaming .onnx export")
    sr = sidecar.get("sample_rate") or meta.get("sample_rate")
    ratio = int(sidecar.get("ratio") or meta.get("ratio") or 1)
    if path.suffix != ".onnx":
        channels = int(sidecar.get("channels") or getattr(model, "n_channels", 1))
        return Export(path, model, sr and int(sr), ratio, channels, None)
    inputs, outputs = model.get_inputs(), model.get_outputs()
    if len(inputs) == 1:
        p.error(f"{path}: offline graph (one input, no states): profile an onnx_streaming "
                "export")
    if not inputs[0].name.startswith("audio"):
        p.error(f"{path}: its input {inputs[0].name} is not audio: profile a graph that "
                "takes audio (an anira folder's forward.onnx)")
    # state_out_<k> feeds state_in_<k> (onnx_streaming), state_out feeds state_in (anira)
    index = {i.name: k for k, i in enumerate(inputs)}
    pairs = {k: index.get(o.name.replace("_out", "_in", 1)) for k, o in enumerate(outputs) if k}
    if None in pairs.values():
        p.error(f"{path}: its state outputs do not name the inputs they feed: not an "
                "onnx_streaming or anira graph")
    fixed = inputs[0].shape[2]
    return Export(path, model, sr and int(sr), ratio, int(inputs[0].shape[1]),
                  fixed if isinstance(fixed, int) else None, pairs)


def median_block_ms(step: Callable[[], None], block: int, sr: int,
                    seconds: float = 2.0) -> float:
    """Median wall time (ms) of ``step`` over ``seconds`` of audio, after a warm-up."""
    for _ in range(WARMUP):
        step()
    n = max(int(seconds * sr / block), 30)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def profile_torchscript(e: Export, block: int, calls: int, sr: int) -> Tuple[float, List[Dict]]:
    """``(median ms, rows)``: one row per (op, input shapes), self time per block (us)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    x = torch.randn(1, e.channels, block) * 0.1
    with torch.inference_mode():
        ms = median_block_ms(lambda: e.model(x), block, sr)  # also the profiler's warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(calls):
                e.model(x)
    rows = [{"op": ev.key, "shape": str(ev.input_shapes), "calls": ev.count / calls,
             "us": ev.self_cpu_time_total / calls}
            for ev in prof.key_averages(group_by_input_shape=True)
            if ev.key not in ("forward",)]
    return ms, rows


def profile_onnx(e: Export, block: int, calls: int, sr: int) -> Tuple[float, List[Dict]]:
    """As :func:`profile_torchscript`, for a streaming ONNX graph run as hosts run it."""
    from rave_deploy.onnx_runtime import BoundStreamingSession, session

    out = e.model.get_outputs()[0].shape  # fixed (anira's encode: latent frames): as declared
    shape = (lambda _: tuple(out)) if all(isinstance(d, int) for d in out) else None
    x = (np.random.default_rng(0).standard_normal((1, e.channels, block)) * 0.1).astype(np.float32)
    stream = BoundStreamingSession(e.model, shape, e.pairs)
    ms = median_block_ms(lambda: stream(x), block, sr)
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(e.path, profile_prefix=os.path.join(tmp, "ort"))
        stream = BoundStreamingSession(sess, shape, e.pairs)
        for _ in range(WARMUP + calls):
            stream(x)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    # the profiler records from the session's start: keep the calls after the warm-up
    runs = sorted(ev["ts"] for ev in events
                  if ev.get("cat") == "Session" and ev["name"] == "model_run")
    start = runs[WARMUP]
    per: Dict[Tuple[str, str], List[float]] = collections.defaultdict(lambda: [0.0, 0])
    for ev in events:
        if (ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time")
                and ev["ts"] >= start):
            key = (ev["args"]["op_name"], str(ev["args"].get("input_type_shape", "")))
            per[key][0] += ev["dur"]
            per[key][1] += 1
    rows = [{"op": op, "shape": shape, "calls": n / calls, "us": dur / calls}
            for (op, shape), (dur, n) in per.items()]
    return ms, rows


def print_tables(path: Path, block: int, sr: int, ms: float, rows: List[Dict],
                 top: int) -> None:
    by_op: Dict[str, List[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        by_op[r["op"]][0] += r["us"]
        by_op[r["op"]][1] += r["calls"]
    total = sum(v[0] for v in by_op.values()) or 1.0
    print(f"{path.name} @ block {block}: {ms:.3f} ms per block unprofiled "
          f"({block / sr * 1000 / ms:.2f}x real time at {sr / 1000:g} kHz); profiled ops "
          f"{total / 1000:.3f} ms")
    print(f"{'op':28s} {'calls':>7s} {'us/block':>9s} {'share':>6s}")
    for op, (us, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{op[:28]:28s} {n:7.0f} {us:9.1f} {100 * us / total:5.1f}%")
    heavy = sorted((r for r in rows if r["op"] in PRODUCT_OPS), key=lambda r: -r["us"])[:top]
    if heavy:
        print(f"\nheaviest products ({'op':s}, input shapes, calls and us per block):")
        for r in heavy:
            print(f"  {r['op']:34s} {r['calls']:4.0f} {r['us']:8.1f}  {r['shape'][:90]}")


def main(argv=None) -> int:
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help=".ts (TorchScript) or .onnx "
                                                       "(onnx_streaming, anira) files")
    p.add_argument("--block", type=int, default=2048,
                   help="host block size (samples), a multiple of the model's ratio; a "
                        "fixed-block graph is profiled at its own")
    p.add_argument("--calls", type=int, default=50, help="profiled calls (after warm-up)")
    p.add_argument("--top", type=int, default=12, help="rows per table")
    args = p.parse_args(argv)
    for flag, value in (("--block", args.block), ("--calls", args.calls), ("--top", args.top)):
        if value < 1:
            p.error(f"{flag} {value}: give at least 1")
    exports = [open_export(p, path) for path in args.files]  # every file checked first
    blocks = []
    for e in exports:
        if e.fixed_block is None and args.block % e.ratio:
            p.error(f"--block {args.block}: {e.path.name} takes multiples of its ratio "
                    f"{e.ratio} (e.g. --block {max(1, args.block // e.ratio) * e.ratio})")
        blocks.append(e.fixed_block or args.block)
    for e, block in zip(exports, blocks):
        if block != args.block:
            print(f"{e.path.name}: a fixed-block graph: profiled at its block {block}, "
                  f"not --block {args.block}")
        sr = e.sr or 44100
        if e.sr is None:
            print(f"{e.path.name}: no sample rate in a sidecar nor in the file: 44.1 kHz "
                  "assumed for the real-time factor")
        profile = profile_onnx if e.path.suffix == ".onnx" else profile_torchscript
        ms, rows = profile(e, block, args.calls, sr)
        print_tables(e.path, block, sr, ms, rows, args.top)
        print()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
