"""Training speed per config: steps/s and peak memory of RAVE's training step, eager.

Each config is measured in its own process (peak RSS is per process), at full capacity,
on a batch of synthetic audio (notes and noise hits from examples/synth_dataset.py), with
the real step (:class:`rave_core.training.step.RAVETrainer`): phase 1 (spectral
distances + KL) and phase 2 (adversarial, alternating generator and discriminator steps).
Phase 2 times whole discriminator cycles: --steps is rounded up to a multiple of the
model's ``update_discriminator_every`` and the timed steps start at a discriminator step
(after at least --warmup untimed ones), so each cycle's one discriminator step is in;
the table gives the mix (generator:discriminator steps timed).
Peak memory is the process's peak RSS (``resource.getrusage``) on CPU, and
``torch.cuda.max_memory_allocated`` on CUDA. Prints one line per config, then a table::

    python benchmarks/train_speed.py                      # v2_small, brave, v2 on CPU
    python benchmarks/train_speed.py --device cuda --batch 8 --steps 20

Exit status: 0, 1 a config failed (one line each), 2 bad options (checked before any
config is measured), 130 Ctrl-C (the rows measured so far are printed, marked as a
partial table).
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.arguments import HelpFormatter, Parser  # noqa: E402
DEFAULT_CONFIGS = ("v2_small", "brave", "v2")


def timed_window(first: int, warmup: int, steps: int, period: int) -> Tuple[int, int]:
    """``(start, count)`` of the timed steps of a phase that begins at step ``first``:
    after at least ``warmup`` untimed steps, from the next step ``start % period == 0``
    (the trainer's discriminator steps), ``steps`` rounded up to whole ``period`` cycles."""
    start = first + warmup
    start += -start % period
    return start, steps + -steps % period


def measure(config: str, batch: int, n_signal: int, steps: int, warmup: int, device: str,
            threads: int) -> dict:
    """Time ``steps`` training steps of each phase after ``warmup`` untimed ones (phase 2:
    whole discriminator cycles, :func:`timed_window`)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    from synth_dataset import normalise, render_track

    from rave_core.training.analysis import receptive_field
    from rave_core.training.trainer import RAVETrainer, _build

    torch.set_num_threads(threads)
    dev = torch.device(device)
    model, beta, _ = _build([config], [], None, channels=1, seed=0)
    model.to(dev).train()
    model.receptive_field.copy_(torch.tensor(receptive_field(model)))
    trainer = RAVETrainer(model, beta, dev)
    rng = np.random.default_rng(0)
    x = torch.tensor(np.stack([normalise(render_track(n_signal, model.sr, rng)) for _ in range(batch)]),
                     dtype=torch.float32)[:, None].to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    out = {"config": config, "batch": batch, "n_signal": n_signal, "device": device,
           "threads": threads}
    phases = [("phase1", 0, 1)]
    if model.discriminator is not None:  # steps k * period are the discriminator's
        phases.append(("phase2", int(model.phase_1_duration),
                       int(model.update_discriminator_every)))
    for label, first, period in phases:
        start, count = timed_window(first, warmup, steps, period)
        for step in range(first, start):
            trainer.step(x, step)
        sync()
        t0 = time.perf_counter()
        for step in range(start, start + count):
            trainer.step(x, step)
        sync()
        out[f"{label}_steps_per_s"] = count / (time.perf_counter() - t0)
        if label == "phase2":
            out["phase2_mix"] = f"{count - count // period}:{count // period}"
    if dev.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return out


def _validate(p: argparse.ArgumentParser, args) -> None:
    """Refuse bad options before any child runs (exit 2): a child would fail each config."""
    for flag, value in (("--batch", args.batch), ("--n_signal", args.n_signal),
                        ("--steps", args.steps), ("--threads", args.threads)):
        if value < 1:
            p.error(f"{flag} {value}: give at least 1")
    if args.warmup < 0:
        p.error(f"--warmup {args.warmup}: give 0 or more")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        p.error(f"--device {args.device}: give cpu, cuda or cuda:N")
    import torch  # after parsing: --help answers at once
    if args.device.startswith("cuda"):
        index = int(args.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            p.error(f"--device {args.device}: this machine's torch sees "
                    f"{torch.cuda.device_count()} CUDA device(s): use --device cpu")
    from rave_core.config import available_configs
    known = available_configs()
    for config in args.configs:
        if config not in known and not Path(config).is_file():
            p.error(f"--configs {config}: not a config of rave_core nor a gin file (known: "
                    f"{', '.join(known)})")


def print_table(args, rows, interrupted: bool) -> None:
    print(f"\ntraining step, eager, {args.device} ({args.threads} threads), batch {args.batch} x "
          f"{args.n_signal} samples")
    if interrupted:
        print("interrupted: partial table (the configs measured before Ctrl-C)")
    print(f"{'config':<10} {'params (M)':>10} {'phase 1 steps/s':>16} {'phase 2 steps/s':>16} "
          f"{'p2 gen:dis':>10} {'peak MB':>9}")
    for r in rows:
        p2 = r.get("phase2_steps_per_s")
        p2 = f"{p2:16.3f}" if p2 is not None else f"{'-':>16}"
        print(f"{r['config']:<10} {r['params_m']:10.1f} {r['phase1_steps_per_s']:16.3f} {p2} "
              f"{r.get('phase2_mix', '-'):>10} {r['peak_mb']:9.0f}")


def main(argv=None) -> int:
    parser = Parser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                        help="rave_core config names or gin files")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--n_signal", type=int, default=131072,
                        help="samples per window (v2 needs >= ~70000 after its receptive-field crop)")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed steps per phase (phase 2: rounded up to whole "
                             "discriminator cycles)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per phase, at least")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config
    args = parser.parse_args(argv)
    if args.one:
        try:
            print(json.dumps(measure(args.one, args.batch, args.n_signal, args.steps,
                                     args.warmup, args.device, args.threads)))
        except KeyboardInterrupt:
            return 130
        except Exception as err:  # noqa: BLE001 - the parent prints this line only
            print(f"{type(err).__name__}: {str(err).strip()}".splitlines()[0], file=sys.stderr)
            return 1
        return 0
    _validate(parser, args)

    rows, failed, interrupted = [], [], False
    try:
        for config in args.configs:
            cmd = [sys.executable, __file__, "--one", config, "--batch", str(args.batch),
                   "--n_signal", str(args.n_signal), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--device", args.device,
                   "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                lines = [line for line in done.stderr.splitlines() if line.strip()]
                reason = lines[-1].strip() if lines else f"exit code {done.returncode}"
                print(f"{config}: failed: {reason}", file=sys.stderr)
                failed.append(config)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    except KeyboardInterrupt:
        interrupted = True
    print_table(args, rows, interrupted)
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # while importing: nothing measured yet
        print("interrupted", file=sys.stderr)
        sys.exit(130)
