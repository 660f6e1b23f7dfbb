"""`qgsa count-flops`: FLOPs by stage for every (pipeline, budget), counted, with two cross-checks.

No timing: this is the command for a model that cannot run here (LLaVA-1.5-7B is 28 GB in float32 on a
24 GB machine). With `--by-depth` (default: when the model does not fit in free memory) the LM is
counted on depth-reduced copies and scaled exactly (depth.py); the vision tower, connector, embeddings and
head are always the full model's. Cross-checks written beside the counts (crosscheck.json, table.md):
  * the vision tower as HF runs it (every layer and the final layer norm) against a published count
    (timm's GMACs for the same ViT, where the preset names one), and the layers this run skips;
  * the dense LM prefill against the analytic count for its prompt length n (multiply-adds, per layer
    q/k/v/o projections 2nd^2 + 2nd d_kv, gated MLP 3ndm, attention 2n^2 d; the head on the last
    position dV; norms and rotary embeddings are elementwise and not counted, as fvcore does not).
    Some transformers releases (5.17) compute the rotary angles inv_freq x positions with a matmul,
    which fvcore counts: (head_dim / 2) n more; crosscheck.json says which it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from qgsa_bench import QGSAError
from qgsa_bench.config import check_input_options
from qgsa_bench.efficiency.flops import count_flops
from qgsa_bench.experiments.depth import build_at_depth, count_scaled, plan_for
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.experiments.measure import peer_formulas
from qgsa_bench.experiments.runner import FLOP_CONVENTION
from qgsa_bench.results import run_meta
from qgsa_bench.run.inputs import describe_input
from qgsa_bench.run.lm import tokens_for_layer_average
from qgsa_bench.run.spec import parse_specs
from qgsa_bench.run.tiles import check_tile_unit

FLOPS_CSV = "flops.csv"
# Published vision-tower counts (multiply-adds) for the towers of the shipped presets, with their source.
TIMM_TABLE = "timm's benchmark table (results/benchmark-infer-amp-nchw-pt291-cu128-4090.csv, infer_gmacs)"
PUBLISHED_VISION = {
    ("clip_vision_model", 336, 14, 24, 1024): (191.11e9, f"timm vit_large_patch14_clip_336, {TIMM_TABLE}"),
    **{("idefics3_vision", r, 16, 12, 768): (g * 1e9, f"timm vit_base_patch16_siglip_gap_{r}, {TIMM_TABLE}")
       for r, g in ((224, 17.49), (256, 23.13), (384, 55.43), (512, 107.0))},
}
COLUMNS = ["model", "weights", "resolution", "pipeline", "budget", "budget_unit", "k", "budget_share", "n_visual_tokens",
           "visual_tokens_layer_avg", "prompt_tokens", "flops_vision", "flops_select", "flops_connector",
           "flops_prefill", "flops_decode_per_token", "flops_lm_head", "flops_prefill_attention",
           "attn_visual_flops", "flops_total", "flops_share_of_dense", "flops_saved_pct", "lm_depth", "copies",
           "unsupported_ops", "formula_fastv_prefill", "formula_ffn3_prefill",  # the peers' formulas (measure.py)
           "image_size", "views", "views_encoded"]  # --image-size: the processor's views, those encoded
FLOPS_TABLE = Table(FLOPS_CSV, tuple(COLUMNS), ("pipeline", "budget"))


@dataclass
class CountConfig:
    model: str = "llava-1.5-7b"
    resolution: int | None = None
    pipelines: tuple[str, ...] = ("dense", "qgsa", "random", "norm", "fastv", "pdrop", "sparsevlm", "visionzip",
                                  "divprune", "downsample", "qgsa-vision")
    budgets: tuple[int, ...] = (192, 128, 64)
    batch: int = 1
    decode_tokens: int = 8
    question: str = "What is shown in the image?"
    by_depth: str = "auto"  # auto | yes | no
    budget_unit: str = "tokens"  # or "layer-avg": in-LM selectors' budgets averaged over the LM's layers
    out: str = "results/count"
    overwrite: bool = False
    image_sizes: tuple[tuple[int, int], ...] = ()  # (width, height): split by the model's processor (count_views.py)
    splitting: bool | None = None  # with image_sizes: None = the model's own setting
    longest_edge: int | None = None
    tiles: tuple[int, ...] = (1, 2, 4, 8)  # tile selectors' budgets, in `tile_unit`
    tile_unit: str = "tiles"  # or "tokens": visual tokens, T = floor(k / n_v) - 1 tiles (run/tiles.tiles_for_budget)
    budgets_from_tiles: bool = False  # the other selectors at the visual tokens of each tile budget, not --budgets

    def __post_init__(self):
        if self.by_depth not in ("auto", "yes", "no"):
            raise QGSAError(f"--by-depth must be auto, yes or no, got '{self.by_depth}'")
        if self.budget_unit not in ("tokens", "layer-avg"):
            raise QGSAError(f"--budget-unit must be tokens or layer-avg, got '{self.budget_unit}'")
        self.specs = parse_specs(self.pipelines)  # each spec parsed once, here (not a field)
        check_tile_unit(self.tile_unit)
        check_input_options(self.resolution, self.splitting, self.longest_edge, self.image_sizes)

    def one_view_only(self) -> list[str]:
        """What makes this count one square view even where the model splits (run/inputs.choose_input)."""
        return [*(["--budget-unit layer-avg"] if self.budget_unit != "tokens" else []),
                *(["--by-depth yes"] if self.by_depth == "yes" else [])]


def analytic_prefill(text_config, n: int, batch: int = 1) -> int:
    """Multiply-adds of a Llama LM's prefill over n tokens, head on the last position only."""
    d, m, D = text_config.hidden_size, text_config.intermediate_size, text_config.num_hidden_layers
    heads = text_config.num_attention_heads
    hd = getattr(text_config, "head_dim", None) or d // heads
    d_kv = text_config.num_key_value_heads * hd
    per_layer = n * d * heads * hd * 2 + 2 * n * d * d_kv + 3 * n * d * m + 2 * n * n * heads * hd
    return batch * (D * per_layer + d * text_config.vocab_size)


