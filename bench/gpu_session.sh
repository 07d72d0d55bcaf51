#!/usr/bin/env bash
# The prepared run for a session that is lent the GPU machine (issues 12, 13, 16): one
# command of at most ~9 minutes that writes its logs, figures and weights under OUT.
#   1. the machine: GPU, torch, CUDA, cupy                                     (seconds)
#   2. the cell-type classifier trained on the GPU, from the examples MIF-Net found in
#      the train and val splits (kept segmentations make this a cut, not a segmentation)   (4.5 min)
#   3. its figures on the three test splits and the GPU time per field (bench/celltypes.py)   (<= 3 min)
# Each stage has a time limit, so the run ends in time and what finished comes back.
#
# Here, first (the same script on the CPU, tiny, about 5 minutes):
#   DRY=1 PY=.venv/bin/python bash bench/gpu_session.sh /tmp/gpu-dry
# Once, here, before the device run: the datasets and the kept segmentations travel as .data
#   echo /.data/ >> .git/info/exclude; cp -r ../shared/datasets .data
#   mkdir -p .data/celltype-cache && cp runs/celltype/segmented_*.npz .data/celltype-cache/
# There (the device tool):  run(command="bash bench/gpu_session.sh $OUT", carry=[".data"], timeout_s=600)
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_session.sh OUT_DIR}
PY=${PY:-python3}
DRY=${DRY:-0}
CACHE=${CACHE:-.data/celltype-cache}
WORK=${WORK:-/tmp/napari-wbc-gpu}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
# the datasets: ../shared/datasets here, .data there (bench/ scripts read ../shared/datasets)
if [ ! -d ../shared/datasets ] && [ -d .data ]; then
  mkdir -p ../shared && ln -s "$PWD/.data" ../shared/datasets
fi
DATA=../shared/datasets
if [ "$DRY" = 1 ]; then
  DEVICE=cpu STEPS=20 VAL_EVERY=10 WORKERS=1 SPLITS="zheng_d2" FIELDS=2 TRAIN_MIN=10 EVAL_S=900
  [ -d "$CACHE" ] || CACHE=runs/celltype
else
  DEVICE=cuda STEPS=${STEPS:-6000} VAL_EVERY=250 WORKERS=12 SPLITS="zheng_d1 zheng_d2 bccd" FIELDS=20
  TRAIN_MIN=4.5 EVAL_S=180
fi
log() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$OUT/session.log"; }

log "1. the machine"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  $PY -c "import cupy; print('cupy', cupy.__version__)" 2>&1 || true
  $PY -c "import sys, napari_wbc.core.train_classifier; print('core imports without Qt:', 'qtpy' not in sys.modules)"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" >>"$OUT/session.log"

log "2. the cell-type classifier, $STEPS steps on $DEVICE"
mkdir -p "$WORK/celltype"
cp "$CACHE"/segmented_*.npz "$WORK/celltype/" 2>/dev/null || log "no kept segmentations: MIF-Net segments the splits first"
# --time-limit ends training in time with the best weights and their threshold; timeout is
# only the safety net
timeout 420 $PY -m napari_wbc.cli train --model celltype \
  --data $DATA/zheng_d1 $DATA/zheng_d2 $DATA/bccd --out "$WORK/celltype" --max-steps "$STEPS" \
  --val-every "$VAL_EVERY" --workers "$WORKERS" --device "$DEVICE" --time-limit "$TRAIN_MIN" \
  >"$OUT/train_celltype.log" 2>&1
log "train exit $?"
for f in config.json model.safetensors history.json; do
  cp "$WORK/celltype/$f" "$OUT/celltype_$f" 2>/dev/null || log "no $f"
done

log "3. its figures on the test splits ($SPLITS)"
if [ -f "$WORK/celltype/model.safetensors" ]; then
  # shellcheck disable=SC2086
  timeout "$EVAL_S" $PY bench/celltypes.py --classifier-weights "$WORK/celltype" --device "$DEVICE" \
    --datasets $SPLITS --timing-fields "$FIELDS" --out "$WORK/eval" >"$OUT/celltypes.txt" 2>&1
  log "celltypes exit $?"
fi
log "done"
