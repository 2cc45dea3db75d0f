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

``--config`` takes any shipped config (or .gin file; repeat to compose, e.g. ``--config v2
--config causal``): training windows are 32768 samples, or the shortest the config's
spectral distances take (71680 for v2 and v3), and ``--seconds`` must give five of them
(one batch of 4, one for validation). The audio folder holds exactly this run's
synthesised files; only best.ckpt and last.ckpt are kept (no periodic epoch_*.ckpt).
Every argument is checked before any work; errors are one ``Error: ...`` line (exit 2 for
bad input, 1 for a failure, 130 for Ctrl-C; ``--debug`` shows tracebacks).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_STEPS = 500  # 1.3-2 steps/s for BRAVE on 2 CPU cores
STEPS_ENV = "RAVE_QUICKSTART_STEPS"
BATCH = 4
#: Samples per training window: BRAVE's 0.74 s at 44.1 kHz. A config whose spectral
#: distances need longer windows (v2, v3: 71680) trains on the shortest it takes.
N_SIGNAL = 32768
#: Windows the dataset must hold: one batch to train on, one held out for validation
#: (best.ckpt, and the latent statistics the export uses).
WINDOWS_NEEDED = BATCH + 1
#: rave-core's flags named in its messages -> this script's (the run and its dataset are
#: in --out).
FLAGS = {"--max_steps": "--steps", "--name": "--out", "--out_path": "--out", "--db_path": "--out"}
_FLAG = re.compile("|".join(rf"(?<![\w-]){re.escape(f)}(?![\w-])" for f in FLAGS))


class UsageError(ValueError):
    """Bad input to the quickstart itself (exit 2)."""


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
    return warnings_as_messages(flags=FLAGS)


def with_our_flags(text: str) -> str:
    """A message of rave-core naming its flags, naming this script's instead."""
    return _FLAG.sub(lambda m: FLAGS[m.group(0)], text)


# ============================================================================ arguments
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A usage error is one line, as rave-core's (argparse prints the usage too)."""
        self.exit(2, f"Error: {message} (see --help)\n")


def _steps(text: str) -> int:
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return steps


def _seconds(text: str) -> float:
    from synth_dataset import MAX_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds > 0 and at most {MAX_SECONDS:.0f}, got {text!r}")
    return seconds


