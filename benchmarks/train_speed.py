"""Training speed per config: steps/s and peak memory of RAVE's training step, eager.

Each config is measured in its own process (peak RSS is per process), at full capacity,
on a batch of synthetic audio (notes and noise hits from examples/synth_dataset.py), with
the real step (:class:`rave_core.training.step.RAVETrainer`): phase 1 (spectral
distances + KL) and phase 2 (adversarial, alternating generator and discriminator steps).
Peak memory is the process's peak RSS (``resource.getrusage``) on CPU, and
``torch.cuda.max_memory_allocated`` on CUDA. Prints one line per config, then a table::

    python benchmarks/train_speed.py                      # v2_small, brave, v2 on CPU
    python benchmarks/train_speed.py --device cuda --batch 8 --steps 20
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("v2_small", "brave", "v2")


def measure(config: str, batch: int, n_signal: int, steps: int, warmup: int, device: str,
            threads: int) -> dict:
    """Time ``steps`` training steps of each phase after ``warmup`` untimed ones."""
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
    phases = [("phase1", 0)]
    if model.discriminator is not None:
        phases.append(("phase2", int(model.phase_1_duration)))
    for label, first in phases:
        for i in range(warmup):
            trainer.step(x, first + i)
        sync()
        t0 = time.perf_counter()
        for i in range(steps):
            trainer.step(x, first + warmup + i)
        sync()
        out[f"{label}_steps_per_s"] = steps / (time.perf_counter() - t0)
    if dev.type == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--n_signal", type=int, default=131072,
                        help="samples per window (v2 needs >= ~70000 after its receptive-field crop)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per phase")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.n_signal, args.steps, args.warmup,
                                 args.device, args.threads)))
        return

    rows = []
    for config in args.configs:
        cmd = [sys.executable, __file__, "--one", config, "--batch", str(args.batch),
               "--n_signal", str(args.n_signal), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device,
               "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            print(f"{config}: failed\n{done.stderr.strip()[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\ntraining step, eager, {args.device} ({args.threads} threads), batch {args.batch} x "
          f"{args.n_signal} samples")
    print(f"{'config':<10} {'params (M)':>10} {'phase 1 steps/s':>16} {'phase 2 steps/s':>16} "
          f"{'peak MB':>9}")
    for r in rows:
        p2 = r.get("phase2_steps_per_s")
        p2 = f"{p2:16.3f}" if p2 is not None else f"{'-':>16}"
        print(f"{r['config']:<10} {r['params_m']:10.1f} {r['phase1_steps_per_s']:16.3f} {p2} "
              f"{r['peak_mb']:9.0f}")


if __name__ == "__main__":
    main()
