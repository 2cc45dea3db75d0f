"""``rave-deploy``: export a trained run to every host, and prove each export right.

Exit codes: 0 success, 1 a failed operation or check, 2 bad usage (click's convention).
Errors print one or two lines naming the problem and the fix; ``--debug`` shows tracebacks.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import click

from rave_core.config import ConfigError
from rave_core.run import RunError

from .io import OutputError
from .model import DeployError
from .targets import CheckOptions, ExportOptions, TargetUnsupported, registry

# Failures of an operation (exit 1) versus unusable input (exit 2).
OPERATION_ERRORS = (TargetUnsupported, OutputError, OSError)
USAGE_ERRORS = (RunError, ConfigError, DeployError)


class _Context:
    debug = False


def _fail(ctx: _Context, err: BaseException, code: int) -> None:
    if ctx.debug:
        traceback.print_exc()
    msg = str(err).strip() or type(err).__name__
    click.echo(f"Error: {msg}", err=True)
    sys.exit(code)


def _guard(ctx: _Context, fn, *args, **kwargs):
    """Run ``fn`` and turn known errors into clean messages and exit codes."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        click.echo("Interrupted: nothing was left half-written.", err=True)
        sys.exit(130)
    except USAGE_ERRORS as err:
        _fail(ctx, err, 2)
    except OPERATION_ERRORS as err:
        _fail(ctx, err, 1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="rave-deploy")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Export RAVE / BRAVE models to nn~, SuperCollider, the RAVE VST, Minifusion and
    ONNX hosts, and check every export against the eager model."""
    ctx.obj = _Context()
    ctx.obj.debug = debug


def _target_names() -> List[str]:
    return sorted(registry()) + ["all"]


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--target", "-t", "targets", multiple=True, type=click.Choice(_target_names()),
              default=("all",), show_default=True,
              help="Host to export for (repeat for several); `all` exports every target the "
                   "model can serve and says why it skips the others.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("exports"),
              show_default=True, help="Output folder (or file path, for one target).")
@click.option("--streaming/--no-streaming", default=True, show_default=True,
              help="Block-by-block model with streaming state (what live hosts need).")
@click.option("--fidelity", type=click.FloatRange(0, 1, min_open=True), default=0.95,
              show_default=True, help="Share of latent variance kept: sets the latent size.")
@click.option("--deterministic", is_flag=True,
              help="Posterior mean, zero fill, no noise: same input, same output.")
@click.option("--sr", type=int, default=None,
              help="Host sample rate, an integer multiple of the model's (default: the model's).")
@click.option("--channels", type=int, default=None, help="Host audio channels (default: the model's).")
@click.option("--ema_weights", is_flag=True, help="Export the EMA weights of the checkpoint.")
@click.option("--name", default=None, help="Base name of the files (default: the run's folder name).")
@click.option("--block-size", "block_size", type=int, default=None,
              help="Fixed block size in samples for fixed-block targets (anira; default: the ratio).")
@click.option("--engine", type=click.Choice(["onnx", "executorch"]), default="onnx",
              show_default=True, help="Runtime of the anira graphs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def export(obj: _Context, run: Path, targets, output: Path, streaming: bool, fidelity: float,
           deterministic: bool, sr: Optional[int], channels: Optional[int], ema_weights: bool,
           name: Optional[str], block_size: Optional[int], engine: str, as_json: bool) -> None:
    """Export RUN (a run directory or checkpoint from `rave-core train` or acids-rave's
    `rave train`) to the files each host loads, with a JSON sidecar beside each."""
    from .export import export_run
    options = ExportOptions(streaming=streaming, fidelity=fidelity, deterministic=deterministic,
                            sr=sr, channels=channels, ema_weights=ema_weights, name=name,
                            block_size=block_size, engine=engine)
    results = _guard(obj, export_run, run, list(targets), output, options)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
        return
    for r in results:
        if r.skipped:
            click.echo(f"  skip  {r.target:15s} {r.skipped}")
        else:
            click.echo(f"  ok    {r.target:15s} {r.path}  ({r.size_bytes / 1e6:.1f} MB, {r.seconds:.1f} s)")
            for w in r.warnings:
                click.echo(f"        warning: {w}")


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--run", default=None, help="Run the artefact was exported from (default: the "
                                          "checkpoint named in its sidecar).")
@click.option("--block-size", "block_sizes", multiple=True, type=int,
              help="Host block size to test (repeat; default: 64 or the ratio, up to 4096).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Write a self-contained HTML report (plots, audio players) here.")
@click.pass_obj
def check(obj: _Context, artifacts, run: Optional[str], block_sizes, as_json: bool,
          report: Optional[Path]) -> None:
    """Check exported ARTIFACTS: host contract, parity with the eager model, causality,
    block-size invariance, latency and jitter, real-time factor. Exit 0 only if every
    check passes."""
    from .check import CheckUsageError, check_artifact
    from .check.report import format_table, write_html_report
    options = CheckOptions(block_sizes=list(block_sizes), report=report)
    reports = []
    for artifact in artifacts:
        try:
            reports.append(_guard(obj, check_artifact, artifact, run, options))
        except CheckUsageError as err:
            _fail(obj, err, 2)
    if report is not None:
        _guard(obj, write_html_report, reports, report)
    if as_json:
        click.echo(json.dumps({"passed": all(r.passed for r in reports),
                               "artifacts": [r.as_dict() for r in reports]}, indent=2))
    else:
        for r in reports:
            for c in r.results:
                mark = "PASS" if c.passed else "FAIL"
                click.echo(f"  {mark}  {c.name:32s} {c.message}")
        click.echo("")
        click.echo(format_table(reports))
        if report is not None:
            click.echo(f"\nReport: {report}")
    failed = [c.name for r in reports for c in r.failures()]
    if failed:
        if not as_json:
            click.echo(f"\n{len(failed)} check(s) failed: {', '.join(failed[:8])}", err=True)
        sys.exit(1)


@main.command("targets")
def list_targets() -> None:
    """List the export targets."""
    for name, target in sorted(registry().items()):
        click.echo(f"{name:15s} {target.description}")


if __name__ == "__main__":
    main()
