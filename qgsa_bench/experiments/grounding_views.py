"""`qgsa grounding --image-splitting`: where a selection lands on the model's own views (tiles + a global view),
in the ORIGINAL image's pixels (issue 19).

Every view is a rectangle of the original image (models/views.Views.view_boxes: tile (r, c) its cell of the
rows x cols grid over the whole image, the global view the whole image), and a view's g x g patches divide its
rectangle evenly; so a kept patch of the joint frame (patch p of view j is j * N + p, `Result.selected_patches`)
is a rectangle of the original image (metrics.view_patch_boxes): a tile's patch a small one (on SmolVLM 1/16 of
a tile's 512-px side after the processor's resize), a global-view patch a block of the whole image rows x cols
times larger in area.

What counts as kept:
  whole-token selectors (post-vision, vision:L, lm:K over all views, hired): the patches behind their kept visual
      tokens, global-view tokens included, each grounded as the block of the whole image it covers. The selector
      chose them among all views, so they are its answer to "where": a selector that keeps global-view tokens
      gets coarse regions, and that is what it kept.
  tile selectors (qgsa-tiles, random-tiles; budget in tiles): every patch of the chosen tiles, i.e. the tiles'
      rectangles (tile-level). The global view is NOT counted: it always comes with every tile selector, chosen
      by none of them and the same whatever the question, so counting its 64 tokens (the whole image) would
      give every tile selector the whole image's hull and hide the choice being measured. `global-only` keeps no
      tile, so it has nothing to ground and is refused (as dense is).
The metrics of the one-view grounding on these rectangles (hull IoU with the box, pointing game on the kept
patches' centres, share of kept patches whose centre lies in the box), plus tile-level ones for every pipeline
on the tiles it *touches* (a tile selector: its chosen tiles; any other: the tiles holding at least one of its
kept tokens; the global view is no tile):
  tile_hit      the referent's box centre lies in a touched tile (edges included)
  tile_iou      IoU of the convex hull of the touched tiles' rectangles with the box
  tile_jaccard  |touched ∩ referent tiles| / |touched ∪ referent tiles|, the referent tiles being those the box
                overlaps (positive area)
  referent_tile_share  the share of the kept tile patches (the global view's left out) that lie in a referent
                tile: where a selection puts its tile tokens (chance: the referent tiles' share of the tiles; 0 when it
                keeps no tile patch)
Oracles: `oracle-tiles` at each tile budget T keeps the referent tiles, most overlapped first, at most T (hit 1,
Jaccard 1 where the box lies in at most T tiles; its IoU is the box's area over its tiles' hull: the tile-level
ceiling); `oracle@tokens` at a budget of b visual tokens: the one-view oracle (metrics.oracle_patches, at most 4
corner patches spanning the best grid-aligned rectangle) on the patch grid of the tile holding the box's centre
(an unsplit image: its one view), the finest patches the model has there.
"""

from __future__ import annotations

from qgsa_bench.metrics import (box_centres, boxes_hull_iou, centres_pointing_hit, centres_share_in_box,
                                oracle_patches, view_patch_boxes)

TILE_ORACLE = "oracle-tiles"
GLOBAL_VIEW_RULE = ("tile selectors: the chosen tiles' rectangles (every patch of each chosen tile); the global view "
                    "that comes with every tile selector is not counted (chosen by none, the same whatever the "
                    "question: the whole image). Whole-token selectors: every kept token, a global-view token as its "
                    "block of the whole image")
TILE_RULE = ("tiles touched = a tile selector's chosen tiles, else the tiles holding a kept token; tile_hit: the box "
             "centre lies in a touched tile; tile_iou: hull of the touched tiles with the box; tile_jaccard: touched "
             "vs the tiles the box overlaps; referent_tile_share: the share of the kept tile patches in the box's tiles")


def _overlap(rect, box) -> float:
    x0, y0, x1, y1 = rect
    w = min(x1, box[0] + box[2]) - max(x0, box[0])
    h = min(y1, box[1] + box[3]) - max(y0, box[1])
    return max(w, 0.0) * max(h, 0.0)


def _inside(point, rect) -> bool:
    return rect[0] <= point[0] <= rect[2] and rect[1] <= point[1] <= rect[3]


def referent_tiles(view_boxes, box) -> list[int]:
    """The tiles (row-major indices; `view_boxes` without its last, the global view) that box [x, y, w, h]
    overlaps with positive area, the largest overlap first (ties: the lower index)."""
    tiles = view_boxes[:-1]
    overlaps = [(-_overlap(rect, box), t) for t, rect in enumerate(tiles) if _overlap(rect, box) > 0]
    return [t for _, t in sorted(overlaps)]


def centre_view(view_boxes, box) -> int:
    """The view whose patches are finest where box [x, y, w, h] lies: the first tile holding its centre, else the
    global view (the last; an unsplit image's one view)."""
    centre = (box[0] + box[2] / 2, box[1] + box[3] / 2)
    return next((t for t, rect in enumerate(view_boxes[:-1]) if _inside(centre, rect)), len(view_boxes) - 1)


def tile_patches(tiles, n: int) -> list[int]:
    """Every patch of `tiles` in the joint frame (patch p of view j is j * n + p; a tile is view j = its index)."""
    return [t * n + p for t in sorted(tiles) for p in range(n)]


def kept_patches(record: dict) -> list[int]:
    """A split-image record's kept patches in the joint frame: its `patches`, or for a tile selector (and
    `oracle-tiles`), whose records keep only `tiles`, every patch of them."""
    if record.get("patches") is not None:
        return record["patches"]
    return tile_patches(record["tiles"], record["grid"] ** 2)


