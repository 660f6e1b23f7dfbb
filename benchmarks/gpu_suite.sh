#!/usr/bin/env bash
# The GPU suite, in the order of what is still to measure on a GPU (results/h200/README.md), each step copied
# into OUT as soon as it ends and skipped (logged) when the time left (SUITE_SECONDS, default 540 s) cannot
# hold it, so that a lease that runs short still brings back every finished step:
#   0. SmolVLM-256M on a 2048x2048 photo as its processor splits it (17 views): dense, global-only and the tile
#      selectors at 1 / 2 / 4 tiles, batch 1 and 8     -> budget-selectors.csv (column image_size)
#   1. SmolVLM-256M compiled (torch.compile reduce-overhead: CUDA graphs) beside eager at 384 px, batch 1 and 8
#                                                       -> sweep-smolvlm-256m.csv (column compile)
#   2. LLaVA-1.5-7B (random weights, bf16) at 576 / 192 / 64 visual tokens, dense and the field's selectors,
#      batch 8                                          -> budget-llava.csv (column batch)
#   3. the selectors on SmolVLM-256M at 576 px (inside the encoder too), batch 8 -> rows appended to
#      budget-selectors.csv
#   4. sweep-resolution SmolVLM-500M at 224 384 576, batch 1 and 8 -> sweep-smolvlm-500m.csv
#   5. the ablation on SmolVLM-500M at 512 px         -> ablate.csv
#   6. LLaVA-1.5-7B at batch 1                        -> rows appended to budget-llava.csv
#   7. sweep-resolution SmolVLM-256M at the card's sizes 224 336 384 448 576, batch 1 and 8, eager, an A/A pair
#      dense,dense among the pipelines (5 min on the H200; results/h200/ holds it from 2026-11-30)
#                                                       -> rows appended to sweep-smolvlm-256m.csv
# then meta.json (every run's meta), report.md and suite.log: at most 8 files, as the device returns them.
# fvcore travels as a wheel (../shared/gpu/make-wheels.sh): sweep-resolution and ablate count FLOPs there too;
# the sweep-budget steps time only (--no-flops).
# usage: bash benchmarks/gpu_suite.sh OUT            (on the GPU machine; see ../shared/gpu/README.md)
#        bash benchmarks/gpu_suite.sh OUT --quick    (CI on the CPU: the tiny model, two sizes, a few rounds)
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_suite.sh OUT [--quick]}
QUICK=${2:-}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
QGSA=${QGSA:-qgsa}
command -v "$QGSA" >/dev/null 2>&1 || QGSA="python3 -m qgsa_bench.cli"
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ "$QUICK" = "--quick" ]; then
  SMALL="tiny"; LARGE="tiny"; SIZES="64 80"; SIZES_LARGE=""; BATCHES="1 2"; DEVICE="--device cpu --dtype fp32"
  COMPILE="default"; COMPILE_RES=64; TIMING="--reps 3 --warmup 1"; ABLATE_RES=64; ABLATE_TIMING="--reps 2 --warmup 0"
  K=5; LLAVA="llava-tiny"; LLAVA_RES=84; LLAVA_BUDGETS="16 4"; SEL_RES=64; INSIDE="random@vision:1"; BIG=2
  BUDGET_TIMING="--reps 2 --warmup 1"; COMPILE_TIMING="--reps 3 --warmup 1"; SUITE_SECONDS=${SUITE_SECONDS:-1200}
  TILED="--image-size 200x150 --image-splitting"
else
  SMALL="smolvlm-256m"; LARGE="smolvlm-500m"; SIZES="224 336 384 448 576"; SIZES_LARGE="224 384 576"; BATCHES="1 8"
  DEVICE="--device cuda --dtype bf16"; COMPILE="reduce-overhead"; COMPILE_RES=384
  TIMING="--reps auto --max-time 45 --warmup 3"; ABLATE_RES=512; ABLATE_TIMING="--reps 10 --warmup 3"; K=17
  LLAVA="llava-1.5-7b"; LLAVA_RES=336; LLAVA_BUDGETS="192 64"; SEL_RES=576; INSIDE="random@vision:3"; BIG=8
  BUDGET_TIMING="--reps auto --max-time 30 --warmup 3"; COMPILE_TIMING="--reps 10 --warmup 3"
  TILED="--image-size 2048x2048"
  SUITE_SECONDS=${SUITE_SECONDS:-540}
