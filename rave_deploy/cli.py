"""``rave-deploy``: export a trained run to every host, and prove each export right.

Exit codes: 0 success, 1 a failed operation or check, 2 bad usage (click's convention),
130 Ctrl-C, 143 SIGTERM. Errors print one or two lines naming the problem and the fix;
``--debug`` shows tracebacks. docs/bad-input.md lists every case and its message.

This module imports no heavy library (torch, onnx, NumPy: seconds): ``--help``,
``--version``, ``targets`` and a usage error answer at once (the targets are read from
their plugins without importing them: :func:`rave_deploy.targets.available_targets`);
``export`` and ``check`` import what they need when they run, Ctrl-C or SIGTERM meanwhile
ending the process in one line (:func:`rave_core.cli.importing`).
"""
from __future__ import annotations

import os
import stat
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import click
from click.core import ParameterSource

from rave_core.cli import (ShortErrorsGroup, Terminated, importing, short_message,
                           sigterm_as_interrupt, warnings_as_messages)
from rave_core.file_kinds import WHAT_A_RUN_IS
from rave_core.text import clipped, listed, printable

from .check.output import CheckProgress, print_json, print_results
from .cpu_kernels import CPU_KERNELS
from .file_names import name_problem
from .io import OutputError, OutputInTheWay, describe_os_error
from .targets import available_targets, name_width, target_hosts
from .targets.base import CheckOptions, ExportOptions, TargetUnsupported


def _error_classes():
    """The error classes of unusable input (exit 2) and of a failed operation (exit 1):
    ``(usage errors, operation errors)``, imported when a command needs them (their
    modules import torch).
    OutputInTheWay: something of the user's stands where an output goes (an OutputError,
    caught first so that it is bad usage: nothing was attempted)."""
    with importing():
        from rave_core.config import ConfigError
        from rave_core.run import RunError

        from .export import ExportError
        from .model import DeployError
    return ((RunError, ConfigError, DeployError, OutputInTheWay),
            (TargetUnsupported, OutputError, OSError, ExportError))


def error_classes():
    """:func:`_error_classes` with check's own: the errors every rave-deploy command treats
    as unusable input (exit 2) and as a failed operation (exit 1)."""
    with importing():
        from .check.artifacts import CheckUsageError
    usage, operation = _error_classes()
    return (*usage, CheckUsageError), operation


# Bounds of the numeric flags: beyond them no host runs, and the export or check would
# only exhaust memory before failing.
MAX_BLOCK = 65536        # samples (the RAVE VST's largest buffer is 32768)
MAX_SR = 768_000         # Hz
MAX_CHANNELS = 64


class _Context:
    debug = False
    #: With ``--json``, the fields of the JSON object an error prints on stdout (besides
    #: ``error`` and ``exit_code``), so that stdout always holds one JSON object; None
    #: without ``--json``.
    json_error: Optional[dict] = None


#: What Ctrl-C during an export says (:func:`_guard`'s default).
INTERRUPTED_EXPORT = "Interrupted: earlier outputs are as they were; nothing was left half-written."


def _exit(code: int, message: str, prefix: str = "Error: ") -> None:
    """End the command: ``message`` on stderr (after ``prefix``), with ``--json`` also
    as a JSON object on stdout, and exit ``code``."""
    CheckProgress.end_open_line()
    message = printable(message)  # a path that is not UTF-8 cannot be printed raw
    click.echo(f"{prefix}{message}", err=True)
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_object(_Context) if ctx is not None else None
    if obj is not None and obj.json_error is not None:
        print_json({**obj.json_error, "error": message, "exit_code": code})
    sys.exit(code)


def _fail(ctx: _Context, err: BaseException, code: int, text: Optional[str] = None) -> None:
    if ctx.debug:
        traceback.print_exception(err)
    if text is None and isinstance(err, OSError) and type(err).__module__ == "builtins":
        text = describe_os_error(err)
    # notes: what else the user must know, e.g. the targets an export had written
    _exit(code, "\n".join([short_message(text or str(err)) or type(err).__name__,
                           *getattr(err, "__notes__", ())]))


def _usage(message: str) -> None:
    _exit(2, message)


