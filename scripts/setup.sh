#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment: idempotent, safe to run before every command.
# torch is installed first and pinned to the CPU wheel on this machine's disk; an unpinned torch would pull
# a multi-GB CUDA build. On a GPU machine, set LBW_TORCH to the torch requirement you want (e.g. "torch").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_REQ=${LBW_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.lbw-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_REQ"
  .venv/bin/python -m pip install -q -e ".[dev]"
  rm -f .venv/.lbw-setup-*
  touch "$stamp"
fi
