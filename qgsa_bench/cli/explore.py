"""`qgsa info` (one model's architecture and parameter counts) and `qgsa ask` (one question, one image,
one pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from qgsa_bench.cli.app import command, console, key_value_table, text_or_none, warn, write_json
from qgsa_bench import QGSAError
from qgsa_bench.cli.multivalue import MULTI_VALUE_COMMAND, image_sizes
from qgsa_bench.cli.options import (PIPELINE_HELP, Device, Dtype, ImageSizes, ImageSplitting, LongestEdge, TileUnit,
                                    MaxNewTokens, Model, Resolution, Seed, Weights)


@command(**MULTI_VALUE_COMMAND)
def info(
    model: Model = "smolvlm-256m",
    weights: Weights = "auto",
    device: Device = "cpu",
    image_size: ImageSizes = [],
    image_splitting: ImageSplitting = None,
    longest_edge: LongestEdge = None,
    out: Optional[Path] = typer.Option(None, help="Also write the information as JSON to this file."),
):
    """Architecture, d_v, d_q, patches per resolution, base and QGSA parameter counts; with --image-size, the
    views, visual tokens and prompt length of such images as the model's processor splits them."""
    from qgsa_bench.info import info as model_info

    sizes = image_sizes("--image-size", image_size)
    if not sizes and (image_splitting is not None or longest_edge is not None):
        raise QGSAError("--image-splitting and --longest-edge describe how an image is split: give --image-size "
                        "WIDTHxHEIGHT too")
    data = model_info(model, weights, device, warn=warn, image_sizes=sizes, splitting=image_splitting,
                      longest_edge=longest_edge)
    console.print(key_value_table(f"{data['model']} ({data['weights']} weights)", [
        ("source", data["model_source"]), ("architecture", data["architecture"]),
        ("tokenizer", data["tokenizer"]), ("d_v (vision width)", data["d_v"]), ("d_q (LM width)", data["d_q"]),
        ("d_h (scorer width)", data["d_h"]), ("patch size", data["patch_size"]),
        ("native image size", data["image_size"]), ("connector scale factor", data["scale_factor"]),
        ("layers (vision / text)", f"{data['vision_layers']} / {data['text_layers']}"
         + (f" (vision features after layer {data['vision_layers_run']})"
            if data["vision_layers_run"] != data["vision_layers"] else "")),
        ("text heads", data["text_heads"]), ("vocabulary", data["vocab_size"]),
    ]))
    console.print(_parameters_table(data))
    res = Table(title="Patches per resolution", title_justify="left")
    for col in ("resolution", "N patches", "dense runs at", "dense visual tokens"):
        res.add_column(col, justify="right")
    for row in data["resolutions"]:
        res.add_row(*(str(v) for v in row.values()))
    console.print(res)
    if data.get("views"):
        views = Table(title="Views per image (the model's own processor)", title_justify="left")
        for col in ("image", "tiles (rows x cols)", "views", "visual tokens", "prompt tokens", "scaled up",
                    "aspect stretched"):
            views.add_column(col, justify="right")
        for row in data["views"]:
            s = row["stretch"]
            stretched = "no" if abs(s - 1) <= 0.01 else f"{'height' if s > 1 else 'width'} x{max(s, 1 / s):.2f}"
            views.add_row(row["image_size"], row["grid"], str(row["views"]), f"{row['visual_tokens']:,}",
                          f"{row['prompt_tokens']:,}", "yes" if row["upscaled"] else "no", stretched)
        console.print(views)
    write_json(out, data)


def _parameters_table(data: dict) -> Table:
    base, qgsa, published = data["base_params"], data["qgsa_params"], data["published_params"]
    params = Table(title="Parameters", title_justify="left")
    params.add_column("part")
    params.add_column("parameters", justify="right")
    for key, value in base.items():
        params.add_row(f"base: {key}", f"{value:,}")
    if published:
        params.add_row("base: published size", f"~{published / 1e9:.2f}B" if published >= 1e9 else f"~{published / 1e6:.0f}M")
    for key, value in qgsa.items():
        params.add_row(f"QGSA: {key}", f"{value:,}")
    params.add_row("QGSA share of base", f"{100 * qgsa['total'] / base['total']:.2f}%")
    return params


@command()
def ask(
    image: Path = typer.Option(..., "--image", "-i", help=(
        "Image file (PNG, JPEG, TIFF, ...; 16-bit grey shown by its top byte, transparency on white). At most "
        "QGSA_MAX_IMAGE_PIXELS pixels (environment variable; default 178956970, Pillow's decompression-bomb "
        "limit; 'none': no limit).")),
    question: str = typer.Option(..., "--question", "-q", help="The question about the image."),
    model: Model = "smolvlm-256m",
    pipeline: str = typer.Option("dense", "--pipeline", "-p", help=PIPELINE_HELP),
    weights: Weights = "auto",
    checkpoint: Optional[Path] = typer.Option(None, help="QGSA checkpoint from `qgsa train` (else random init)."),
    resolution: Resolution = None,
    k: Optional[int] = typer.Option(None, help="The selector's budget: visual tokens (the paper's qgsa/random/norm: "
                                               "patches; tile selectors: --tile-unit). Default: "
                                               "f_comp's (tile selectors need one)."),
    max_new_tokens: MaxNewTokens = 16,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    image_splitting: ImageSplitting = None,
    longest_edge: LongestEdge = None,
    tile_unit: TileUnit = "tiles",
    out: Optional[Path] = typer.Option(None, help="Also write the result as JSON to this file."),
):
    """Answer one question about one image with one pipeline; show tokens, selection and latency.

    The image as the model's own processor makes its views (SmolVLM: tiles + a global view; tile selectors:
    qgsa-tiles, qgsa-tiles-max, random-tiles, global-only, with --k tiles), or with --resolution one square view of
    that many px
    (the paper's form; also where the pipeline takes one view only, e.g. the paper's patch-level qgsa)."""
    from qgsa_bench.config import AskConfig
    from qgsa_bench.experiments.ask import ask as run_ask
    from qgsa_bench.experiments.parallel import main_only

    if not main_only("ask", warn):  # one question: answered (and timed) once, by the main process
        return
    cfg = AskConfig(image=str(image), question=question, model=model, pipeline=pipeline, weights=weights,
                    checkpoint=text_or_none(checkpoint), resolution=resolution, k=k, max_new_tokens=max_new_tokens,
                    device=device, dtype=dtype, seed=seed, image_splitting=image_splitting, longest_edge=longest_edge,
                    tile_unit=tile_unit)
    result = run_ask(cfg, warn=warn)
    console.print(key_value_table(f"qgsa ask: {pipeline}", [(key, value) for key, value in result.items()
                                                             if value is not None]))
    write_json(out, result)
