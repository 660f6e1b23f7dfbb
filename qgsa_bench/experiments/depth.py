"""Counting a model too large to build here (LLaVA-1.5-7B: 28 GB in float32) from depth-reduced copies.

Every LM layer of one segment (the layers between two in-LM cuts, or all of them without any) does the
same work: the same sequence length, the same shapes. So the count of the full model is exactly

    F(full) = F(R) + sum_j (l_j - 1) * (F(R_j) - F(R))

where R is a copy with one layer per segment (depth S + 1 for S cuts, at layers 1..S), R_j the same with a
second layer in segment j, and l_j the full model's segment lengths. Without cuts: F(D) = F(1) + (D - 1) *
(F(2) - F(1)). The vision tower, connector, embeddings and head are the full model's in every copy
(random weights: FLOPs do not depend on their values). A test checks on llava-tiny that this gives
exactly the count of the model at its real depth, with and without cuts.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, replace

import torch

from qgsa_bench import QGSAError
from qgsa_bench.experiments.measure import Case, count_stage_flops
from qgsa_bench.run.spec import Spec, parse_spec
from qgsa_bench.selectors.base import Point

LINEAR_KEYS = ("flops_prefill", "flops_decode_per_token", "flops_prefill_attention", "attn_visual_flops")
FIXED_KEYS = ("flops_vision", "flops_select", "flops_connector", "flops_lm_head")


def build_at_depth(name: str, depth: int, dtype=torch.float32, seed: int = 0):
    """The preset `name` with `depth` LM layers, random weights, on the CPU: a `Built`."""
    from qgsa_bench.build import Built, new_module
    from qgsa_bench.models import adapter_for
    from qgsa_bench.models.registry import _package, _preset_config, _random_model, load_preset
    from qgsa_bench.run.stages import Engine

    preset = load_preset(name)
    config = _preset_config(preset)
    config.text_config.num_hidden_layers = depth
    model = _random_model(config, dtype, "sdpa", seed)
    model.eval().requires_grad_(False)
    loaded = _package(f"{name}@{depth}-layers", f"preset:{name} (LM depth {depth})", "random", model, None, preset)
    adapter = adapter_for(loaded)
    module = new_module(adapter, None, seed).to(dtype).eval()
    return Built(loaded, adapter, module, Engine(adapter, module, seed), torch.device("cpu"), dtype,
                 f"random-init (seed {seed})")


@dataclass
class Plan:
    """What to count: a spec with its LM cuts on the full model (empty for no in-LM selection)."""

    spec: Spec
    k: int | None
    cuts: tuple[int, ...] = ()

    @property
    def pipeline(self) -> str:
        return self.spec.text

    def segments(self, depth: int) -> list[int]:
        edges = [0, *self.cuts, depth]
        return [b - a for a, b in zip(edges, edges[1:])]

    def copy(self, extra: int | None = None) -> tuple[int, Spec]:
        """(depth, spec) of the copy with one layer per segment (+1 in segment `extra`)."""
        S = len(self.cuts)
        sizes = [1] * (S + 1)
        if extra is not None:
            sizes[extra] += 1
        if not S:
            return sizes[0], self.spec
        cuts = tuple(sum(sizes[:j + 1]) for j in range(S))
        point = Point("lm", cuts)
        return sum(sizes), replace(self.spec, text=f"{self.spec.selector.name}@{point}", point=point)


def plan_for(spec: Spec, k: int | None, full_depth: int, vision_depth: int) -> Plan:
    """The cuts of `spec` (parsed, unbound) on a model with `full_depth` LM layers; QGSAError if outside."""
    point = spec.point or spec.selector.default_point(vision_depth, full_depth)
    if point.kind != "lm":
        return Plan(spec, k)
    if not all(1 <= K < full_depth for K in point.layers):
        raise QGSAError(f"{spec.text}: cuts {point} outside the LM's {full_depth} layers")
    return Plan(replace(spec, point=point), k, point.layers)


def count_scaled(name: str, cases: list[tuple[Spec, int | None]], resolution: int, batch: int = 1,
                 question: str = "What is shown in the image?", decode_tokens: int = 8, image=None,
                 progress=None, full_depth: int | None = None, direct: bool = False,
                 vision_depth: int | None = None, splitting=None) -> list[dict]:
    """Stage FLOPs of `name` at its full LM depth for each (pipeline, k), counted on depth-reduced copies
    (`direct`: on the model itself). Each copy is built once and counts every case that needs it. Rows
    carry the depths counted. `splitting` (models.views.Splitting): the image as the model's processor
    gives it (tiles + global view) instead of one square view of `resolution` px."""
    from qgsa_bench.models.images import demo_image
    from qgsa_bench.models.registry import load_preset

    config = load_preset(name)["config"]
    full = full_depth or config["text_config"]["num_hidden_layers"]
    vdepth = vision_depth if vision_depth is not None else build_at_depth(name, 1).adapter.vision_depth
    plans = [plan_for(parse_spec(p), k, full, vdepth) for p, k in cases]
    needed: dict[int, list[tuple[int, str]]] = {}  # copy depth -> [(plan index, spec)]
    for i, plan in enumerate(plans):
        if direct:  # the model itself, at its full depth: one count per case
            needed.setdefault(full, []).append((i, plan.spec, None))
            continue
        for extra in [None, *range(len(plan.cuts) + 1)]:
            depth, spec = plan.copy(extra)
            needed.setdefault(depth, []).append((i, spec, extra))
    counts: dict[tuple[int, object], dict] = {}
    images = [image or demo_image()] * batch
    questions = [question] * batch
    for depth in sorted(needed):
        built = build_at_depth(name, depth)
        for i, spec, extra in needed[depth]:
            k = plans[i].k
            run = built.run(spec)
            px = built.adapter.views(images, splitting) if splitting else \
                built.adapter.pixel_values(images, run.resolution(resolution, k))
            kept = {}
            counts[(i, extra)] = count_stage_flops(Case(spec.text, run, k), px, questions, decode_tokens,
                                                   lm_only=extra is not None, keep=kept)
            counts[(i, extra)].pop("trace")
            if extra is None:  # split images: the counted run's own prompt (17 views: no second run of minutes)
                counts[(i, "shape")] = _shape(plans[i], run, images, questions, resolution, full, splitting,
                                              kept["result"] if splitting else None)
            if progress:
                progress(f"counted {plans[i].pipeline} k={k} on a {depth}-layer copy", 1)
        del built
        gc.collect()
    rows = []
    for i, plan in enumerate(plans):
        base = counts[(i, None)]
        segs = [] if direct else plan.segments(full)  # direct: the count is the full model's already
        row = {"pipeline": plan.pipeline, "k": plan.k, "lm_depth": full,
               "copies": str(full) if direct else ";".join(str(plan.copy(e)[0]) for e in [None, *range(len(segs))])}
        # F(full) = F(R) + sum_j (l_j - 1) (F(R_j) - F(R)); no segments: F(R) itself
        for key in FIXED_KEYS:
            row[key] = base[key]
        for key in LINEAR_KEYS:
            row[key] = base[key] + sum((segs[j] - 1) * (counts[(i, j)][key] - base[key]) for j in range(len(segs)))
        row["flops_total"] = (row["flops_vision"] + row["flops_select"] + row["flops_connector"]
                              + row["flops_prefill"] + (decode_tokens - 1) * row["flops_decode_per_token"])
        row["unsupported_ops"] = base["unsupported_ops"]
        row.update(counts[(i, "shape")])
        rows.append(row)
    return rows


def _shape(plan: Plan, run, images, questions, resolution: int, full: int, splitting=None, prepared=None) -> dict:
    """Visual tokens entering the LM, their average over the full model's layers, the prompt length and each
    full-model layer's sequence in prefill (`layer_tokens`, for the peers' formulas); split images: the views
    and the tiles encoded (first sample). `prepared`: the counted run's Result (else the case runs again)."""
    from qgsa_bench.run.lm import layer_average

    if prepared is None:
        with run.engine.same_draws():
            prepared = run.prepare(images, questions, resolution, plan.k, splitting=splitting)
    views = {} if prepared.views is None else {
        "views": prepared.views.counts[0], "views_encoded": len(prepared.shown[0]),
        "image_size": "x".join(map(str, prepared.views.sizes[0][::-1]))}
    n_vis = float(prepared.inputs.n_visual.float().mean())
    prompt = int(prepared.inputs.attention_mask.shape[1])
    if plan.cuts:  # the full model's schedule: segment lengths times the tokens each segment holds
        kept = [n_vis] + [float(b.float().mean()) for b in prepared.plan.budgets]
        avg = sum(s * v for s, v in zip(plan.segments(full), kept)) / full
        layers = [prompt - n_vis + v for s, v in zip(plan.segments(full), kept) for _ in range(s)]
    else:
        avg = layer_average(prepared.inputs, prepared.plan, full)
        layers = [prompt] * full
    return {"n_visual_tokens": n_vis, "visual_tokens_layer_avg": avg, "prompt_tokens": prompt,
            "layer_tokens": layers, **views}
