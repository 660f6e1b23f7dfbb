"""Measure one pipeline configuration by stage: FLOPs (fvcore) and wall-clock time.

Stages, the same code for counting and timing:
  vision    patch features V = vision_model(pixel_values)
  select    sparse pipelines: q embedding + scorer / f_comp + top-k + gather + W_vis (or, with the
            module's projection = connector, the model's own connector on the masked patch grid)
  connector dense pipeline: pixel shuffle + projection
  prefill   prompt assembly + LM over the whole prompt + LM head on the last position
  decode    one cached LM step + LM head, per generated token (the first token comes from prefill)
End to end = vision + select + connector + prefill + (T - 1) decode steps for T generated tokens.
Decoding is forced to T tokens (no early stop) so that every pipeline does the same work.
Image preprocessing (PIL resize, normalisation) is done once outside the timed region.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qgsa_bench.efficiency.flops import count_flops
from qgsa_bench.efficiency.timing import StageClock
from qgsa_bench.pipeline import Pipeline

STAGES = ("vision", "select", "connector", "prefill", "decode")


@dataclass
class Case:
    """What is measured: a pipeline of `pipe` on a batch, with an optional fixed k."""

    label: str
    pipeline: str
    pipe: Pipeline
    k: int | None = None
    compile: str = "none"  # the torch.compile mode of pipe's vision encoder and LM (compiled.py)


def _forced_decode(adapter, logits, inputs, cache, steps: int):
    mask = inputs.attention_mask
    ids = logits.argmax(dim=-1)
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        ids = adapter.decode_step(ids, mask, cache).argmax(dim=-1)
    return ids


def clock_for(device) -> StageClock:
    """The stage clock of a device (tests replace it with one on fake CUDA events)."""
    return StageClock(device)


@torch.no_grad()
def time_once(case: Case, pixel_values: torch.Tensor, questions: list[str], decode_tokens: int,
              stages: bool = True) -> dict:
    """One timed end-to-end run. With `stages`, a mark at every stage boundary (CUDA events on the stream,
    no synchronisation until the end); without, only at the start and the end: the run as one region,
    nothing observed in between (`latency_ms` only; the stage fields are NaN)."""
    pipe, a = case.pipe, case.pipe.adapter
    clock = clock_for(a.device)
    mark = clock.mark if stages else (lambda: None)
    clock.mark()
    V = a.patch_features(pixel_values)
    mark()
    q = None if case.pipeline == "dense" else a.question_embedding(questions)
    tokens, valid, selection = pipe.visual_tokens(case.pipeline, V, q, case.k)
    mark()
    inputs = a.build_inputs(tokens, questions, valid)
    logits, cache = a.prefill(inputs)
    mark()
    _forced_decode(a, logits, inputs, cache, decode_tokens - 1)
    clock.mark()
    ms = clock.intervals_ms()
    vision, select, prefill, decode = ms if stages else [float("nan")] * 4
    dense = case.pipeline == "dense"
    return {
        "vision_ms": vision,
        "select_ms": 0.0 if dense else select,
        "connector_ms": select if dense else 0.0,
        "prefill_ms": prefill,
        "decode_ms_per_token": decode / max(decode_tokens - 1, 1),
        "latency_ms": sum(ms),
        "n_visual_tokens": float(inputs.n_visual.float().mean()),
        "k": None if selection is None or case.pipeline == "dense-bypass" else float(selection.k.float().mean()),
        "prompt_tokens": int(inputs.attention_mask.shape[1]),
    }


@torch.no_grad()
def count_stage_flops(case: Case, pixel_values: torch.Tensor, questions: list[str], decode_tokens: int) -> dict:
    """fvcore FLOPs (multiply-adds) per stage for the whole batch, plus the unsupported ops seen."""
    pipe, a = case.pipe, case.pipe.adapter
    mods = [a.model, pipe.module]
    V = a.patch_features(pixel_values)
    q = a.question_embedding(questions)
    vision = count_flops(a.patch_features, pixel_values, modules=mods)
    with pipe.same_draws():  # the random baseline draws the same patches when timed
        select = count_flops(lambda q_, V_: pipe.visual_tokens(case.pipeline, V_, q_, case.k)[0], q, V,
                             modules=mods)
    tokens, valid, _ = pipe.visual_tokens(case.pipeline, V, q, case.k)
    inputs = a.build_inputs(tokens, questions, valid)
    e, m, p = inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids

    def prefill(e_, m_, p_):
        return a.lm_head(a.lm_forward(e_, m_, p_)[:, -1])

    def prefill_and_step(e_, m_, p_, ids):
        cache = a.new_cache()
        first = a.lm_head(a.lm_forward(e_, m_, p_, cache)[:, -1])
        m2 = torch.cat([m_, torch.ones_like(m_[:, :1])], dim=1)
        return first, a.decode_step(ids, m2, cache)  # return both: the tracer drops unused outputs

    pre = count_flops(prefill, e, m, p, modules=mods)
    ids = torch.full((e.shape[0],), a.pad_id, dtype=torch.long, device=e.device)
    step = count_flops(prefill_and_step, e, m, p, ids, modules=mods) - pre
    head = count_flops(a.lm_head, e[:, -1:], modules=mods)
    dense = case.pipeline == "dense"
    flops = {
        "flops_vision": vision.total,
        "flops_select": 0 if dense else select.total,
        "flops_connector": select.total if dense else 0,
        "flops_prefill": pre.total,
        "flops_decode_per_token": step.total,
        "flops_lm_head": head.total,
        # counted from the shapes, not read off one operator: eager attention traces to matmul, SDPA to its
        # own op, flash kernels to others; the column must not depend on which ran (equal to the SDPA handle)
        "flops_prefill_attention": lm_attention_flops(a, e.shape[0] * e.shape[1], e.shape[1]),
    }
    flops["flops_total"] = (flops["flops_vision"] + flops["flops_select"] + flops["flops_connector"]
                            + flops["flops_prefill"] + (decode_tokens - 1) * flops["flops_decode_per_token"])
    unsupported = {}
    for count in (vision, select, pre, step):
        for op, n in count.unsupported.items():
            unsupported[op] = unsupported.get(op, 0) + n
    flops["unsupported_ops"] = ";".join(sorted(unsupported))
    flops["attn_visual_flops"] = visual_attention_flops(a, inputs, decode_tokens)
    return flops


def peer_formulas(adapter, prompt_tokens: int, n_visual: float, batch: int) -> dict:
    """The LM prefill as the peers' papers estimate it, for mapping our rows onto their tables (formulas,
    not counts; multiply-adds like fvcore), for the whole batch:
      FastV (Chen et al., ECCV 2024), per layer: 4nd^2 + 2n^2 d + 2ndm   (n tokens, d width, m MLP width)
      the same with a 3-matrix (gated, SwiGLU) FFN, as LLaMA-family LMs have: 4nd^2 + 2n^2 d + 3ndm
    summed over the LM's layers. Both assume full-width K/V projections (no grouped-query attention).
    Visual tokens are given as entering the LM and averaged over its layers (the papers' "retained
    tokens"); no pipeline here drops tokens inside the LM, so the two are equal."""
    cfg = adapter.text_model.config
    n, d, m, layers = prompt_tokens, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    base = 4 * n * d * d + 2 * n * n * d
    return {"formula_fastv_prefill": batch * layers * (base + 2 * n * d * m),
            "formula_ffn3_prefill": batch * layers * (base + 3 * n * d * m),
            "visual_tokens_layer_avg": n_visual}


def lm_attention_flops(adapter, queries: int, keys: int) -> int:
    """Multiply-adds of the LM's attention products (QK^T and AV) for `queries` query positions (summed
    over the batch) each over `keys` keys, in every layer and head: the SDPA handle's full-rectangle
    convention, whatever attention implementation runs."""
    cfg = adapter.text_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers * cfg.num_attention_heads * 2 * head_dim * queries * keys


def visual_attention_flops(adapter, inputs, decode_tokens: int) -> int:
    """LM attention multiply-adds whose keys are visual tokens: prefill (every query over the full
    L x n_vis rectangle, the SDPA handle's convention) plus T - 1 decode steps (one query each)."""
    n_vis = int(inputs.n_visual.sum())
    L = inputs.attention_mask.shape[1]
    return lm_attention_flops(adapter, L + decode_tokens - 1, n_vis)
