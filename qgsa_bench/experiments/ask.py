"""`qgsa ask`: one image, one question, one pipeline -> answer, visual tokens, selection, latency."""

from __future__ import annotations

import torch

from qgsa_bench.build import Built, build
from qgsa_bench.config import AskConfig
from qgsa_bench.efficiency.timing import Stopwatch
from qgsa_bench.models.images import load_image
from qgsa_bench.run.inputs import choose_input, describe_input
from qgsa_bench.run.tiles import tiles_for_budget
from qgsa_bench.run.lm import layer_average
from qgsa_bench.runtime import device_name, dtype_name

RANDOM_NOTE = "random weights: this answer is noise, not a model prediction"


def ask(cfg: AskConfig, warn=None, warmup: int = 1) -> dict:
    """`qgsa ask` as configured: the image read (before the model loads: a bad file is one error at once), the
    model built, one answer with everything `answer` reports."""
    image = load_image(cfg.image)
    built = build(cfg.model, cfg.weights, cfg.device, cfg.dtype, cfg.checkpoint, cfg.seed, warn=warn)
    splitting = choose_input(built.adapter, cfg.resolution, cfg.image_splitting, cfg.longest_edge, [cfg.spec],
                             warn=warn)
    return answer(built, cfg.image, cfg.question, cfg.spec, cfg.resolution, cfg.k, cfg.max_new_tokens, warmup,
                  splitting, cfg.tile_unit, image)


@torch.no_grad()
def answer(built: Built, image_path: str, question: str, pipeline="dense", resolution: int | None = None,
           k: int | None = None, max_new_tokens: int = 16, warmup: int = 1, splitting=None,
           tile_unit: str = "tiles", image=None) -> dict:
    """One answer, its visual tokens, selection and latency (one timed run after `warmup` untimed ones).
    `pipeline`: a spec (`NAME[@POINT]` or a parsed run.spec.Spec); `splitting` (models.views.Splitting): the
    image as the model's processor gives it, else one square view of `resolution` px. Raises QGSAError for
    bad input. `tile_unit`: a tile selector's k in tiles or in visual tokens (run/tiles.tiles_for_budget).
    `image`: the file at `image_path` already read (a PIL image), else it is read here."""
    image = load_image(image_path) if image is None else image
    resolution = resolution or built.adapter.image_size
    run = built.run(pipeline)
    budget = k
    if run.spec.point.kind == "tiles" and k is not None and tile_unit == "tokens" and splitting is not None:
        views = built.adapter.views([image], splitting)
        k = tiles_for_budget(k, tile_unit, built.adapter.n_dense_tokens(splitting.tile), views.counts[0] - 1,
                             run.label)

    def once():
        prepared = run.answer([image], [question], resolution, k, max_new_tokens, splitting=splitting)
        return prepared, prepared.generated

    for _ in range(warmup):
        once()
    with Stopwatch(built.device) as sw:
        prepared, generated = once()
    result = {
        **built.loaded.provenance(),
        "qgsa_weights": "not used" if run.spec.is_dense else built.qgsa_weights,
        "device": device_name(built.device),
        "dtype": dtype_name(built.dtype),
        "pipeline": run.label,
        "question": question,
        "image": str(image_path),
        "resolution": resolution if splitting is None else None,
        "effective_resolution": prepared.resolution,
        "image_input": describe_input(splitting, prepared.resolution),
        **({"views_made": prepared.views.describe(0)} if prepared.views is not None else {}),
        "n_patches": prepared.n_patches,
        "insertion_point": run.spec.where() if run.spec.patches or run.spec.is_dense else str(run.spec.point),
        "n_visual_tokens": int(prepared.inputs.n_visual[0]),  # entering the LM
        "k": prepared.kept(0),  # kept by the selector (in the LM: after its last cut)
        **({"tiles_kept": len(prepared.selected_tiles(0)), "views_encoded": len(prepared.shown[0]),
            "budget": budget, "budget_unit": tile_unit} if prepared.selected_tiles(0) is not None else {}),
        "visual_tokens_layer_avg": round(layer_average(prepared.inputs, prepared.plan, built.adapter.lm_depth), 2),
        **prepared.patch_fields(0),
        "prompt_tokens": int(prepared.inputs.attention_mask[0].sum()),
        "answer": built.adapter.decode_text(generated[0]),
        "answer_token_ids": generated[0],
        "latency_ms": round(sw.ms, 2),
        "latency_note": f"one run after {warmup} warm-up run(s): vision + selection + prefill + decode",
    }
    if built.loaded.weights == "random":
        result["note"] = RANDOM_NOTE
    return result
