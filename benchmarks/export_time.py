"""Export time and peak memory per target, full-size models (random weights).

    python benchmarks/export_time.py                 # v2 and brave, every target
    python benchmarks/export_time.py --configs brave --targets nn_tilde onnx

Each export runs in its own process (peak memory is per process: ``ru_maxrss``). A target
that cannot take a model (e.g. minifusion and v2) is reported as not supported, with the
reason below the table; an export that fails, with its error's last line.

Exit status: 0, 1 an export failed, 2 bad options (checked before any model is built),
130 Ctrl-C (the rows measured so far are printed, marked as a partial table).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.arguments import HelpFormatter, Parser  # noqa: E402

CHILD = """
import json, resource, sys, time
from pathlib import Path
from rave_deploy.export import export_run
from rave_deploy.targets import ExportOptions
from rave_deploy.targets.base import TargetUnsupported
run, target, out = sys.argv[1:4]
t0 = time.perf_counter()
try:
    res = export_run(run, [target], Path(out), ExportOptions())[0]
except TargetUnsupported as e:  # a host that cannot run this model: say why, no traceback
    print(json.dumps({"skipped": str(e).split(": ", 1)[-1]}))
    sys.exit(0)
print(json.dumps({"seconds": time.perf_counter() - t0, "skipped": res.skipped,
                  "size_mb": res.size_bytes / 1e6,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def export_once(run: Path, target: str, out: Path) -> dict:
    """One export in a fresh process: its JSON line, or ``{"failed": reason}``."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(run), target, str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode == 0:
        try:
            return json.loads(last_line(proc.stdout))
        except ValueError:
            return {"failed": f"no result printed: {last_line(proc.stdout) or '(nothing)'}"}
    return {"failed": last_line(proc.stderr) or f"exit code {proc.returncode}, no message"}


def print_table(rows, interrupted: bool) -> None:
    """The table; the reasons of rows not measured below it, in full."""
    if interrupted:
        print("interrupted: partial table (the rows measured before Ctrl-C)")
    from rave_deploy.targets import name_width  # (torch-free)
    w = name_width()
    print(f"{'config':7s} {'target':{w}s} {'seconds':>8s} {'peak MB':>8s} {'size MB':>8s}")
    notes = []
    for config, target, r in rows:
        if "failed" in r or r.get("skipped"):
            kind = "failed" if "failed" in r else "not supported"
            notes.append(f"[{len(notes) + 1}] {config} {target}: {kind}: "
                         f"{r.get('failed') or r['skipped']}")
            print(f"{config:7s} {target:{w}s} {kind} [{len(notes)}]")
        else:
            print(f"{config:7s} {target:{w}s} {r['seconds']:8.1f} {r['peak_mb']:8.0f} "
                  f"{r['size_mb']:8.1f}")
    if notes:
        print()
        print("\n".join(notes))


def main(argv=None) -> int:
    p = Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--configs", nargs="+", default=["v2", "brave"],
                   help="rave_core config names or gin files")
    p.add_argument("--targets", nargs="+", default=["all"],
                   help="targets to export (`rave-deploy targets` lists them), or all")
    args = p.parse_args(argv)
    # after parsing: --help and a wrong target answer at once, torch takes seconds
    from rave_deploy.targets import available_targets
    known = list(available_targets())
    targets = known if args.targets == ["all"] else args.targets
    for target in targets:
        if target not in known:
            p.error(f"--targets {target}: not a target (targets: {', '.join(known)}, or all)")
    from rave_core.config import available_configs
    configs = available_configs()
    for config in args.configs:
        if config not in configs and not Path(config).is_file():
            p.error(f"--configs {config}: not a config of rave_core nor a gin file (known: "
                    f"{', '.join(configs)})")
    from benchmarks.streaming_rtf import fresh_folder, make_full_run

    rows, interrupted = [], False
    try:
        with tempfile.TemporaryDirectory() as tmp:  # removed on Ctrl-C too
            tmp = Path(tmp)
            for config in args.configs:
                run = make_full_run(tmp, config)
                for target in targets:
                    out = fresh_folder(tmp, config, f"_{target}")
                    rows.append((config, target, export_once(run, target, out)))
    except KeyboardInterrupt:
        interrupted = True
    print_table(rows, interrupted)
    if interrupted:
        return 130
    return 1 if any("failed" in r for _, _, r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # while importing: nothing measured yet
        print("interrupted", file=sys.stderr)
        sys.exit(130)
