"""The field's selectors at their insertion points: exact facts of the layer-by-layer run."""

import pytest
import torch
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.cli import app
from qgsa_bench.run.lm import prefill, run_planned
from qgsa_bench.run.spec import parse_spec
from qgsa_bench.selectors.base import Point, SelectState, parse_point
from qgsa_bench.selectors.divprune import max_min_diverse
from qgsa_bench.selectors.registry import REGISTRY as SELECTORS
from qgsa_bench.selectors.sparsevlm import SparseVLM

QUESTIONS = ["what color is the circle?", "is there a blue square on the left of the red one?"]
# every selector, at a point each model allows (tiny: 2 vision / 2 LM layers; llava-tiny: 2 run / 3 LM)
SPECS = ["fastv", "pdrop", "sparsevlm", "visionzip", "divprune", "qgsa-vision", "norm@vision:1",
         "norm@post-vision", "norm@lm:1", "visionzip@vision:1"]


@pytest.fixture(scope="module")
def eager_tiny():
    return build("tiny", weights="random", device="cpu", dtype="fp32", seed=0, attn_implementation="eager")


@torch.no_grad()
def test_connector_on_whole_units_equals_the_dense_connector(tiny, images):
    a = tiny.adapter  # s = 2: a visual token is a 2x2 block of patches
    V = a.patch_features(a.pixel_values(images, 64))  # (2, 64, d_v)
    units = a.unit_patches(64)
    assert units.shape == (16, 4) and units[0].tolist() == [0, 1, 8, 9] and units[1].tolist() == [2, 3, 10, 11]
    torch.testing.assert_close(a.connect_units(V[:, units]), a.connect(V), rtol=0, atol=0)


@torch.no_grad()
def test_attention_probs_equal_the_models_own_attention_weights(eager_tiny, images):
    a = eager_tiny.adapter
    inputs = eager_tiny.run("dense").prepare(images, QUESTIONS, 64).inputs  # left-padded batch
    captured = {}
    layer = a.lm.layers[1].self_attn
    hook = layer.register_forward_hook(lambda m, args, out: captured.update(w=out[1]))
    h = inputs.inputs_embeds
    a.text_model.config._attn_implementation = "eager"
    hidden_in = {}
    pre = a.lm.layers[1].register_forward_pre_hook(lambda m, args: hidden_in.update(h=args[0]))
    a.lm_forward(h, inputs.attention_mask, inputs.position_ids)
    hook.remove(), pre.remove()
    L = h.shape[1]
    rows = torch.tensor([L - 1, L - 3])
    ours = a.lm.attention_probs(1, hidden_in["h"], inputs.attention_mask, inputs.position_ids, rows)
    for b in range(2):
        valid = inputs.attention_mask[b].bool()
        torch.testing.assert_close(ours[b][:, :, valid], captured["w"][b][:, rows][:, :, valid].float(),
                                   rtol=1e-5, atol=1e-6)
        assert ours[b][:, :, ~valid].abs().sum() == 0  # padding gets no attention
    assert not inputs.attention_mask.all()  # the batch has padding