def _interrupted(ctx: _Context, err: KeyboardInterrupt, message: str) -> None:
    """Exit 130 for Ctrl-C (143 for SIGTERM), saying ``message``."""
    if ctx.debug:
        traceback.print_exception(err)
    _exit(143 if isinstance(err, Terminated) else 130, message, prefix="")


def _guard(ctx: _Context, fn, *args, usage_errors=(), interrupted=INTERRUPTED_EXPORT,
           **kwargs):
    """Run ``fn`` and turn errors into clean messages and exit codes: 2 for unusable input
    (:func:`_error_classes` and ``usage_errors``), 1 for a failed operation, 130 on Ctrl-C
    (143 on SIGTERM), saying ``interrupted`` (None: the caller handles Ctrl-C). Never a
    traceback unless ``--debug``."""
    usage, operation = _error_classes()
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt as err:
        if interrupted is None:
            raise
        _interrupted(ctx, err, interrupted)
    except (*usage, *usage_errors) as err:
        _fail(ctx, err, 2)
    except operation as err:
        _fail(ctx, err, 1)
    except MemoryError as err:
        _fail(ctx, err, 1, "out of memory: use smaller --block-size values, or fewer targets "
                           "at once")
    except Exception as err:  # noqa: BLE001 - the last line of defence: no raw traceback
        first = clipped((str(err).strip().splitlines() or [""])[0], 300)
        _fail(ctx, err, 1, f"unexpected {type(err).__name__}: {first} (run `rave-deploy --debug "
                           "...` for the traceback, and report it)")


#: With ``--json``, the fields of the JSON object an error of a command prints besides
#: ``error`` and ``exit_code`` (:attr:`_Context.json_error`), by command; none for the others.
JSON_ERROR_FIELDS = {"check": {"passed": False, "artifacts": []}}


def _json_error_fields(command: Optional[str]) -> dict:
    return dict(JSON_ERROR_FIELDS.get(command, {}))


def _json_usage_error(command: Optional[str], message: str) -> None:
    """The JSON object of a usage error click found before ``command`` ran (a bad option
    value, an unknown option, a missing argument), as :func:`_exit` prints it."""
    print_json({**_json_error_fields(command), "error": printable(message), "exit_code": 2})


def _description() -> str:
    """``rave-deploy --help``'s description: it names the host of every target (each
    once, by the target's ``host``: :func:`rave_deploy.targets.target_hosts`)."""
    hosts = list(dict.fromkeys(target_hosts().values()))
    named = ", ".join(hosts[:-1]) + f" and {hosts[-1]}" if len(hosts) > 1 else "".join(hosts)
    return (f"Export RAVE / BRAVE models for {named}, and check every export against the "
            "eager model (`rave-deploy targets` lists the targets).")


@click.group(cls=ShortErrorsGroup, json_error=_json_usage_error, help=_description(),
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="rave-deploy")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """(``--help``'s description: :func:`_description`, from the targets.)"""
    ctx.obj = _Context()
    ctx.obj.debug = debug
    # `kill PID` cleans up like Ctrl-C (a temporary file is never left behind).
    ctx.with_resource(sigterm_as_interrupt())
    ctx.with_resource(warnings_as_messages())


def _target_names() -> List[str]:
    return list(available_targets()) + ["all"]


def _refuse_missing(path, hint: str = "") -> None:
    """Refuse (exit 2) a path that does not exist before the command imports torch (it
    took seconds to say so), in the words the command's own check uses; any other
    problem with the path (permission, a name too long) is said by that check."""
    if str(path):
        try:
            os.stat(path)
        except FileNotFoundError:
            _usage(f"{path} does not exist" + (f": {hint}" if hint else ""))
        except OSError:
            pass


def _check_name(name: str) -> None:
    """Refuse (exit 2) an --name that is not a plain file name every host's machine
    and every shell takes (the rules: :func:`rave_deploy.file_names.name_problem`)."""
    problem = name_problem(name)
    if problem is not None:
        _usage(problem)


@main.command(short_help="Export a trained run to the files each host loads.")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--target", "-t", "targets", multiple=True, type=click.Choice(_target_names()),
              default=("all",), show_default=True,
              help="Host to export for (repeat for several); `all` exports every target the "
                   "model can serve and says why it skips the others.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("exports"),
              show_default=True,
              help="Output folder, created as needed (or a file path, for one target).")
@click.option("--streaming/--no-streaming", default=True, show_default=True,
              help="Block-by-block model with streaming state (what live hosts need).")
