"""`qgsa info`: architecture, dimensions, patches per resolution and parameter counts."""

from __future__ import annotations

from qgsa_bench.build import Built, build

INFO_RESOLUTIONS = (224, 336, 384, 448, 512, 576)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def info(model: str, weights: str = "auto", device: str = "cpu", warn=None, image_sizes=(), splitting=None,
         longest_edge=None) -> dict:
    """`qgsa info`: `model_info` of the model; random weights are built on the meta device (parameters are
    counted without memory: a 7B model in none). `image_sizes` ((width, height) px): how the model's processor
    splits such images (`views_info`). Raises QGSAError for settings the model cannot take."""
    built = build(model, weights, "meta" if weights == "random" else device, "auto", warn=warn)
    data = model_info(built)
    if image_sizes:
        data["views"] = views_info(built, image_sizes, built.adapter.splitting(splitting, longest_edge))
    return data


def views_info(built: Built, image_sizes, splitting, question: str = "What is shown in the image?") -> list[dict]:
    """Per image size (width, height) px: the views the model's processor makes (tiles rows x cols + the global
    view), the visual tokens reaching the LM and the prompt's length in tokens with `question`, and whether
    the image was scaled up to the longest edge (an image smaller than it is, as the processor does) and how the tiles
    stretch its aspect (`stretch`: Views.stretch, height over width)."""
    from qgsa_bench.models.images import demo_image
    from qgsa_bench.models.views import image_prompt, make_views

    a = built.adapter
    n_v = a.n_dense_tokens(splitting.tile)  # visual tokens per view
    rows = []
    for width, height in image_sizes:
        views = make_views([demo_image().resize((width, height))], splitting, built.loaded.image_mean,
                           built.loaded.image_std)
        n = views.counts[0]
        pieces = a.prompt_pieces(question, image_prompt(views.markers(0), [n_v] * n, views.grids[0]))
        rows.append({"image_size": f"{width}x{height}", "grid": "x".join(map(str, views.grids[0])), "views": n,
                     "visual_tokens": n * n_v, "prompt_tokens": a.prompt_length(pieces),
                     "upscaled": views.scaled_up(0), "stretch": round(views.stretch(0), 4)})
    return rows


def model_info(built: Built, resolutions=INFO_RESOLUTIONS) -> dict:
    a = built.adapter
    base = {
        "vision_model": count(a.vision_model),
        "connector": count(a.connector),
        "text_model": count(a.text_model),
        "lm_head": count(a.lm_head),
    }
    base["total"] = count(built.loaded.model)
    per_res = []
    for res in resolutions:
        if res % a.patch_size:
            continue
        per_res.append({
            "resolution": res,
            "n_patches": a.n_patches(res),
            "dense_resolution": a.dense_resolution(res),
            "dense_visual_tokens": a.n_dense_tokens(res),
        })
    cfg = built.loaded.config
    return {
        **built.loaded.provenance(),
        "architecture": cfg.architectures[0] if cfg.architectures else cfg.model_type,
        "family": a.family,
        "d_v": a.d_v,
        "d_q": a.d_q,
        "d_h": built.module.d_h,
        "patch_size": a.patch_size,
        "image_size": a.image_size,
        "scale_factor": a.scale_factor,
        "vision_layers": cfg.vision_config.num_hidden_layers,
        "vision_layers_run": a.vision_depth,  # LLaVA stops at its feature layer
        "text_layers": cfg.text_config.num_hidden_layers,
        "text_heads": f"{cfg.text_config.num_attention_heads} ({cfg.text_config.num_key_value_heads} KV)",
        "vocab_size": cfg.text_config.vocab_size,
        "base_params": base,
        "published_params": built.loaded.published_params,
        "qgsa_params": built.module.parameter_counts(),
        "qgsa_config": built.module.config.to_dict(),
        "resolutions": per_res,
    }
