#!/usr/bin/env python
"""Load rave-deploy TorchScript files in *this* interpreter's torch and call every method.

nn~ 1.6 bundles libtorch 2.5.1; the RAVE VST and SuperCollider builds bundle older ones.
A file written by a newer torch may use a file format or ops such a runtime cannot read,
and nn~ does not catch that error (PureData quits). Run this script with the torch of the
host you target, e.g. in a virtualenv with torch 2.5:

    python -m venv torch25 && torch25/bin/pip install "torch==2.5.*" \\
        --index-url https://download.pytorch.org/whl/cpu
    torch25/bin/python scripts/check_libtorch_compat.py model.nn_tilde.ts [more.ts ...]

It needs torch only (not rave-deploy). For each file: ``torch.jit.load`` on CPU, then
``encode``, ``decode`` and ``forward`` on ``(1, in_channels, N / in_ratio)`` (N = twice
the largest ratio, deterministic mode, after ``reset()``), under inference mode as hosts
call them; each output must be float32, finite, contiguous and exactly
``(1, out_channels, N / out_ratio)``. Prints a table; exit status 1 if anything fails, 2 for a path that is missing or not a TorchScript file.
``--json OUT`` also writes the outputs, to compare two torch versions value by value.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zipfile

import torch

METHODS = ("encode", "decode", "forward")


def _signal(channels: int, n: int, latent: bool) -> torch.Tensor:
    """A deterministic input, identical in every torch version (no random generator)."""
    t = torch.arange(n, dtype=torch.float64)
    rows = []
    for c in range(channels):
        if latent:
            rows.append(torch.sin(2 * math.pi * t * (0.05 + 0.011 * c) + c))
        else:
            rows.append(0.3 * torch.sin(2 * math.pi * t * (0.0123 + 0.001 * c))
                        + 0.1 * torch.sin(2 * math.pi * t * 0.173))
    return torch.stack(rows)[None].float()


def _version_record(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist() if n.split("/", 1)[-1] == "version")
            return zf.read(name).decode().strip()
    except Exception:
        return "?"


def check_file(path: str) -> dict:
    result = {"path": path, "file_format_version": _version_record(path), "loaded": False,
              "error": None, "methods": {}}
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        result["error"] = f"torch.jit.load failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return result
    result["loaded"] = True
    try:
        if module._c._has_method("set_deterministic"):
            module.set_deterministic(True)
        params = {m: [int(v) for v in getattr(module, f"{m}_params")] for m in METHODS}
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    n = 2 * max(max(p[1], p[3]) for p in params.values())
    for m, (in_dim, in_ratio, out_dim, out_ratio) in params.items():
        row = {"ok": False, "input": [1, in_dim, n // in_ratio],
               "expected": [1, out_dim, n // out_ratio]}
        try:
            if module._c._has_method("reset"):
                module.reset()
            x = _signal(in_dim, n // in_ratio, in_ratio > 1)
            t0 = time.perf_counter()
            with torch.inference_mode():
                y = getattr(module, m)(x)
            row["ms"] = 1000 * (time.perf_counter() - t0)
            if not isinstance(y, torch.Tensor):
                row["error"] = f"returned {type(y).__name__}, not a tensor"
            else:
                row["shape"] = list(y.shape)
                problems = []
                if list(y.shape) != row["expected"]:
                    problems.append("wrong shape")
                if y.dtype != torch.float32:
                    problems.append(f"dtype {y.dtype}")
                if not y.is_contiguous():
                    problems.append("not contiguous")
                if not bool(torch.isfinite(y).all()):
                    problems.append("non-finite")
                row["ok"] = not problems
                row["error"] = ", ".join(problems) or None
                row["values"] = y.double().flatten().tolist()
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}"
        result["methods"][m] = row
    return result


def _argument_problems(files, json_path) -> list:
    """What stops the check before it starts: a file that is missing or not a TorchScript
    archive (said so, not reported as this torch failing to load it), a --json whose
    folder is missing."""
    problems = []
    for path in files:
        if not os.path.exists(path):
            problems.append(f"{path}: no such file")
        elif not os.path.isfile(path) or not zipfile.is_zipfile(path):
            problems.append(f"{path}: not a TorchScript file (a zip archive): give a .ts file "
                            "rave-deploy export wrote (a TorchScript target: `rave-deploy "
                            "targets`)")
    if json_path:
        folder = os.path.dirname(os.path.abspath(json_path))
        if not os.path.isdir(folder):
            problems.append(f"--json {json_path}: folder {folder} does not exist: create it "
                            "first")
        elif os.path.isdir(json_path):
            problems.append(f"--json {json_path} is a folder: give a file name")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="TorchScript files (.ts)")
    parser.add_argument("--json", help="also write the results (with outputs) to this file")
    args = parser.parse_args(argv)
    problems = _argument_problems(args.files, args.json)
    if problems:
        parser.error("; ".join(problems))  # exit 2, before any file is loaded
    print(f"torch {torch.__version__} (python {sys.version.split()[0]})")
    header = f"{'file':<40} {'fmt':>3} {'method':<8} {'input':<16} {'output':<16} {'ms':>8}  result"
    print(header)
    print("-" * len(header))
    results, ok = [], True
    for path in args.files:
        r = check_file(path)
        results.append(r)
        name = path if len(path) <= 40 else "..." + path[-37:]
        if r["error"] or not r["loaded"]:
            ok = False
            print(f"{name:<40} {r['file_format_version']:>3} {'-':<8} {'':<16} {'':<16} {'':>8}  "
                  f"FAIL {r['error']}")
            continue
        for m, row in r["methods"].items():
            ok = ok and row["ok"]
            shape = "x".join(map(str, row.get("shape", []))) or "-"
            ms = f"{row['ms']:.1f}" if "ms" in row else "-"
            status = "ok" if row["ok"] else f"FAIL {row.get('error')}"
            print(f"{name:<40} {r['file_format_version']:>3} {m:<8} "
                  f"{'x'.join(map(str, row['input'])):<16} {shape:<16} {ms:>8}  {status}")
    if args.json:  # through a temporary file: an earlier results file stays whole
        tmp = f"{args.json}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"torch": torch.__version__, "ok": ok, "files": results}, f)
        os.replace(tmp, args.json)
    print("all files load and run" if ok else "SOME FILES FAIL in this torch")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
