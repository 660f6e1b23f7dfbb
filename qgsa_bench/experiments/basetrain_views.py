"""base-train on the model's own views (the `shapes-tiled` preset): the preset's processor settings, the tile
markers a one-view base's tokenizer lacks, the processor saved with the model, and the visual tokens of a batch as
the run presents them (models/views.py, run/tiles.py). experiments/basetrain.py uses them."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench.models.idefics3 import Idefics3Adapter
from qgsa_bench.models.views import Splitting, tile_token


def preset_splitting(preset: dict) -> Splitting | None:
    """The preset's `processor` block as Splitting when it splits images; None for one view."""
    settings = preset.get("processor")
    if not settings or not settings["do_image_splitting"]:
        return None
    return Splitting(True, settings["longest_edge"], settings["max_image_size"], settings.get("resample", 1))


def add_tile_markers(model, tokenizer, splitting: Splitting | None) -> None:
    """Give the tokenizer the <row_r_col_c> markers of `splitting`'s grid (new special tokens) and the model
    their embedding and LM-head rows (transformers' resize_token_embeddings: new rows at the mean of the old)."""
    if splitting is None:
        return
    side = splitting.longest_edge // splitting.tile
    vocab = tokenizer.get_vocab()
    new = [tile_token(r, c) for r in range(1, side + 1) for c in range(1, side + 1) if tile_token(r, c) not in vocab]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
        model.resize_token_embeddings(len(tokenizer))


def save_processor(out: Path, splitting: Splitting | None, preset: dict) -> None:
    """Write the image processor's settings (preprocessor_config.json) next to a tiled model, so that loading
    `--model DIR` splits images as in training."""
    if splitting is None:
        return
    from transformers import Idefics3ImageProcessor

    Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": splitting.longest_edge},
                           max_image_size={"longest_edge": splitting.tile}, resample=splitting.resample,
                           image_mean=preset["image_mean"], image_std=preset["image_std"]).save_pretrained(out)


def visual_inputs(adapter: Idefics3Adapter, images, per_image: int = 1):
    """The visual tokens of `images` as the model's processor presents them, each repeated for `per_image`
    consecutive questions: (tokens (B * per_image, n, d_q), valid (B * per_image, n) or None, layouts (per
    question the image's prompt pieces) or None, V (views, N_v, d_v) the encoder's patch features). One view
    of the encoder's size unless the model splits images (then every view: run/tiles.py's dense path)."""
    splitting = adapter.loaded.splitting
    if not splitting.split:
        V = adapter.patch_features(adapter.pixel_values(images, adapter.image_size))
        return adapter.connect(V).repeat_interleave(per_image, dim=0), None, None, V
    from qgsa_bench.run.tiles import view_tokens
    from qgsa_bench.run.vision import Encoded

    views = adapter.views(images, splitting)
    enc = Encoded(V=adapter.patch_features(views.pixel_values), views=views,
                  shown=[list(range(n)) for n in views.counts])
    tokens, valid, layouts = view_tokens(adapter, enc)
    return (tokens.repeat_interleave(per_image, dim=0), valid.repeat_interleave(per_image, dim=0),
            [layout for layout in layouts for _ in range(per_image)], enc.V)
