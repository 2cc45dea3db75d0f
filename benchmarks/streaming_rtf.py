"""Streaming speed of every real-time target, one thread: model x target x block -> RTF.

    python benchmarks/streaming_rtf.py                        # brave, v2_small, v2
    python benchmarks/streaming_rtf.py --configs brave --blocks 128 512 2048
    python benchmarks/streaming_rtf.py --configs brave --run brave=RUN \
        --reference-ts brave=RUN/export/run_streaming.ts   # vs acids-rave, same weights

For each config a full-size model (random weights: speed does not depend on them) is
exported with ``rave-deploy export`` to ``nn_tilde`` (TorchScript) and ``onnx_streaming``
(ONNX Runtime, states bound in place as a C++ host keeps them), and with ``--targets
nn_tilde+onednn`` to ``nn_tilde`` with ``--cpu-kernels onednn``. Each (target, block) is
timed over ``--seconds`` of audio after a warm-up, ``--repeats`` times, and the median
repetition (by mean block time) gives RTF and mean; p99 pools the calls of all repetitions.
The table gives the real-time factor (audio time / compute time), mean and p99 block time
against the block's budget, and the ratio to the eager ceiling (the offline eager model on
the whole signal: the speed a streaming target would reach with no per-call overhead), at
the model's sample rate. The row ``floor: read weights`` is the time to read every weight
once (one flat fp32 array): no fp32 target can run a block faster, since each call reads
all weights. ONNX graphs fold the latent path into the convolutions around it and read
fewer weights: their floor is the row ``floor: folded (ONNX)``. With ``--reference-ts
CONFIG=PATH`` an acids-rave export of the same config is timed in the same run,
alternating with ours, and the ratio is reported; with ``--run CONFIG=PATH``
ours is exported from that run (e.g. the acids-rave run the reference was exported from,
so both files hold the same weights) instead of random weights. These machines are
shared: prefer medians of several repetitions. A line above the table gives the
machine's phase, the read speed of 8-24 MB arrays before and after the run: compare
tables taken at similar speeds.

Columns: RTF, audio time / compute time (above 1 keeps up); mean ms and p99 ms, time per
block call (p99 over the "calls" column's block calls, all repetitions pooled; ``-`` under
100 calls); budget, the block's duration in ms (what a call may take); /eager, RTF over the
eager ceiling's (the offline eager model on twice --seconds of audio in one call, median of
5 calls; 1.0 would be a streaming call with no per-call overhead); /acids, RTF over the
acids-rave file's in the same run (with --reference-ts). ``-``: no value (a target that
failed at that block). Blocks below a model's ratio, or not a multiple of it, are skipped
with a note: no host calls a model so. ``--markdown`` prints the README's table: no
floors, no /eager, no calls column.

Exit status: 0, 1 an export failed, 2 bad options (checked before anything is built),
130 Ctrl-C (the rows measured so far are printed, marked as a partial table).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.arguments import HelpFormatter, Parser, first_line  # noqa: E402

#: Overrides of a benchmark model: no training losses (they are not exported).
NO_LOSSES = ["rave.model.RAVE.audio_distance = None",
             "rave.model.RAVE.multiband_audio_distance = None"]
#: Fewest pooled block calls for a p99 (below it the "99th percentile" is the maximum).
MIN_P99_CALLS = 100


def fresh_folder(root: Path, config: str, suffix: str = "") -> Path:
    """A path under ``root`` not yet taken, named after ``config``: its stem, cleaned, so
    that a gin path (``../x.gin``, ``/abs/x.gin``) still names a folder inside ``root``."""
    stem = re.sub(r"[^\w-]+", "_", Path(config).stem).strip("_") or "config"
    path, n = root / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = root / f"{stem}_{n}{suffix}"
    return path


def make_full_run(root: Path, config: str) -> Path:
    """A run directory under ``root`` with a full-size model of ``config`` (a config name
    or a gin file; random weights)."""
    from rave_core.config import build_model, parse_config
    text = parse_config([config], NO_LOSSES)
    model = build_model([config], NO_LOSSES, build_discriminator=False)
    n = model.latent_size
    # a trained model's curve: 0.95 of the variance in 15 dimensions, so latent_size 16
    model.fidelity.copy_(1 - 0.05 ** (torch.arange(1, n + 1) / 15))
    run = fresh_folder(root, config)
    (run / "version_0" / "checkpoints").mkdir(parents=True)
    (run / "config.gin").write_text(text)
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "epoch": 0},
               run / "version_0" / "checkpoints" / "best.ckpt")
    return run


#: A benchmark target ``<target>+onednn`` is ``<target>`` exported with ``--cpu-kernels
#: onednn`` (TorchScript targets: larger products through oneDNN on packed weights).
ONEDNN_SUFFIX = "+onednn"


def export_in_subprocess(run: Path, targets: List[str], out: Path) -> Dict[str, Path]:
    """``rave-deploy export`` as users run it, one process per run (TorchScript's type
    caches then start clean for every model). Returns ``{target: file}``; targets named
    ``<target>+onednn`` are exported again with ``--cpu-kernels onednn``."""
    paths: Dict[str, Path] = {}
    plain = [t for t in targets if not t.endswith(ONEDNN_SUFFIX)]
    packed = [t[:-len(ONEDNN_SUFFIX)] for t in targets if t.endswith(ONEDNN_SUFFIX)]
    for names, extra, suffix in ((plain, [], ""), (packed, ["--cpu-kernels", "onednn"],
                                                   ONEDNN_SUFFIX)):
        if not names:
            continue
        cmd = [sys.executable, "-c", "from rave_deploy.cli import main; main()", "export",
               str(run), "-o", str(out) + suffix, "--json", *extra]
        cmd += [a for t in names for a in ("-t", t)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"export of {run} failed:\n{done.stderr[-2000:]}")
        paths.update({r["target"] + suffix: Path(r["path"]) for r in json.loads(done.stdout)
                      if r["path"]})
    return paths


def torchscript_step(module) -> Callable[[np.ndarray], None]:
    """One ``forward`` call per block of a TorchScript module (or the file ``module``)."""
    if isinstance(module, (str, Path)):
        module = torch.jit.load(str(module))
    module.eval()

    def step(block: np.ndarray) -> None:
        with torch.inference_mode():
            module.forward(torch.from_numpy(block))
    return step


def onnx_streaming_step(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """One ``onnx_streaming`` call per block, the way a C++ host runs the graph: states
    bound in place, the block copied into a bound input
    (:class:`rave_deploy.onnx_runtime.BoundStreamingSession`, also what ``rave-deploy
    check`` times). Returns the output block (overwritten by the next call)."""
    from rave_deploy.onnx_runtime import BoundStreamingSession, session
    return BoundStreamingSession(session(path))  # one thread, all optimisations, no denormals


def time_blocks(step: Callable[[np.ndarray], None], block: int, seconds: float,
                sr: int) -> np.ndarray:
    """Per-block times (s) over ``seconds`` of noise at ``sr`` Hz, after a warm-up."""
    rng = np.random.default_rng(0)
    n = max(int(seconds * sr / block), 16)
    x = (rng.standard_normal((1, 1, block * (n + 16))) * 0.1).astype(np.float32)
    for i in range(16):
        step(np.ascontiguousarray(x[..., i * block:(i + 1) * block]))
    times = np.empty(n)
    for i in range(n):
        b = np.ascontiguousarray(x[..., (i + 16) * block:(i + 17) * block])
        t0 = time.perf_counter()
        step(b)
        times[i] = time.perf_counter() - t0
    return times


def eager_ceiling(core, seconds: float, calls: int = 5) -> float:
    """RTF of the offline eager model on the whole signal (no per-call overhead), from
    the median of ``calls`` calls (one call alone is at the mercy of the machine)."""
    # at least 64 frames: a shorter signal than the receptive field is not a measurement
    n = max(int(seconds * core.sr) // core.ratio, 64) * core.ratio
    x = torch.randn(1, core.n_channels, n) * 0.1
    times = []
    with torch.inference_mode():
        core(x[..., :core.ratio * 8])
        for _ in range(calls):
            t0 = time.perf_counter()
            core(x)
            times.append(time.perf_counter() - t0)
    return n / core.sr / float(np.median(times))


def median_read_seconds(flat: torch.Tensor, repeats: int) -> float:
    """Median time (s) to read ``flat`` once (its sum), after three warm-up reads."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            flat.sum()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return float(np.median(times))


