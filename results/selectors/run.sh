#!/usr/bin/env bash
# Reproduce the selector comparisons (issues 13 and 14) on the 2-core CPU, from a fresh clone:
#   python3 -m pip install -e . && bash results/selectors/run.sh
# 1. LLaVA-1.5-7B counted (no timing: 28 GB in fp32) from depth-reduced copies -> results/cpu-llava
#    (+ llava-tiny latency), and the "where selection pays" counts of SmolVLM-256M/500M;
# 2. QGSA on the shapes base after the encoder (the best recipe of results/shapes) and inside it (vision:2):
#    the committed modules, or trained again with RETRAIN=1; then every selector at 4 budgets on the shapes
#    test split -> results/shapes/budget;
# 3. every selector on SmolVLM-256M (random weights) at 384 and 576 px -> results/cpu-selectors-{384,576}.
set -euo pipefail
RUNS=${RUNS:-runs/shapes}
BASE=results/shapes/base-model
qgsa count-flops --model llava-1.5-7b --resolution 336 --budgets 192 128 64 --out results/cpu-llava
qgsa sweep-budget --model llava-tiny --weights random --device cpu --budgets 16 9 4 --reps 10 \
  --pipelines dense,qgsa,random,fastv,pdrop,sparsevlm,visionzip,divprune,downsample,qgsa-vision \
  --out results/cpu-llava/llava-tiny-latency
for m in smolvlm-256m smolvlm-500m; do  # 7 of 64 visual tokens: LLaVA's 64 of 576 (results/cpu-llava has those)
  qgsa count-flops --model $m --resolution 512 --budgets 7 \
    --pipelines dense,random,fastv,visionzip,qgsa-vision --out results/selection-pays/$m
done

# The two QGSA modules: the committed results/shapes/checkpoints/{qgsa-attr,qgsa-vision2}.pt (issue 22); RETRAIN=1
# trains them again into $RUNS and replaces the committed copies (slim.py) and their summaries.
CKPT=results/shapes/checkpoints
if [ "${RETRAIN:-0}" = 1 ]; then
  COMMON="--model $BASE --dataset shapes --split train --limit 1600 --batch 8 --warmup-steps 20 --align-encoder lm
    --cache-features --device cpu --projection connector --soft-mask-space logits --lambda-answer 1.0 --lr 1e-3 --epochs 6"
  [ -f "$RUNS/qgsa-attr/summary.json" ] || qgsa train $COMMON --lambda-attr 1.0 --out "$RUNS/qgsa-attr"
  [ -f "$RUNS/qgsa-vision2/summary.json" ] || qgsa train $COMMON --insert vision:2 --out "$RUNS/qgsa-vision2"
  python3 $CKPT/slim.py "$RUNS/qgsa-attr" $CKPT/qgsa-attr.pt "$(echo qgsa train $COMMON --lambda-attr 1.0 --out "$RUNS/qgsa-attr")"
  python3 $CKPT/slim.py "$RUNS/qgsa-vision2" $CKPT/qgsa-vision2.pt "$(echo qgsa train $COMMON --insert vision:2 --out "$RUNS/qgsa-vision2")"
  cp "$RUNS/qgsa-vision2/summary.json" results/shapes/models/qgsa-vision2-summary.json
  cp "$RUNS/qgsa-attr/summary.json" results/shapes/models/qgsa-attr-summary.json
fi
qgsa sweep-budget --model $BASE --dataset shapes --split test --limit 400 --device cpu --reps 5 \
  --shares 0.04 0.1 0.25 0.5 \
  --pipelines dense,qgsa,random,random@post-vision,norm@post-vision,fastv,pdrop,sparsevlm,visionzip,divprune,downsample,qgsa-vision@vision:2,random@vision:2 \
  --checkpoint $CKPT/qgsa-attr.pt --checkpoint qgsa-vision=$CKPT/qgsa-vision2.pt \
  --out results/shapes/budget

for size in 384 576; do
  qgsa sweep-budget --model smolvlm-256m --weights random --device cpu --resolution $size --reps 5 \
    --shares 0.04 0.1 0.25 0.5 \
    --pipelines dense,qgsa,random,fastv,pdrop,sparsevlm,visionzip,divprune,downsample,qgsa-vision,random@vision:3 \
    --out results/cpu-selectors-$size
done
qgsa report --out report