@click.option("--fidelity", type=click.FloatRange(0, 1, min_open=True), default=0.95,
              show_default=True,
              help="Share of latent variance kept: sets the latent size of variational runs "
                   "(discrete, Wasserstein and spherical runs are exported whole; their "
                   "sidecars record 1).")
@click.option("--deterministic", is_flag=True,
              help="Posterior mean, zero fill, no noise: same input, same output.")
@click.option("--sr", type=click.IntRange(1, MAX_SR), default=None,
              help="Host sample rate, an integer multiple of the model's (default: the model's).")
@click.option("--channels", type=click.IntRange(1, MAX_CHANNELS), default=None,
              help="Host audio channels (default: the model's).")
@click.option("--ema_weights", is_flag=True, help="Export the EMA weights of the checkpoint.")
@click.option("--name", default=None, help="Base name of the files (default: the run's folder name).")
@click.option("--block-size", "block_size", type=click.IntRange(1, MAX_BLOCK), default=None,
              help="Host block size in samples. anira takes exactly this block (default: "
                   "the ratio), and the onnx_streaming graph is fixed to it (default: any "
                   "multiple of the ratio); the TorchScript targets (`rave-deploy targets`) "
                   "lay their weights out to run fastest at it (default: 2048 at the "
                   "model's rate, or the ratio if larger) and still run at any block.")
@click.option("--engine", type=click.Choice(["onnx", "executorch"]), default="onnx",
              show_default=True, help="Runtime of the anira graphs.")
@click.option("--cpu-kernels", "cpu_kernels", type=click.Choice(list(CPU_KERNELS)),
              default="portable", show_default=True,
              help="How TorchScript targets compute their larger products on CPU. "
                   "`portable`: ops every libtorch has. `onednn`: oneDNN on weights the host "
                   "packs at its first call (faster at large blocks: BRAVE about 15% at 2048); "
                   "such a file loads only in a libtorch built with oneDNN, as PyTorch's "
                   "x86-64 builds are. `rave-deploy check` lists the ops a file needs.")
@click.option("--style-target", "style_target", default=None,
              type=click.Path(exists=True, path_type=Path),
              help="v3 only: audio in the style to transfer to (a file, or a folder of "
                   "them), taught before the file ships as nn~'s learn_target would teach "
                   "it (for hosts that send no attributes: the RAVE VST, the RAVE UGens, "
                   "ONNX hosts).")
@click.option("--style-source", "style_source", default=None,
              type=click.Path(exists=True, path_type=Path),
              help="v3 only: audio like what will be played into the file (a file or a "
                   "folder; learn_source). With --style-target, every file transfers from "
                   "this style to that one.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def export(obj: _Context, run: Path, targets, output: Path, streaming: bool, fidelity: float,
           deterministic: bool, sr: Optional[int], channels: Optional[int], ema_weights: bool,
           name: Optional[str], block_size: Optional[int], engine: str, cpu_kernels: str,
           style_target: Optional[Path], style_source: Optional[Path], as_json: bool) -> None:
    """Export RUN (a run directory or checkpoint from `rave-core train` or acids-rave's
    `rave train`) to the files each host loads, with a JSON sidecar beside each."""
    obj.json_error = _json_error_fields("export") if as_json else None
    if name is not None:
        _check_name(name)
    _refuse_missing(run, WHAT_A_RUN_IS)
    with importing():
        from .export import export_run
    given = click.get_current_context().get_parameter_source("fidelity")
    options = ExportOptions(streaming=streaming, fidelity=fidelity,
                            fidelity_given=given is not ParameterSource.DEFAULT,
                            deterministic=deterministic,
                            sr=sr, channels=channels, ema_weights=ema_weights, name=name,
                            block_size=block_size, engine=engine, cpu_kernels=cpu_kernels,
                            style_target=style_target, style_source=style_source)
    # A warning about the run as a whole (`--fidelity` on a discrete run) comes first in
    # every target's result, skipped or not, and so may one about the model (its latent
    # statistics) from each target's export: each is said once.
    shown = set()
    of_the_run: List[str] = []  # given by export_run before any target is exported
    shown_checkpoint: List[Path] = []

    width = name_width()

    def show(r) -> None:  # as each target is done: an error or Ctrl-C may follow
        if not shown_checkpoint:   # the results' first line: what they were exported from
            step = "no step recorded" if r.step is None else f"step {r.step}"
            ema = ", EMA weights" if ema_weights else ""
            click.echo(printable(f"Checkpoint: {r.checkpoint} ({step}{ema})"))
            if r.newer_checkpoint is not None:
                click.echo(printable(f"            newer in the run folder: "
                                     f"{r.newer_checkpoint} (give its path as RUN to "
                                     "export that one)"))
            shown_checkpoint.append(r.checkpoint)
        if r.skipped:
            click.echo(f"  skip  {r.target:{width}s} {r.skipped}")
        else:
            click.echo(printable(f"  ok    {r.target:{width}s} {r.path}  "
                                 f"({r.size_bytes / 1e6:.1f} MB, {r.seconds:.1f} s)"))
        for w in r.warnings:
            if w not in shown:
                click.echo(printable(f"        warning: {w}"))
                shown.add(w)

    def exporting():
        try:
            return export_run(run, list(targets), output, options,
                              on_result=None if as_json else show,
                              on_warning=of_the_run.append)
        except BaseException:
            # no result came to say them: they come before the error, on stderr
            for w in of_the_run:
                if w not in shown:
                    click.echo(printable(f"Warning: {w}"), err=True)
            raise

    try:
        results = _guard(obj, exporting, interrupted=None)
    except KeyboardInterrupt as err:
        # export_run's note: the targets written before it, when there were some
        notes = getattr(err, "__notes__", None)
        _interrupted(obj, err, f"Interrupted: {'; '.join(notes)}; nothing was left "
                               "half-written." if notes else INTERRUPTED_EXPORT)
    if as_json:
        print_json([r.as_dict() for r in results])


