#!/usr/bin/env bash
# Create .venv with the CPU build of torch 2.13.0 and rave-deploy (editable) in it.
# A bare `torch` requirement would pull a multi-GB CUDA build: torch is installed first,
# pinned, so nothing else can ask for another one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
