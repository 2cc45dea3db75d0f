"""The whole pipeline on embedded data: synthesise, preprocess, train, export, check.

    python examples/quickstart.py [--out out/quickstart] [--steps N] [--seconds S]

1. synthesises a small training set (pitched notes, chords, noise hits; no download),
2. preprocesses it (``rave-core preprocess``),
3. trains a BRAVE-sized model on CPU for a few minutes (``rave-core train --config brave``),
4. exports it to every target it can serve (``rave-deploy export --target all``),
5. checks every export (``rave-deploy check``) and prints a table, with an HTML report.

A few minutes of CPU training gives a model that sounds like a rough sketch of the data;
what this proves is the path: every file written here loads in its host and matches the
eager model. ``RAVE_QUICKSTART_STEPS`` (or ``--steps``) sets the number of training steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_STEPS = 500  # 1.3-2 steps/s for BRAVE on 2 CPU cores


def _say(step: str, text: str) -> None:
    print(f"\n==> [{step}] {text}", flush=True)


def training_time(steps: int) -> str:
    """How long ``steps`` BRAVE steps take on 2 CPU cores, in words."""
    minutes = round(steps / 1.5 / 60)
    return "under a minute" if minutes < 1 else f"about {minutes} minute{'s' * (minutes != 1)}"


def trained_summary(result) -> str:
    """One line on a training that ran steps: its steps, speed and best distance."""
    best = ("no validation" if result.best_validation is None
            else f"best validation distance {result.best_validation:.4g}")
    return f"  {result.global_step} steps, {result.steps_per_second:.2f} steps/s, {best}"


def quickstart_warnings():
    """Warnings of the library as `rave-core` prints them (one ``Warning: ...`` line, not
    Python's source line), naming this script's flags."""
    from rave_core.cli import warnings_as_messages
    return warnings_as_messages(flags={"--max_steps": "--steps"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"),
                        help="working folder (default: out/quickstart)")
    parser.add_argument("--steps", type=int,
                        default=int(os.environ.get("RAVE_QUICKSTART_STEPS", DEFAULT_STEPS)),
                        help=f"training steps (default {DEFAULT_STEPS}, or $RAVE_QUICKSTART_STEPS)")
    parser.add_argument("--seconds", type=float, default=180,
                        help="seconds of synthesised training audio (default 180)")
    parser.add_argument("--config", default="brave", help="model config (default brave)")
    parser.add_argument("--override", action="append", default=[],
                        help="gin override, e.g. 'CAPACITY = 8' (repeatable; tests shrink the model)")
    args = parser.parse_args(argv)
    with quickstart_warnings():
        return _pipeline(args)


def _pipeline(args) -> int:
    from synth_dataset import synthesize

    from rave_core.data import preprocess
    from rave_core.training.trainer import train
    from rave_deploy.check import check_artifact
    from rave_deploy.check.report import format_table, write_html_report
    from rave_deploy.export import export_run, resolve_targets
    from rave_deploy.targets import CheckOptions, ExportOptions

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    _say("1/5", f"synthesising {args.seconds:.0f} s of training audio")
    audio_dir = out / "audio"
    synthesize(audio_dir, seconds=args.seconds)

    _say("2/5", "preprocessing")
    report = preprocess([str(audio_dir)], str(out / "dataset"))
    print(report)

    _say("3/5", f"training {args.config} for {args.steps} steps on CPU "
                f"({training_time(args.steps)} on 2 cores)")
    result = train([args.config], db_path=str(out / "dataset"), name=args.config,
                    out_path=str(out / "runs"), max_steps=args.steps, batch=4, n_signal=32768,
                    val_every=max(args.steps // 3, 1), save_every=max(args.steps // 3, 1),
                    device="cpu", workers=0, overrides=args.override)
    run_dir = result.run_dir
    if result.steps_done:
        print(trained_summary(result))
    else:  # resumed a run that had already reached the step count
        print(f"  already trained: {run_dir} is at step {result.global_step} (resumed, "
              f"nothing left to train; delete {out} to start over)")

    _say("4/5", "exporting to every target the model can serve")
    # Defaults for every target (streaming graphs take any block; TorchScript weights are
    # laid out for 2048-sample blocks), then anira's fixed-block graphs at 512 samples:
    # real time on a 2-core laptop. Block 128 (BRAVE's lowest latency) needs a faster CPU:
    #   rave-deploy export RUN --target anira --block-size 128
    # (explicit=False: a target the model cannot serve is skipped with its reason, as
    # under `all`)
    others = [t.name for t in resolve_targets(["all"]) if t.name != "anira"]
    results = export_run(run_dir, others, out / "exports", ExportOptions(), explicit=False)
    results += export_run(run_dir, ["anira"], out / "exports", ExportOptions(block_size=512),
                          explicit=False)
    for r in results:
        if r.skipped:
            print(f"  skip  {r.target:15s} {r.skipped}")
        else:
            print(f"  ok    {r.target:15s} {r.path} ({r.size_bytes / 1e6:.1f} MB)")

    _say("5/5", "checking every export against the eager model")
    reports = []
    for r in results:
        if r.path is None:
            continue
        rep = check_artifact(r.path, options=CheckOptions())
        reports.append(rep)
        failed = [c.name for c in rep.failures()]
        print(f"  {'PASS' if rep.passed else 'FAIL'}  {r.target}" +
              (f"  ({', '.join(failed)})" if failed else ""), flush=True)
    html = out / "report.html"
    write_html_report(reports, html)

    print("\n" + format_table(reports))
    print(f"\nHTML report: {html.resolve()}")
    print(f"Done in {(time.time() - t0) / 60:.1f} minutes.")
    return 0 if reports and all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