@main.command(short_help="Check exported artefacts against their run.")
# (str, not Path: an empty argument, an unset shell variable, would become ".")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--run", default=None, metavar="RUN",
              help="Run the artefact was exported from (default: the checkpoint named in its "
                   "sidecar).")
@click.option("--block-size", "block_sizes", multiple=True, type=click.IntRange(1, MAX_BLOCK),
              help="Host block size to test (repeat); one the artefact cannot take is a "
                   "failed check. Default: powers of two from 64 or the ratio up to 4096 "
                   "(TorchScript files, and onnx_streaming graphs; one fixed at N: N, 2N, 4N, "
                   "8N; either without its sidecar: the ratio and 4x it); Minifusion: 128 to "
                   "2048; anira: N and 4N, N its block. The offline onnx graph runs in one "
                   "call.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--report", "report_arg", type=click.Path(), default=None,
              help="Write a self-contained HTML report (plots, audio players) to this file, "
                   "its folder created as needed (an earlier report there is replaced, any "
                   "other file refused).")
@click.pass_obj
def check(obj: _Context, artifacts, run: Optional[str], block_sizes, as_json: bool,
          report_arg: Optional[str]) -> None:
    """Check exported ARTIFACTS: host contract, parity with the eager model, causality,
    block-size invariance, latency and jitter, real-time factor. Exit 0 only if every
    check passes.

    ARTIFACTS are files or anira folders; an export's --output folder, or `exports/*`
    (sidecars included), checks every artefact in it."""
    obj.json_error = _json_error_fields("check") if as_json else None
    if run == "":
        _usage("--run: an empty path was given (an unset shell variable?): give the run "
               "directory or checkpoint, or leave --run out to use the sidecar's")
    for artifact in artifacts:
        _refuse_missing(artifact)
    if run is not None:
        _refuse_missing(run, WHAT_A_RUN_IS)
    with importing():
        from .check.artifacts import CheckUsageError, expand_artifacts, prepare_check
        from .check.checking import check_artifact, open_reference
        from .check.report import write_html_report
    report = _report_path(obj, report_arg)  # refused now, not after the checks
    not_started = "Interrupted: nothing was checked."
    # `check exports/*`, `check exports/`
    artifacts = _guard(obj, expand_artifacts, artifacts, usage_errors=(CheckUsageError,),
                       interrupted=not_started)
    # Every artefact, and every run they check against, is refused or accepted before any
    # is checked (checks take a while; a later failure would hide the earlier results).
    plans = [_guard(obj, prepare_check, artifact, run, usage_errors=(CheckUsageError,),
                    interrupted=not_started)
             for artifact in artifacts]
    loaded = {}
    for plan in plans:
        if (plan.source, plan.ema_weights) not in loaded:
            loaded[plan.source, plan.ema_weights] = _guard(
                obj, open_reference, plan, run, usage_errors=(CheckUsageError,),
                interrupted=not_started)
    options = CheckOptions(block_sizes=list(block_sizes), report=report)
    # what is being checked, on stderr (a check of a full-size model takes minutes);
    # with --json only on a terminal, so a script reading both streams sees JSON alone
    reports = []
    try:
        for i, (artifact, plan) in enumerate(zip(artifacts, plans), 1):
            with CheckProgress(f"checking {artifact} ({i}/{len(artifacts)})",
                               quiet=as_json) as progress:
                reports.append(_guard(obj, check_artifact, artifact, run, options,
                                      loaded[plan.source, plan.ema_weights],
                                      usage_errors=(CheckUsageError,), interrupted=None))
                progress.done(reports[-1])
    except KeyboardInterrupt as err:
        _show_finished(obj, reports, as_json)   # their checks took minutes
        # (with --json the results are in the JSON object on stdout, nothing above them)
        before = ("no artefact was checked before it" if not reports else
                  f"the results of the {len(reports)} artefact(s) checked before it are in "
                  "the JSON on stdout" if as_json else
                  f"the results above are of the {len(reports)} artefact(s) checked before it")
        _interrupted(obj, err, f"Interrupted while checking {artifact}: {before}")
    # the results first: a report that cannot be written (a full disk) must not hide them
    _show_finished(obj, reports, as_json)
    if report is not None:
        _guard(obj, write_html_report, reports, report)
    if as_json:
        print_json({"passed": all(r.passed for r in reports),
                    "artifacts": [r.as_dict() for r in reports]})
    elif report is not None:
        click.echo(printable(f"\nReport: {report}"))
    failed = [c.name for r in reports for c in r.failures()]
    if failed:
        if not as_json:
            click.echo(f"\nError: {len(failed)} check(s) failed: {listed(failed, 8)}; "
                       "see the FAIL lines above", err=True)
        sys.exit(1)