def vision_crosscheck(built, resolution: int) -> dict:
    """The tower as HF runs it (all layers, final layer norm) and what this run skips, counted."""
    a = built.adapter
    vcfg = built.loaded.config.vision_config
    px = a.pixel_values([_image()], resolution)
    tower = a.vision_model
    full = count_flops(lambda x: tower(pixel_values=x).last_hidden_state, px, modules=[tower]).total
    ours = count_flops(a.patch_features, px, modules=[tower]).total
    key = (vcfg.model_type, resolution, vcfg.patch_size, vcfg.num_hidden_layers, vcfg.hidden_size)
    published, source = PUBLISHED_VISION.get(key, (None, None))
    out = {"vision_tower_hf_forward": full, "vision_stage_counted": ours, "skipped_by_this_run": full - ours,
           "vision_layers_total": vcfg.num_hidden_layers, "vision_layers_run": a.vision_depth,
           "published_vision": published, "published_source": source}
    if published:
        out["hf_forward_vs_published_pct"] = 100 * (full - published) / published
    return out


def _image():
    from qgsa_bench.models.images import demo_image

    return demo_image()


def _fits(model: str) -> bool:
    from transformers import AutoModelForImageTextToText

    from qgsa_bench.models.registry import _available_bytes, _preset_config, load_preset

    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForImageTextToText.from_config(
            _preset_config(load_preset(model))).parameters())
    free = _available_bytes()
    return free is None or params * 4 < 0.5 * free


