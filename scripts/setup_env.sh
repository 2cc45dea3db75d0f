#!/usr/bin/env bash
# Create .venv with the CPU build of torch 2.13.0 and rave-deploy (editable) in it.
# A bare `torch` requirement would pull a multi-GB CUDA build: torch is installed first,
# pinned, so nothing else can ask for another one.
set -euo pipefail
cd "$(dirname "$0")/.."

is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! is_311 "$PY"; then
  echo "error: rave-deploy needs Python 3.11, and $PY is $("$PY" -V 2>&1 || echo missing):" \
       "install Python 3.11, or set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ -e .venv ] && ! is_311 .venv/bin/python; then
  echo "note: .venv is not a working Python 3.11 environment: creating it again" >&2
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# A torch 2.13.0 wheel pip already knows locally (its find-links: this one is the CPU
# build), then its dependencies (plain packages) from the usual index; else the CPU build
# from PyTorch's own index. PyPI's default build bundles CUDA.
if .venv/bin/python -m pip install -q --no-index --no-deps "torch==2.13.0" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"   # torch is there: its dependencies
else
  .venv/bin/python -m pip install -q "torch==2.13.0" \
    --index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install -q -e ".[test]"