def _show_finished(obj: _Context, reports, as_json: bool) -> None:
    """Show the results of the artefacts checked so far, before what may yet fail or be
    interrupted: printed now, or, with ``--json``, held for the JSON object an error
    prints (:func:`_exit`)."""
    if as_json:
        obj.json_error = {**_json_error_fields("check"),
                          "artifacts": [r.as_dict() for r in reports]}
    elif reports:
        print_results(reports)


def _report_path(obj: _Context, given: Optional[str]) -> Optional[Path]:
    """``--report``'s file, or a usage error before any check runs: the report is one
    HTML file, so a folder (one that exists, or a path ending in a separator) is refused
    with the file name to give, and so is an existing file that is not an earlier report
    (a checkpoint, an artefact given there by mistake); a missing parent folder is
    created."""
    if given is None:
        return None
    if given == "":
        _usage("--report: an empty path was given (an unset shell variable?): name the HTML "
               "file to write, e.g. --report report.html")
    path = Path(given)
    try:
        kind = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        kind = None   # to be written (ensure_dir says why a parent cannot be made)
    except OSError as err:   # a name too long, a folder that cannot be searched
        _usage(f"--report {describe_os_error(err, given)}")
    seps = (os.sep, os.altsep) if os.altsep else (os.sep,)
    if given.endswith(seps) or (kind is not None and stat.S_ISDIR(kind)):
        _usage(f"--report {given}: {'a folder path' if kind is None else 'that is a folder'}; "
               f"the report is one HTML file: give its name, e.g. --report "
               f"{path / 'report.html'}")
    from .check.report import is_report
    if kind is not None and not is_report(path):
        _usage(f"--report {given} exists and is not a rave-deploy report: choose another path, "
               "or remove it")
    from .io import ensure_dir
    _guard(obj, ensure_dir, path.parent, "--report")
    return path


@main.command("targets", short_help="List the export targets.")
def list_targets() -> None:
    """List the export targets."""
    width = name_width()
    for name, description in available_targets().items():
        click.echo(f"{name:{width}s} {description}")


if __name__ == "__main__":
    main()
