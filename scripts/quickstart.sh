#!/usr/bin/env bash
# The README's main command: set up .venv (CPU torch), then synthesise data, train a
# BRAVE-sized model for a few minutes, export it to every target and check each export.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python examples/quickstart.py "$@"
