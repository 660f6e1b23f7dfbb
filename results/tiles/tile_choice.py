"""Why qgsa-tiles chose as it did (results/tiles/accuracy-shapes): for the questions about one object (color, shape,
exist with answer yes) of the shapes-hires test split, how often each tile selector's chosen tiles hold the referent
(the tile of its box centre; objects never straddle tiles), the accuracy when they do and when they do not, and how
often QGSA's scorer (the committed module, over the global view's patches) ranks the referent's tile first when a tile
is scored by the mean of its patch scores (qgsa-tiles' rule) or by their maximum; for the committed post-vision module
and for the module trained at tiles.

    python3 results/tiles/tile_choice.py results/tiles/accuracy-shapes > results/tiles/accuracy-shapes/tile_choice.md
"""

import collections
import json
import sys
from pathlib import Path

import torch

from qgsa_bench.build import build
from qgsa_bench.data import shapes

BASE = "results/tiles/shapes-tiled-base"
CKPTS = {"post-vision module (qgsa-tiles-attr.pt)": "results/tiles/checkpoints/qgsa-tiles-attr.pt",
         "post-vision module on 4x the data (qgsa-tiles-attr-6400.pt)":
             "results/tiles/checkpoints/qgsa-tiles-attr-6400.pt",
         "trained at tiles (qgsa-tiles-trained.pt)": "results/tiles/checkpoints/qgsa-tiles-trained.pt"}


def referent_tile(box) -> int:
    """Row-major index of the 224-px tile holding the box centre ([x, y, w, h] in canvas px)."""
    x, y, w, h = box
    return int((y + h / 2) // 224) * 2 + int((x + w / 2) // 224)


def chosen(out: Path, samples: dict) -> list[str]:
    """Per selector and T: referent in the chosen tiles (%), accuracy with it and without it."""
    lines = ["| selector | T | question type | referent's tile chosen | accuracy when chosen | when not |", "|---|---|---|---|---|---|"]
    for path in sorted(out.glob("eval-tiles-*/predictions.jsonl")):
        groups = collections.defaultdict(list)
        trained = (" (trained at tiles)" if path.parent.name.startswith("eval-tiles-trained") else
                   " (4x data)" if "6400" in path.parent.name else "")
        for r in map(json.loads, path.read_text().splitlines()):
            s = samples[r["id"]]
            if s.box is not None:
                groups[(r["pipeline"] + trained, len(r["selected_tiles"]), s.question_type)].append(
                    (referent_tile(s.box) in r["selected_tiles"], r["score"]))
        for (name, t, kind), rows in sorted(groups.items()):
            hit = [score for h, score in rows if h]
            miss = [score for h, score in rows if not h]
            rate = lambda v: f"{100 * sum(v) / len(v):.1f} % ({len(v)})" if v else "–"  # noqa: E731
            lines.append(f"| {name} | {t} | {kind} | {100 * len(hit) / len(rows):.1f} % of {len(rows)} | "
                         f"{rate(hit)} | {rate(miss)} |")
    return lines


@torch.no_grad()
def scorer_ranks(samples: list, checkpoint: str) -> list[str]:
    """How often the scorer's best tile is the referent's, by the mean (qgsa-tiles) or the max of patch scores."""
    built = build(BASE, "pretrained", "cpu", "fp32", checkpoint=checkpoint)
    a, splitting = built.adapter, built.adapter.splitting()
    hits = collections.defaultdict(list)
    for s in samples:
        views = a.views([s.image], splitting)
        V = a.patch_features(views.pixel_values[-1:])  # the global view (1, 196, d_v)
        scores = built.module.scorer(a.question_embedding([s.question]), V)[0].view(14, 14)  # (14, 14) patches
        tiles = scores.view(2, 7, 2, 7).permute(0, 2, 1, 3).reshape(4, 49)  # each tile's 7 x 7 patches
        want = referent_tile(s.box)
        hits[("mean", s.question_type)].append(int(tiles.mean(1).argmax()) == want)
        hits[("max", s.question_type)].append(int(tiles.max(1).values.argmax()) == want)
    lines = ["| tile score | question type | referent's tile ranked first |", "|---|---|---|"]
    for (rule, kind), v in sorted(hits.items()):
        lines.append(f"| {rule} of its patch scores | {kind} | {100 * sum(v) / len(v):.1f} % of {len(v)} |")
    return lines


def main(out: Path) -> str:
    test = shapes.hires(150, seed=0)  # the 300 questions of the evals (--limit 300, seed 0)
    by_id = {s.id: s for s in test}
    one_object = [s for s in test if s.box is not None]
    return "\n".join(["## Chosen tiles and the referent", "", *chosen(out, by_id), "",
                      *[line for name, path in CKPTS.items() for line in
                        (f"## QGSA's scorer over the global view, {name}: the best tile by mean or max", "",
                         *scorer_ranks(one_object, path), "")]]) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1])), end="")
