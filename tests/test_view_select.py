"""One-view selectors on SmolVLM's split input (issue 19): post-vision and vision:L with one budget over every
view's visual tokens (run/view_select.py), and HiRED (selectors/hired.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from qgsa_bench import QGSAError
from qgsa_bench.run.lm import prefill
from qgsa_bench.run.observers import FlopCounter
from qgsa_bench.selectors.hired import allocate

QUESTION = "what color is the circle?"
QUESTIONS = [QUESTION, "how many shapes?", "is the square left of the circle?"]
# every selector of whole visual tokens at post-vision and vision:L (tiny: 2 vision layers)
SPECS = ["norm@post-vision", "random@post-vision", "divprune", "hired", "qgsa@post-vision", "visionzip",
         "norm@vision:1", "random@vision:1", "qgsa-vision", "visionzip@vision:1"]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("spec", [s for s in SPECS if not s.startswith("visionzip")])
@torch.no_grad()
def test_at_full_budget_each_equals_dense_tiled(tiny, spec):
    splitting = tiny.adapter.splitting(True)
    image = noise(200, 150)
    dense = tiny.engine.run("dense").prepare([image], [QUESTION], 0, splitting=splitting)
    full = tiny.engine.run(spec).prepare([image], [QUESTION], 0, k=13 * 16, splitting=splitting)  # every token
    assert full.inputs.n_visual.tolist() == [208] and full.kept(0) == 208
    if "vision:" in spec or spec == "qgsa-vision":  # the later layers run on the units in unit order: same values
        torch.testing.assert_close(full.inputs.inputs_embeds, dense.inputs.inputs_embeds, rtol=1e-5, atol=1e-6)
    else:  # post-vision: the very tokens of the dense run, in its prompt
        assert torch.equal(full.inputs.inputs_embeds, dense.inputs.inputs_embeds)
    torch.testing.assert_close(prefill(tiny.adapter, full.inputs, None)[0], tiny.adapter.prefill(dense.inputs)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", SPECS)
@torch.no_grad()
def test_a_batch_of_images_with_different_views_gives_each_its_solo_result(tiny, spec):
    splitting = tiny.adapter.splitting(True)
    images = [noise(200, 150, 1), noise(64, 64, 2), noise(100, 250, 3)]  # 13, 17 and 9 views
    run = tiny.engine.run(spec)
    seeds = [11, 12, 13]  # random selectors draw per sample
    batch = run.prepare(images, QUESTIONS, 0, k=torch.tensor([30, 100, 7]), new_tokens=2, splitting=splitting,
                        seeds=seeds)
    assert batch.views.counts == [13, 17, 9]
    logits = prefill(tiny.adapter, batch.inputs, None)[0]
    for b, (image, k) in enumerate(zip(images, [30, 100, 7])):
        solo = run.prepare([image], QUESTIONS[b:b + 1], 0, k=k, new_tokens=2, splitting=splitting, seeds=seeds[b:b + 1])
        assert batch.kept(b) == solo.kept(0) == k  # the budget counts visual tokens over every view
        assert batch.selected_patches(b) == solo.selected_patches(0)
        assert batch.generated[b] == solo.generated[0]
        torch.testing.assert_close(logits[b], prefill(tiny.adapter, solo.inputs, None)[0][0], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_kept_tokens_stay_under_their_views_markers(tiny):
    splitting = tiny.adapter.splitting(True)
    image = noise(200, 150)
    run = tiny.engine.run("norm@post-vision")
    result = run.prepare([image], [QUESTION], 0, k=40, splitting=splitting)
    items = result.selection.indices[0][result.selection.valid[0]]
    per_view = torch.bincount(items // 16, minlength=13).tolist()  # 16 visual tokens per 64-px view
    assert sum(per_view) == 40
    from qgsa_bench.run.view_select import layouts

    pieces = layouts(result.views, [per_view])[0]
    markers = result.views.markers(0)
    shown = [markers[j] for j, c in enumerate(per_view) if c]
    assert [p for p in pieces if isinstance(p, int)] == [c for c in per_view if c]
    assert [m for m in markers if any(isinstance(p, str) and m in p for p in pieces)] == shown  # empty views: no marker
    # selected patches are in the joint frame: patch p of view j is j * 64 + p
    patches = result.selected_patches(0)
    assert len(patches) == 40 * 4 and sorted({p // 64 for p in patches}) == [j for j, c in enumerate(per_view) if c]


@torch.no_grad()
def test_selection_inside_the_encoder_runs_each_views_kept_units_on_their_own(tiny, monkeypatch):
    splitting = tiny.adapter.splitting(True)
    image = noise(200, 150)
    lengths = []
    real = type(tiny.adapter).vision_layer
    monkeypatch.setattr(type(tiny.adapter), "vision_layer",
                        lambda self, i, h, mask=None: lengths.append((i, tuple(h.shape[:2]))) or real(self, i, h, mask))
    result = tiny.engine.run("norm@vision:1").prepare([image], [QUESTION], 0, k=40, splitting=splitting)
    counts = result.trace[0]
    assert lengths[0] == (0, (13, 64))  # layer 1 on every view
    later = [shape for i, shape in lengths if i == 1]
    items = result.selection.indices[0][result.selection.valid[0]]
    per_view = [c for c in torch.bincount(items // 16, minlength=13).tolist() if c]
    assert later == [(1, 4 * c) for c in per_view]  # layer 2 once per view keeping a unit, on its units only
    assert counts == ("vision", [160])


def test_hired_allocates_by_the_global_views_content_then_tops_each_view():
    assert allocate(torch.tensor([1.0, 1, 1, 1]), 10, 4) == [3, 3, 2, 2]
    assert allocate(torch.tensor([10.0, 0, 0, 1]), 10, 4) == [4, 1, 1, 4]  # a full view's excess goes on
    assert allocate(torch.tensor([0.3, 0.2, 0.5]), 7, 64) == [2, 1, 4] and sum(allocate(torch.rand(17), 333, 64)) == 333


@torch.no_grad()
def test_hired_follows_its_allocation_on_a_split_image(tiny):
    from qgsa_bench.run.view_select import encode_all, joint, view_state
    from qgsa_bench.selectors.hired import ALPHA, HiRED

    splitting = tiny.adapter.splitting(True)
    a = tiny.adapter
    run = tiny.engine.run("hired")
    views = a.views([noise(200, 150)], splitting)
    enc = encode_all(run, views)
    assert enc.content_input is not None and enc.last_input is not None
    result = run.prepare([noise(200, 150)], [QUESTION], 0, k=60, splitting=splitting)
    # the budget: the global view ALPHA, the 12 tiles the rest by the global view's first-layer attention inside them
    first = a.vision_attention_received(0, enc.content_input)[-1]
    units = a.unit_patches(64)
    X, valid = joint(enc.V[:, units], views)
    state = view_state(run, views, X, valid, None, 16)
    state.cache["content_attention"] = first[None]
    weights = HiRED.weights(state, 0, 13)
    assert weights[-1] == ALPHA and torch.isclose(weights[:-1].sum(), torch.tensor(1 - ALPHA))
    budgets = allocate(weights, 60, 16)
    items = result.selection.indices[0][result.selection.valid[0]]
    assert torch.bincount(items // 16, minlength=13).tolist() == budgets and budgets[-1] == 16  # 30 > 16: full
    last = a.vision_attention_received(1, enc.last_input)
    per_unit = last[:, units].mean(2)  # (13, 16) each view's own last-layer attention
    for j, c in enumerate(budgets):
        if c:
            assert sorted((items[items // 16 == j] - 16 * j).tolist()) == sorted(per_unit[j].topk(c).indices.tolist())


@torch.no_grad()
def test_budgets_count_every_view_and_the_flops_follow(tiny):
    splitting = tiny.adapter.splitting(True)
    views = tiny.adapter.views([noise(200, 150)], splitting)

    def flops(spec, k=None):
        counter = FlopCounter(tiny.engine, [tiny.loaded.model, tiny.module])
        tiny.engine.run(spec).execute(views, [QUESTION], k=k, observer=counter)
        return {s: c.total for s, c in counter.counts.items()}

    dense, post, inside = flops("dense"), flops("norm@post-vision", 32), flops("norm@vision:1", 32)
    assert post["vision"] == dense["vision"] and post["prefill"] < dense["prefill"]
    assert inside["vision"] < dense["vision"] and inside["prefill"] < dense["prefill"]  # (markers differ: other views)


@pytest.mark.parametrize("spec, k, words", [
    ("norm@post-vision", 209, "budget 209 visual tokens is impossible at post-vision (208 visual tokens in the 13 "
                              "views of the image with the fewest): pick 1 <= budget <= 208"),
    ("hired", 0, "budget 0 visual tokens is impossible at post-vision"),
    ("norm@vision:1", 500, "budget 500 visual tokens is impossible at vision:1 (208 visual tokens"),
    ("qgsa", 8, "qgsa selects single patches of one view (the seed paper's form); on an image split into tiles give "
                "it whole visual tokens, e.g. qgsa@post-vision"),
    ("downsample", 4, "downsample changes the one image's resolution"),
])
def test_bad_budgets_on_split_images_are_one_error(tiny, spec, k, words):
    with pytest.raises(QGSAError) as err:
        tiny.engine.run(spec).prepare([noise(200, 150)], [QUESTION], 0, k=k, splitting=tiny.adapter.splitting(True))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_tile_budgets_in_visual_tokens():
    from qgsa_bench.run.tiles import tiles_for_budget, tokens_of_tiles

    assert [tiles_for_budget(k, "tokens", 64, 16, "qgsa-tiles") for k in (128, 191, 192, 320, 576, 1088)] == \
        [1, 1, 2, 4, 8, 16]  # the global view's 64, then whole tiles of 64
    assert [tokens_of_tiles(T, 64) for T in (1, 2, 4, 8)] == [128, 192, 320, 576]
    for k, unit, words in [(127, "tokens", "qgsa-tiles at 127 visual tokens is impossible: the global view takes 64 "
                                           "and each tile 64 more, and the image has 16 tiles (128 .. 1088 visual "
                                           "tokens)"),
                           (1152, "tokens", "(128 .. 1088 visual tokens)"),
                           (17, "tiles", "qgsa-tiles at 17 tiles is impossible: the image has 16 tiles besides the "
                                         "global view (1 .. 16 tiles)"),
                           (0, "tiles", "(1 .. 16 tiles)"), (2, "patches", "--tile-unit must be tiles or tokens")]:
        with pytest.raises(QGSAError) as err:
            tiles_for_budget(k, unit, 64, 16, "qgsa-tiles")
        assert words in str(err.value) and "\n" not in str(err.value)


def test_count_flops_puts_hired_and_the_peers_at_the_tile_selectors_visual_tokens(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    out = tmp_path / "count"
    args = ["count-flops", "--model", "tiny", "--image-size", "200x150", "--image-splitting", "--pipelines",
            "dense,qgsa-tiles,hired,visionzip,random@vision:1,fastv@lm:1", "--tiles", "32", "48", "--tile-unit",
            "tokens", "--budgets-from-tiles", "--decode-tokens", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "flops.csv")
    tiles = rows[rows.pipeline == "qgsa-tiles"]
    assert tiles.budget.tolist() == [32, 48] and (tiles.budget_unit == "tokens").all()
    assert tiles.views_encoded.tolist() == [2, 3] and tiles.n_visual_tokens.tolist() == [32, 48]  # 16 per view
    for peer in ("hired", "visionzip", "random@vision:1", "fastv@lm:1"):
        own = rows[rows.pipeline == peer]
        assert own.budget.tolist() == [32, 48] and (own.budget_unit == "tokens").all(), peer
        assert own.budget_share.tolist() == pytest.approx([32 / 208, 48 / 208], abs=1e-6)  # CSV: 6 digits
    dense = rows[rows.pipeline == "dense"].iloc[0]
    hired = rows[rows.pipeline == "hired"]
    assert (hired.flops_vision >= dense.flops_vision).all() and (hired.n_visual_tokens == hired.budget).all()
    assert (rows[rows.pipeline == "random@vision:1"].flops_vision < dense.flops_vision).all()
    bad = CliRunner().invoke(app, [*args[:-6], "--tiles", "20", "--tile-unit", "tokens", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "qgsa-tiles on the 200x150 image at 20 visual tokens is impossible" in bad.stderr


def test_sweep_budget_and_ask_take_tile_budgets_in_visual_tokens(tmp_path):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, [
        "sweep-budget", "--model", "tiny", "--image-size", "200x150", "--image-splitting", "--pipelines",
        "dense,qgsa-tiles,hired", "--tiles", "32", "--tile-unit", "tokens", "--budgets-from-tiles", "--reps", "1",
        "--warmup", "0", "--decode-tokens", "1", "--no-flops", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "budget.csv").set_index("case")
    assert list(rows.index) == ["dense", "qgsa-tiles k=32", "hired k=32"]
    assert rows.budget_unit.tolist() == ["tokens"] * 3 and rows.n_visual_tokens.tolist() == [208, 32, 32]
    path = tmp_path / "photo.png"
    noise(200, 150).save(path)
    answer = tmp_path / "a.json"
    result = CliRunner().invoke(app, ["ask", "--model", "tiny", "--image", str(path), "-q", QUESTION, "--image-splitting",
                                      "--pipeline", "qgsa-tiles", "--k", "48", "--tile-unit", "tokens",
                                      "--max-new-tokens", "1", "--out", str(answer)])
    assert result.exit_code == 0, result.output
    got = json.loads(answer.read_text())
    assert (got["tiles_kept"], got["budget"], got["budget_unit"], got["n_visual_tokens"]) == (2, 48, "tokens", 48)


@torch.no_grad()
def test_hired_on_one_view_is_the_top_k_by_last_layer_attention(tiny, llava_tiny, images):
    for built, res in ((tiny, 64), (llava_tiny, 84)):
        result = built.engine.run("hired").prepare(images, ["what?", "where?"], res, k=5)
        assert result.inputs.n_visual.tolist() == [5, 5]
        scores = result.selection.scores  # the attention each unit receives in the last vision layer run
        for b in range(2):
            assert result.selection.indices[b].tolist() == sorted(scores[b].topk(5).indices.tolist())
