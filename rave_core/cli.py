"""``rave-core``: prepare datasets and train RAVE-family models.

::

    rave-core preprocess --input_path audio/ --output_path data/db
    rave-core train --config v2_small --db_path data/db --name my_run
    rave-core configs

Exit codes: 0 success, 1 a failed operation, 2 bad usage, 130 interrupted (Ctrl-C), 143
stopped by SIGTERM (cleaned up, or for train saved, as for Ctrl-C).
Errors print one or two lines naming the problem and the fix; ``--debug`` shows tracebacks.
Output folders are created as needed. docs/bad-input.md lists every case and its message.

This module imports no heavy library (torch, NumPy: seconds): ``--help``, ``--version``,
``configs`` and a usage error answer at once; each command imports what it needs when it
runs, Ctrl-C or SIGTERM meanwhile ending the process in one line
(:func:`rave_core.launch.interrupts_end_at_once`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import click

from rave_core.launch import INTERRUPTED, interrupts_end_at_once

from .config_names import (available_configs, config_description, config_problem,
                           modifier_problem)
from .dataset_limits import (DEFAULT_N_SIGNAL, MAX_CHANNELS, MAX_SAMPLING_RATE, MIN_CHANNELS,
                             MIN_SAMPLING_RATE, not_a_dataset)
from .os_errors import describe_os_error
from .text import printable


def _error_classes():
    """The error classes of unusable input (exit 2) and of a failed operation (exit 1):
    ``(usage errors, operation errors)``, imported when a command needs them (their
    modules import torch)."""
    with importing():
        from .config import ConfigError
        from .data import DataError, DataInputError
        from .run import RunError
    return (ConfigError, RunError, DataInputError), (DataError, OSError)


def error_classes():
    """:func:`_error_classes` with training's own: the errors every rave-core command
    treats as unusable input (exit 2) and as a failed operation (exit 1)."""
    with importing():
        from .training.trainer import TrainingArgumentError, TrainingError
    usage, operation = _error_classes()
    return (*usage, TrainingArgumentError), (*operation, TrainingError)


def importing():
    """Around a command's imports of heavy libraries (torch: seconds): Ctrl-C or SIGTERM
    meanwhile ends the process at once, in one line, exit 130 or 143 (nothing was done
    yet: :func:`rave_core.launch.interrupts_end_at_once`)."""
    return interrupts_end_at_once(f"{_rank_prefix()}{INTERRUPTED}")


DEFAULTS = dict(out_path="runs", max_steps=6_000_000, batch=8, n_signal=DEFAULT_N_SIGNAL,
                val_every=10_000, save_every=500_000, log_every=50, device="auto",
                workers=min(8, os.cpu_count() or 1), seed=0)


class _Settings:
    debug = False


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, Docker, Slurm), handled as Ctrl-C is: temporaries
    removed, earlier outputs kept; exit code 143."""


