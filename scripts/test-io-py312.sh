#!/usr/bin/env bash
# The torch-free I/O tests (readers, slides, pyramids: pytest marker `io`) on Python 3.12 with
# the newest tifffile, zarr and imagecodecs, what a new Python 3.12 user gets. Neither torch nor
# napari nor Qt is installed, so this also proves that the I/O modules import without them.
# Makes (or updates) .venv312; safe to run again. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON312:-}
if [ -z "$python" ]; then
    if [ -x "$HOME/.pyenv/versions/3.12.1/bin/python" ]; then
        python=$HOME/.pyenv/versions/3.12.1/bin/python
    else
        python=python3.12
    fi
fi
venv=.venv312
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# -qq: errors only (-q still prints warnings, e.g. of extra indexes this machine lacks)
pip() { "$venv/bin/python" -m pip -qq --disable-pip-version-check "$@"; }
pip install --upgrade pip
# the package is installed last, without its dependencies: out of the way meanwhile, so that pip
# does not complain that torch, napari and Qt are missing whenever it upgrades something
pip uninstall -y napari-wbc
pip install --upgrade tifffile zarr imagecodecs numpy scipy scikit-image pillow pandas "dask[array]" pytest
# the package itself, without its dependencies (torch, napari, Qt); the build's chatter only on failure
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! pip install --no-deps -e . >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
"$venv/bin/python" - <<'PY'
import sys

import tifffile
import zarr

import napari_wbc._reader, napari_wbc._slide_layers, napari_wbc.core.pyramid, napari_wbc.core.slide  # noqa: E401,F401

heavy = sorted(m for m in ("torch", "napari", "qtpy", "PyQt6", "magicgui") if m in sys.modules)
assert not heavy, f"the I/O modules imported {heavy}"
print(f"Python {sys.version.split()[0]}: tifffile {tifffile.__version__}, zarr {zarr.__version__}")
PY
# only these files are collected: the others import torch, napari or Qt at the top
tests=(tests/test_io.py tests/test_slide.py tests/test_reader.py tests/test_tifffile_compat.py)
exec "$venv/bin/python" -m pytest -q -m io -p no:cacheprovider "$@" "${tests[@]}"
