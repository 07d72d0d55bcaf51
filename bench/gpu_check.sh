#!/usr/bin/env bash
# Every GPU figure of issue 13 in one run of under 5 minutes on a fresh CUDA machine that has
# torch, cupy, scipy, scikit-image, tifffile and pandas but no napari, Qt, dask or zarr.
# Writes logs and figures under OUT:
#   machine.txt     the GPU, torch, CUDA, cupy; the core imports without Qt
#   precision.log   MIF-Net alone on a 1024^2 tile (fp32 contiguous / channels-last, bf16);
#                   the 73 bccd test fields end to end in fp32 and bf16 (s per field, Dice);
#                   10 fields against the CPU's float32 (the reference)          (bench/precision.py)
#   slides.log      dense 8 x 8 bccd mosaic (5120 x 3840) and the realistic 4096^2 smear patch:
#                   MP/s end to end and busy seconds per stage, bf16 then fp32   (bench/slide_throughput.py)
# Each stage has a time limit, so the run ends in time and what finished comes back.
#
# Here, first: the same script on the CPU, small (about 4 minutes):
#   DRY=1 PY=.venv/bin/python bash bench/gpu_check.sh /tmp/gpu-check-dry
# Once, here, before the device run: the datasets travel as .data, zarr and its needs as .whl
#   echo /.data/ >> .git/info/exclude; cp -r ../shared/datasets .data
#   echo /.whl/ >> .git/info/exclude; bash bench/gpu_check.sh --fetch-wheels
# There (the device tool):  run(command="bash bench/gpu_check.sh $OUT", carry=[".data", ".whl"], timeout_s=420)
set -uo pipefail
WHEELS="zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0"
if [ "${1:-}" = --fetch-wheels ]; then
  mkdir -p .whl
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$w" || exit
  done
  ls .whl
  exit 0
fi
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR   (or --fetch-wheels)}
PY=${PY:-python3}
DRY=${DRY:-0}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
log() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$OUT/check.log"; }
if ! $PY -c "import zarr" 2>/dev/null; then
  if [ -d .whl ]; then  # the slide engine's work folder is a zarr store
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=$PYTHONPATH:/tmp/site
  fi
  $PY -c "import zarr" 2>/dev/null || log "no zarr: the slide figures will fail (bash bench/gpu_check.sh --fetch-wheels)"
fi
# the datasets: ../shared/datasets here, .data there (bench/ scripts read ../shared/datasets)
if [ ! -d ../shared/datasets ] && [ -d .data ]; then
  mkdir -p ../shared && ln -s "$PWD/.data" ../shared/datasets
fi
if [ "$DRY" = 1 ]; then
  DEVICE=cpu FIELDS=3 REF=0 GRID="2 2" SIZE=2048 LIMIT=150
else
  DEVICE=cuda FIELDS=73 REF=10 GRID="8 8" SIZE=4096 LIMIT=150
fi

log "1. the machine"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  nproc
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  $PY -c "import cupy; print('cupy', cupy.__version__)" 2>&1 || true
  $PY -c "import zarr; print('zarr', zarr.__version__)" 2>&1 || true
  $PY -c "import sys, napari_wbc.core.wholeslide; print('core imports without Qt:', 'qtpy' not in sys.modules)"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" >>"$OUT/check.log"

log "2. precision and fields on $DEVICE"
timeout "$LIMIT" $PY bench/precision.py --device "$DEVICE" --fields "$FIELDS" --cpu-reference "$REF" \
  >"$OUT/precision.log" 2>&1
log "precision exit $?"

log "3. slides on $DEVICE"
for precision in auto fp32; do
  # shellcheck disable=SC2086
  timeout "$LIMIT" $PY bench/slide_throughput.py --only dense realistic --workers 0 --device "$DEVICE" \
    --precision "$precision" --grid $GRID --size "$SIZE" >>"$OUT/slides.log" 2>&1
  log "slides ($precision) exit $?"
done
log "done"