def parse_arguments(argv=None) -> argparse.Namespace:
    """The arguments, checked before any work (no torch import): exit 2 with one
    ``Error: ...`` line for bad input."""
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"),
                        help="working folder (default: out/quickstart)")
    parser.add_argument("--steps", type=_steps, default=None,
                        help=f"training steps (default {DEFAULT_STEPS}, or ${STEPS_ENV})")
    parser.add_argument("--seconds", type=_seconds, default=180,
                        help="seconds of synthesised training audio (default 180); it must "
                             "give 5 training windows: 4 s for brave, 9 s for v2 or v3")
    parser.add_argument("--config", action="append", default=None, metavar="NAME",
                        help="model config (default brave): a shipped config (`rave-core "
                             "configs`) or a .gin file; repeat to compose")
    parser.add_argument("--override", action="append", default=[],
                        help="gin override, e.g. 'CAPACITY = 8' (repeatable; tests shrink the model)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    args = parser.parse_args(argv)
    args.config = args.config or ["brave"]
    if args.steps is None:
        args.steps = _steps_from_environment(parser)
    from rave_core.config_names import config_problem  # as `rave-core train` says it
    for name in args.config:
        problem = config_problem(name)
        if problem is not None:
            parser.error(problem)
    return args


def _steps_from_environment(parser: argparse.ArgumentParser) -> int:
    raw = os.environ.get(STEPS_ENV, "").strip()
    if not raw:
        return DEFAULT_STEPS
    try:
        return _steps(raw)
    except argparse.ArgumentTypeError:
        parser.error(f"{STEPS_ENV}={raw!r}: must be a whole number of steps >= 1; set it to "
                     "one, unset it, or give --steps")


def run_name(configs) -> str:
    """The run's folder name under ``OUT/runs``: the configs' names (``brave``)."""
    return "_".join(Path(c).stem for c in configs)


# ============================================================================ windows
class Windows(NamedTuple):
    """The training windows of a config: ``n_signal`` samples at ``sr`` Hz, and the
    seconds of audio that give :data:`WINDOWS_NEEDED` of them."""

    n_signal: int
    sr: int

    @property
    def min_seconds(self) -> int:
        return math.ceil(WINDOWS_NEEDED * self.n_signal / self.sr)


def plan_windows(configs, overrides) -> Windows:
    """Build the model of ``configs`` and ``overrides`` (not its discriminator: a second
    or two) and choose its window: :data:`N_SIGNAL`, or the shortest from there on that
    its spectral distances take, as `rave-core train` suggests for a too-short
    --n_signal.

    Raises ConfigError for a config or override that does not build (before any work).
    """
    from rave_core.config import build_model, parse_config
    from rave_core.training.trainer import (measure_receptive_field, shortest_signal,
                                            check_overrides)
    check_overrides(parse_config(configs), overrides)  # names the nearest valid keys
    # mono, as the dataset is (train binds the channel count from the dataset too)
    model = build_model(configs, [*overrides, "rave.model.RAVE.n_channels = 1"],
                        build_discriminator=False)
    if model.valid_signal_crop:   # the length the distances see depends on it
        measure_receptive_field(model)
    return Windows(shortest_signal(model, N_SIGNAL), int(model.sr))


# ============================================================================ main
def main(argv=None) -> int:
    args = parse_arguments(argv)
    from rave_core.cli import check_output_location
    from rave_core.launch import INTERRUPTED, interrupts_end_at_once
    check_output_location("--out", args.out)   # a file in the way: exit 1, as rave-core
    with interrupts_end_at_once(INTERRUPTED):   # importing torch takes seconds
        errors = _error_classes()
    return _guarded(args, errors)


def _error_classes():
    """``(usage errors, operation errors)`` of every call the pipeline makes, as
    `rave-core` and `rave-deploy` sort them (exit 2, exit 1)."""
    from rave_core.cli import error_classes as training_errors
    from rave_deploy.cli import error_classes as export_errors
    (core_usage, core_failed), (deploy_usage, deploy_failed) = training_errors(), export_errors()
    return (UsageError, *core_usage, *deploy_usage), (*core_failed, *deploy_failed)


def _guarded(args, errors) -> int:
    """Run the pipeline; its errors become one ``Error: ...`` line naming this script's
    flags, Ctrl-C one line (exit 130; 143 for SIGTERM), as the project's CLIs do."""
    from rave_core.cli import Terminated, sigterm_as_interrupt
    from rave_core.training.errors import TrainingInterrupted
    usage, operation = errors
    try:
        with sigterm_as_interrupt(), quickstart_warnings():
            return _pipeline(args)
    except TrainingInterrupted as err:
        return _stop(args, err, with_our_flags(err.message), 128 + err.signal, prefix="")
    except KeyboardInterrupt as err:
        return _stop(args, err, "Interrupted: run the same command again to go on (training "
                                "resumes from its last checkpoint).",
                     143 if isinstance(err, Terminated) else 130, prefix="")
    except usage as err:
        return _stop(args, err, str(err), 2)
    except operation as err:
        from rave_core.os_errors import describe_os_error
        text = (describe_os_error(err) if isinstance(err, OSError)
                and type(err).__module__ == "builtins" else str(err))
        return _stop(args, err, text, 1)
    except MemoryError as err:
        return _stop(args, err, "out of memory: lower --seconds, or the model size "
                                "(--override 'CAPACITY = 8')", 1)
    except Exception as err:  # noqa: BLE001 - the last line of defence: no raw traceback
        first = (str(err).strip().splitlines() or [""])[0]
        return _stop(args, err, f"unexpected {type(err).__name__}: {first} (run with --debug "
                                "for the traceback, and report it)", 1)


def _stop(args, err: BaseException, text: str, code: int, prefix: str = "Error: ") -> int:
    from rave_core.cli import short_message
    from rave_core.text import printable
    if args.debug:
        traceback.print_exception(err)
    message = with_our_flags(short_message(text) or type(err).__name__)
    print(f"{prefix}{printable(message)}", file=sys.stderr, flush=True)
    return code


def _pipeline(args) -> int:
    from synth_dataset import write_dataset

    from rave_core.data import preprocess
    from rave_core.training.trainer import train
    from rave_deploy.check import check_artifact
    from rave_deploy.check.report import format_table, write_html_report
    from rave_deploy.export import export_run, resolve_targets
    from rave_deploy.targets import CheckOptions, ExportOptions, name_width

    # ---- everything checked before any work: the config builds, the audio is enough
    windows = plan_windows(args.config, args.override)
    if args.seconds < windows.min_seconds:
        raise UsageError(
            f"--seconds {args.seconds:g} is too short for --config {' '.join(args.config)}: it "
            f"trains on windows of {windows.n_signal} samples ({windows.n_signal / windows.sr:.2f} "
            f"s) and needs {WINDOWS_NEEDED} ({BATCH} for a batch, 1 for validation); give "
            f"--seconds {windows.min_seconds} or more")

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    _say("1/5", f"synthesising {args.seconds:g} s of training audio")
    audio_dir = out / "audio"
    written = write_dataset(audio_dir, seconds=args.seconds, sr=windows.sr)
    if written.removed:
        print(f"  removed {len(written.removed)} file{'s' * (len(written.removed) != 1)} of an "
              f"earlier run from {audio_dir}: {', '.join(p.name for p in written.removed)}")

    _say("2/5", "preprocessing")
    # exactly the files just written (anything else in the folder is not this run's)
    report = preprocess([str(p) for p in written.paths], str(out / "dataset"),
                        sampling_rate=windows.sr)
    print(report)

    name = run_name(args.config)
    _say("3/5", f"training {name} for {args.steps} steps on CPU "
                f"({training_time(args.steps)} on 2 cores)")
    if windows.n_signal != N_SIGNAL:
        print(f"  windows of {windows.n_signal} samples: the shortest this config's spectral "
              "distances take")
    # No periodic epoch_<step>.ckpt (save_every beyond the last step): the export reads
    # best.ckpt (else last.ckpt), and each checkpoint of BRAVE is ~58 MB.
    result = train(args.config, db_path=str(out / "dataset"), name=name,
                   out_path=str(out / "runs"), max_steps=args.steps, batch=BATCH,
                   n_signal=windows.n_signal, val_every=max(args.steps // 3, 1),
                   save_every=args.steps + 1, device="cpu", workers=0,
                   overrides=args.override)
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
    width = name_width()   # the longest target's name (at least 15)
    for r in results:
        if r.skipped:
            print(f"  skip  {r.target:{width}s} {r.skipped}")
        else:
            print(f"  ok    {r.target:{width}s} {r.path} ({r.size_bytes / 1e6:.1f} MB)")

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
