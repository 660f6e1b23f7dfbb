"""The per-question-type table of results/tiles/accuracy-shapes (README "SmolVLM as it runs"), from the committed
files only: each eval-*/predictions.jsonl (exact match per question) and flops/budget.csv (counted end-to-end FLOPs
of a 448 x 448 image on the tiled base, batch 1, 3 generated tokens).

    python3 results/tiles/accuracy_table.py results/tiles/accuracy-shapes > results/tiles/accuracy-shapes/table.md

qgsa-tiles rows: the committed post-vision module (qgsa-tiles-attr.pt, eval-tiles-t*), the same recipe on 4 x the
training questions (qgsa-tiles-attr-6400.pt, `--limit 6400 --epochs 3`, eval-tiles-attr6400-t*) and the module trained
at tiles (qgsa-tiles-trained.pt, `qgsa train --insert tiles --fixed-k 1`, eval-tiles-trained-t*); qgsa-tiles-max rows:
a tile scored by its best patch, with qgsa-tiles-attr.pt (eval-tiles-max-t*) and qgsa-tiles-attr-6400.pt
(eval-tiles-max6400-t*).
Groups: single-object = color + shape (one object named by its kind); detail = single-object + exist (one object's
colour and shape, or their absence); count needs every object. Accuracy in %, with n questions per type.
"""

import json
import sys
from pathlib import Path

import pandas as pd

TYPES = ("color", "shape", "exist", "count")
GROUPS = {"single-object": ("color", "shape"), "detail": ("color", "shape", "exist"), "all": TYPES}


def records(out: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(out.glob("eval-*/predictions.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            tiles = None if r.get("views") is None else (
                len(r["selected_tiles"]) if r.get("selected_tiles") is not None else r["views"] - 1)
            name = f"{r['pipeline']} T={tiles}" if "-tiles" in r["pipeline"] else r["pipeline"]
            if path.parent.name.startswith("eval-tiles-trained"):  # the module trained at tiles (train --insert tiles)
                name = f"qgsa-tiles trained at tiles T={tiles}"
            if "6400" in path.parent.name:  # the post-vision recipe on 4 x the questions (qgsa-tiles-attr-6400.pt)
                name = f"{r['pipeline']} 4x data T={tiles}"
            if path.parent.name == "eval-one-view-base":
                name = "one-view base at 224 px (results/shapes/base-model, no tiles)"
            rows.append({"row": name, "type": r["question_type"], "score": r["score"], "tiles": tiles,
                         "tokens": r["n_visual_tokens"]})
    return pd.DataFrame(rows)


def flops(out: Path) -> dict:
    table = pd.read_csv(out / "flops" / "budget.csv")
    shares = {}
    for _, r in table.iterrows():
        key = r["pipeline"] if r["pipeline"] in ("dense", "global-only") else f"{r['pipeline']} T={r['budget']}"
        shares[key] = (r["flops_total"] / 1e9, 100 * r["flops_share_of_dense"])
    return shares


def main(out: Path) -> str:
    data, cost = records(out), flops(out)
    head = ["pipeline", *TYPES, *GROUPS, "tiles encoded", "visual tokens", "end-to-end GFLOPs (share of dense)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = ["dense", "global-only"] + [f"{s} T={t}" for t in (1, 2, 4)
                                        for s in ("qgsa-tiles", "qgsa-tiles-max", "qgsa-tiles 4x data",
                                                  "qgsa-tiles-max 4x data", "qgsa-tiles trained at tiles",
                                                  "random-tiles")]
    order += [row for row in data["row"].unique() if row not in order]
    for row in order:
        part = data[data["row"] == row]
        if part.empty:
            continue
        cells = []
        for kinds in [(t,) for t in TYPES] + list(GROUPS.values()):
            sub = part[part["type"].isin(kinds)]
            cells.append(f"{100 * sub['score'].mean():.1f} ({len(sub)})")
        tiles = "–" if part["tiles"].isna().all() else f"{part['tiles'].mean():g}"
        # the same module and scorer: the same counted FLOPs (a maximum or a mean over a tile: elementwise, checked equal)
        g = cost.get(row.replace(" trained at tiles", "").replace(" 4x data", "").replace("-max", ""))
        cells += [tiles, f"{part['tokens'].mean():g}", "–" if g is None else f"{g[0]:.3f} ({g[1]:.1f} %)"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1])), end="")