@pytest.mark.parametrize("spec", ["norm@vision:1", "random@vision:1", "norm@post-vision", "norm@lm:1", "fastv"])
@torch.no_grad()
def test_keeping_every_token_equals_the_dense_run(tiny, images, spec):
    a, pipe = tiny.adapter, tiny.engine
    dense = pipe.run("dense").prepare(images, QUESTIONS, 64)
    full = pipe.run(spec).prepare(images, QUESTIONS, 64, k=16)  # 16 = every visual token at 64 px
    assert full.inputs.n_visual.tolist() == [16, 16]
    torch.testing.assert_close(prefill(a, full.inputs, full.plan)[0], a.prefill(dense.inputs)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", ["fastv@lm:1", "pdrop@lm:1,2", "sparsevlm@lm:1,2", "norm@lm:2"])
@torch.no_grad()
def test_cached_decoding_equals_a_full_recompute_with_the_same_pruning(llava_tiny, images, spec):
    a, pipe = llava_tiny.adapter, llava_tiny.engine
    prepared = pipe.run(spec).prepare(images, QUESTIONS, 84, k=7)
    inputs, plan = prepared.inputs, prepared.plan
    logits, state = prefill(a, inputs, plan)
    assert [r.k.tolist() for r in plan.records][-1] == [7, 7]
    if spec.startswith(("pdrop", "sparsevlm")):
        assert [r.k.tolist() for r in plan.records] == [[16, 16], [7, 7]]  # 36 -> 16 -> 7: geometric
        assert state.visual_per_layer == [36.0, 16.0, 7.0]
    ids, steps = [logits.argmax(-1)], []
    for _ in range(3):
        steps.append(a.decode_step(ids[-1], state))
        ids.append(steps[-1].argmax(-1))
    new = torch.stack(ids[:3], dim=1)  # the tokens fed back
    embeds = torch.cat([inputs.inputs_embeds, a.embed(new)], dim=1)
    mask = torch.cat([inputs.attention_mask, torch.ones_like(new)], dim=1)
    from qgsa_bench.models.base import positions_of

    replay = plan.replay()
    replay_pass = replay.start(inputs)
    hidden, _ = run_planned(a.lm, embeds, mask, positions_of(mask), None, replay_pass)
    recomputed = a.lm_head(hidden[:, -1])
    torch.testing.assert_close(steps[-1], recomputed, rtol=1e-4, atol=1e-5)
    # each layer's cache holds its segment's tokens: all of them before the first cut, then only the kept
    lengths = [m.shape[1] for m in state.key_masks]
    L = inputs.attention_mask.shape[1]
    longest_text = int((inputs.attention_mask.sum(1) - inputs.n_visual).max())
    expected, kept = [], 36
    for layer in range(3):
        if layer in replay.layers:
            kept = {1: 16, 2: 7}[layer] if len(replay.layers) == 2 else 7
        expected.append(L + 3 if kept == 36 else longest_text + kept + 3)
    assert lengths == expected


@pytest.mark.parametrize("spec", SPECS)
@torch.no_grad()
def test_a_batch_gives_each_sample_its_solo_result(tiny, images, spec):
    a, pipe = tiny.adapter, tiny.engine
    batch = pipe.run(spec).prepare(images, QUESTIONS, 64, k=torch.tensor([3, 6]) if "lm" not in spec
                           and spec not in ("fastv", "pdrop", "sparsevlm") else 5)
    logits, _ = prefill(a, batch.inputs, batch.plan)
    for b in range(2):
        k = [3, 6][b] if "lm" not in spec and spec not in ("fastv", "pdrop", "sparsevlm") else 5
        alone = pipe.run(spec).prepare(images[b:b + 1], QUESTIONS[b:b + 1], 64, k=k)
        torch.testing.assert_close(logits[b], prefill(a, alone.inputs, alone.plan)[0][0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", SPECS + ["downsample"])
@torch.no_grad()
def test_every_selector_runs_on_llava(llava_tiny, images, spec):
    prepared = llava_tiny.run(spec).answer(images, QUESTIONS, 84, k=9, max_new_tokens=2)
    assert len(prepared.generated) == 2
    visual = prepared.inputs.n_visual.tolist() if prepared.plan is None else prepared.plan.records[-1].k.tolist()
    assert visual == [9, 9]


def test_selection_inside_the_encoder_shrinks_the_later_layers(tiny, images):
    """vision:1 with k = 4 of 16 tokens: the second layer runs on 16 of 64 patches."""
    a, pipe = tiny.adapter, tiny.engine
    seen = []
    hook = a.vision_layers[1].register_forward_pre_hook(lambda m, args, kw=None: seen.append(args[0].shape[1]))
    with torch.no_grad():
        pipe.run("norm@vision:1").prepare(images, QUESTIONS, 64, k=4)
        pipe.run("dense").prepare(images, QUESTIONS, 64)
    hook.remove()
    assert seen == [16, 64]


def test_divprune_is_the_greedy_max_min_subset():
    x = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]])
    picked = max_min_diverse(x, torch.ones(5, dtype=torch.bool), 3).tolist()
    assert picked[0] in (2, 3) and set(picked) == {0, 2, 3} or set(picked) == {1, 2, 3}
    assert 4 not in picked  # halfway between two kept tokens: never the farthest


