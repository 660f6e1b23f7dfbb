#!/usr/bin/env bash
# Where a selection lands on the model's own views (issue 19; README "SmolVLM as it runs", "Where the tiles and
# tokens land"), from a fresh clone on the shared 2-core CPU: the committed tiled base (results/tiles/shapes-tiled-base,
# 2 x 2 tiles of 224 px + a global view, 49 visual tokens per view) on the shapes-hires test split (seed 0), each
# image as the model's processor splits it; tile selectors at T = 1, 2 tiles, the whole-token peers at the same
# visual tokens, (T + 1) x 49 = 98, 147, over all five views:
#   attr/     qgsa-tiles with the post-vision module (qgsa-tiles-attr.pt), random-tiles, hired, random@post-vision
#             and qgsa@post-vision (the same module, whole tokens over all views)
#   trained/  qgsa-tiles with the module trained where it chooses (qgsa-tiles-trained.pt, train --insert tiles)
# then the short table (grounding_table.py). OMP_NUM_THREADS=1 as in accuracy.sh; a finished folder is skipped.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
QGSA=${QGSA:-qgsa}
OUT=${OUT:-results/tiles/grounding-shapes}
LIMIT=${LIMIT:-300}
BASE=results/tiles/shapes-tiled-base
COMMON=(--model "$BASE" --device cpu --dataset shapes-hires --split test --limit "$LIMIT" --image-splitting --batch 8)

$QGSA grounding "${COMMON[@]}" --pipelines qgsa-tiles,random-tiles,hired,random@post-vision,qgsa@post-vision \
  --tiles 1 2 --budgets 98 147 --checkpoint results/tiles/checkpoints/qgsa-tiles-attr.pt --out "$OUT/attr"
$QGSA grounding "${COMMON[@]}" --pipelines qgsa-tiles --tiles 1 2 \
  --checkpoint qgsa-tiles=results/tiles/checkpoints/qgsa-tiles-trained.pt --out "$OUT/trained"
python3 results/tiles/grounding_table.py "$OUT" > "$OUT/table.md"
cat "$OUT/table.md"
