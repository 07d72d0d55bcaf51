#!/usr/bin/env bash
# The prepared run for a session lent the GPU machine (issue 12): the cell-type classifier's
# recipes trained side by side, each to the end of its schedule, which two CPU cores cannot
# afford (one 64 px run takes 7 min there, one 96 px run over an hour). One command of about
# 8 minutes; what it brings back is judged here, on the val splits (bench/celltype_val.py),
# and the one kept on the test splits (bench/celltypes.py).
#   1. the machine: GPU, torch, CUDA, cores                                      (seconds)
#   2. the examples cut at each crop from the kept segmentations and rulers     (about 1 min)
#   3. RUNS trainings at once, each with its own batch workers                  (TRAIN_MIN)
# Writes under OUT: session.log, machine.txt, and one tar per crop of each run's weights,
# config, history and card (runs_<crop>.tar).
#
# Here, first (the same script on the CPU, tiny, about 3 minutes):
#   DRY=1 PY=.venv/bin/python bash bench/gpu_session.sh /tmp/gpu-dry
# Once, here, before the device run: the datasets and the kept segmentations (with their
# rulers: any classifier run's OUT/segmented_*.npz) travel as .data
#   echo /.data/ >> .git/info/exclude; cp -r ../shared/datasets .data
#   mkdir -p .data/celltype-cache && cp runs/celltype/segmented_*.npz .data/celltype-cache/
# There (the device tool):  run(command="bash bench/gpu_session.sh $OUT", carry=[".data"], timeout_s=600)
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_session.sh OUT_DIR}
PY=${PY:-python3}
DRY=${DRY:-0}
CACHE=${CACHE:-.data/celltype-cache}
WORK=${WORK:-/tmp/napari-wbc-gpu}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT" "$WORK"
# the datasets: ../shared/datasets here, .data there
if [ ! -d ../shared/datasets ] && [ -d .data ]; then
  mkdir -p ../shared && ln -s "$PWD/.data" ../shared/datasets
fi
DATA=../shared/datasets
# run name, crop, seed, augmentation on top of the recipe's (- for none), steps; RUNS and
# TRAIN_MIN from the environment replace the device run's
if [ "$DRY" = 1 ]; then
  DEVICE=cpu WORKERS=1 TRAIN_MIN=3 VAL_EVERY=5
  RUNS="c64-s0 64 0 - 10
c96-s0 96 0 stain_p=0.5 10"
else
  DEVICE=cuda WORKERS=2 TRAIN_MIN=${TRAIN_MIN:-5.5} VAL_EVERY=250
  RUNS=${RUNS:-"c64-s0 64 0 - 5000
c64-s1 64 1 - 5000
c64-s2 64 2 - 5000
c64-p5-s0 64 0 stain_p=0.5 5000
c64-p5-s1 64 1 stain_p=0.5 5000
c96-s0 96 0 - 3000
c96-s1 96 1 - 3000
c96-p5-s0 96 0 stain_p=0.5 3000"}
fi
CROPS=$(echo "$RUNS" | awk '{print $2}' | sort -u)
log() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$OUT/session.log"; }

log "1. the machine"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  echo "cores: $(nproc --all)"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  $PY -c "import sys, napari_wbc.core.train_classifier; print('core imports without Qt:', 'qtpy' not in sys.modules)"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" >>"$OUT/session.log"

log "2. examples at crops $(echo $CROPS)"
for crop in $CROPS; do
  for split in train val; do
    mkdir -p "$WORK/cut$crop-$split"
    cp "$CACHE/segmented_$split.npz" "$WORK/cut$crop-$split/"
    $PY - "$WORK/cut$crop-$split" "$split" "$crop" "$DATA" >>"$OUT/session.log" 2>&1 <<'EOF' &
import sys, time
from napari_wbc.core.celltype_data import cached_examples
from napari_wbc.models import load_model
out, split, crop, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t = time.time()
ex = cached_examples(out, [f"{data}/{d}" for d in ("zheng_d1", "zheng_d2", "bccd")], split,
                     load_model(device="cpu"), "cpu", crop, 1.5)
print(f"crop {crop} {split}: {len(ex['target'])} examples in {time.time() - t:.0f} s")
EOF
  done
done
wait
log "examples cut"

log "3. the runs, $TRAIN_MIN min at most, on $DEVICE"
while read -r name crop seed aug steps; do
  run="$WORK/runs/$name"
  mkdir -p "$run"
  cp "$WORK/cut$crop-train/examples_train.npz" "$WORK/cut$crop-train/segmented_train.npz" \
    "$WORK/cut$crop-val/examples_val.npz" "$WORK/cut$crop-val/segmented_val.npz" "$run/"
  extra=()
  [ "$aug" = - ] || extra=(--augment "$aug")
  # --time-limit ends a run in time with its best weights; the schedule is set by the steps
  $PY -m napari_wbc.cli train --model celltype --data $DATA/zheng_d1 $DATA/zheng_d2 $DATA/bccd \
    --out "$run" --patch "$crop" --seed "$seed" --max-steps "$steps" --val-every "$VAL_EVERY" \
    --workers "$WORKERS" --device "$DEVICE" --time-limit "$TRAIN_MIN" "${extra[@]}" \
    >"$run/train.log" 2>&1 &
done <<<"$RUNS"
wait
for run in "$WORK"/runs/*; do
  log "$(basename "$run"): $(tail -c 400 "$run/train.log" | tr '\r' '\n' | grep -E 'trained|Error|error' | tail -2)"
done

log "4. the weights back"
for crop in $CROPS; do
  (cd "$WORK/runs" && tar cf "$OUT/runs_$crop.tar" \
    $(for r in c$crop-*; do for f in model.safetensors config.json history.json CARD.md; do echo "$r/$f"; done; done) \
    2>>"$OUT/session.log")
done
ls -la "$OUT" >>"$OUT/session.log"
log "done"