def test_sparsevlm_rates_with_the_text_tokens_relevant_to_the_image():
    att = torch.tensor([[[0.30, 0.10, 0.00], [0.00, 0.05, 0.01], [0.10, 0.30, 0.00]]])  # (B=1, T=3, n=3)
    state = SelectState(Point("lm", (2,)), torch.zeros(1, 3, 4), torch.ones(1, 3, dtype=torch.bool),
                        text_attention=att, text_valid=torch.ones(1, 3, dtype=torch.bool))
    scores = SparseVLM().scores(state)  # raters: tokens 0 and 2 (mean 0.133, 0.133 >= 0.094), not token 1
    torch.testing.assert_close(scores, torch.tensor([[0.20, 0.20, 0.00]]))


def test_specs_and_points_are_checked():
    assert parse_point("lm:2,4") == Point("lm", (2, 4)) and str(parse_point("vision:3")) == "vision:3"
    for bad, words in [("lm", "unknown insertion point"), ("vision:1,2", "one layer"), ("lm:x", "integers"),
                       ("lm:4,2", "ascending")]:
        with pytest.raises(QGSAError, match=words):
            parse_point(bad)
    with pytest.raises(QGSAError, match="cannot sit at vision:2: it sits at lm:K"):
        parse_spec("fastv@vision:2")
    with pytest.raises(QGSAError, match="prunes at one LM layer"):
        parse_spec("fastv@lm:1,2")
    assert set(SELECTORS) == {"dense", "dense-bypass", "qgsa", "random", "norm", "fastv", "pdrop", "sparsevlm",
                              "visionzip", "divprune", "downsample", "qgsa-vision", "random-tiles", "global-only",
                              "qgsa-tiles", "qgsa-tiles-max", "hired"}
    for cls in SELECTORS.values():
        assert cls.paper and cls.__module__ and cls.points


@pytest.mark.parametrize("spec, k, words", [
    ("norm@vision:2", 4, "outside the vision encoder: this model runs 2 vision layers, so use vision:1 .. vision:1"),
    ("fastv@lm:5", 4, "outside the language model: it has 2 layers, so use lm:1 .. lm:1"),
    ("fastv", 17, "budget 17 visual tokens is impossible at lm:1 (16 visual tokens enter the LM): pick 1 <= budget <= 16"),
    ("divprune", 0, "--k must be at least 1, got 0"),
    ("divprune", 17, "budget 17 visual tokens is impossible at post-vision (16 visual tokens there)"),
    ("downsample", 99, "pick 1 <= budget <= 16"),
    ("fastv@vision:1", 4, "cannot sit at vision:1"),
])
def test_bad_points_and_budgets_are_one_error_line(image_path, spec, k, words):
    result = CliRunner().invoke(app, ["ask", "--model", "tiny", "--weights", "random", "--image", str(image_path),
                                      "--question", "what?", "--pipeline", spec, "--k", str(k), "--resolution", "64"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and words in result.output and len(result.output.splitlines()) == 1


def test_budget_as_a_layer_average_is_the_largest_kept_count_that_fits():
    from qgsa_bench.run.lm import tokens_for_layer_average

    # FastV on LLaVA-1.5-7B: 2 layers see 576 tokens, 30 see k: (2*576 + 30*29) / 32 = 63.2 <= 64 < 64.1 (k=30)
    assert tokens_for_layer_average(64, 576, (2,), 32) == 29
    # PyramidDrop at 8/16/24: geometric 576 -> 144 -> 36 -> 9 averages 191.25 <= 192
    assert tokens_for_layer_average(192, 576, (8, 16, 24), 32) == 9
    with pytest.raises(QGSAError, match=r"even keeping 1 token after the cuts, the layers average 144.8 \(all 576 "
                                        r"before the first cut\); pick a budget of at least 145"):
        tokens_for_layer_average(64, 576, (8, 16, 24), 32)


def test_qgsa_tiles_max_scores_a_tile_by_its_best_patch():
    """qgsa-tiles pools a tile's patch scores by their mean, qgsa-tiles-max by their maximum: one salient patch
    (a small object) wins a tile for the max and is diluted by the mean; a tile holding no patch never wins."""
    from qgsa_bench.selectors.tiles import QGSATiles, QGSATilesMax

    patch_scores = torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, 2.0, 2.0]])  # tile 0: one salient patch; tile 1: even
    where = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    inside = torch.nn.functional.one_hot(where, 3).bool()  # tile 2 holds no patch
    assert QGSATiles.pool(patch_scores, inside).tolist() == [[1.0, 2.0, 0.0]]
    assert QGSATilesMax.pool(patch_scores, inside).tolist() == [[4.0, 2.0, -1e4]]
