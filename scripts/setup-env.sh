#!/usr/bin/env bash
# Make (or update) .venv: torch 2.13.0 CPU first, so that nothing pulls a CUDA build,
# then napari-wbc in editable mode with napari[pyqt6] and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[testing]"
