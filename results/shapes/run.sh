#!/usr/bin/env bash
# Reproduce results/shapes from a fresh clone on the 2-core CPU (about 35 minutes):
#   python3 -m pip install -e . && bash results/shapes/run.sh
# 1. base-train a small Idefics3 on generated shapes (every weight, from scratch, 15 minutes);
# 2. train QGSA on the frozen base twice: the paper's objective, and the fix the evidence points to;
# 3. eval (dense, qgsa, random, norm at the same k), grounding (+ question pairs) and a sweep;
# 4. the report.
set -euo pipefail
RUNS=${RUNS:-runs/shapes}
OUT=${OUT:-results/shapes}
BASE=$RUNS/base

[ -f "$BASE/config.json" ] || qgsa base-train --out "$BASE" --steps 2200 --lr 5e-4 --max-minutes 15 --eval-every 300

train() {  # name, extra options
  local name=$1; shift
  [ -f "$RUNS/$name/summary.json" ] || qgsa train --model "$BASE" --dataset shapes --split train --limit 1600 \
      --epochs 2 --batch 8 --warmup-steps 20 --align-encoder lm --cache-features --device cpu --out "$RUNS/$name" "$@"
  qgsa eval --model "$BASE" --dataset shapes --split test --limit 200 --pipelines dense,qgsa,random,norm \
      --checkpoint "$RUNS/$name/checkpoint.pt" --device cpu --out "$OUT/eval-$name"
  qgsa grounding --model "$BASE" --dataset shapes --split test --limit 200 \
      --checkpoint "$RUNS/$name/checkpoint.pt" --device cpu --out "$OUT/grounding-$name"
}
train qgsa-paper                                              # Algorithm 1 as written (L_align via the LM's embeddings)
train qgsa-fix --soft-mask-space logits --lambda-answer 1.0   # see README: why these two changes

qgsa sweep-resolution --model "$BASE" --sizes 224 320 448 --checkpoint "$RUNS/qgsa-fix/checkpoint.pt" \
    --pipelines dense,qgsa,random --device cpu --out "$OUT/sweep"
mkdir -p "$OUT/models"
cp "$BASE/base_train_summary.json" "$OUT/models/base_train_summary.json"
for name in qgsa-paper qgsa-fix; do cp "$RUNS/$name/summary.json" "$OUT/models/$name-summary.json"; done
qgsa report --results "$OUT/eval-qgsa-paper" --results "$OUT/eval-qgsa-fix" --results "$OUT/grounding-qgsa-paper" \
    --results "$OUT/grounding-qgsa-fix" --results "$OUT/sweep" --out "$OUT/report"