def weight_read_ms(core, repeats: int = 50) -> float:
    """Median time (ms) to read every weight of the exported model once, as one flat
    array: a lower bound on any fp32 streaming call at a block of at least the ratio,
    where every layer computes at least one frame and so reads all its weights."""
    flat = torch.cat([p.detach().reshape(-1) for p in core.parameters()])
    return median_read_seconds(flat, repeats) * 1000


def read_bandwidth(megabytes=(8, 16, 24), repeats: int = 20) -> str:
    """One thread's read speed (GB/s, median) of arrays of ``megabytes``: the phase of a
    shared machine. When neighbours hold part of the shared L3, arrays the size of a
    model's weights are read several times slower, and so is every streaming call."""
    speeds = []
    for mb in megabytes:
        seconds = median_read_seconds(torch.ones(mb * 2 ** 20 // 4), repeats)
        speeds.append(f"{mb} MB at {mb * 2 ** 20 / seconds / 1e9:.0f} GB/s")
    return ", ".join(speeds)


#: What each CONFIG=PATH flag takes, as an example.
EXAMPLES = {"--reference-ts": "brave=brave_streaming.ts", "--run": "brave=runs/brave"}


def _pairs(p: argparse.ArgumentParser, flag: str, values: List[str], configs: List[str]):
    """``CONFIG=PATH`` values of ``flag``, each naming a listed config and an existing path."""
    out = {}
    for value in values:
        config, sep, path = value.partition("=")
        if not sep or not path:
            p.error(f"{flag} {value!r}: give CONFIG=PATH, e.g. {flag} {EXAMPLES[flag]}")
        if config not in configs:
            p.error(f"{flag} {value!r}: {config} is not among --configs ({' '.join(configs)})")
        if not Path(path).exists():
            p.error(f"{flag} {value!r}: {path} does not exist")
        out[config] = Path(path)
    return out


def _reference(p: argparse.ArgumentParser, config: str, path: Path):
    """The acids-rave file given as ``--reference-ts config=path``, loaded; anything else
    (a wav, a run, a checkpoint, our own export) refused in one line."""
    from rave_core.file_kinds import is_training_checkpoint
    from rave_deploy.sidecar import find_sidecar
    flag = f"--reference-ts {config}={path}"
    want = ("give acids-rave's own streaming export of the run (rave export --streaming: "
            "a .ts file)")
    sidecar = find_sidecar(path)
    if sidecar is not None:  # our exports, and only they, have one
        p.error(f"{flag}: {sidecar.name} beside it says it is a rave-deploy export, the "
                f"kind measured anyway: {want}")
    try:
        return torch.jit.load(str(path))
    except Exception as err:  # noqa: BLE001 - whatever it is, it is not TorchScript
        what = ("a folder" if path.is_dir() else "a training checkpoint"
                if is_training_checkpoint(path) else f"not TorchScript ({first_line(err)})")
        p.error(f"{flag}: {what}: {want}")


def _ratio_and_rate(p: argparse.ArgumentParser, config: str, run: Optional[Path]):
    """``(ratio, sample rate)`` of ``config``'s model (of its --run if given), read
    before anything is exported."""
    from rave_core import load_run
    from rave_core.config import build_model
    try:
        model = load_run(run) if run else build_model([config], NO_LOSSES,
                                                      build_discriminator=False)
    except Exception as err:  # noqa: BLE001 - a run or config that does not build
        flag = f"--run {config}={run}" if run else f"--configs {config}"
        p.error(f"{flag}: cannot build its model: {first_line(err)}")
    return int(model.ratio), int(model.sr)


def _validate(p: argparse.ArgumentParser, args) -> None:
    """Refuse bad options before any model is exported (argparse's exit code 2). Sets
    ``args.shapes`` (``{config: (ratio, sample rate)}``) and loads the references."""
    from rave_core.config import available_configs
    known = available_configs()
    for config in args.configs:
        if config not in known and not Path(config).is_file():
            p.error(f"--configs {config}: not a config of rave_core nor a gin file (known: "
                    f"{', '.join(known)})")
    targets = ["nn_tilde", "onnx_streaming", "nn_tilde" + ONEDNN_SUFFIX]
    for target in args.targets:
        if target not in targets:
            p.error(f"--targets {target}: benchmarked targets are {', '.join(targets)}")
    blocks = " ".join(map(str, args.blocks))
    if any(b <= 0 for b in args.blocks):
        p.error(f"--blocks {blocks}: block sizes are positive")
    if not args.seconds > 0:
        p.error(f"--seconds {args.seconds}: give the seconds of audio per repetition (> 0)")
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: give at least 1")
    args.reference_ts = _pairs(p, "--reference-ts", args.reference_ts, args.configs)
    args.run = _pairs(p, "--run", args.run, args.configs)
    args.shapes = {}
    for config in args.configs:
        ratio, sr = args.shapes[config] = _ratio_and_rate(p, config, args.run.get(config))
        if not any(b % ratio == 0 for b in args.blocks):  # nothing would be timed
            p.error(f"--blocks {blocks}: none is a multiple of {config}'s ratio {ratio} (no "
                    f"host calls a model between frames): e.g. --blocks {ratio} {4 * ratio}")
    args.reference_ts = {c: _reference(p, c, path) for c, path in args.reference_ts.items()}


def measure_config(tmp: Path, config: str, args, rows: List[Dict[str, object]]) -> None:
    """Export ``config`` (random weights, or its --run), time every target at every block
    it allows; each block's rows are appended to ``rows`` as soon as they are measured."""
    from rave_core import load_run
    from rave_deploy.model import DeployModel
    from rave_deploy.targets._torchscript_calls import error_line  # TorchScript's own line

    ratio, sr = args.shapes[config]
    run = args.run.get(config) or make_full_run(tmp, config)
    paths = export_in_subprocess(run, args.targets, fresh_folder(tmp, config, "_out"))
    # the offline eager model (weight norm folded): ceiling, weight read
    model = load_run(run)
    core = DeployModel(model, deterministic=True, streaming=False)
    ceiling = eager_ceiling(core, args.seconds * 2)
    floors = {"floor: read weights": weight_read_ms(core)}
    if "onnx_streaming" in args.targets:
        folded = DeployModel(model, deterministic=True, streaming=False, fold_latent=True)
        floors["floor: folded (ONNX)"] = weight_read_ms(folded)
        del folded
    steps = {"nn_tilde": torchscript_step, "onnx_streaming": onnx_streaming_step}
    candidates = {t: steps[t.replace(ONEDNN_SUFFIX, "")](paths[t])
                  for t in args.targets if t in paths}
    if config in args.reference_ts:
        candidates["acids-rave .ts"] = torchscript_step(args.reference_ts[config])
    skipped = [b for b in args.blocks if b % ratio]
    if skipped:  # no host calls a model below its ratio or between frames
        print(f"{config}: block(s) {', '.join(map(str, skipped))} skipped: not a "
              f"multiple of its ratio {ratio}", file=sys.stderr)
    for block in [b for b in args.blocks if b not in skipped]:
        per: Dict[str, List[np.ndarray]] = {k: [] for k in candidates}
        for _ in range(args.repeats):  # alternate targets within each repetition
            for name, step in candidates.items():
                try:
                    per[name].append(time_blocks(step, block, args.seconds, sr))
                except Exception as err:  # a block size a target cannot take
                    per[name].append(np.array([np.nan]))
                    print(f"{config} {name} @{block}: {error_line(err)}", file=sys.stderr)
        budget = block / sr * 1000
        new: List[Dict[str, object]] = []
        for name, reps in per.items():
            # RTF and mean from the median repetition; p99 from every call of every one
            med = sorted(reps, key=lambda t: float(np.mean(t)))[len(reps) // 2]
            calls = np.concatenate(reps)
            failed = not np.isfinite(calls).all()
            mean_ms = float("nan") if failed else float(np.mean(med)) * 1000
            p99_ms = (float(np.percentile(calls, 99)) * 1000
                      if not failed and len(calls) >= MIN_P99_CALLS else float("nan"))
            new.append({"config": config, "target": name, "block": block,
                        "rtf": budget / mean_ms, "mean_ms": mean_ms, "p99_ms": p99_ms,
                        "calls": 0 if failed else len(calls), "budget_ms": budget,
                        "vs_eager": budget / mean_ms / ceiling})
        base = next((r["rtf"] for r in new if r["target"] == "acids-rave .ts"), None)
        for name, read_ms in floors.items():
            new.append({"config": config, "target": name, "block": block,
                        "rtf": budget / read_ms, "mean_ms": read_ms, "p99_ms": float("nan"),
                        "calls": 0, "budget_ms": budget,
                        "vs_eager": budget / read_ms / ceiling})
        if base is not None and math.isfinite(base):  # a failed reference is NaN: no ratio
            for row in new:
                row["vs_acids"] = row["rtf"] / base
        rows.extend(new)


def cell(value, fmt: str, width: int = 0, unit: str = "") -> str:
    """``value`` formatted, or ``-`` where there is none (absent, NaN)."""
    text = "-" if value is None or not math.isfinite(value) else format(value, fmt) + unit
    return f"{text:>{width}s}"


def main(argv=None) -> int:
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--configs", nargs="+", default=["brave", "v2_small", "v2"],
                   help="rave_core config names or gin files")
    p.add_argument("--blocks", nargs="+", type=int, default=[128, 512, 2048],
                   help="host block sizes (samples); each config keeps the multiples of "
                        "its ratio")
    p.add_argument("--targets", nargs="+", default=["nn_tilde", "onnx_streaming"],
                   help="nn_tilde, onnx_streaming, and nn_tilde+onednn (nn_tilde exported "
                        "with --cpu-kernels onednn)")
    p.add_argument("--seconds", type=float, default=3.0, help="audio per repetition")
    p.add_argument("--repeats", type=int, default=5,
                   help="repetitions per block, targets alternating; the median is kept")
    p.add_argument("--reference-ts", action="append", default=[],
                   help="CONFIG=PATH of an acids-rave TorchScript export (rave export "
                        "--streaming) to compare with")
    p.add_argument("--run", action="append", default=[],
                   help="CONFIG=PATH of a run (ours or acids-rave's) to export instead of "
                        "random weights")
    p.add_argument("--markdown", action="store_true",
                   help="also print the table in Markdown, as the README keeps it")
    args = p.parse_args(argv)
    _validate(p, args)
    torch.set_num_threads(1)

    rows: List[Dict[str, object]] = []
    interrupted = False
    phase_before = read_bandwidth()
    try:
        with tempfile.TemporaryDirectory() as tmp:  # removed on Ctrl-C too
            for config in args.configs:
                measure_config(Path(tmp), config, args, rows)
    except KeyboardInterrupt:
        interrupted = True

    print(f"machine phase, one thread reading: {phase_before} (before); "
          f"{read_bandwidth()} (after)")
    if interrupted:
        print("interrupted: partial table (the rows measured before Ctrl-C)")
    head = (f"{'config':9s} {'target':20s} {'block':>5s} {'RTF':>8s} {'mean ms':>8s} "
            f"{'p99 ms':>8s} {'calls':>6s} {'budget':>7s} {'/eager':>7s} {'/acids':>7s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['config']:9s} {r['target']:20s} {r['block']:5d} {cell(r['rtf'], '.2f', 8)} "
              f"{cell(r['mean_ms'], '.2f', 8)} {cell(r['p99_ms'], '.2f', 8)} "
              f"{r['calls'] or '-':>6} {r['budget_ms']:7.2f} {cell(r['vs_eager'], '.2f', 7)} "
              f"{cell(r.get('vs_acids'), '.2f', 7, 'x')}")
    if args.markdown:
        print()
        print(markdown_table(rows))
    return 130 if interrupted else 0


def markdown_table(rows: List[Dict[str, object]]) -> str:
    """The timed rows as the README's Markdown table (no floors, no /eager; ``-`` where a
    cell has no value)."""
    lines = ["| config | target | block | RTF | mean ms | p99 ms | budget ms | /acids |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["target"].startswith("floor"):
            continue
        lines.append(f"| {r['config']} | {r['target']} | {r['block']} | {cell(r['rtf'], '.2f')} | "
                     f"{cell(r['mean_ms'], '.2f')} | {cell(r['p99_ms'], '.2f')} | "
                     f"{r['budget_ms']:.2f} | {cell(r.get('vs_acids'), '.2f', 0, 'x')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before the measurements (their Ctrl-C prints the table)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