def run_count(cfg: CountConfig, progress=None, warn=None) -> Path:
    """count-flops over one square view of cfg.resolution px (split images: count_views.run_count_views)."""
    from qgsa_bench.models.registry import load_preset

    preset = load_preset(cfg.model)  # a registry name: the copies are built from its preset
    scale = cfg.by_depth == "yes" or (cfg.by_depth == "auto" and not _fits(cfg.model))
    probe = build_at_depth(cfg.model, 1)
    resolution = cfg.resolution or probe.adapter.image_size
    n_dense = probe.adapter.n_dense_tokens(resolution)
    bad = [b for b in cfg.budgets if not 1 <= b <= n_dense]
    if bad:
        raise QGSAError(f"budget {bad[0]} visual tokens is impossible: pick 1 <= budget <= {n_dense} "
                        f"(the dense visual tokens at {resolution} px)")
    full_depth = preset["config"]["text_config"]["num_hidden_layers"]
    vdepth = probe.adapter.vision_depth
    given, cases = _cases(cfg, probe, resolution, n_dense, full_depth)
    settings = {"model": cfg.model, "resolution": resolution, "batch": cfg.batch, "decode_tokens": cfg.decode_tokens,
                "question": cfg.question, "budgets": list(cfg.budgets), "budget_unit": cfg.budget_unit,
                "pipelines": list(cfg.pipelines)}
    with Results(cfg.out, "count-flops", settings, cfg.overwrite) as res:
        if res.path(FLOPS_TABLE.file).exists():  # written once, when every count is done
            res.finished(f"the counts of {len(cases)} cases")
        vision = vision_crosscheck(probe, resolution)
        meta = {**run_meta(probe), "model": cfg.model, "model_source": preset.get("hub_id") or f"preset:{cfg.model}",
                "image_input": describe_input(None, resolution),
                "weights": "random", "dense_visual_tokens": n_dense,
                "counting": ("LM counted on depth-reduced copies and scaled exactly (experiments/depth.py)" if scale
                             else "LM counted at its full depth"), "flop_convention": FLOP_CONVENTION}
        meta.pop("architecture_hash", None)
        meta = res.write_meta(meta)
        del probe
        if progress:
            copies = len(cases) if not scale else sum(len(plan_for(p, k, full_depth, vdepth).cuts) + 2
                                                      for p, k in cases)
            progress(f"{len(cases)} cases, {copies} counts", -copies)
        rows = count_scaled(cfg.model, cases, resolution, cfg.batch, cfg.question, cfg.decode_tokens,
                            progress=progress, direct=not scale, vision_depth=vdepth)
        dense = next((r for r, (spec, _) in zip(rows, given) if spec.is_dense), None)
        text = SimpleNamespace(text_config=build_text_config(cfg.model))
        for row, (_, budget) in zip(rows, given):
            row.update(peer_formulas(text, row["prompt_tokens"], row["n_visual_tokens"], cfg.batch,
                                     row.pop("layer_tokens"), row["visual_tokens_layer_avg"]))
            row.update({"budget": budget, "budget_unit": cfg.budget_unit, "model": cfg.model,
                        "weights": "random (counted: FLOPs do not depend on weight values)",
                        "resolution": resolution, "budget_share": (budget or n_dense) / n_dense})
            if dense:
                row["flops_share_of_dense"] = row["flops_total"] / dense["flops_total"]
                row["flops_saved_pct"] = 100 * (1 - row["flops_share_of_dense"])
        checks = {"vision": vision}
        if dense:
            checks["lm_prefill"] = prefill_crosscheck(text.text_config, dense, cfg.batch)
        res.replace(FLOPS_TABLE, rows)
        res.path("crosscheck.json").write_text(json.dumps(checks, indent=1) + "\n")
        res.claim("crosscheck.json")
        res.write_meta({**meta, "crosscheck": checks})
    return res.out


def _cases(cfg: CountConfig, probe, resolution: int, n_dense: int, full_depth: int):
    """(every (spec, budget) as given, every (spec, k) as the run takes it: in-LM layer averages converted to
    tokens after the last cut). Bad points and budgets raise here, before any work (in-LM cuts against the
    full depth)."""
    vdepth = probe.adapter.vision_depth
    given = [(s, None) if s.selector.keeps_all else (s, b) for s in cfg.specs
             for b in ((None,) if s.selector.keeps_all else cfg.budgets)]

    def kept(spec, b):  # the run's budget: visual tokens after the last cut
        cuts = plan_for(spec, b, full_depth, vdepth).cuts
        if b is None or cfg.budget_unit == "tokens" or not cuts:
            return b
        return tokens_for_layer_average(b, n_dense, cuts, full_depth)

    cases = [(s, kept(s, b)) for s, b in given]
    for spec, k in cases:
        if not plan_for(spec, k, full_depth, vdepth).cuts:
            probe.run(spec).resolution(resolution, k)
    return given, cases


def prefill_crosscheck(text_config, dense: dict, batch: int) -> dict:
    """The counted dense prefill against `analytic_prefill` for its prompt, and what explains a difference."""
    prompt = dense["prompt_tokens"]
    analytic = analytic_prefill(text_config, prompt, batch)
    difference = dense["flops_prefill"] - analytic
    hd = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    rotary = batch * (hd // 2) * prompt  # the rotary angles inv_freq x positions, where a matmul computes them
    return {"prompt_tokens": prompt, "counted": dense["flops_prefill"], "analytic": analytic,
            "difference": difference,
            "explained": ("exact" if difference == 0 else
                          "the rotary angles' matmul (this transformers release computes inv_freq x positions "
                          "with @, which fvcore counts)" if difference == rotary else "unexplained")}


def build_text_config(model: str):
    from qgsa_bench.models.registry import _preset_config, load_preset

    return _preset_config(load_preset(model)).text_config
