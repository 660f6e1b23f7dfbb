"""The `qgsa` command line. Each command parses, calls one library function, prints a Rich table.

Errors the user can act on (`QGSAError`) print as one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
from functools import wraps
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from qgsa_bench import QGSAError

app = typer.Typer(
    help="Question-Guided Sparse Attention (QGSA) for SmolVLM, measured end to end.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

MODEL_HELP = "Registry name (smolvlm-256m, smolvlm-500m, tiny) or a local model directory."
WEIGHTS_HELP = "pretrained | random | auto (pretrained when found locally or on the hub, else random)."
PIPELINE_HELP = "dense | dense-bypass | qgsa | random | norm."


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}")


def friendly(func):
    """Turn QGSAError into one clear line and exit status 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except QGSAError as err:
            err_console.print(f"[red]error:[/red] {err}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _write_json(path: Optional[Path], data: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {path}")


def _table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, str(value))
    return table


@app.command()
@friendly
def info(
    model: str = typer.Option("smolvlm-256m", "--model", "-m", help=MODEL_HELP),
    weights: str = typer.Option("auto", help=WEIGHTS_HELP),
    device: str = typer.Option("cpu", help="auto | cpu | cuda[:N]."),
    out: Optional[Path] = typer.Option(None, help="Also write the information as JSON to this file."),
):
    """Architecture, d_v, d_q, patches per resolution, base and QGSA parameter counts."""
    from qgsa_bench.build import build
    from qgsa_bench.info import model_info

    data = model_info(build(model, weights, device, "auto", warn=_warn))
    base, qgsa = data["base_params"], data["qgsa_params"]
    published = data["published_params"]
    console.print(_table(f"{data['model']} ({data['weights']} weights)", [
        ("source", data["model_source"]), ("architecture", data["architecture"]),
        ("tokenizer", data["tokenizer"]), ("d_v (vision width)", data["d_v"]), ("d_q (LM width)", data["d_q"]),
        ("d_h (scorer width)", data["d_h"]), ("patch size", data["patch_size"]),
        ("native image size", data["image_size"]), ("connector scale factor", data["scale_factor"]),
        ("layers (vision / text)", f"{data['vision_layers']} / {data['text_layers']}"),
        ("text heads", data["text_heads"]), ("vocabulary", data["vocab_size"]),
    ]))
    params = Table(title="Parameters", title_justify="left")
    params.add_column("part")
    params.add_column("parameters", justify="right")
    for key, value in base.items():
        params.add_row(f"base: {key}", f"{value:,}")
    if published:
        params.add_row("base: published size", f"~{published / 1e6:.0f}M")
    for key, value in qgsa.items():
        params.add_row(f"QGSA: {key}", f"{value:,}")
    params.add_row("QGSA share of base", f"{100 * qgsa['total'] / base['total']:.2f}%")
    console.print(params)
    res = Table(title="Patches per resolution", title_justify="left")
    for col in ("resolution", "N patches", "dense runs at", "dense visual tokens"):
        res.add_column(col, justify="right")
    for row in data["resolutions"]:
        res.add_row(*(str(v) for v in row.values()))
    console.print(res)
    _write_json(out, data)


@app.command()
@friendly
def ask(
    image: Path = typer.Option(..., "--image", "-i", help="Image file (PNG, JPEG, ...)."),
    question: str = typer.Option(..., "--question", "-q", help="The question about the image."),
    model: str = typer.Option("smolvlm-256m", "--model", "-m", help=MODEL_HELP),
    pipeline: str = typer.Option("dense", "--pipeline", "-p", help=PIPELINE_HELP),
    weights: str = typer.Option("auto", help=WEIGHTS_HELP),
    checkpoint: Optional[Path] = typer.Option(None, help="QGSA checkpoint from `qgsa train` (else random init)."),
    resolution: Optional[int] = typer.Option(None, help="Square input size in px (default: the model's native)."),
    k: Optional[int] = typer.Option(None, help="Fixed number of patches for sparse pipelines (default: f_comp)."),
    max_new_tokens: int = typer.Option(16, help="Greedy decoding length limit."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    dtype: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16."),
    seed: int = typer.Option(0, help="Seed for random weights, random init and the random baseline."),
    out: Optional[Path] = typer.Option(None, help="Also write the result as JSON to this file."),
):
    """Answer one question about one image with one pipeline; show tokens, selection and latency."""
    from qgsa_bench.ask import ask as run_ask
    from qgsa_bench.build import build
    from qgsa_bench.pipeline import check_pipeline

    check_pipeline(pipeline)
    if not question.strip():
        raise QGSAError("empty question: pass a non-empty --question")
    if k is not None and k < 1:
        raise QGSAError(f"--k must be at least 1, got {k}")
    if max_new_tokens < 1:
        raise QGSAError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    built = build(model, weights, device, dtype, str(checkpoint) if checkpoint else None, seed, warn=_warn)
    result = run_ask(built, str(image), question, pipeline, resolution, k, max_new_tokens)
    rows = [(key, value) for key, value in result.items() if value is not None]
    console.print(_table(f"qgsa ask: {pipeline}", rows))
    _write_json(out, result)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
