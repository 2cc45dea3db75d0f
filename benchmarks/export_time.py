"""Export time and peak memory per target, full-size models (random weights).

    python benchmarks/export_time.py                 # v2 and brave, every target
    python benchmarks/export_time.py --configs brave --targets nn_tilde onnx

Each export runs in its own process (peak memory is per process: ``ru_maxrss``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def main(argv=None) -> int:
    from benchmarks.streaming_rtf import make_full_run
    from rave_deploy.targets import registry

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["v2", "brave"])
    p.add_argument("--targets", nargs="+", default=sorted(registry()))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for config in args.configs:
            run = make_full_run(tmp, config)
            for target in args.targets:
                out = tmp / f"{config}_{target}"
                proc = subprocess.run([sys.executable, "-c", CHILD, str(run), target, str(out)],
                                      capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    rows.append((config, target, "failed: " + proc.stderr.strip().splitlines()[-1]))
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append((config, target, r))
    print(f"{'config':7s} {'target':15s} {'seconds':>8s} {'peak MB':>8s} {'size MB':>8s}")
    for config, target, r in rows:
        if isinstance(r, str) or r.get("skipped"):
            print(f"{config:7s} {target:15s} {r if isinstance(r, str) else 'not supported: ' + r['skipped'][:70]}")
        else:
            print(f"{config:7s} {target:15s} {r['seconds']:8.1f} {r['peak_mb']:8.0f} {r['size_mb']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
