"""Grounding on the model's own views and sweep-budget accuracy on split images (issue 19): every view's rectangle
in the original image's pixels, tile-level hit / IoU / Jaccard, the tile oracle, whole-token selectors over all
views, and sweep-budget's split accuracy equal to `qgsa eval --image-splitting`."""

import json

import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from qgsa_bench.cli import app
from qgsa_bench.data import shapes
from qgsa_bench.data.types import VQASample
from qgsa_bench.experiments.grounding_views import (oracle_tiles_record, oracle_tokens_record, result_record,
                                                    split_record)
from qgsa_bench.metrics import view_patch_boxes
from qgsa_bench.selectors.selection import Selection

runner = CliRunner()
TINY = ("-m", "tiny", "--weights", "random", "--device", "cpu")
SPLIT = ("--image-splitting", "--longest-edge", 128)  # tiny: 64-px tiles -> 2 x 2 tiles + the global view
QUESTION = "what color is the circle?"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def block_image(rect=(100, 50, 150, 100), size=(200, 150)) -> Image.Image:
    """A black 200 x 150 picture with a red block on `rect` (x0, y0, x1, y1): tiny's processor scales it up to
    256 x 192 = 3 x 4 tiles of 64 px, each tile 50 x 50 px of the original."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 0, 0), rect)
    return image


def sample(box, question=QUESTION) -> VQASample:
    return VQASample(id="s0", image=None, question=question, answers=["red"], question_type="color",
                     dataset="shapes", box=box)


@torch.no_grad()
def test_each_view_is_its_rectangle_of_the_original_image(tiny):
    """200 x 150, scaled up by the processor to 4 x 3 tiles: tile (r, c) is the original's 50-px cell (c, r); the
    red block drawn on cell (1, 2) fills that tile's view alone; a tile token's 2 x 2 patches and a global-view
    token map to their rectangles in original pixels."""
    views = tiny.adapter.views([block_image()], tiny.adapter.splitting(True))
    assert views.grids == [(3, 4)] and views.counts == [13]
    boxes = views.view_boxes(0)
    assert boxes[1 * 4 + 2] == (100.0, 50.0, 150.0, 100.0) and boxes[0] == (0.0, 0.0, 50.0, 50.0)
    assert boxes[-1] == (0.0, 0.0, 200.0, 150.0) and len(boxes) == 13
    red = views.pixel_values[:12, 0, 8:-8, 8:-8]  # (12, 48, 48): each tile's red channel away from its borders
    assert (red[6] == red[6].max()).all() and all((red[t] == red[t].min()).all() for t in range(12) if t != 6)
    assert red[6].max() > red[0].max()
    units = tiny.adapter.unit_patches(64)  # (16, 4): the patches of each visual token of a view (8 x 8 patches)
    token = units[1 * 4 + 3].tolist()  # token (1, 3) of tile (1, 2): patches rows 2-3, columns 6-7
    rects = view_patch_boxes([6 * 64 + p for p in token], 8, boxes)
    assert (min(r[0] for r in rects), min(r[1] for r in rects), max(r[2] for r in rects),
            max(r[3] for r in rects)) == (137.5, 62.5, 150.0, 75.0)
    rects = view_patch_boxes([12 * 64 + p for p in units[0].tolist()], 8, boxes)  # the global view's first token
    assert (max(r[2] for r in rects), max(r[3] for r in rects)) == (50.0, 37.5)


@torch.no_grad()
def test_the_tile_oracle_and_its_metrics_on_a_box_inside_one_tile(tiny):
    views = tiny.adapter.views([block_image()], tiny.adapter.splitting(True))
    inside = sample([110, 60, 20, 20])  # in tile (1, 2) = 6
    r = oracle_tiles_record(inside, views, 0, 1, 8)
    assert r["tiles"] == [6] == r["referent_tiles"] and r["k"] == 1 and r["unit"] == "tiles"
    assert (r["tile_hit"], r["tile_jaccard"], r["tile_iou"], r["referent_tile_share"]) == (1, 1.0, 0.16, 1.0)  # 400 / 2,500
    assert r["iou"] == 0.16 and r["n_patches"] == 64 and r["global_patches"] == 0 and r["patches"] is None
    assert r["share_in_box"] == round(9 / 64, 6) and r["pointing"] == 1  # 3 x 3 centres; (121.9, 71.9) points
    assert oracle_tiles_record(inside, views, 0, 3, 8)["tiles"] == [6]  # at most T: the box's tiles only
    straddling = sample([140, 60, 20, 10])  # 10 px in tile 6, 10 px in tile 7: a tie, the lower index first
    one, two = oracle_tiles_record(straddling, views, 0, 1, 8), oracle_tiles_record(straddling, views, 0, 2, 8)
    assert one["referent_tiles"] == [6, 7] and one["tiles"] == [6] and one["tile_jaccard"] == 0.5
    assert one["tile_hit"] == 1  # the centre (150, 65) lies on the edge of tile 6 (edges included)
    assert two["tiles"] == [6, 7] and two["tile_jaccard"] == 1.0
    far = split_record(inside, "x", 1, "tiles", 1, None, [0], views, 0, 8)
    assert (far["tile_hit"], far["tile_iou"], far["tile_jaccard"], far["iou"]) == (0, 0.0, 0.0, 0.0)
    assert far["referent_tile_share"] == 0.0
    tokens = oracle_tokens_record(inside, views, 0, 2, 2, 4, 8, "oracle@tokens")  # on tile 6's patch grid
    assert tokens["tiles"] == [6] and tokens["k"] == 2 and all(p // 64 == 6 for p in tokens["patches"])
    assert tokens["iou"] > 0.5


@torch.no_grad()
def test_a_tile_selector_forced_to_the_referent_tile_hits(tiny, monkeypatch):
    from qgsa_bench.selectors.tiles import RandomTiles

    def referent_tile(self, state, k):
        B = state.valid.shape[0]
        return Selection(torch.full((B, 1), 6), torch.ones(B, 1, dtype=torch.bool), torch.ones(B, dtype=torch.long))

    monkeypatch.setattr(RandomTiles, "select", referent_tile)
    splitting = tiny.adapter.splitting(True)
    result = tiny.engine.run("random-tiles").prepare([block_image()], [QUESTION], 0, k=1, splitting=splitting)
    assert result.selected_tiles(0) == [6]
    r = result_record(result, 0, sample([110, 60, 20, 20]), "random-tiles", 1, "tiles", 8)
    assert (r["tiles"], r["tile_hit"], r["tile_jaccard"], r["k"], r["referent_tile_share"]) == ([6], 1, 1.0, 1, 1.0)
    assert r["global_patches"] == 0  # the global view that comes with every tile selector is not counted


@pytest.mark.parametrize("spec", ["norm@post-vision", "hired", "random@vision:1", "fastv@lm:1"])
@torch.no_grad()
def test_at_full_budget_a_whole_token_selector_keeps_the_whole_image(tiny, spec):
    splitting = tiny.adapter.splitting(True)
    result = tiny.engine.run(spec).prepare([block_image()], [QUESTION], 0, k=13 * 16, splitting=splitting,
                                           seeds=[3])
    whole = result_record(result, 0, sample([0, 0, 200, 150]), spec, 208, "visual tokens", 8)
    assert whole["iou"] == 1.0 and whole["n_patches"] == 13 * 64 and whole["global_patches"] == 64
    assert whole["tiles"] == list(range(12)) and whole["k"] == 208 and whole["share_in_box"] == 1.0
    part = result_record(result, 0, sample([110, 60, 20, 20]), spec, 208, "visual tokens", 8)
    assert part["tile_hit"] == 1 and part["tile_jaccard"] == round(1 / 12, 6) == part["referent_tile_share"]


def test_grounding_on_split_images_end_to_end(tmp_path, tiny):
    out = tmp_path / "g"
    pipelines = "random-tiles,qgsa-tiles,hired,norm@post-vision"
    result = invoke("grounding", *TINY, "--dataset", "shapes-hires", "--limit", 4, *SPLIT, "--pipelines", pipelines,
                    "--tiles", 1, 2, "--budgets", 32, 48, "--batch", 3, "--out", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "grounding.jsonl").read_text().splitlines()]
    labels = ["random-tiles", "qgsa-tiles", "hired", "norm@post-vision", "oracle@tokens", "oracle-tiles"]
    assert {(r["pipeline"], r["budget"]) for r in records} == {
        *((p, t) for p in ("random-tiles", "qgsa-tiles", "oracle-tiles") for t in (1, 2)),
        *((p, b) for p in ("hired", "norm@post-vision", "oracle@tokens") for b in (32, 48))}
    assert len(records) == 4 * 12 and all(r["views"] == 5 and r["grid_tiles"] == [2, 2] for r in records)
    boxes = {s.id: s for s in shapes.hires(8, seed=0) if s.box is not None}
    splitting = tiny.adapter.splitting(True, 128)
    for r in records:
        if r["pipeline"] == "random-tiles":  # the sample's own draw, as a solo run makes it
            run = tiny.engine.run("random-tiles")
            solo = run.prepare([boxes[r["id"]].image], [r["question"]], 0, r["budget"],
                               seeds=run.sample_seeds([r["id"]]), splitting=splitting)
            assert r["tiles"] == solo.selected_tiles(0) and r["k"] == r["budget"] == len(r["tiles"])
        if r["pipeline"] == "oracle-tiles":  # shapes-hires: every object inside one tile
            assert (r["tile_hit"], r["tile_jaccard"], len(r["tiles"])) == (1, 1.0, 1)
        if r["pipeline"] in ("hired", "norm@post-vision"):
            assert r["k"] == r["budget"] and r["n_patches"] == 4 * r["budget"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["pipelines"] == labels and meta["image_input"].startswith("the model's processor: tiles of 64 px")
    assert meta["budget_units"]["qgsa-tiles"] == "tiles" and meta["budget_units"]["hired"] == "visual tokens"
    assert meta["budgets_of"]["oracle-tiles"] == [1, 2] and meta["splitting"]["longest_edge"] == 128
    rows = pd.read_csv(out / "grounding.csv")
    overall = rows[rows.question_type == "all"].set_index(["selector", "budget"])
    assert overall.loc[("oracle-tiles", 1), "tile_hit"] == 100.0 == overall.loc[("oracle-tiles", 2), "referent_tile_share"]
    assert overall.loc[("qgsa-tiles", 2), "kept_tiles_mean"] == 2
    assert (overall.image_input.str.startswith("the model's processor")).all()
    assert "tile hit %" in (out / "table3.md").read_text()
    report = invoke("report", "--results", out, "--out", tmp_path / "r")
    assert report.exit_code == 0, report.output
    assert list((tmp_path / "r").glob("selections*.png"))  # drawn on the kept patches' rectangles


def test_default_pipelines_on_split_images():
    from qgsa_bench.experiments.grounding import GroundingConfig, default_pipelines

    split = default_pipelines(True)
    assert {"qgsa-tiles", "random-tiles", "hired", "fastv", "qgsa@post-vision"} <= set(split)
    assert not {"qgsa", "random", "norm", "global-only", "dense", "downsample"} & set(split)
    without_tiles = [s.text for s in GroundingConfig(image_splitting=True).specs]  # no --tiles: no tile selector
    assert "qgsa-tiles" not in without_tiles and "hired" in without_tiles
    assert [s.text for s in GroundingConfig(image_splitting=True, tiles=(2, 1, 2)).specs] == list(split)
    assert GroundingConfig(image_splitting=True, tiles=(2, 1, 2)).tiles == (1, 2)
    assert "tiles" not in GroundingConfig().settings()  # a one-view folder's settings as before


@pytest.mark.parametrize("args, message", [
    (("--pipelines", "qgsa-tiles", "--tiles", 1), "chooses among the tiles of a split image: add --image-splitting"),
    (("--pipelines", "qgsa-tiles", *SPLIT), "needs budgets in tiles: give --tiles"),
    (("--pipelines", "random-tiles", "--tiles", 5, *SPLIT), "--tiles 5 is impossible for random-tiles"),
    (("--pipelines", "global-only", "--tiles", 1, *SPLIT), "global-only keeps no tile"),
    (("--pipelines", "qgsa", "--budgets", 4, *SPLIT), "selects single patches of one view"),
    (("--pipelines", "hired", "--budgets", 999, *SPLIT), "budget 999 visual tokens is impossible for hired"),
    (("--pipelines", "fastv", "--tiles", 1, *SPLIT), "--tiles are the budgets of the tile selectors"),
    (("--longest-edge", 128), "add --image-splitting"),
    (("--image-splitting", "--resolution", 64), "give one of them"),
])
def test_bad_split_grounding_input_is_one_error_line(tmp_path, args, message):
    result = invoke("grounding", *TINY, "--dataset", "shapes-hires", "--limit", 2, *args, "--out", tmp_path / "g")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not (tmp_path / "g" / "grounding.jsonl").exists()


def test_sweep_budget_accuracy_on_split_images_is_evals(tmp_path):
    """sweep-budget --dataset --image-splitting scores through eval's own path: every case's predictions equal
    `qgsa eval --image-splitting` on the same samples (tile selectors at --tiles = eval's --k)."""
    common = ("--dataset", "shapes-hires", "--limit", 4, *SPLIT)
    out = tmp_path / "sweep"
    result = invoke("sweep-budget", *TINY, *common, "--pipelines", "dense,global-only,random-tiles,norm@post-vision",
                    "--tiles", 1, "--budgets", 32, "--reps", 2, "--warmup", 0, "--decode-tokens", 1, "--no-flops",
                    "--eval-batch", 2, "--out", out)
    assert result.exit_code == 0, result.output
    swept = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    budget = pd.read_csv(out / "budget.csv").set_index("case")
    assert list(budget.index) == ["dense", "global-only", "random-tiles T=1", "norm@post-vision k=32"]
    assert (budget.image_size == "448x448").all() and budget.n_visual_tokens.tolist() == [80, 16, 32, 32]
    accuracy = pd.read_csv(out / "accuracy.csv")
    assert accuracy.image_input.str.startswith("the model's processor: tiles of 64 px").all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["settings"]["timed_image"] == "the data set's first image" and meta["settings"]["scored_split"]
    for pipelines, k in (("dense,global-only", None), ("random-tiles", 1), ("norm@post-vision", 32)):
        folder = tmp_path / f"eval-{k}"
        args = ("eval", *TINY, *common, "--pipelines", pipelines, "--batch", 2, "--out", folder)
        ran = invoke(*args, *(("--k", k) if k else ()))
        assert ran.exit_code == 0, ran.output
        for r in (json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()):
            mine = next(s for s in swept if s["pipeline"] == r["pipeline"] and s["id"] == r["id"])
            assert (mine["prediction"], mine["selected_tiles"], mine["n_visual_tokens"]) == \
                (r["prediction"], r["selected_tiles"], r["n_visual_tokens"]), r


@pytest.mark.parametrize("args, message", [
    (("--image-size", "200x150", "--resolution", 64), "give one of them"),
    (("--dataset", "shapes", "--image-splitting", "--resolution", 64), "give one of them"),
    (("--dataset", "shapes", "--longest-edge", 128), "add --image-splitting"),  # tiny does not split by itself
])
def test_sweep_budget_refuses_options_that_disagree_on_the_image(tmp_path, args, message):
    result = invoke("sweep-budget", *TINY, "--pipelines", "dense,global-only", *args, "--out", tmp_path / "s")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
