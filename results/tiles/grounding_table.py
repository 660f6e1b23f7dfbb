"""The short grounding table of results/tiles/grounding-shapes (README "SmolVLM as it runs"), from the committed
grounding.csv of each run folder (attr/, trained/; `bash results/tiles/grounding.sh`): every selector at every
budget over all questions with a box, IoU / pointing / in box and the tile-level hit, IoU and Jaccard, in %.

    python3 results/tiles/grounding_table.py results/tiles/grounding-shapes > results/tiles/grounding-shapes/table.md
"""

import json
import sys
from pathlib import Path

import pandas as pd

NAMES = {"attr": "post-vision module (qgsa-tiles-attr.pt)", "trained": "module trained at tiles (qgsa-tiles-trained.pt)"}


def cell(value, digits=1) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def main(out: Path) -> str:
    lines = ["| run | selector | budget | kept patches | tiles touched | IoU % | pointing % | in box % | tile hit % | "
             "tile IoU % | tile Jaccard % | in box's tiles % | n |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen_oracles = set()
    meta = {}
    for folder in sorted(p for p in out.iterdir() if (p / "grounding.csv").is_file()):
        meta = json.loads((folder / "meta.json").read_text())
        rows = pd.read_csv(folder / "grounding.csv")
        rows = rows[rows.question_type == "all"]
        order = {label: i for i, label in enumerate(meta["pipelines"])}
        rows = rows.assign(_unit=rows.budget_unit != "tiles", _order=rows.selector.map(order))
        for _, r in rows.sort_values(["_unit", "budget", "_order"]).iterrows():
            oracle = r.selector.startswith("oracle")
            if oracle and (r.selector, r.budget) in seen_oracles:
                continue  # the same box-reading oracle in every run folder
            seen_oracles.add((r.selector, r.budget))
            unit = "tiles" if r.budget_unit == "tiles" else "tokens"
            lines.append(f"| {'–' if oracle else folder.name} | {r.selector} | {int(r.budget)} {unit} | "
                         f"{cell(r.kept_patches_mean)} | {cell(r.get('kept_tiles_mean'), 2)} | {cell(r.mean_iou)} | "
                         f"{cell(r.pointing)} | {cell(r.share_in_box)} | {cell(r.get('tile_hit'))} | "
                         f"{cell(r.get('tile_iou'))} | {cell(r.get('tile_jaccard'))} | {cell(r.get('referent_tile_share'))} | "
                         f"{int(r.n)} |")
    runs = ", ".join(f"{name}/: {text}" for name, text in NAMES.items() if (out / name).is_dir())
    return "\n".join([
        f"# Where the tiles and tokens land: {meta.get('dataset', '?')} ({meta.get('split', '?')}), "
        f"{meta.get('image_input', '?')}", "",
        f"qgsa-tiles' QGSA module per run ({runs}). A tile selector's kept patches: every patch of its chosen tiles "
        "(the global view that comes with it is not counted); a whole-token selector's: those behind its kept visual "
        "tokens over all five views, global-view tokens as their blocks of the whole image. Budgets: tiles besides "
        "the global view, or visual tokens over all views ((T + 1) x 49 = 98, 147).", "", *lines, ""])


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
