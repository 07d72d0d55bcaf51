#!/usr/bin/env bash
# Train the given models on the three datasets' train splits with a short CPU schedule,
# then evaluate each on the three test splits (reports in docs/eval, weights in runs/<model>).
# Usage: bash bench/train_models.sh MODEL:STEPS:BATCH:PATCH ...
#   e.g. bash bench/train_models.sh wbcnet:120:4:160 wcsegnet:150:4:128
# The papers' schedules are thousands of steps on GPUs; on a 2-core CPU these runs are
# budget-limited, and the model cards (runs/<model>/CARD.md) say how long each trained.
set -euo pipefail
DATA=../shared/datasets
PY=${PY:-.venv/bin/python}
for item in "$@"; do
  IFS=: read -r model steps batch patch <<<"$item"
  echo "== $model: $steps steps of $batch x ${patch}px ($(date -u +%H:%M))"
  $PY -m napari_wbc.cli train --model "$model" --data $DATA/zheng_d1 $DATA/zheng_d2 $DATA/bccd \
    --out "runs/$model" --max-steps "$steps" --batch-size "$batch" --patch "$patch" \
    --val-every "$steps" --bf16 --device cpu
  for ds in zheng_d1 zheng_d2 bccd; do
    $PY -m napari_wbc.cli evaluate --dataset $DATA/$ds --split test --weights "runs/$model" \
      --device cpu --out docs/eval | tail -n 12
  done
done
echo "== done ($(date -u +%H:%M))"