def kept_rects(record: dict) -> list[tuple[float, float, float, float]]:
    """A split-image record's kept patches as rectangles (x0, y0, x1, y1) in original pixels, in joint order."""
    return view_patch_boxes(kept_patches(record), record["grid"], record["view_boxes"])


def split_record(sample, label: str, budget, unit: str, k, patches, tiles, views, b: int, grid: int,
                 extra: dict | None = None) -> dict:
    """One (sample, pipeline, budget) record on split images. `patches`: the kept patches in the joint frame
    (indices in [0, views x grid^2)), or None for a tile selector, whose kept patches are every patch of `tiles`
    (its chosen tiles, row-major); `tiles` None: the tiles the kept patches touch. Fields: those of the one-view
    record (`iou`, `pointing`, `share_in_box` on the kept patches' rectangles in original pixels; `n_patches`) and
    `views`, `grid_tiles` (rows, cols), `grid` (patches per view side), `view_boxes` (each view's rectangle in
    original pixels), `tiles` (touched), `referent_tiles`, `global_patches` (kept patches of the global view),
    `tile_hit` (0/1), `tile_iou`, `tile_jaccard`, `referent_tile_share` (0..1; all four None for an unsplit image,
    which has no tile)."""
    boxes = views.view_boxes(b)
    n, n_tiles = grid * grid, views.counts[b] - 1
    if tiles is None:
        tiles = sorted({p // n for p in patches if p // n < n_tiles})
    record = {"id": sample.id, "pipeline": label, "budget": budget, "unit": unit, "question": sample.question,
              "question_type": sample.question_type, "box": list(sample.box), "width": views.sizes[b][1],
              "height": views.sizes[b][0], "image_index": sample.extra.get("image_index"),
              "referent": sample.extra.get("referent"), "k": None if k is None else int(k), "patches": patches,
              "views": views.counts[b], "grid_tiles": list(views.grids[b]), "grid": grid,
              "view_boxes": [list(r) for r in boxes], "tiles": list(tiles), **(extra or {})}
    joint = kept_patches(record)
    rects = view_patch_boxes(joint, grid, boxes)
    centres = box_centres(rects)
    box = sample.box
    record.update(n_patches=len(joint), global_patches=sum(p // n == n_tiles for p in joint),
                  iou=round(boxes_hull_iou(rects, box), 6), pointing=int(centres_pointing_hit(centres, box)),
                  share_in_box=round(centres_share_in_box(centres, box), 6))
    if not n_tiles:
        return {**record, "referent_tiles": [], "tile_hit": None, "tile_iou": None, "tile_jaccard": None,
                "referent_tile_share": None}
    ref = referent_tiles(boxes, box)
    centre = (box[0] + box[2] / 2, box[1] + box[3] / 2)
    union = set(tiles) | set(ref)
    in_tiles = [p // n for p in joint if p // n < n_tiles]  # the kept tile patches' tiles
    return {**record, "referent_tiles": ref, "tile_hit": int(any(_inside(centre, boxes[t]) for t in tiles)),
            "tile_iou": round(boxes_hull_iou([boxes[t] for t in tiles], box), 6),
            "tile_jaccard": round(len(set(tiles) & set(ref)) / len(union), 6) if union else 0.0,
            "referent_tile_share": round(sum(t in ref for t in in_tiles) / len(in_tiles), 6) if in_tiles else 0.0}


def result_record(result, b: int, sample, label: str, budget, unit: str, grid: int) -> dict:
    """The record of sample b of a Result on split images (`split_record`): a tile selector's chosen tiles
    (`Result.selected_tiles`, k = their number), or a whole-token selector's kept patches (`selected_patches`,
    k = its kept visual tokens), VisionZip's merged tokens counted apart (`merged_tokens`)."""
    if result.spec.point.kind == "tiles":
        tiles = result.selected_tiles(b)
        return split_record(sample, label, budget, unit, len(tiles), None, tiles, result.views, b, grid)
    merged = result.merged_patches(b)
    extra = {} if merged is None else {"merged_tokens": len(merged)}
    return split_record(sample, label, budget, unit, result.kept(b), result.selected_patches(b), None, result.views,
                        b, grid, extra)


def oracle_tiles_record(sample, views, b: int, budget: int, grid: int) -> dict:
    """`oracle-tiles` at `budget` tiles: the referent tiles, most overlapped first, at most `budget`."""
    tiles = referent_tiles(views.view_boxes(b), sample.box)[:budget]
    return split_record(sample, TILE_ORACLE, budget, "tiles", len(tiles), None, sorted(tiles), views, b, grid)


def oracle_tokens_record(sample, views, b: int, budget, k_tokens: int, s2: int, grid: int, label: str) -> dict:
    """`oracle@tokens` on split images at k_tokens visual tokens: the one-view oracle (at most k_tokens x s2
    patches, s2 the patches of a visual token; metrics.oracle_patches)
    on the patch grid of the view finest where the box lies (`centre_view`), in the joint frame."""
    boxes = views.view_boxes(b)
    j = centre_view(boxes, sample.box)
    x0, y0, x1, y1 = boxes[j]
    box = sample.box
    local = oracle_patches(grid, x1 - x0, y1 - y0, [box[0] - x0, box[1] - y0, box[2], box[3]], min(int(k_tokens) * s2, 4))
    patches = [j * grid * grid + p for p in local]
    return split_record(sample, label, budget, "visual tokens", k_tokens, patches,
                        None, views, b, grid)
