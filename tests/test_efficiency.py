"""FLOP handles and counts (exact facts), and the stage accounting of one pipeline run."""

import pytest
import torch
import torch.nn.functional as F

from qgsa_bench.build import build
from qgsa_bench.efficiency.flops import count_flops, flop_counter_mode_total
from qgsa_bench.experiments.measure import Case, count_stage_flops, time_once
from qgsa_bench.experiments.runner import paper_metrics

QUESTIONS = ["what color is the circle?", "is there a big red circle on the left?"]


def test_sdpa_handle_counts_a_toy_attention_exactly():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    count = count_flops(lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_), q, k, v)
    assert count.total == 2 * 3 * 5 * 7 * (8 + 4)  # QK^T + AV multiply-adds
    assert count.by_operator == {"scaled_dot_product_attention": 2520} and count.unsupported == {}
    # grouped-query attention (4 query heads, 2 key/value heads) costs the same per query head
    q4, k2, v2 = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    gqa = count_flops(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, enable_gqa=True), q4, k2, v2)
    assert gqa.total == 4 * 6 * 6 * 16


def test_conv_handle_counts_the_patch_embedding(tiny, images):
    a = tiny.adapter  # patch 8, d_v 32, 64 px: 64 patches
    count = count_flops(a.patch_features, a.pixel_values(images, 64), modules=[a.model])
    assert count.by_operator["_convolution_mode"] == 2 * 64 * 32 * (3 * 8 * 8)
    assert count.unsupported == {}


def _stage_fns(adapter):
    return adapter.patch_features, lambda e, m, p: adapter.lm_head(adapter.lm_forward(e, m, p)[:, -1])


def test_fvcore_with_handles_agrees_with_flop_counter_mode(tiny, images):
    """fvcore on the SDPA model == FlopCounterMode / 2 on the eager-attention model (same maths).

    FlopCounterMode is run on eager attention because on CPU it does not count SDPA at all.
    Norms are the only difference (fvcore counts layer_norm, FlopCounterMode does not)."""
    eager = build("tiny", weights="random", device="cpu", dtype="fp32", attn_implementation="eager")
    prepared = tiny.run("qgsa").prepare(images, QUESTIONS, 64)
    i = prepared.inputs
    pixel_values = tiny.adapter.pixel_values(images, 64)
    vision, prefill = _stage_fns(tiny.adapter)
    fv_vision = count_flops(vision, pixel_values, modules=[tiny.loaded.model])
    fv_prefill = count_flops(prefill, i.inputs_embeds, i.attention_mask, i.position_ids, modules=[tiny.loaded.model])
    vision, prefill = _stage_fns(eager.adapter)
    pt_vision = flop_counter_mode_total(vision, pixel_values) // 2
    pt_prefill = flop_counter_mode_total(prefill, i.inputs_embeds, i.attention_mask, i.position_ids) // 2
    assert fv_vision.total - fv_vision.by_operator["layer_norm"] == pt_vision
    assert fv_prefill.total == pt_prefill
    total_fv, total_pt = fv_vision.total + fv_prefill.total, pt_vision + pt_prefill
    assert abs(total_fv - total_pt) / total_pt < 0.02


def test_stage_flops_of_a_qgsa_run(tiny, images):
    a = tiny.adapter
    cfg = a.text_model.config
    flops = count_stage_flops(Case("qgsa", tiny.engine.run("qgsa"), 5), a.pixel_values(images, 64), QUESTIONS, 4)
    inputs = tiny.run("qgsa").prepare(images, QUESTIONS, 64, k=5).inputs
    B, L = inputs.attention_mask.shape
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert flops["flops_lm_head"] == B * cfg.hidden_size * cfg.vocab_size
    assert flops["flops_connector"] == 0 and flops["flops_select"] > 0
    assert flops["flops_prefill_attention"] == cfg.num_hidden_layers * B * cfg.num_attention_heads * L * L * 2 * head_dim
    per = cfg.num_hidden_layers * cfg.num_attention_heads * 2 * head_dim
    assert flops["attn_visual_flops"] == per * (2 * 5) * (L + 3)
    assert flops["flops_total"] == (flops["flops_vision"] + flops["flops_select"] + flops["flops_prefill"]
                                    + 3 * flops["flops_decode_per_token"])
    # one decode step: the head plus the text model on one token, so more than the head alone
    assert flops["flops_lm_head"] < flops["flops_decode_per_token"] < flops["flops_prefill"]
    assert flops["unsupported_ops"] == "aten::argsort;aten::sort"