def _on_sigterm(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While inside, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt), so the
    clean-up that Ctrl-C runs runs for it too: `rave-core preprocess`, and every
    `rave-deploy` command. Only in the main thread (elsewhere Python cannot set
    handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def warnings_as_messages(flags: Optional[Dict[str, str]] = None):
    """While inside, a warning raised by our own code prints as one ``Warning: ...`` line
    (per rank), not as Python's ``file:line: UserWarning: ...`` with a source line;
    warnings from libraries keep Python's format, which says where they come from.

    ``flags``: for a program calling ours with other flags, ``{our flag: its flag}``
    (``{"--max_steps": "--steps"}``): our warnings then name its flags."""
    previous = warnings.showwarning
    root = Path(__file__).resolve().parents[1]
    ours = tuple(str(root / package) for package in ("rave_core", "rave_deploy"))
    renamed = re.compile("|".join(rf"(?<![\w-]){re.escape(f)}(?![\w-])" for f in flags)) \
        if flags else None

    def show(message, category, filename, lineno, file=None, line=None):
        if not str(Path(filename).resolve()).startswith(ours):
            return previous(message, category, filename, lineno, file, line)
        text = str(message)
        if renamed is not None:
            text = renamed.sub(lambda m: flags[m.group(0)], text)
        click.echo(f"{_rank_prefix()}Warning: {printable(text)}", err=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _rank_prefix() -> str:
    """``[rank k] `` in a process of a run of several (torchrun's ``WORLD_SIZE`` and
    ``RANK``), else nothing (also where they are not set as torchrun sets them: that
    process's error says so)."""
    world, rank = os.environ.get("WORLD_SIZE", ""), os.environ.get("RANK", "")
    if world.isdigit() and rank.isdigit() and 1 < int(world) and int(rank) < int(world):
        return f"[rank {int(rank)}] "
    return ""


_GIN_CONTEXT = re.compile(r"^\s*In call to configurable '([^']+)'.*?(?:in scope '([^']+)')?\s*$")


def short_message(text: str) -> str:
    """At most two lines: gin's "In call to configurable ..." context lines (one per
    nesting level) become a short suffix naming the innermost configurable."""
    lines = [line.rstrip() for line in str(text).strip().splitlines() if line.strip()]
    body = [line for line in lines if not _GIN_CONTEXT.match(line)]
    context = [_GIN_CONTEXT.match(line) for line in lines if _GIN_CONTEXT.match(line)]
    if not body:
        return ""
    if context:
        name, scope = context[0].groups()
        body[0] += f" (in {name}" + (f", scope {scope})" if scope else ")")
    return "\n".join(body[:2])


class ShortErrorsGroup(click.Group):
    """A click group whose usage errors are two lines (the problem, then where the help
    is), exit code 2, like every other error of these commands.

    ``json_error``: for a CLI whose commands take ``--json`` (stdout then holds one JSON
    object, errors included), the function printing that object for an error, given the
    name of the command the error is in (None: the group's own) and the message. A usage
    error of a command line holding ``--json`` (a bad option value, an unknown option, a
    missing argument: found before the command runs) then prints it too."""

    def __init__(self, *args, json_error: Optional[Callable[[Optional[str], str], None]] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.json_error = json_error

    def make_context(self, info_name, args, parent=None, **extra):
        args = list(args)   # as given: click's parser takes them from the list it is given
        try:
            ctx = super().make_context(info_name, list(args), parent=parent, **extra)
        except click.UsageError as err:
            raise self._short(err, args) from None
        ctx.meta[_COMMAND_LINE] = args   # for an error in a command, found in invoke
        return ctx

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            raise self._short(err, ctx.meta.get(_COMMAND_LINE, ())) from None

    def _short(self, err: click.UsageError, args) -> "_ShortUsageError":
        if self.json_error is None or not _asks_for_json(args):
            return _ShortUsageError(err)
        in_command = err.ctx is not None and err.ctx.command is not self
        return _ShortUsageError(err, functools.partial(
            self.json_error, err.ctx.command.name if in_command else None))


#: ``ctx.meta`` key of the arguments :class:`ShortErrorsGroup` was given
_COMMAND_LINE = "rave_core.cli.command_line"


def _asks_for_json(args) -> bool:
    """Whether the option ``--json`` is among ``args`` (before a ``--``, after which
    everything is an argument)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json" or arg.startswith("--json="):
            return True
    return False


class _ShortUsageError(click.ClickException):
    exit_code = 2

    def __init__(self, err: click.UsageError,
                 as_json: Optional[Callable[[str], None]] = None) -> None:
        super().__init__(err.format_message())
        self.original = err
        self.as_json = as_json

    def show(self, file=None) -> None:
        ctx = self.original.ctx
        if type(self.original).__name__ == "NoArgsIsHelpError":  # bare command: its help
            self.original.show(file)
            return
        click.echo(f"Error: {printable(self.format_message())}", err=True)
        if ctx is not None:
            click.echo(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.", err=True)
        if self.as_json is not None:   # stdout holds one JSON object, as for any error
            self.as_json(self.format_message())


def _say_failure(settings: _Settings, err: BaseException, code: int,
                 text: Optional[str] = None) -> int:
    """Say ``err`` in one or two lines (``text``: in these words); returns ``code``."""
    if settings.debug:
        traceback.print_exception(err)
    if text is None and isinstance(err, OSError) and type(err).__module__ == "builtins":
        text = describe_os_error(err)
    # a name that is not UTF-8 is shown as \xe9, as rave-deploy shows it
    msg = printable(short_message(text or str(err)) or type(err).__name__)
    click.echo(f"{_rank_prefix()}Error: {msg}", err=True)
    return code


def _say_error(settings: _Settings, err: BaseException, interrupted: str,
               writing: Optional[str]) -> int:
    """Say ``err`` as :func:`_guard` does, and return its exit code."""
    with importing():
        from .training.trainer import TrainingInterrupted
    usage_errors, operation_errors = error_classes()
    if isinstance(err, TrainingInterrupted):
        if settings.debug:
            traceback.print_exception(err)
        click.echo(f"{_rank_prefix()}{err.message}", err=True)
        return 128 + err.signal  # 130 for Ctrl-C, 143 for SIGTERM, as the shell counts
    if isinstance(err, KeyboardInterrupt):
        if settings.debug:
            traceback.print_exception(err)
        click.echo(f"{_rank_prefix()}{interrupted}", err=True)
        return 143 if isinstance(err, Terminated) else 130
    if isinstance(err, usage_errors):
        return _say_failure(settings, err, 2)
    if isinstance(err, operation_errors):
        text = None
        if writing and isinstance(err, OSError) and type(err).__module__ == "builtins":
            text = f"cannot write {writing} ({describe_os_error(err)}); nothing was changed there"
        return _say_failure(settings, err, 1, text)
    if isinstance(err, MemoryError):
        return _say_failure(settings, err, 1,
                            "out of memory: lower --batch or --n_signal, or the model size")
    # the last line of defence: no raw traceback
    first = (str(err).strip().splitlines() or [""])[0]
    return _say_failure(settings, err, 1, f"unexpected {type(err).__name__}: {first} (run "
                                          "`rave-core --debug ...` for the traceback, and "
                                          "report it)")


def _guard(settings: _Settings, fn: Callable, *args, interrupted: str = "Interrupted.",
           writing: Optional[str] = None, says_early: bool = False, **kwargs):
    """Run ``fn``; known errors become clean messages and exit codes. ``writing`` names
    the output, for file-system errors (a full disk, a read-only folder). ``says_early``:
    ``fn`` takes ``report_error``, which it calls with the error it is about to raise,
    before it cleans up (training, before it leaves its process group: under torchrun the
    process that failed says why before the others say that it failed); said there, the
    error is not said again."""
    error_classes()   # (their modules imported now, Ctrl-C meanwhile ending the process)
    said: List[tuple] = []   # (the error said early, its exit code)

    def report_error(err: BaseException) -> None:
        if isinstance(err, (Exception, KeyboardInterrupt)):
            said[:] = [(err, _say_error(settings, err, interrupted, writing))]

    if says_early:
        kwargs["report_error"] = report_error
    try:
        return fn(*args, **kwargs)
    except (Exception, KeyboardInterrupt) as err:
        if said and said[0][0] is err:
            sys.exit(said[0][1])
        sys.exit(_say_error(settings, err, interrupted, writing))


def check_output_location(flag: str, path) -> None:
    """Output folders are created as needed; fail early (exit 1) when a file is in the way
    or the nearest existing folder cannot be written, rather than deep inside the work."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        if parent != path and not parent.is_dir():
            click.echo(f"{_rank_prefix()}Error: {flag} {path}: {parent} is a file, not a folder; "
                       f"choose another {flag}", err=True)
            sys.exit(1)
        if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
            click.echo(f"{_rank_prefix()}Error: {flag} {path}: {parent} is not writable; choose "
                       f"another {flag}", err=True)
            sys.exit(1)
        return


def _usage(message: str) -> None:
    click.echo(f"{_rank_prefix()}Error: {printable(message)}", err=True)
    sys.exit(2)


@click.group(cls=ShortErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="rave-deploy")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Prepare audio datasets and train RAVE-family models (RAVE v1/v2/v3, BRAVE)."""
    ctx.obj = _Settings()
    ctx.obj.debug = debug
    ctx.with_resource(warnings_as_messages())


# ============================================================================ preprocess
@main.command()
@click.option("--input_path", "input_paths", multiple=True, required=True, metavar="DIR",
              help="Folder of audio files (searched recursively) or one audio file; repeat "
                   "for several. wav, flac, aiff, ogg, opus, mp3, caf, w64, rf64 (symbolic links "
                   "to folders are followed).")
@click.option("--output_path", required=True, metavar="DB",
              help="Dataset folder to write (replaced atomically if it is a dataset already; a "
                   "folder holding other files is refused).")
@click.option("--channels", type=click.IntRange(MIN_CHANNELS, MAX_CHANNELS), default=1,
              show_default=True,
              help="Audio channels of the dataset (sources are mixed down or duplicated).")
@click.option("--sampling_rate", type=click.IntRange(MIN_SAMPLING_RATE, MAX_SAMPLING_RATE),
              default=44100, show_default=True,
              help="Sampling rate of the dataset in Hz; must match the config's SAMPLING_RATE.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar.")
@click.pass_obj
def preprocess(settings: _Settings, input_paths, output_path, channels, sampling_rate, progress):
    """Resample and concatenate audio into a training dataset (rave-core train --db_path)."""
    missing = [p for p in input_paths if not Path(p).exists()]
    if missing:
        _usage(f"--input_path {missing[0]} does not exist; give a folder of audio files")
    check_output_location("--output_path", output_path)
    with importing():
        from .data import preprocess as run_preprocess
    with sigterm_as_interrupt():
        report = _guard(settings, run_preprocess, list(input_paths), output_path, channels=channels,
                        sampling_rate=sampling_rate, progress=progress,
                        writing=f"the dataset at {output_path}",
                        interrupted=f"Interrupted: {output_path} is as it was (nothing was "
                                    "written).")
    click.echo(str(report))


# ============================================================================ train
def _train_options(fn):
    """The flags of `rave-core train` and `python -m rave_core.train`."""
    options = [
        click.option("--config", "configs", multiple=True, metavar="NAME",
                     help="Config name (see `rave-core configs`) or .gin file; repeat to "
                          "compose, e.g. --config v2 --config causal. Optional when resuming "
                          "(the run's config.gin is used)."),
        click.option("--db_path", required=True, metavar="DB",
                     help="Dataset folder written by `rave-core preprocess`."),
        click.option("--name", required=True, metavar="RUN",
                     help="Run name: files go to OUT_PATH/RUN. An existing run of that name is "
                          "resumed exactly where its last.ckpt left off."),
        click.option("--out_path", default=DEFAULTS["out_path"], show_default=True, metavar="DIR",
                     help="Folder holding the runs."),
        click.option("--max_steps", type=click.IntRange(min=1), default=DEFAULTS["max_steps"],
                     show_default=True, help="Total training steps (a resumed run continues to it)."),
        click.option("--batch", type=click.IntRange(min=1), default=DEFAULTS["batch"],
                     show_default=True, help="Windows per step (per GPU with --gpus)."),
        click.option("--n_signal", type=click.IntRange(min=1), default=DEFAULTS["n_signal"],
                     show_default=True, help="Samples per training window."),
        click.option("--val_every", type=click.IntRange(min=1), default=DEFAULTS["val_every"],
                     show_default=True,
                     help="Validate, update the latent statistics and save last.ckpt (and "
                          "best.ckpt when validation improves) every N steps."),
        click.option("--save_every", type=click.IntRange(min=1), default=DEFAULTS["save_every"],
                     show_default=True, help="Also keep epoch_<step>.ckpt every N steps."),
        click.option("--log_every", type=click.IntRange(min=1), default=DEFAULTS["log_every"],
                     show_default=True,
                     help="Write the training losses for TensorBoard (`tensorboard --logdir "
                          "OUT_PATH`) every N steps; validation is logged at each validation."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
                     default=DEFAULTS["device"], show_default=True,
                     help="auto: CUDA when available, else CPU."),
        click.option("--workers", type=click.IntRange(min=0), default=DEFAULTS["workers"],
                     show_default=True,
                     help="Data-loading processes (0: load in the main process; default: 8, "
                          "or the number of CPUs if fewer)."),
        click.option("--ckpt", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     metavar="PATH", help="Resume from this checkpoint (default: the run's own "
                                          "last.ckpt if there is one)."),
        click.option("--override", "overrides", multiple=True, metavar="'KEY=VALUE'",
                     help="Gin binding applied after the configs, e.g. 'CAPACITY=32' or "
                          "'rave.model.RAVE.phase_1_duration=200000'; repeatable."),
        click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True,
                     help="Seed of the initial weights, data order and noise."),
        click.option("--progress/--no-progress", default=True, show_default=True,
                     help="Show a progress bar with steps/s and the main losses."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_training(settings: _Settings, configs, db_path, name, out_path, max_steps, batch,
                  n_signal, val_every, save_every, log_every, device, workers, ckpt, overrides,
                  seed, progress) -> None:
    if not Path(db_path).exists():
        _usage(f"--db_path {db_path}: no such dataset folder; create it with "
               "`rave-core preprocess --input_path AUDIO_DIR --output_path "
               f"{db_path}`")
    why_not = not_a_dataset(db_path)   # a folder of audio, an empty folder, a file...
    if why_not is not None:
        _usage(f"--db_path {db_path} is not a dataset: {why_not}")
    if ckpt is not None and not Path(ckpt).is_file():
        _usage(f"--ckpt {ckpt}: no such checkpoint file")
    _check_config_names(configs)
    check_output_location("--out_path", out_path)
    with importing():
        from .training.trainer import train
    result = _guard(settings, train, list(configs), db_path, name, out_path=out_path,
                    max_steps=max_steps, batch=batch, n_signal=n_signal, val_every=val_every,
                    save_every=save_every, log_every=log_every, device=device,
                    workers=workers, ckpt=ckpt, overrides=list(overrides), seed=seed,
                    progress=progress, says_early=True,
                    interrupted="Interrupted: checkpoints already written are intact; run the "
                                "same command again to resume.")
    rank = os.environ.get("RANK", "0")
    if not rank.isdigit() or int(rank) == 0:   # (rank 0 alone says the result)
        best = (f", best validation {result.best_validation:.4g}"
                if result.best_validation is not None else "")
        click.echo(printable(f"trained {result.run_dir} to step {result.global_step}{best}"))


@main.command("train")
@_train_options
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train on N GPUs of this machine (spawns torchrun with N processes).")
@click.pass_obj
def train_command(settings: _Settings, gpus: int, **kwargs) -> None:
    """Train a model, or resume a run (the whole RAVE schedule: phase 1, then adversarial
    phase 2 from PHASE_1_DURATION steps)."""
    if gpus > 1 and "WORLD_SIZE" not in os.environ:
        _check_config_names(kwargs["configs"])
        _spawn_torchrun(settings, gpus, kwargs)
        return
    _run_training(settings, **kwargs)


def _check_config_names(configs) -> None:
    """A --config that names no config (a typo, a missing file) or a modifier without its
    base: a usage error at once, before torch is imported (the configs' contents are read
    with gin, later)."""
    for config in configs:
        problem = config_problem(config)
        if problem is not None:
            _usage(problem)
    problem = modifier_problem(list(configs))
    if problem is not None:
        _usage(problem)


def _spawn_torchrun(settings: _Settings, gpus: int, kwargs: dict) -> None:
    with importing():
        import torch
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpu_hint = (f"for several CPU processes run: torchrun --nproc_per_node {gpus} "
                "-m rave_core.train --device cpu ...")
    if kwargs["device"] == "cpu":
        _usage(f"--gpus {gpus} asks for GPU processes but --device is cpu; {cpu_hint}")
    if available < gpus:
        _usage(f"--gpus {gpus}: this machine has {available} CUDA GPU(s); {cpu_hint}")
    # torchrun, quiet where a process failed (rave_core.launch.torchrun)
    cmd = [sys.executable, "-c", "from rave_core.launch import torchrun; torchrun()",
           "--standalone", f"--nproc_per_node={gpus}", "-m", "rave_core.train",
           *_as_arguments(kwargs)]
    if settings.debug:
        cmd.append("--debug")
    with importing():
        from .training.trainer import CHECKPOINT_DIR
    last_ckpt = Path(kwargs["out_path"], kwargs["name"]) / CHECKPOINT_DIR / "last.ckpt"
    found = _file_stamp(last_ckpt)
    proc = subprocess.Popen(cmd)
    interrupted = 0  # the first signal's number

    def on_signal(signum, frame):
        # Ctrl-C reaches the children too (same process group): wait while they save.
        # A SIGTERM sent to this process alone is passed on.
        nonlocal interrupted
        interrupted = interrupted or signum
        if signum == signal.SIGTERM:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if interrupted:
        click.echo(_interrupted_spawn(last_ckpt, found), err=True)
        sys.exit(128 + interrupted)
    if code == 2:   # a usage error, which the processes said
        sys.exit(2)
    if code != 0:
        if code <= 128:   # (above: a process killed by a signal, which the launcher said)
            click.echo(f"Error: the training processes failed (exit code {code}); see their "
                       "messages above.", err=True)
        sys.exit(1)


def _file_stamp(path: Path):
    """``(size, mtime_ns)`` of ``path``, None if it is not there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _interrupted_spawn(last_ckpt: Path, found) -> str:
    """What `rave-core train --gpus N` says when interrupted: that the run saved, only
    where its ``last_ckpt`` was written since the training started (``found``: its
    :func:`_file_stamp` then); Ctrl-C while the processes start saves nothing."""
    now = _file_stamp(last_ckpt)
    if now is not None and now != found:
        return (f"Interrupted: the run saved {printable(str(last_ckpt))}; run the same "
                "command again to resume.")
    if found is not None:
        return (f"Interrupted: nothing was saved since the start; the run's "
                f"{printable(str(last_ckpt))} is as it was: run the same command again to "
                "resume from it.")
    return "Interrupted: nothing was saved (the training had not saved a checkpoint yet)."


def _as_arguments(kwargs: dict) -> List[str]:
    """Command-line flags reproducing parsed `train` options (for the torchrun children)."""
    args: List[str] = []
    for key, value in kwargs.items():
        if key == "configs":
            args += [a for c in value for a in ("--config", c)]
        elif key == "overrides":
            args += [a for o in value for a in ("--override", o)]
        elif key == "progress":
            args.append("--progress" if value else "--no-progress")
        elif value is not None:
            args += [f"--{key}", str(value)]
    return args


# ============================================================================ configs
@main.command()
def configs() -> None:
    """List the shipped configs (use with --config)."""
    for name in available_configs():
        click.echo(f"{name:<14} {config_description(name)}")


# ============================================================================ torchrun entry
@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@_train_options
@click.option("--gpus", type=click.IntRange(min=1), default=1, hidden=True)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def torchrun_train(gpus: int, debug: bool, **kwargs) -> None:
    """Train one process of a torchrun job (`rave-core train --gpus N` starts these).

    \b
    torchrun --nproc_per_node N -m rave_core.train --config v2 --db_path DB --name RUN
    """
    settings = _Settings()
    settings.debug = debug
    with warnings_as_messages():   # as `rave-core train` says them
        _run_training(settings, **kwargs)


if __name__ == "__main__":
    main()
