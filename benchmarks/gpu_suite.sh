#!/usr/bin/env bash
# The GPU suite: SmolVLM-256M and -500M (random weights, bf16) swept at batch 1 and 8 with the timing
# statistics (an A/A pair dense,dense among the pipelines), SmolVLM-256M also compiled (torch.compile
# reduce-overhead: CUDA graphs) beside eager, the ablation; LLaVA-1.5-7B (random weights, bf16) at 576 / 192 /
# 128 / 64 visual tokens for dense and the field's selectors at batch 1 and 8; the selectors on SmolVLM-256M
# at 576 px (inside the encoder too) at batch 8; and the report, in at most 9 minutes on one H100/H200,
# writing at most 8 files into OUT (no fvcore there: latency only, FLOPs are counted on the CPU):
#   sweep-smolvlm-256m.csv sweep-smolvlm-500m.csv ablate.csv budget-llava.csv budget-selectors.csv meta.json
#   report.md suite.log
# usage: bash benchmarks/gpu_suite.sh OUT            (on the GPU machine; see ../shared/gpu/README.md)
#        bash benchmarks/gpu_suite.sh OUT --quick    (CI on the CPU: the tiny model, two sizes, a few rounds)
set -euo pipefail
OUT=${1:?usage: bash benchmarks/gpu_suite.sh OUT [--quick]}
QUICK=${2:-}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
QGSA=${QGSA:-qgsa}
command -v "$QGSA" >/dev/null 2>&1 || QGSA="python3 -m qgsa_bench.cli"
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ "$QUICK" = "--quick" ]; then
  MODELS="tiny"; SIZES="64 80"; BATCHES="1 2"; DEVICE="--device cpu --dtype fp32"; COMPILED="tiny"
  COMPILE="default"; TIMING="--reps 3 --warmup 1"; ABLATE_RES=64; ABLATE_TIMING="--reps 2 --warmup 0"; K=5
  LLAVA="llava-tiny"; LLAVA_RES=84; LLAVA_BUDGETS="16 4"; SEL_RES=64; INSIDE="random@vision:1"
  BUDGET_TIMING="--reps 2 --warmup 1"
else
  MODELS="smolvlm-256m smolvlm-500m"; SIZES="384 768"; BATCHES="1 8"; DEVICE="--device cuda --dtype bf16"
  COMPILED="smolvlm-256m"; COMPILE="reduce-overhead"
  TIMING="--reps auto --max-time 60 --warmup 3"; ABLATE_RES=512; ABLATE_TIMING="--reps 20 --warmup 3"; K=17
  LLAVA="llava-1.5-7b"; LLAVA_RES=336; LLAVA_BUDGETS="192 128 64"; SEL_RES=576; INSIDE="random@vision:3"
  BUDGET_TIMING="--reps auto --max-time 45 --warmup 3"
fi
{
  echo "# gpu_suite.sh $QUICK: $(date -u +%FT%TZ) on $(hostname)"
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
    'cuda', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
  for m in $MODELS; do
    c=none; [ "$m" = "$COMPILED" ] && c=$COMPILE
    # shellcheck disable=SC2086
    $QGSA sweep-resolution --model "$m" --weights random $DEVICE --sizes $SIZES --batch $BATCHES --k $K \
      --pipelines dense,dense,dense-bypass,qgsa,random --compile $c $TIMING --decode-tokens 8 --out "$WORK/sweep-$m"
  done
  # shellcheck disable=SC2086
  $QGSA ablate --model "${MODELS##* }" --weights random $DEVICE --resolution $ABLATE_RES --k $K $ABLATE_TIMING \
    --decode-tokens 8 --out "$WORK/ablate"
  for b in $BATCHES; do
    # shellcheck disable=SC2086
    $QGSA sweep-budget --model "$LLAVA" --weights random $DEVICE --resolution $LLAVA_RES --budgets $LLAVA_BUDGETS \
      --batch "$b" --pipelines dense,random,fastv,pdrop,visionzip,divprune $BUDGET_TIMING --decode-tokens 8 \
      --no-flops --out "$WORK/budget-llava-b$b"
  done
  # shellcheck disable=SC2086
  $QGSA sweep-budget --model "${MODELS%% *}" --weights random $DEVICE --resolution $SEL_RES --shares 0.1 0.25 \
    --batch "${BATCHES##* }" --pipelines "dense,qgsa,$INSIDE,qgsa-vision,fastv,visionzip,divprune,downsample" \
    $BUDGET_TIMING --decode-tokens 8 --no-flops --out "$WORK/budget-selectors"
  $QGSA report --results "$WORK" --out "$WORK/report"
} 2>&1 | tee "$OUT/suite.log"
for m in $MODELS; do cp "$WORK/sweep-$m/sweep.csv" "$OUT/sweep-$m.csv"; done
cp "$WORK/ablate/ablate.csv" "$OUT/ablate.csv"
cp "$WORK/budget-selectors/budget.csv" "$OUT/budget-selectors.csv"
python3 - "$WORK" "$OUT" <<'PY'
import json, sys
from pathlib import Path

import pandas as pd

work, out = Path(sys.argv[1]), Path(sys.argv[2])
metas = {p.parent.name: json.loads(p.read_text()) for p in sorted(work.glob("*/meta.json"))}
(out / "meta.json").write_text(json.dumps({"suite": "benchmarks/gpu_suite.sh", "runs": metas}, indent=1) + "\n")
parts = [pd.read_csv(p) for p in sorted(work.glob("budget-llava-b*/budget.csv"))]
pd.concat(parts).to_csv(out / "budget-llava.csv", index=False)  # one file: every batch size (column batch)
PY
sed "s#$WORK/##g; /^!\[/d" "$WORK/report/report.md" > "$OUT/report.md"  # figures stay behind: 8 files come back
ls -1 "$OUT"
