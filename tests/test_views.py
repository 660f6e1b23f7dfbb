"""SmolVLM as it runs: its own image processor's tiles + global view through the one run (issue 19).

The tiled dense run equals the HF model's own forward and generate on the processor's outputs; a batch of
images with different numbers of tiles gives each its solo result; tile selectors encode only the tiles
they choose; bad settings are one error line."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Idefics3ImageProcessor, Idefics3Processor

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.models.views import Splitting, image_prompt, make_views
from qgsa_bench.run.observers import FlopCounter

QUESTION = "what color is the circle?"


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """A random RGB picture (no view of it is uniform grey, which HF's forward would take for padding)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def hf_inputs(built, image, splitting: Splitting):
    """The model's own processor (transformers' Idefics3Processor) on one image and QUESTION."""
    a = built.adapter
    processor = Idefics3ImageProcessor(
        do_image_splitting=splitting.split, size={"longest_edge": splitting.longest_edge},
        max_image_size={"longest_edge": splitting.tile}, resample=splitting.resample,
        image_mean=list(built.loaded.image_mean), image_std=list(built.loaded.image_std))
    n_v = (splitting.tile // a.patch_size) ** 2 // a.group_size
    both = Idefics3Processor(processor, built.loaded.tokenizer, image_seq_len=n_v)
    return both(text=[f"<|im_start|>User:<image>{QUESTION}<end_of_utterance>\nAssistant:"], images=[[image]],
                return_tensors="pt")


@torch.no_grad()
def test_tiled_dense_run_equals_the_hf_forward_and_generate(tiny):
    splitting = tiny.adapter.splitting(True)  # the tiny preset: 64-px tiles, longest edge 256
    image = noise(200, 150)
    result = tiny.engine.run("dense").prepare([image], [QUESTION], 0, new_tokens=4, splitting=splitting)
    assert result.views.counts == [13] and result.views.grids == [(3, 4)]  # 3 x 4 tiles + the global view
    assert result.inputs.n_visual.tolist() == [13 * 16]
    hf = hf_inputs(tiny, image, splitting)
    out = tiny.loaded.model(**hf)
    torch.testing.assert_close(tiny.adapter.logits(result.inputs), out.logits, rtol=1e-5, atol=1e-5)
    generated = tiny.loaded.model.generate(**hf, max_new_tokens=4, do_sample=False)
    assert result.generated == [generated[0, hf["input_ids"].shape[1]:].tolist()]


@torch.no_grad()
def test_smolvlm_256m_tiles_a_photo_as_its_processor_does():
    built = build("smolvlm-256m", weights="random", device="cpu", dtype="fp32", seed=0)
    splitting = built.adapter.splitting()  # the preset's own: splitting on, longest edge 2048, 512-px tiles
    assert splitting == Splitting(True, 2048, 512, 1)
    counts = {size: make_views([noise(*size)], splitting, (0.5,) * 3, (0.5,) * 3).counts[0]
              for size in [(2048, 2048), (640, 480), (1920, 1080), (1700, 2200), (4000, 100)]}
    assert counts == {(2048, 2048): 17, (640, 480): 13, (1920, 1080): 13, (1700, 2200): 17, (4000, 100): 5}
    image = noise(1024, 768)
    result = built.engine.run("dense").prepare([image], [QUESTION], 0, splitting=splitting)
    assert result.inputs.n_visual.tolist() == [13 * 64]  # 3 x 4 tiles + global, 64 visual tokens each
    out = built.loaded.model(**hf_inputs(built, image, splitting))
    torch.testing.assert_close(built.adapter.logits(result.inputs)[:, -8:], out.logits[:, -8:], rtol=1e-4,
                               atol=1e-4)


def test_the_prompt_layout_is_the_processors():
    markers = ["<row_1_col_1>", "<row_1_col_2>", "<row_2_col_1>", "<row_2_col_2>", "<global-img>"]
    pieces = image_prompt(markers, [2] * 5, (2, 2))
    text = "".join(p if isinstance(p, str) else "<image>" * p for p in pieces)
    f = "<fake_token_around_image>"
    assert text == (f"{f}<row_1_col_1><image><image>{f}<row_1_col_2><image><image>\n"
                    f"{f}<row_2_col_1><image><image>{f}<row_2_col_2><image><image>\n"
                    f"\n{f}<global-img><image><image>{f}")
    chosen = image_prompt(["<row_2_col_1>", "<global-img>"], [2, 2], (2, 2))  # a tile selector's choice
    assert chosen == [f + "<row_2_col_1>", 2, "\n", "\n" + f + "<global-img>", 2, f]
    assert image_prompt(["<global-img>"], [3], (2, 2)) == [f + "<global-img>", 3, f]  # as an unsplit image


@torch.no_grad()
def test_a_batch_of_images_with_different_tiles_gives_each_its_solo_result(tiny):
    splitting = tiny.adapter.splitting(True)
    images = [noise(200, 150, 1), noise(64, 64, 2), noise(100, 250, 3)]
    run = tiny.engine.run("dense")
    batch = run.prepare(images, [QUESTION, "how many shapes?", QUESTION], 0, new_tokens=3, splitting=splitting)
    assert batch.views.counts == [13, 17, 9] and batch.views.pixel_values.shape[0] == 39  # no padded view kept
    for b, image in enumerate(images):
        solo = run.prepare([image], [[QUESTION, "how many shapes?", QUESTION][b]], 0, new_tokens=3, splitting=splitting)
        assert batch.generated[b] == solo.generated[0]
        assert int(batch.inputs.n_visual[b]) == int(solo.inputs.n_visual[0])


@torch.no_grad()
def test_tile_selectors_encode_only_the_tiles_they_choose(tiny, monkeypatch):
    splitting = tiny.adapter.splitting(True)
    image = noise(200, 150)
    encoded = []
    real = type(tiny.adapter).patch_features
    monkeypatch.setattr(type(tiny.adapter), "patch_features",
                        lambda self, px: encoded.append(px.shape[0]) or real(self, px))
    for name, k, tiles in (("random-tiles", 2, 2), ("qgsa-tiles", 3, 3), ("global-only", None, 0)):
        encoded.clear()
        result = tiny.engine.run(name).prepare([image], [QUESTION], 0, k=k, new_tokens=2, splitting=splitting)
        assert sum(encoded) == 1 + tiles  # the global view, then the chosen tiles: the others never encoded
        assert result.inputs.n_visual.tolist() == [(1 + tiles) * 16]
        chosen = result.selected_tiles(0)
        assert len(chosen) == tiles and all(0 <= t < 12 for t in chosen)
        assert result.kept(0) == (1 + tiles) * 16
    # global-only reads as the unsplit image: the same prompt length as one view with splitting off
    one_view = tiny.engine.run("dense").prepare([image], [QUESTION], 0, splitting=tiny.adapter.splitting(False))
    assert result.inputs.inputs_embeds.shape == one_view.inputs.inputs_embeds.shape


@torch.no_grad()
def test_qgsa_tiles_follows_its_scores_and_fastv_runs_on_tiles(tiny):
    splitting = tiny.adapter.splitting(True)
    image = noise(200, 150)
    run = tiny.engine.run("qgsa-tiles")
    views = tiny.adapter.views([image], splitting)
    q = run.question([QUESTION])
    from qgsa_bench.run.tiles import tile_state

    V_global = tiny.adapter.patch_features(views.pixel_values[-1:])
    state = tile_state(run, views, V_global, q)
    scores = run.spec.selector.scores(state)[0]
    result = run.prepare([image], [QUESTION], 0, k=3, splitting=splitting)
    assert result.selected_tiles(0) == sorted(scores.topk(3).indices.tolist())
    fastv = tiny.engine.run("fastv@lm:1").prepare([image], [QUESTION], 0, k=40, splitting=splitting)
    assert fastv.kept(0) == 40 and fastv.inputs.n_visual.tolist() == [13 * 16]  # pruned inside the LM


@torch.no_grad()
def test_vision_flops_of_a_split_image_are_views_times_one_view(tiny):
    splitting = tiny.adapter.splitting(True)
    image = noise(200, 150)

    def vision_flops(views):
        run = tiny.engine.run("dense")
        counter = FlopCounter(tiny.engine, [tiny.loaded.model, tiny.module])
        run.execute(views, [QUESTION] * views.batch, observer=counter)
        return counter.counts["vision"].total

    views = tiny.adapter.views([image], splitting)
    one = tiny.adapter.views([image], tiny.adapter.splitting(False))
    assert views.counts == [13] and vision_flops(views) == 13 * vision_flops(one)


@pytest.mark.parametrize("call, words", [
    (lambda t: t.adapter.splitting(True, 200), "--longest-edge 200 is not a positive multiple of the tile size 64"),
    (lambda t: t.adapter.splitting(True, 512), "gives 8 tiles per side; the tokenizer marks at most 6"),
    (lambda t: t.engine.run("random-tiles").prepare([noise(200, 150)], [QUESTION], 64, k=2),
     "random-tiles chooses among the tiles of a split image, and this run is one square view"),
    (lambda t: t.engine.run("random-tiles").prepare([noise(200, 150)], [QUESTION], 0, k=13,
                                                    splitting=t.adapter.splitting(True)),
     "budget 13 tiles is impossible at tiles (12 tiles in the image with the fewest): pick 1 <= budget <= 12"),
    (lambda t: t.engine.run("random").prepare([noise(200, 150)], [QUESTION], 0, k=2,
                                                          splitting=t.adapter.splitting(True)),
     "random selects single patches of one view (the seed paper's form); on an image split into tiles give it whole "
     "visual tokens, e.g. random@post-vision"),
    (lambda t: t.engine.run("random-tiles@vision:1"), "selector 'random-tiles' cannot sit at vision:1"),
])
def test_bad_tile_settings_are_one_error(tiny, call, words):
    with pytest.raises(QGSAError) as err:
        call(tiny)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_llava_takes_one_view(llava_tiny):
    with pytest.raises(QGSAError, match="llava models take one view \\(no tiles\\): --image-size, --image-splitting and --longest-edge"):
        llava_tiny.adapter.splitting(True)


def test_info_shows_the_views_of_each_image_size(tmp_path):
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    out = tmp_path / "info.json"
    result = CliRunner().invoke(app, ["info", "--model", "smolvlm-256m", "--weights", "random", "--image-size",
                                      "2048x2048", "640x480", "4000x100", "1920x1080", "--out", str(out)],
                                     env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    import json

    views = json.loads(out.read_text())["views"]
    assert [(v["image_size"], v["grid"], v["views"], v["visual_tokens"], v["upscaled"], v["stretch"])
            for v in views] == [
        ("2048x2048", "4x4", 17, 1088, False, 1.0), ("640x480", "3x4", 13, 832, True, 1.0),  # a small photo: scaled up
        # the processor rounds each side up to whole tiles, padding nothing: a 40:1 strip becomes 4 x 1 tiles
        # (height x10), a 16:9 photo 4 x 3 tiles (height x4/3); the table says so
        ("4000x100", "1x4", 5, 320, False, 10.0), ("1920x1080", "3x4", 13, 832, True, 1.3333)]
    assert "height x10.00" in result.output and "height x1.33" in result.output
    assert views[0]["prompt_tokens"] > 1088
    bad = CliRunner().invoke(app, ["info", "--model", "smolvlm-256m", "--weights", "random", "--image-size", "2048"])
    assert bad.exit_code == 2 and "--image-size takes sizes WIDTHxHEIGHT in px" in bad.stderr


def test_count_flops_splits_images_and_counts_only_the_encoded_views(tmp_path):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    out = tmp_path / "count"
    args = ["count-flops", "--model", "tiny", "--image-size", "200x150", "--image-splitting", "--pipelines",
            "dense,global-only,qgsa-tiles,fastv@lm:1", "--tiles", "1", "4", "--budgets", "80", "--decode-tokens", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "flops.csv")
    dense = rows[rows.pipeline == "dense"].iloc[0]
    one_view = json.loads((out / "crosscheck.json").read_text())["vision_per_view_counted"]
    assert dense.views == 13 and dense.flops_vision == 13 * one_view and dense.n_visual_tokens == 13 * 16
    tiles = rows[rows.pipeline == "qgsa-tiles"].set_index("budget")
    assert tiles.views_encoded.to_dict() == {1: 2, 4: 5}  # the global view and T tiles
    scorer = tiles.flops_vision - tiles.views_encoded * one_view  # + QGSA's scorer over the global view's patches
    assert scorer.nunique() == 1 and scorer.iloc[0] > 0
    assert rows[rows.pipeline == "global-only"].iloc[0].flops_vision == one_view
    fastv = rows[rows.pipeline == "fastv@lm:1"].iloc[0]
    assert fastv.flops_vision == dense.flops_vision and fastv.flops_prefill < dense.flops_prefill
    assert json.loads((out / "meta.json").read_text())["views_made"] == {"200x150": (
        "13 views: 3 x 4 tiles + a global view; the 200x150 image scaled up to a longest edge of 256 px, as the "
        "model's processor does")}  # the synthetic image too: its scaling is said
    for extra, words in [(["--tiles", "13"], "qgsa-tiles on the 200x150 image at 13 tiles is impossible: the image has 12 tiles"),
                         (["--resolution", "64"], "--resolution is one square view; --image-size splits"),
                         (["--longest-edge", "100"], "--longest-edge 100 is not a positive multiple of the tile size 64")]:
        bad = CliRunner().invoke(app, [*args, *extra, "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and words in bad.stderr, bad.output
        assert not (tmp_path / "bad" / "flops.csv").exists()


def test_ask_answers_on_the_models_own_views(tmp_path):
    import json

    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    path = tmp_path / "photo.png"
    noise(200, 150).save(path)
    base = ["ask", "--model", "tiny", "--image", str(path), "-q", QUESTION, "--max-new-tokens", "2"]
    out = tmp_path / "a.json"
    result = CliRunner().invoke(app, [*base, "--pipeline", "qgsa-tiles", "--k", "2", "--image-splitting", "--out",
                                      str(out)])
    assert result.exit_code == 0, result.output
    answer = json.loads(out.read_text())
    assert answer["views"] == 13 and len(answer["selected_tiles"]) == 2 and answer["n_visual_tokens"] == 3 * 16
    assert answer["image_input"].startswith("the model's processor: tiles of 64 px")
    for extra, words in [(["--longest-edge", "128"], "--longest-edge 128 sets where the processor tiles the image, and this model's image splitting is off"),
                         (["--image-splitting", "--resolution", "64"], "--resolution is one square view"),
                         (["--pipeline", "global-only"], "global-only chooses among the tiles of a split image")]:
        bad = CliRunner().invoke(app, [*base, *extra])
        assert bad.exit_code == 2 and words in bad.stderr, bad.output


def test_sweep_budget_times_and_counts_a_split_image(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    out = tmp_path / "sweep"
    args = ["sweep-budget", "--model", "tiny", "--image-size", "200x150", "--image-splitting", "--pipelines",
            "dense,global-only,qgsa-tiles,fastv@lm:1", "--tiles", "1", "3", "--budgets", "48", "--reps", "2",
            "--warmup", "0", "--decode-tokens", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "budget.csv").set_index("case")
    assert list(rows.index) == ["dense", "global-only", "qgsa-tiles T=1", "qgsa-tiles T=3", "fastv@lm:1 k=48"]
    assert rows.n_visual_tokens.tolist() == [208, 16, 32, 64, 208]  # 13 views x 16; the global view + T tiles
    assert rows.loc["qgsa-tiles T=3", "budget_unit"] == "tiles" and rows.loc["qgsa-tiles T=3", "budget"] == 3
    vision = rows.flops_vision
    assert vision["dense"] == 13 * vision["global-only"]
    scorer = vision["qgsa-tiles T=3"] - 4 * vision["global-only"]  # QGSA's scorer over the global view's patches
    assert scorer > 0 and vision["qgsa-tiles T=1"] == 2 * vision["global-only"] + scorer
    assert (rows.image_size == "200x150").all() and rows.latency_ms_median.gt(0).all()
    assert "a 200x150 image split by the model's processor" in (out / "table.md").read_text()
    import json

    assert json.loads((out / "meta.json").read_text())["views_made"].startswith("13 views: 3 x 4 tiles + a global "
                                                                                "view; the 200x150 image scaled up")
    for extra, words in [(["--tiles", "13"], "--tiles 13 is above the 12 tiles of this image"),
                         (["--resolution", "224"], "give one of them")]:
        bad = CliRunner().invoke(app, [*args, *extra, "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and words in bad.stderr, bad.output
    one_view = CliRunner().invoke(app, ["sweep-budget", "--model", "tiny", "--pipelines", "dense,qgsa-tiles",
                                        "--budgets", "4", "--out", str(tmp_path / "one")])
    assert one_view.exit_code == 2 and "qgsa-tiles chooses among the tiles of a split image: give --image-size" \
        in one_view.stderr


def test_what_a_first_afternoon_found(tmp_path):
    """Found by trying the README as a new user: a tile selector without a tile budget kept every tile
    (f_comp predicts visual tokens, not tiles); global-only ignored --k; --budget-unit layer-avg was ignored on
    split images; an in-LM budget's share read 1.0; a tile selector on one view was told about a default budget
    it never typed; llava was told to drop options it never gave."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    path = tmp_path / "photo.png"
    noise(200, 150).save(path)
    ask = ["ask", "--model", "tiny", "--image", str(path), "-q", QUESTION, "--image-splitting"]
    count = ["count-flops", "--model", "tiny", "--image-size", "200x150", "--image-splitting"]
    for args, words in [
        ([*ask, "--pipeline", "qgsa-tiles"], "qgsa-tiles needs a budget in tiles: --k T, the tiles encoded besides"),
        ([*ask, "--pipeline", "global-only", "--k", "2"], "global-only keeps no tile (the global view alone) and takes no"),
        ([*count, "--pipelines", "dense,fastv@lm:1", "--budgets", "40", "--budget-unit", "layer-avg"],
         "drop --budget-unit layer-avg and --by-depth yes"),
        (["count-flops", "--model", "tiny", "--pipelines", "qgsa-tiles", "--tiles", "1"],
         "qgsa-tiles chooses among the tiles of a split image: give --image-size WIDTHxHEIGHT"),
        (["count-flops", "--model", "llava-tiny", "--image-size", "200x150", "--pipelines", "dense"],
         "llava-tiny takes one view (no tiles)"),
    ]:
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2 and words in result.stderr, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
    out = tmp_path / "count"
    result = CliRunner().invoke(app, [*count, "--pipelines", "dense,fastv@lm:1,qgsa-tiles", "--budgets", "52", "--tiles",
                                      "2", "--decode-tokens", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    share = pd.read_csv(out / "flops.csv").set_index("pipeline").budget_share
    assert share.to_dict() == pytest.approx({"dense": 1.0, "fastv@lm:1": 52 / 208, "qgsa-tiles": 48 / 208}, abs=1e-6)
    assert json.loads((out / "meta.json").read_text())["command"].startswith("qgsa count-flops --model tiny")


def test_sweep_resolution_over_longest_edges_is_the_tiled_table4(tmp_path):
    """`sweep-resolution --longest-edge`: the square demo image at 64/128/192 px on tiny's 64-px tiles is 1, 5
    and 10 views; rows keyed by the edge, tile selectors at --tiles, FLOPs counted per edge (not reused across
    edges, whose views have one size), bad edges and budgets one error line each."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    out = tmp_path / "sweep"
    args = ["sweep-resolution", "--model", "tiny", "--reps", "1", "--warmup", "0", "--decode-tokens", "1"]
    result = CliRunner().invoke(app, [*args, "--longest-edge", "64", "128", "192", "--pipelines",
                                      "dense,global-only,fastv@lm:1", "--k", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "sweep.csv").set_index(["longest_edge", "pipeline"])
    assert rows.views.xs("dense", level=1).tolist() == [1, 5, 10]
    assert rows.n_visual_tokens.xs("dense", level=1).tolist() == [16, 80, 160]
    assert rows.n_visual_tokens.xs("global-only", level=1).tolist() == [16, 16, 16]
    assert rows.n_patches.xs("dense", level=1).tolist() == [64, 320, 640]  # 64 patches per view
    vision = rows.flops_vision
    assert vision[(192, "dense")] == 10 * vision[(64, "dense")] == 10 * vision[(192, "global-only")]
    assert (rows.resolution == rows.index.get_level_values(0)).all() and (rows.effective_resolution == 64).all()
    assert "tiles of 64 px after resizing the longest edge to 128 px" in rows.image_input[(128, "dense")]
    assert "| 192px edge, 10 views |" in (out / "table4.md").read_text()
    t_out = tmp_path / "tiles"
    result = CliRunner().invoke(app, [*args, "--longest-edge", "64", "128", "192", "--pipelines", "dense,qgsa-tiles",
                                      "--tiles", "2", "--out", str(t_out)])
    assert result.exit_code == 0, result.output
    tiled = pd.read_csv(t_out / "sweep.csv").set_index(["longest_edge", "pipeline"])
    assert list(tiled.index) == [(64, "dense"), (128, "dense"), (128, "qgsa-tiles"), (192, "dense"),
                                 (192, "qgsa-tiles")]  # one view at 64 px: no tile to choose, no row
    assert "no row for qgsa-tiles at edge 64px: the image is one view there" in result.stderr
    assert json.loads((t_out / "meta.json").read_text())["not_measured"]["cases"] == ["qgsa-tiles at edge 64px"]
    assert tiled.image_input[(64, "dense")].startswith("one 64-px view (at longest edge 64 px the image fits one")
    again = CliRunner().invoke(app, [*args, "--longest-edge", "64", "128", "192", "--pipelines", "dense,qgsa-tiles",
                                     "--tiles", "2", "--out", str(t_out)])
    assert again.exit_code == 0 and "already holds every (batch, size, pipeline) asked for (1 x 3 x 2)" in \
        " ".join(again.output.split()), again.output
    assert tiled.n_visual_tokens.xs("qgsa-tiles", level=1).tolist() == [48, 48]  # the global view + 2 tiles
    chosen = tiled.flops_vision.xs("qgsa-tiles", level=1)  # 3 views of 64 px and the scorer over the global one
    assert chosen[128] == chosen[192] > 3 * vision[(64, "dense")]
    for extra, words in [
        (["--longest-edge", "100"], "--longest-edge 100 is not a positive multiple of the tile size 64"),
        (["--longest-edge", "128", "--pipelines", "dense,qgsa-tiles", "--tiles", "5"],
         "--tiles 5 is above the 4 tiles of the image at --longest-edge 128"),
        (["--longest-edge", "128", "--pipelines", "dense,qgsa-tiles"], "give its budget with --tiles T"),
        (["--sizes", "64", "--pipelines", "dense,qgsa-tiles", "--tiles", "1"], "sweep --longest-edge"),
        (["--sizes", "64", "--longest-edge", "128"], "give one of them"),
        (["--longest-edge", "128", "--pipelines", "dense", "--tiles", "1"], "no such selector is in --pipelines"),
    ]:
        bad = CliRunner().invoke(app, [*args, *extra, "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and words in bad.stderr, (extra, bad.output)
        assert len(bad.stderr.strip().splitlines()) == 1


def test_what_a_fresh_user_found_in_session_five(tmp_path):
    """Found by trying the README as a new user: --longest-edge was silently ignored where the model does not
    split (info, count-flops, train at post-vision); train --insert tiles with T above an image's tiles (or an edge
    giving one view) failed at its first step after writing a folder that then refused the corrected command;
    --insert bogus listed insertion points train refuses; --tiles without a tile selector read as 'too small'."""
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    train = ["train", "--model", "tiny", "--dataset", "shapes", "--limit", "8", "--max-steps", "1"]
    for args, words in [
        (["info", "--model", "tiny", "--image-size", "200x150", "--longest-edge", "128"],
         "--longest-edge 128 sets where the processor tiles the image, and this model's image splitting is off"),
        (["count-flops", "--model", "tiny", "--image-size", "200x150", "--pipelines", "dense", "--longest-edge", "128"],
         "add --image-splitting, or drop --longest-edge"),
        ([*train, "--fixed-k", "1", "--longest-edge", "128"], "it goes with --insert tiles"),
        ([*train, "--insert", "bogus"], "--insert takes post-vision, vision:L or tiles, got 'bogus'"),
        ([*train, "--insert", "tiles", "--fixed-k", "9", "--longest-edge", "128"],
         "--fixed-k 9 is above the 4 tiles of a training image at longest edge 128 px: use --fixed-k 1 .. 4"),
        ([*train, "--insert", "tiles", "--fixed-k", "1", "--longest-edge", "64"],
         "at longest edge 64 px a training image is one view (no tile to choose)"),
        (["sweep-resolution", "--model", "tiny", "--longest-edge", "128", "--pipelines", "dense", "--tiles", "2"],
         "no such selector is in --pipelines: add one, or drop --tiles"),
    ]:
        out = tmp_path / "out"
        result = CliRunner().invoke(app, [*args, "--out", str(out)] if args[0] != "info" else args)
        assert result.exit_code == 2 and words in result.stderr, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists(), args


def test_a_stretched_aspect_is_said_as_the_processor_makes_it():
    """SmolVLM's processor rounds each side up to whole tiles and pads nothing (issue 19's 4000 x 100 strip): the
    views keep the processor's behaviour, and what it did to the aspect is said (Views.stretch, describe)."""
    from PIL import Image

    splitting = Splitting(True, 2048, 512, 1)
    strip = make_views([Image.new("RGB", (4000, 100), (90, 90, 90))], splitting, (0.5,) * 3, (0.5,) * 3)
    assert (strip.grids[0], strip.counts[0], strip.stretch(0)) == ((1, 4), 5, 10.0)
    assert strip.describe(0) == ("5 views: 1 x 4 tiles + a global view; its aspect 40.00:1 stretched into 1 x 4 tiles "
                                 "(4:1), x10.00 in height, as the model's processor does (it pads nothing)")
    square = make_views([Image.new("RGB", (1024, 1024), (90, 90, 90))], splitting, (0.5,) * 3, (0.5,) * 3)
    assert square.stretch(0) == 1.0 and "stretched" not in square.describe(0)
    one = make_views([Image.new("RGB", (300, 600), (90, 90, 90))], Splitting(False, 2048, 512, 1), (0.5,) * 3,
                     (0.5,) * 3)
    assert one.stretch(0) == 0.5 and one.describe(0).endswith("stretched into one square view, x2.00 in width, as "
                                                               "the model's processor does (it pads nothing)")
