"""Measure one pipeline configuration by stage: FLOPs (fvcore) and wall-clock time.

Stages, the same code for counting and timing:
  vision    patch features V = the encoder's layers on pixel_values; a selector at vision:L selects here
            (its scoring and the shorter remaining layers are vision time and FLOPs)
  select    sparse pipelines: q embedding + scorer / f_comp + top-k + gather + W_vis (or, with the
            module's projection = connector, the model's own connector on the masked patch grid);
            post-vision selectors: their scoring + the connector on the kept visual tokens; in-LM and
            input selectors: the connector on every token (reported under select, as for any selector)
  connector dense pipeline: pixel shuffle + projection
  prefill   prompt assembly + LM over the whole prompt + LM head on the last position; an in-LM
            selector's attention rows and pruning happen here
  decode    one cached LM step + LM head, per generated token (the first token comes from prefill)
End to end = vision + select + connector + prefill + (T - 1) decode steps for T generated tokens.
Decoding is forced to T tokens (no early stop) so that every pipeline does the same work.
Image preprocessing (PIL resize, normalisation) is done once outside the timed region. Timing and counting
are the one run (run/stages.py) under a clock or a FLOP counter (run/observers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qgsa_bench.efficiency.flops import count_flops
from qgsa_bench.efficiency.timing import StageClock
from qgsa_bench.run.lm import layer_average
from qgsa_bench.run.observers import Clock, FlopCounter
from qgsa_bench.run.stages import Run

STAGES = ("vision", "select", "connector", "prefill", "decode")


@dataclass
class Case:
    """What is measured: one run (a bound spec on an engine) on a batch, with an optional fixed k."""

    label: str
    run: Run
    k: int | None = None
    compile: str = "none"  # the torch.compile mode of the run's vision encoder and LM (compiled.py)

    @property
    def pipeline(self) -> str:
        return self.run.spec.text


def clock_for(device) -> StageClock:
    """The stage clock of a device (tests replace it with one on fake CUDA events)."""
    return StageClock(device)


def _stage_names(run: Run, values: dict, select: str, connector: str, dense_default=0) -> dict:
    """The select stage of the dense path is its connector: reported under `connector`."""
    dense = run.spec.is_dense
    return {select: dense_default if dense else values["select"], connector: values["select"] if dense else 0}


@torch.no_grad()
def time_once(case: Case, pixel_values: torch.Tensor, questions: list[str], decode_tokens: int,
              stages: bool = True) -> dict:
    """One timed end-to-end run. With `stages`, a mark at every stage boundary (CUDA events on the stream,
    no synchronisation until the end); without, only at the start and the end: the run as one region,
    nothing observed in between (`latency_ms` only; the stage fields are NaN)."""
    run = case.run
    clock = clock_for(run.adapter.device)
    result = run.execute(pixel_values, questions, case.k, decode_tokens, stop=False, observer=Clock(clock, stages))
    ms = clock.intervals_ms()
    vision, select, prefill, decode = ms if stages else [float("nan")] * 4
    inputs = result.inputs
    kept = [result.kept(b) for b in range(len(questions))]
    return {
        "vision_ms": vision,
        **_stage_names(run, {"select": select}, "select_ms", "connector_ms", 0.0),
        "prefill_ms": prefill,
        "decode_ms_per_token": decode / max(decode_tokens - 1, 1),
        "latency_ms": sum(ms),
        "n_visual_tokens": float(inputs.n_visual.float().mean()),
        "k": None if None in kept else sum(kept) / len(kept),  # the budget it ran at (kept visual tokens)
        "visual_tokens_layer_avg": layer_average(inputs, result.plan, run.adapter.lm_depth),
        "prompt_tokens": int(inputs.attention_mask.shape[1]),
        "layer_tokens": result.layer_tokens,  # each LM layer's sequence length in prefill
        "trace": result.trace,
    }


@torch.no_grad()
def count_stage_flops(case: Case, pixel_values: torch.Tensor, questions: list[str], decode_tokens: int,
                      lm_only: bool = False, keep: dict | None = None) -> dict:
    """fvcore FLOPs (multiply-adds) per stage for the whole batch, plus the unsupported ops seen.
    `lm_only`: count the LM stages only (vision and select reported as 0); `keep`: receives the counted run's
    Result under "result" (its prompt and selection, so a caller need not run the case again)."""
    run = case.run
    a = run.adapter
    counter = FlopCounter(run.engine, [a.model, run.module], lm_only)
    result = run.execute(pixel_values, questions, case.k, max(decode_tokens, 1), stop=False, observer=counter)
    if keep is not None:
        keep["result"] = result
    c = counter.counts
    inputs, state = result.inputs, result.state
    e = inputs.inputs_embeds
    lengths = list(result.layer_tokens)  # each LM layer's sequence in prefill (in-LM selection shrinks it)
    head = count_flops(a.lm_head, e[:, -1:], modules=[a.model, run.module])
    flops = {
        "flops_vision": c["vision"].total,
        **_stage_names(run, {"select": c["select"].total}, "flops_select", "flops_connector"),
        "flops_prefill": c["prefill"].total,
        "flops_decode_per_token": c["decode"].total,
        "flops_lm_head": head.total,
        # counted from the shapes, not read off one operator: eager attention traces to matmul, SDPA to its
        # own op, flash kernels to others; the column must not depend on which ran (equal to the SDPA handle)
        "flops_prefill_attention": sum(lm_attention_flops(a, e.shape[0] * n, n, layers=1) for n in lengths),
    }
    flops["flops_total"] = (flops["flops_vision"] + flops["flops_select"] + flops["flops_connector"]
                            + flops["flops_prefill"] + (decode_tokens - 1) * flops["flops_decode_per_token"])
    unsupported = {}
    for count in (c["vision"], c["select"], c["prefill"], c["decode"]):
        for op, n in count.unsupported.items():
            unsupported[op] = unsupported.get(op, 0) + n
    flops["unsupported_ops"] = ";".join(sorted(unsupported))
    flops["attn_visual_flops"] = visual_attention_flops(a, inputs, decode_tokens, lengths, state.visual_per_layer)
    flops["trace"] = result.trace
    return flops


def peer_formulas(adapter, prompt_tokens: int, n_visual: float, batch: int, layer_tokens=None,
                  layer_avg: float | None = None) -> dict:
    """The LM prefill as the peers' papers estimate it, for mapping our rows onto their tables (formulas,
    not counts; multiply-adds like fvcore), for the whole batch:
      FastV (Chen et al., ECCV 2024), per layer: 4nd^2 + 2n^2 d + 2ndm   (n tokens, d width, m MLP width)
      the same with a 3-matrix (gated, SwiGLU) FFN, as LLaMA-family LMs have: 4nd^2 + 2n^2 d + 3ndm
    summed over the LM's layers, n being each layer's sequence (`layer_tokens`; in-LM selection shrinks it
    after its cut, as FastV's own accounting does). Both assume full-width K/V projections (no grouped-query
    attention). Visual tokens are given as entering the LM and averaged over its layers (the papers'
    "retained tokens"); without in-LM selection the two are equal."""
    cfg = adapter.text_config
    d, m = cfg.hidden_size, cfg.intermediate_size
    ns = list(layer_tokens) if layer_tokens else [prompt_tokens] * cfg.num_hidden_layers
    fastv = sum(4 * n * d * d + 2 * n * n * d + 2 * n * d * m for n in ns)
    ffn3 = sum(4 * n * d * d + 2 * n * n * d + 3 * n * d * m for n in ns)
    return {"formula_fastv_prefill": batch * fastv, "formula_ffn3_prefill": batch * ffn3,
            "visual_tokens_layer_avg": n_visual if layer_avg is None else layer_avg}


def lm_attention_flops(adapter, queries: int, keys: int, layers: int | None = None) -> int:
    """Multiply-adds of the LM's attention products (QK^T and AV) for `queries` query positions (summed
    over the batch) each over `keys` keys, in `layers` layers (default: all) and every head: the SDPA
    handle's full-rectangle convention, whatever attention implementation runs."""
    cfg = adapter.text_config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layers = cfg.num_hidden_layers if layers is None else layers
    return layers * cfg.num_attention_heads * 2 * head_dim * queries * keys


def visual_attention_flops(adapter, inputs, decode_tokens: int, lengths=None, visual_per_layer=None) -> int:
    """LM attention multiply-adds whose keys are visual tokens: prefill (every query over the full
    L x n_vis rectangle, the SDPA handle's convention) plus T - 1 decode steps (one query each), layer by
    layer when in-LM selection changes L and n_vis between layers."""
    B = inputs.attention_mask.shape[0]
    L = inputs.attention_mask.shape[1]
    if lengths is None:
        return lm_attention_flops(adapter, L + decode_tokens - 1, int(inputs.n_visual.sum()))
    total = 0
    for n, vis in zip(lengths, visual_per_layer):
        vis = float(inputs.n_visual.float().mean()) if vis != vis else vis  # NaN: no in-LM selection
        total += lm_attention_flops(adapter, n + decode_tokens - 1, round(vis * B), layers=1)
    return total