fi
SECONDS=0
LOG="$OUT/suite.log"
log() { echo "$*" | tee -a "$LOG"; }
# step NAME MIN_SECONDS command...: run when MIN_SECONDS are left, stopped when the suite's time is spent
step() {
  local name=$1 need=$2; shift 2
  local left=$((SUITE_SECONDS - SECONDS))
  if [ "$left" -lt "$need" ]; then log "## $name: skipped ($left s left, needs $need)"; return 0; fi
  log "## $name: started at ${SECONDS} s ($left s left)"
  timeout --signal=INT --kill-after=15 "$left" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "## $name: exit $rc at ${SECONDS} s"
}
# collect FOLDER CSV TARGET: copy (or append to) TARGET in OUT as soon as a step ends
collect() {
  [ -f "$WORK/$1/$2" ] || return 0
  python3 - "$WORK/$1/$2" "$OUT/$3" <<'PY'
import sys
from pathlib import Path

import pandas as pd

new, target = Path(sys.argv[1]), Path(sys.argv[2])
frame = pd.read_csv(new)
if target.exists():
    frame = pd.concat([pd.read_csv(target), frame])
frame.to_csv(target, index=False)
PY
}
{
  echo "# gpu_suite.sh $QUICK: $(date -u +%FT%TZ) on $(hostname)"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
    'cuda', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
} 2>&1 | tee -a "$LOG"
PIPES="dense,dense,qgsa,random"
# SmolVLM as it runs first (issue 19): no GPU has timed the tiled cases yet
for b in $BATCHES; do
  # shellcheck disable=SC2086
  step "budget-tiles-b$b" 45 $QGSA sweep-budget --model "$SMALL" --weights random $DEVICE $TILED --tiles 1 2 4 \
    --batch "$b" --pipelines dense,global-only,qgsa-tiles,random-tiles $BUDGET_TIMING --decode-tokens 8 --no-flops \
    --out "$WORK/budget-tiles-b$b"
  collect "budget-tiles-b$b" budget.csv budget-selectors.csv
done
# shellcheck disable=SC2086
step "sweep-$SMALL-compiled" 90 $QGSA sweep-resolution --model "$SMALL" --weights random $DEVICE \
  --sizes $COMPILE_RES --batch $BATCHES --k $K --pipelines dense,qgsa,random --compile "$COMPILE" $COMPILE_TIMING \
  --decode-tokens 8 --out "$WORK/sweep-$SMALL-compiled"
collect "sweep-$SMALL-compiled" sweep.csv "sweep-$SMALL.csv"
# shellcheck disable=SC2086
step "budget-llava-b$BIG" 60 $QGSA sweep-budget --model "$LLAVA" --weights random $DEVICE --resolution $LLAVA_RES \
  --budgets $LLAVA_BUDGETS --batch "$BIG" --pipelines dense,random,fastv,pdrop,visionzip,divprune $BUDGET_TIMING \
  --decode-tokens 8 --no-flops --out "$WORK/budget-llava-b$BIG"
collect "budget-llava-b$BIG" budget.csv budget-llava.csv
# shellcheck disable=SC2086
step budget-selectors 60 $QGSA sweep-budget --model "$SMALL" --weights random $DEVICE --resolution $SEL_RES \
  --shares 0.1 0.25 --batch "$BIG" --pipelines "dense,qgsa,$INSIDE,qgsa-vision,fastv,visionzip,divprune,downsample" \
  $BUDGET_TIMING --decode-tokens 8 --no-flops --out "$WORK/budget-selectors"
collect budget-selectors budget.csv budget-selectors.csv
if [ -n "$SIZES_LARGE" ]; then
  # shellcheck disable=SC2086
  step "sweep-$LARGE" 60 $QGSA sweep-resolution --model "$LARGE" --weights random $DEVICE --sizes $SIZES_LARGE \
    --batch $BATCHES --k $K --pipelines $PIPES --compile none $TIMING --decode-tokens 8 --out "$WORK/sweep-$LARGE"
  collect "sweep-$LARGE" sweep.csv "sweep-$LARGE.csv"
fi
# shellcheck disable=SC2086
step ablate 45 $QGSA ablate --model "$LARGE" --weights random $DEVICE --resolution $ABLATE_RES --k $K $ABLATE_TIMING \
  --decode-tokens 8 --out "$WORK/ablate"
collect ablate ablate.csv ablate.csv
# shellcheck disable=SC2086
step budget-llava-b1 60 $QGSA sweep-budget --model "$LLAVA" --weights random $DEVICE --resolution $LLAVA_RES \
  --budgets $LLAVA_BUDGETS --batch 1 --pipelines dense,random,fastv,pdrop,visionzip,divprune $BUDGET_TIMING \
  --decode-tokens 8 --no-flops --out "$WORK/budget-llava-b1"
collect budget-llava-b1 budget.csv budget-llava.csv
# shellcheck disable=SC2086
step "sweep-$SMALL" 60 $QGSA sweep-resolution --model "$SMALL" --weights random $DEVICE --sizes $SIZES \
  --batch $BATCHES --k $K --pipelines $PIPES --compile none $TIMING --decode-tokens 8 --out "$WORK/sweep-$SMALL"
collect "sweep-$SMALL" sweep.csv "sweep-$SMALL.csv"
python3 - "$WORK" "$OUT" "$SECONDS" <<'PY'
import json, sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
metas = {p.parent.name: json.loads(p.read_text()) for p in sorted(work.glob("*/meta.json"))}
(out / "meta.json").write_text(json.dumps({"suite": "benchmarks/gpu_suite.sh", "suite_seconds": int(sys.argv[3]),
                                           "runs": metas}, indent=1) + "\n")
PY
$QGSA report --results "$WORK" --out "$WORK/report" 2>&1 | tee -a "$LOG"
[ -f "$WORK/report/report.md" ] && sed "s#$WORK/##g; /^!\[/d" "$WORK/report/report.md" > "$OUT/report.md"
log "# suite done in ${SECONDS} s"
ls -1 "$OUT"
