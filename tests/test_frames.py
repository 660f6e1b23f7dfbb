"""Every index that leaves a selector is in the image's frame (issue 21, case 23).

A run reports `selected_patches` (ask --out, predictions.jsonl): patches in [0, N) in raster order. Here each
selector's report is composed back into what the LM actually received, independently of the selection code:
- in the LM (lm:K): the position ids still present in the last layer's keys are the kept visual tokens;
- after the encoder (post-vision): the LM's visual rows equal the dense run's rows of the reported tokens;
- inside the encoder (vision:L): the encoder's remaining layers rerun on the reported units alone give the
  LM's visual rows;
- the paper's patch-level form: the LM's rows equal dense-bypass's rows (every patch through W_vis) at
  the reported patches.
Batches of two with different budgets cover the per-sample padding.
"""

import pytest
import torch

from qgsa_bench.run.vision import vision_until

QUESTIONS = ["what color is the circle?", "how many squares are there?"]
FAMILIES = {"tiny": 64, "llava_tiny": 84}
BUDGETS = torch.tensor([5, 3])


def _tokens_of(built, resolution: int, patches: list[int]) -> list[int]:
    """The dense visual tokens whose patches are exactly `patches` (each token whole)."""
    units = built.adapter.unit_patches(built.adapter.n_patches(resolution))
    owner = {int(p): t for t, row in enumerate(units) for p in row}
    tokens = sorted({owner[p] for p in patches})
    assert sorted(units[tokens].flatten().tolist()) == sorted(patches), "a reported token is not whole"
    return tokens


def _lm_visual_rows(result, b: int) -> torch.Tensor:
    inputs = result.inputs
    index = inputs.visual_index[b][inputs.visual_valid[b]]
    return inputs.inputs_embeds[b, index]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", ["fastv@lm:1", "pdrop@lm:1,2", "sparsevlm@lm:1,2", "random@lm:1", "norm@lm:2"])
@torch.no_grad()
def test_in_lm_selections_are_reported_as_the_tokens_the_last_layer_keeps(request, images, family, spec):
    built = request.getfixturevalue(family)
    resolution = FAMILIES[family]
    if built.adapter.lm_depth < 3:  # tiny's LM has 2 layers: one cut, at lm:1
        spec = spec.replace("1,2", "1").replace("lm:2", "lm:1")
    seen = []
    runner = built.adapter.lm
    original = runner.run_layers

    def recording(h, key_mask, positions, layers, state, *args, **kwargs):
        seen.append((positions.clone(), key_mask.clone()))
        return original(h, key_mask, positions, layers, state, *args, **kwargs)

    runner.run_layers = recording
    try:
        result = built.run(spec).prepare(images, QUESTIONS, resolution, BUDGETS)
    finally:
        runner.run_layers = original
    positions, key_mask = seen[-1]  # the last layer's input: after every cut
    inputs = result.inputs
    for b in range(2):
        visual_pos = inputs.position_ids[b, inputs.visual_index[b][inputs.visual_valid[b]]].tolist()
        alive = set(positions[b][key_mask[b].bool()].tolist())
        kept_tokens = [t for t, p in enumerate(visual_pos) if p in alive]
        assert len(kept_tokens) == int(BUDGETS[b])
        reported = _tokens_of(built, result.resolution, result.selected_patches(b))
        assert reported == kept_tokens


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", ["random@post-vision", "norm@post-vision", "divprune", "visionzip"])
@torch.no_grad()
def test_post_vision_selections_are_reported_as_the_tokens_the_lm_receives(request, images, family, spec):
    built = request.getfixturevalue(family)
    resolution = FAMILIES[family]
    dense = built.run("dense").prepare(images, QUESTIONS, resolution)
    result = built.run(spec).prepare(images, QUESTIONS, resolution, BUDGETS)
    for b in range(2):
        tokens = _tokens_of(built, result.resolution, result.selected_patches(b))
        rows = _lm_visual_rows(result, b)
        torch.testing.assert_close(rows[:len(tokens)], _lm_visual_rows(dense, b)[tokens])
        groups = result.merged_patches(b)
        if spec == "visionzip":  # the dominant tokens and the merged groups cover every token once
            merged = [_tokens_of(built, result.resolution, g) for g in groups]
            covered = tokens + [t for g in merged for t in g]
            assert sorted(covered) == list(range(built.adapter.n_dense_tokens(resolution)))
            assert len(tokens) + len(groups) == int(BUDGETS[b])
        else:
            assert groups is None and len(tokens) == int(BUDGETS[b]) == rows.shape[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec", ["random@vision:1", "norm@vision:1"])
@torch.no_grad()
def test_in_encoder_selections_are_reported_as_the_units_the_encoder_finished(request, images, family, spec):
    built = request.getfixturevalue(family)
    a, resolution = built.adapter, FAMILIES[family]
    result = built.run(spec).prepare(images, QUESTIONS, resolution, BUDGETS)
    px = a.pixel_values(images, result.resolution)
    for b in range(2):
        patches = result.selected_patches(b)
        tokens = _tokens_of(built, result.resolution, patches)
        _, h = vision_until(a, px[b:b + 1], 1)
        P = a.n_prefix_vision
        h = torch.cat([h[:, :P], h[:, P:][:, patches]], dim=1)  # the reported patches, in raster order
        for i in range(1, a.vision_depth):
            h = a.vision_layer(i, h)
        V = torch.zeros(1, result.n_patches, h.shape[-1])
        V[:, patches] = a.vision_out(h)
        expected = a.connect(V)[0, tokens]
        torch.testing.assert_close(_lm_visual_rows(result, b), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["qgsa", "random", "norm"])
@torch.no_grad()
def test_patch_level_selections_are_reported_as_the_patches_the_lm_receives(tiny, images, name):
    bypass = tiny.run("dense-bypass").prepare(images, QUESTIONS, 64)  # every patch through W_vis
    result = tiny.run(name).prepare(images, QUESTIONS, 64, BUDGETS)
    for b in range(2):
        patches = result.selected_patches(b)
        assert len(patches) == int(BUDGETS[b])
        torch.testing.assert_close(_lm_visual_rows(result, b), _lm_visual_rows(bypass, b)[patches])
