"""`qgsa count-flops --image-size WxH`: FLOPs by stage of images as SmolVLM's processor splits them.

For each image size (a generated picture of that size: FLOPs do not depend on its content), the model's own
views (models/views.py; `--image-splitting/--longest-edge` override its processor's settings), and every
pipeline: dense (every view), the tile selectors at each `--tiles` T (the global view and T tiles encoded),
global-only (the global view alone), and in-LM selectors at each `--budgets` k over all the image's visual
tokens. Counted on the model itself (it must fit in memory), one row per (image size, pipeline, budget), in
the columns of flops.csv. Cross-checks (crosscheck.json): the dense vision stage equals views x one view's
count and the published count per view (timm's SigLIP-B/16 at 512 px, 107.0 GMACs); the dense prefill equals
the analytic count for its prompt length. Raises QGSAError for a budget the image cannot take, a selector
that cannot take split images, or a model without tiles.

`run_count_flops` is the command's entry: it chooses the input once (run/inputs.py) and counts split images here
or one square view with count.run_count.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from qgsa_bench import QGSAError
from qgsa_bench.efficiency.flops import count_flops
from qgsa_bench.experiments.count import (COLUMNS, FLOP_CONVENTION, PUBLISHED_VISION, CountConfig, _fits,
                                          build_text_config, prefill_crosscheck, run_count)
from qgsa_bench.experiments.depth import build_at_depth, count_scaled
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.experiments.measure import peer_formulas
from qgsa_bench.results import run_meta
from qgsa_bench.run.inputs import choose_input, describe_input
from qgsa_bench.run.tiles import check_views, tiles_for_budget, tokens_of_tiles

VIEWS_TABLE = Table("flops.csv", tuple(COLUMNS), ("image_size", "pipeline", "budget"))


def picture(width: int, height: int):
    """The generated test picture (models.images.demo_image) at width x height px."""
    from qgsa_bench.models.images import demo_image

    return demo_image().resize((width, height))


def _cases(cfg, probe, n_tiles: int, n_v: int, size: str) -> list[tuple]:
    """(spec, budget as given, its unit, the run's k) of every case at one image: tile selectors at each --tiles
    (in --tile-unit; k = T tiles), the others at each --budgets k, or with --budgets-from-tiles at the visual
    tokens of each tile budget ((T + 1) x n_v, the peers at equal visual tokens). QGSAError for a case the image
    cannot take."""
    tile_ks = None
    n_tokens = (n_tiles + 1) * n_v
    cases = []
    for spec in cfg.specs:
        bound = probe.run(spec).spec
        check_views(bound)
        if bound.selector.keeps_all or bound.selector.keeps_no_tiles:
            cases.append((spec, None, None, None))
            continue
        if not n_tiles and (bound.point.kind == "tiles" or cfg.budgets_from_tiles):
            what = "chooses among tiles" if bound.point.kind == "tiles" else "takes its budgets from tiles"
            raise QGSAError(f"{spec.text} {what}, and the {size} image is one view (image splitting off "
                            f"or an image within one tile): pass --image-splitting, or drop {spec.text}")
        if bound.point.kind == "tiles" or cfg.budgets_from_tiles:
            tile_ks = tile_ks or [(b, tiles_for_budget(b, cfg.tile_unit, n_v, n_tiles, f"{spec.text} on the {size} "
                                                       f"image")) for b in cfg.tiles]
        if bound.point.kind == "tiles":
            cases += [(spec, b, cfg.tile_unit, T) for b, T in tile_ks]
            continue
        budgets = [tokens_of_tiles(T, n_v) for _, T in tile_ks] if cfg.budgets_from_tiles else cfg.budgets
        for budget in budgets:
            if not 1 <= budget <= n_tokens:
                raise QGSAError(f"{spec.text} at {budget} tokens is impossible for the {size} image: it has {n_tokens} "
                                f"tokens (--budgets 1 .. {n_tokens})")
            cases.append((spec, budget, "tokens", budget))
    return cases


def run_count_flops(cfg: CountConfig, progress=None, warn=None) -> Path:
    """`qgsa count-flops`: the image input chosen once (run/inputs.py: with neither --resolution nor
    --image-size, the model's own views of a square photo at its longest edge where it splits, e.g. 2048 x 2048
    in 17 views on SmolVLM; otherwise one square view), then counted over split images (run_count_views) or one
    square view (count.run_count). The results folder. Raises QGSAError for bad input before any count (a local model
    directory included: the counts are built from a registry preset)."""
    from qgsa_bench.models.registry import available_models

    if cfg.model not in available_models():
        raise QGSAError(f"count-flops builds its copies from a registry preset ({', '.join(available_models())}), and "
                        f"'{cfg.model}' is none: count a local model directory with `qgsa sweep-budget --model "
                        f"{cfg.model}` (FLOPs by stage, counted, beside the timing)")
    if not cfg.image_sizes and cfg.resolution is None:
        probe = build_at_depth(cfg.model, 1)
        splitting = choose_input(probe.adapter, None, cfg.splitting, cfg.longest_edge, cfg.specs,
                                 cfg.one_view_only(), warn)
        if splitting is not None:
            cfg = replace(cfg, image_sizes=((splitting.longest_edge, splitting.longest_edge),))
    if not cfg.image_sizes:
        tiles = [s.text for s in cfg.specs if s.at_tiles]
        if tiles:
            raise QGSAError(f"{tiles[0]} chooses among the tiles of a split image: give --image-size WIDTHxHEIGHT "
                            f"(and --image-splitting where the model's own setting is off)")
        if cfg.budgets_from_tiles:
            raise QGSAError("--budgets-from-tiles sets the budgets from the tiles of a split image: give --image-size")
        if cfg.splitting is not None or cfg.longest_edge is not None:
            raise QGSAError("--image-splitting and --longest-edge describe the model's own views of an image, and "
                            "this count is one square view: give --image-size WIDTHxHEIGHT, or drop them")
        return run_count(cfg, progress, warn)
    return run_count_views(cfg, progress, warn)


def run_count_views(cfg, progress=None, warn=None) -> Path:
    """count-flops over `cfg.image_sizes` (CountConfig); the results folder."""
    from qgsa_bench.models.registry import load_preset

    if load_preset(cfg.model).get("family") != "idefics3":
        raise QGSAError(f"{cfg.model} takes one view (no tiles): count it with --resolution, or use a SmolVLM model "
                        f"(smolvlm-256m, smolvlm-500m) with --image-size")
    if cfg.budget_unit != "tokens" or cfg.by_depth == "yes":
        raise QGSAError("count-flops --image-size counts the model itself with budgets in visual tokens after the last "
                        "cut: drop --budget-unit layer-avg and --by-depth yes")
    if not _fits(cfg.model):
        raise QGSAError(f"count-flops --image-size counts {cfg.model} itself, which does not fit in free memory here: "
                        f"use a smaller model, or count one square view (--resolution) on depth-reduced copies")
    probe = build_at_depth(cfg.model, build_text_config(cfg.model).num_hidden_layers)  # the model itself
    a = probe.adapter
    vision_depth, patch, width_v = a.vision_depth, a.patch_size, a.d_v
    splitting = a.splitting(cfg.splitting, cfg.longest_edge)
    n_v = a.n_dense_tokens(splitting.tile)  # visual tokens per view
    plans, made = [], {}
    for width, height in cfg.image_sizes:
        views = a.views([picture(width, height)], splitting)
        size = f"{width}x{height}"
        made[size] = views.describe(0)  # scaled up or stretched, as the processor did
        plans.append((size, views.counts[0], _cases(cfg, probe, views.counts[0] - 1, n_v, size)))
    settings = {"model": cfg.model, "image_sizes": [p[0] for p in plans], "splitting": vars(splitting),
                "batch": cfg.batch, "decode_tokens": cfg.decode_tokens, "question": cfg.question,
                "budgets": "the visual tokens of each tile budget" if cfg.budgets_from_tiles else list(cfg.budgets),
                "tiles": list(cfg.tiles), "tile_unit": cfg.tile_unit, "pipelines": list(cfg.pipelines)}
    with Results(cfg.out, "count-flops", settings, cfg.overwrite) as res:
        if res.path(VIEWS_TABLE.file).exists():
            res.finished(f"the counts of {sum(len(p[2]) for p in plans)} cases")
        meta = {**run_meta(probe), "model": cfg.model, "weights": "random", "views": splitting.describe(),
                "image_input": describe_input(splitting, splitting.tile), "views_made": made,
                "counting": "Counted on the model itself, at its full depth", "flop_convention": FLOP_CONVENTION}
        meta.pop("architecture_hash", None)
        meta = res.write_meta(meta)
        one_view = count_flops(a.patch_features, a.views([picture(512, 512)], a.splitting(False)).pixel_values,
                               modules=[a.vision_model]).total
        del probe
        if progress:
            progress(f"{sum(len(p[2]) for p in plans)} cases", -sum(len(p[2]) for p in plans))
        text = SimpleNamespace(text_config=build_text_config(cfg.model))
        rows, checks = [], {"vision_per_view_counted": one_view}
        for size, n_views, cases in plans:
            width, height = map(int, size.split("x"))
            counted = count_scaled(cfg.model, [(s, k) for s, _, _, k in cases], splitting.tile, cfg.batch, cfg.question,
                                   cfg.decode_tokens, image=picture(width, height), progress=progress, direct=True,
                                   vision_depth=vision_depth, splitting=splitting)
            rows += _rows(cfg, cases, counted, size, splitting.tile, text)
            dense = next((r for r, (s, *_) in zip(counted, cases) if s.is_dense), None)
            if dense:
                checks[size] = {"views": n_views, "vision_counted": dense["flops_vision"],
                                "vision_views_times_one_view": n_views * one_view,
                                "lm_prefill": prefill_crosscheck(text.text_config, dense, cfg.batch)}
        published = PUBLISHED_VISION.get(("idefics3_vision", splitting.tile, patch, vision_depth, width_v))
        if published:
            checks["vision_per_view_published"], checks["published_source"] = published
        res.replace(VIEWS_TABLE, rows)
        res.path("crosscheck.json").write_text(json.dumps(checks, indent=1) + "\n")
        res.claim("crosscheck.json")
        res.write_meta({**meta, "crosscheck": checks})
    return res.out


def _rows(cfg, cases, counted: list[dict], size: str, tile: int, text) -> list[dict]:
    """flops.csv rows of one image: the counts with budget, unit and share of this image's dense."""
    dense = next((r for r, (s, *_) in zip(counted, cases) if s.is_dense), None)
    rows = []
    for row, (spec, budget, unit, _) in zip(counted, cases):
        row.update(peer_formulas(text, row["prompt_tokens"], row["n_visual_tokens"], cfg.batch,
                                 row.pop("layer_tokens"), row["visual_tokens_layer_avg"]))
        row.update({"pipeline": spec.text, "budget": budget, "budget_unit": unit, "model": cfg.model,
                    "weights": "random (counted: FLOPs do not depend on weight values)", "resolution": tile,
                    "image_size": size})
        if dense:  # tiles: the visual tokens of the views encoded; the others: the budget, of the image's visual tokens
            kept = row["n_visual_tokens"] if spec.at_tiles else budget
            row["budget_share"] = (kept or dense["n_visual_tokens"]) / dense["n_visual_tokens"]
            row["flops_share_of_dense"] = row["flops_total"] / dense["flops_total"]
            row["flops_saved_pct"] = 100 * (1 - row["flops_share_of_dense"])
        rows.append(row)
    return rows
