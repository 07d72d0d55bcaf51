#!/usr/bin/env bash
# CI: build the sdist and, from it, the wheel; install the wheel in a fresh venv (torch 2.13.0
# CPU first, as scripts/setup-env.sh does; the rest from the package index) and check that what
# a user gets is complete: the shipped weights, napari.yaml, the sample data and the licence are
# inside, the npe2 manifest is valid, the shipped weights load, the command runs.
# Works in a temporary folder, removed at the end; about a minute with a warm pip cache, a few without.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/napari-wbc-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
quiet() { "$@" > "$work/log" 2>&1 || { cat "$work/log"; return 1; }; }  # output only if it fails

"${PYTHON:-python3}" -m venv "$work/venv"
py="$work/venv/bin/python"
pip=("$py" -m pip -q --disable-pip-version-check)
quiet "${pip[@]}" install --upgrade pip build
quiet "$py" -m build --outdir "$work/dist" .
wheel=$(ls "$work"/dist/napari_wbc-*.whl)
echo "built $(basename "$wheel") from $(basename "$(ls "$work"/dist/napari_wbc-*.tar.gz)")"

"$py" - "$wheel" <<'EOF'
import sys
import zipfile

wheel = zipfile.ZipFile(sys.argv[1])
names = wheel.namelist()
metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
for field in ("License-Expression: MIT", "Requires-Python: >=3.11", "Project-URL: Homepage"):
    assert field in metadata, f"the wheel's METADATA lacks {field!r}"
need = ["napari_wbc/napari.yaml", "napari_wbc/sample_data/SOURCES.md", "licenses/LICENSE"]
for model in ("mifnet", "celltype"):
    need += [f"napari_wbc/models/weights/{model}/config.json", f"napari_wbc/models/weights/{model}/model.safetensors"]
missing = [n for n in need if not any(name.endswith(n) for name in names)]
if not any(n.startswith("napari_wbc/sample_data/") and n.endswith(".jpg") for n in names):
    missing.append("napari_wbc/sample_data/*.jpg")
if missing:
    sys.exit(f"the wheel lacks {missing}")
print(f"the wheel holds the weights, napari.yaml, sample data and licence ({len(names)} files)")
EOF

quiet "${pip[@]}" install torch==2.13.0
quiet "${pip[@]}" install "$wheel"
cd "$work"  # away from the checkout, so that only the installed package can be imported
venv/bin/npe2 validate napari-wbc
venv/bin/napari-wbc --help > /dev/null
venv/bin/python -c "
import sys
import napari_wbc
assert napari_wbc.__file__.startswith(sys.prefix), napari_wbc.__file__
from napari_wbc.models import load_model
for name in ('mifnet', 'celltype'):
    load_model(name)
print('napari-wbc', napari_wbc.__version__, 'installed from the wheel: the shipped weights load, the command runs')
"
echo "wheel check passed in $((SECONDS - start)) s"