def test_dense_connector_flops_and_timing_fields(tiny, images):
    a = tiny.adapter
    case = Case("dense", tiny.engine.run("dense"))
    flops = count_stage_flops(case, a.pixel_values(images, 64), QUESTIONS, 2)
    # pixel shuffle x2: 16 tokens of 4 * d_v = 128 features, projected to d_q = 64
    assert flops["flops_connector"] == 2 * 16 * 128 * 64 and flops["flops_select"] == 0
    timing = time_once(case, a.pixel_values(images, 64), QUESTIONS, 3)
    assert timing["n_visual_tokens"] == 16 and timing["k"] is None and timing["select_ms"] == 0.0
    stages = timing["vision_ms"] + timing["connector_ms"] + timing["prefill_ms"] + 2 * timing["decode_ms_per_token"]
    assert timing["latency_ms"] == pytest.approx(stages)


def test_paper_metrics():
    from qgsa_bench.run.spec import parse_spec as p

    assert paper_metrics(p("qgsa"), 576, 17) == {"paper_flops_reduction": 1 - 17 / 576,
                                               "paper_theoretical_speedup": 576 / 17}
    assert paper_metrics(p("dense-bypass"), 576, None) == {"paper_flops_reduction": 0.0, "paper_theoretical_speedup": 1.0}
    assert paper_metrics(p("dense"), 576, None)["paper_flops_reduction"] is None


def test_every_flops_column_is_the_same_under_sdpa_and_eager(tiny, images):
    """Field case 02: the attention column read only the SDPA operator and was 0 under eager attention."""
    eager = build("tiny", weights="random", device="cpu", dtype="fp32", attn_implementation="eager")
    pixels = tiny.adapter.pixel_values(images, 64)
    for pipeline, k in (("dense", None), ("qgsa", 5), ("dense-bypass", None)):
        sdpa_cols = count_stage_flops(Case(pipeline, tiny.engine.run(pipeline), k), pixels, QUESTIONS, 3)
        eager_cols = count_stage_flops(Case(pipeline, eager.engine.run(pipeline), k), pixels, QUESTIONS, 3)
        flops_cols = [c for c in sdpa_cols if c.startswith("flops_") or c == "attn_visual_flops"]
        assert len(flops_cols) == 9
        assert {c: eager_cols[c] for c in flops_cols} == {c: sdpa_cols[c] for c in flops_cols}, pipeline
    # and the shape-derived attention column equals what the SDPA handle counts in the prefill
    i = tiny.run("dense").prepare(images, QUESTIONS, 64).inputs
    _, prefill = _stage_fns(tiny.adapter)
    handle = count_flops(prefill, i.inputs_embeds, i.attention_mask, i.position_ids, modules=[tiny.loaded.model])
    dense = count_stage_flops(Case("dense", tiny.engine.run("dense")), pixels, QUESTIONS, 3)
    assert dense["flops_prefill_attention"] == handle.by_operator["scaled_dot_product_attention"] > 0


def test_peer_formulas_beside_the_count(tiny):
    """FastV's prefill estimate and the 3-matrix FFN variant, by hand for the tiny LM (d 64, m 128, 2 layers)."""
    from qgsa_bench.experiments.measure import peer_formulas

    cfg = tiny.adapter.text_model.config
    d, m, layers, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, 31
    got = peer_formulas(tiny.adapter, n, 16.0, batch=2)
    assert got["formula_fastv_prefill"] == 2 * layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
    assert got["formula_ffn3_prefill"] - got["formula_fastv_prefill"] == 2 * layers * n * d * m
    assert got["visual_tokens_layer_avg"] == 16.0


def test_flops_of_a_larger_batch_of_one_sample_are_the_counted_batch_scaled(tiny, images):
    """The sweep counts FLOPs once per case and scales them to other batch sizes (the same image and question
    repeated): exactly what counting at that batch gives, column by column."""
    from qgsa_bench.experiments.runner import FLOP_KEYS, stage_flops

    case, memo = Case("qgsa", tiny.engine.run("qgsa"), 5), {}
    one = stage_flops(case, tiny.adapter.pixel_values(images[:1], 64), QUESTIONS[:1], 3, 64, memo)
    three = stage_flops(case, tiny.adapter.pixel_values(images[:1] * 3, 64), QUESTIONS[:1] * 3, 3, 64, memo)
    counted = count_stage_flops(case, tiny.adapter.pixel_values(images[:1] * 3, 64), QUESTIONS[:1] * 3, 3)
    assert len(memo) == 1 and {k: three[k] for k in FLOP_KEYS} == {k: counted[k] for k in FLOP_KEYS}
    assert three["flops_total"] == 3 * one["flops_total"]
