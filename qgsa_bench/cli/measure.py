"""The efficiency commands: `sweep-resolution` (Table 4), `sweep-budget` (every selector at equal budgets),
`count-flops` (FLOPs only, any model size) and `ablate` (Table 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qgsa_bench import QGSAError
from qgsa_bench.cli.app import command, text_or_none, warn
from qgsa_bench.cli.data import untrained, warned_when_started
from qgsa_bench.cli.multivalue import MULTI_VALUE_COMMAND, floats, image_sizes, ints
from qgsa_bench.cli.options import (PIPELINE_HELP, TIMING, Batch, Batches, BudgetUnit, Budgets, Checkpoint,
                                    ImageSizes, ImageSplitting, LongestEdge, LongestEdges, Tiles, TileUnit,
                                    BudgetsFromTiles,
                                    DecodeTokens, FcompCheckpoint, Model, OracleLimit, OracleSplit, Overwrite,
                                    Pipelines, Resolution, Shares, Sizes, pipeline_list)
from qgsa_bench.cli.progress import run_and_show


def measure_config(timing: dict, **more):
    """The TIMING options (and the command's own `more`) as a MeasureConfig; an unset --question leaves the
    configuration's own."""
    from qgsa_bench.config import MeasureConfig

    timing = dict(timing)
    if timing["question"] is None:
        del timing["question"]
    attn, no_flops, image = timing.pop("attn"), timing.pop("no_flops"), timing.pop("image")
    return MeasureConfig(**timing, attn_implementation=attn, count_flops=not no_flops, image=text_or_none(image),
                         **more)


@command("sweep-resolution", **MULTI_VALUE_COMMAND)
@TIMING.with_defaults(reps="auto")  # the main job: enough rounds for its own intervals (runner.measure_cases)
def sweep_resolution(
    model: Model = "smolvlm-256m",
    sizes: Sizes = [],
    longest_edge: LongestEdges = [],
    pipelines: Pipelines = "dense,dense-bypass,qgsa,random",
    k: Optional[int] = typer.Option(None, help="Fixed k for sparse pipelines (default 17, the paper's mean; f_comp "
                                               "with --checkpoint)."),
    tiles: Optional[int] = typer.Option(None, "--tiles", help="With --longest-edge: tiles qgsa-tiles / qgsa-tiles-max "
                                        "/ random-tiles "
                                        "encode besides the global view (their budget T)."),
    batch: Batches = ["1"],
    timing: dict = None,
    checkpoint: Checkpoint = None,
    compile: str = typer.Option("none", "--compile", help="Also measure every pipeline with its vision encoder and "
                                "LM under torch.compile: none | default | reduce-overhead (CUDA graphs on a GPU) "
                                "| max-autotune; eager and compiled side by side."),
    out: Path = typer.Option(Path("results/sweep"), help="Results folder (sweep.csv, meta.json, table4.md)."),
    overwrite: Overwrite = False,
):
    """FLOPs by stage (fvcore) and latency by stage for each pipeline at each resolution (Table 4).

    Square sizes, one view each (the paper's sweep), or longest edges: the image as the model's processor splits it
    at each (tiles + a global view; tile selectors at --tiles T). Neither given: the model's own views at every
    longest edge up to its own (SmolVLM: 512 1024 1536 2048) where it splits and every pipeline takes split
    images, else the paper's sizes 224 336 384 448 576 (with a warning naming the pipeline)."""
    from qgsa_bench.config import SweepConfig
    from qgsa_bench.experiments.sweep import run_sweep

    batches = ints("--batch", batch)
    edges = ints("--longest-edge", longest_edge) if longest_edge else []
    measure = measure_config(timing, model=model, batch=batches[0], k=k, checkpoint=text_or_none(checkpoint),
                             compile=compile)
    cfg = SweepConfig(measure, ints("--sizes", sizes) if sizes else (),
                      pipeline_list(pipelines), str(out), batches, overwrite, longest_edges=tuple(edges), tiles=tiles)
    run_and_show(run_sweep, cfg, warn=warn, table="table4.md", files=("sweep.csv", "meta.json", "table4.md"))


@command("sweep-budget", **MULTI_VALUE_COMMAND)
@TIMING
def sweep_budget(
    model: Model = "smolvlm-256m",
    resolution: Resolution = None,
    pipelines: str = typer.Option(
        "dense,qgsa,random,norm,fastv,pdrop,sparsevlm,visionzip,divprune,downsample,qgsa-vision",
        help="Comma-separated selectors, each optionally at an insertion point: NAME@post-vision, NAME@vision:L, "
             "NAME@lm:K (pdrop/sparsevlm: NAME@lm:K1,K2,...). " + PIPELINE_HELP),
    budgets: Budgets = [],
    shares: Shares = [],
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Also score every case on this data set "
                                          "(vqa-rad | aokvqa | shapes); default: FLOPs and latency only."),
    data_dir: Optional[str] = typer.Option(None, help="The data set's folder or hf://datasets/... (see qgsa eval)."),
    split: Optional[str] = typer.Option(None, help="Split of --dataset (default: the data set's usual one)."),
    limit: Optional[int] = typer.Option(None, help="Score at most this many samples of --dataset."),
    eval_batch: int = typer.Option(8, help="Batch size of the accuracy runs."),
    budget_unit: BudgetUnit = "tokens",
    batch: Batch = 1,
    timing: dict = None,
    checkpoint: list[str] = typer.Option([], "--checkpoint", metavar="[SELECTOR=]PATH", help="QGSA checkpoint: PATH "
                                         "for every pipeline using the QGSA module, or SELECTOR=PATH for one (e.g. "
                                         "qgsa-vision=runs/v.pt); repeatable."),
    allocate: str = typer.Option("fixed", "--allocate", metavar="fixed,fcomp,oracle-type",
                                 help="Who decides how many, comma-separated (with --dataset): fixed (every sample "
                                      "the budget; the timed cases), fcomp (in proportion to f_comp(q), at each "
                                      "budget as the mean), oracle-type (the best budget per question type at the "
                                      "mean, learned on --oracle-split)."),
    fcomp_checkpoint: FcompCheckpoint = None,
    oracle_split: OracleSplit = None,
    oracle_limit: OracleLimit = None,
    timing_only: bool = typer.Option(False, "--timing-only", help="Stop once every case is timed: the same command "
                                     "later scores --dataset, also data-parallel under accelerate launch / torchrun "
                                     "(README, 'Several processes')."),
    image_size: ImageSizes = [],
    image_splitting: ImageSplitting = None,
    longest_edge: LongestEdge = None,
    tiles: Tiles = ["1", "2", "4"],
    tile_unit: TileUnit = "tiles",
    budgets_from_tiles: BudgetsFromTiles = False,
    out: Path = typer.Option(Path("results/budget"), help="Results folder (budget.csv, accuracy.csv with --dataset, "
                                                          "comparisons.csv, meta.json, table.md)."),
    overwrite: Overwrite = False,
):
    """Every selector at several budgets: FLOPs by stage, latency with intervals, accuracy (with --dataset).

    With --image-size WxH: one image as the model's processor splits it (SmolVLM: tiles + a global view), timed and
    counted; tile selectors (qgsa-tiles, qgsa-tiles-max, random-tiles, global-only) at --tiles. With --dataset and
    --image-splitting
    [--longest-edge N]: each data set image split by the model's processor and scored as qgsa eval --image-splitting
    scores it (timed on --image-size's picture when given, else on the data set's first image)."""
    from qgsa_bench.config import SelectorCheckpoints
    from qgsa_bench.experiments.budget import DEFAULT_SHARES, BudgetConfig, run_budget

    sizes = image_sizes("--image-size", image_size)
    if len(sizes) > 1:
        raise QGSAError("sweep-budget times one image: give one --image-size (count-flops takes several)")
    checkpoints = SelectorCheckpoints(tuple(checkpoint))
    measure = measure_config(timing, model=model, batch=batch, checkpoint=checkpoints.default)
    cfg = BudgetConfig(measure=measure, resolution=resolution, pipelines=pipeline_list(pipelines),
                       budgets=ints("--budgets", budgets) if budgets else (),
                       shares=floats("--shares", shares) or DEFAULT_SHARES, dataset=dataset, data_dir=data_dir,
                       split=split, limit=limit, eval_batch=eval_batch, out=str(out),
                       checkpoints=checkpoints.by_selector, budget_unit=budget_unit, overwrite=overwrite,
                       allocations=tuple(a.strip() for a in allocate.split(",") if a.strip()),
                       fcomp_checkpoint=text_or_none(fcomp_checkpoint), oracle_split=oracle_split,
                       oracle_limit=oracle_limit, timing_only=timing_only, image_size=sizes[0] if sizes else None,
                       splitting=image_splitting, longest_edge=longest_edge, tiles=ints("--tiles", tiles),
                       tile_unit=tile_unit, budgets_from_tiles=budgets_from_tiles)
    # with --dataset only: accuracy is an untrained selector's (FLOPs and latency do not depend on the weights)
    message = dataset and untrained(cfg.specs, 0, lambda spec: cfg.checkpoints.get(spec.selector.name)
                                    or measure.checkpoint, "--checkpoint [SELECTOR=]PATH")
    run_and_show(warned_when_started(run_budget, message), cfg, warn=warn, table="table.md",
                 files=("budget.csv", "accuracy.csv", "comparisons.csv", "heldout.jsonl", "meta.json", "table.md"))


@command("count-flops", **MULTI_VALUE_COMMAND)
def count_flops_command(
    model: str = typer.Option("llava-1.5-7b", "--model", "-m", help="A registry name (the copies are built from "
                              "its preset): llava-1.5-7b, smolvlm-256m, smolvlm-500m, ..."),
    resolution: Resolution = None,
    pipelines: Pipelines = "dense,qgsa,random,norm,fastv,pdrop,sparsevlm,visionzip,divprune,downsample,qgsa-vision",
    budgets: Budgets = ["192", "128", "64"],
    batch: Batch = 1,
    decode_tokens: DecodeTokens = 8,
    by_depth: str = typer.Option("auto", help="Count the LM on depth-reduced copies and scale exactly: auto (when "
                                 "the model does not fit in free memory) | yes | no."),
    budget_unit: BudgetUnit = "tokens",
    image_size: ImageSizes = [],
    image_splitting: ImageSplitting = None,
    longest_edge: LongestEdge = None,
    tiles: Tiles = ["1", "2", "4", "8"],
    tile_unit: TileUnit = "tiles",
    budgets_from_tiles: BudgetsFromTiles = False,
    out: Path = typer.Option(Path("results/count"), help="Results folder (flops.csv, crosscheck.json, table.md)."),
    overwrite: Overwrite = False,
):
    """FLOPs by stage for every pipeline at every budget, counted (no timing).

    The image as the model's processor splits it (--image-size; default: a square photo at the model's longest
    edge, 2048 x 2048 on SmolVLM: tiles + a global view; tile selectors qgsa-tiles, qgsa-tiles-max, random-tiles,
    global-only at
    --tiles), or one square view of --resolution px (the paper's form; also for models that do not split, and
    wherever a pipeline takes one view only).
    Cross-checks: a published vision-tower count and the analytic LM prefill."""
    from qgsa_bench.experiments.count import CountConfig
    from qgsa_bench.experiments.count_views import run_count_flops
    from qgsa_bench.experiments.parallel import main_only

    if not main_only("count-flops", warn):  # counting gives the same numbers in one process as in many
        return
    cfg = CountConfig(model=model, resolution=resolution, pipelines=pipeline_list(pipelines),
                      budgets=ints("--budgets", budgets), batch=batch, decode_tokens=decode_tokens, by_depth=by_depth,
                      budget_unit=budget_unit, out=str(out), overwrite=overwrite,
                      image_sizes=image_sizes("--image-size", image_size), splitting=image_splitting,
                      longest_edge=longest_edge, tiles=ints("--tiles", tiles), tile_unit=tile_unit,
                      budgets_from_tiles=budgets_from_tiles)
    run_and_show(run_count_flops, cfg, warn=warn, table="table.md",
                 files=("flops.csv", "crosscheck.json", "meta.json", "table.md"))


@command()
@TIMING
def ablate(
    model: Model = "smolvlm-256m",
    resolution: int = typer.Option(384, help="Input resolution in px."),
    checkpoint: list[str] = typer.Option([], "--checkpoint", metavar="NAME=PATH", help="NAME=PATH, NAME one of "
                                         "fixed-k, adaptive-k, cs, align, full (repeatable)."),
    k: Optional[int] = typer.Option(None, help="k of the fixed-k configuration (default 17)."),
    batch: Batch = 1,
    timing: dict = None,
    train_dataset: Optional[str] = typer.Option(None, help="Train each configuration without a checkpoint on this "
                                                           "data set first."),
    train_data_dir: Optional[str] = typer.Option(None, help="--data-dir of the training data set (folder or hf://...)."),
    train_limit: Optional[int] = typer.Option(None, help="Training questions per configuration."),
    train_steps: Optional[int] = typer.Option(None, help="Training steps per configuration (--max-steps)."),
    align_encoder: str = typer.Option("lm", help="Text encoder for L_align when training: lm | clip."),
    eval_limit: Optional[int] = typer.Option(None, help="With checkpoints: accuracy on this many questions of the "
                                                        "data set."),
    out: Path = typer.Option(Path("results/ablate"), help="Results folder (ablate.csv, meta.json, table5.md)."),
    overwrite: Overwrite = False,
):
    """Latency of dense, fixed-k, adaptive-k, +L_cs, +L_align and full QGSA (Table 5 / Fig. 5)."""
    from qgsa_bench.config import AblateConfig
    from qgsa_bench.experiments.ablate import parse_checkpoints, run_ablate

    measure = measure_config(timing, model=model, batch=batch, k=k)
    cfg = AblateConfig(measure, resolution, parse_checkpoints(checkpoint), str(out), train_dataset=train_dataset,
                       train_data_dir=train_data_dir, train_limit=train_limit, train_steps=train_steps,
                       align_encoder=align_encoder, eval_limit=eval_limit, overwrite=overwrite)
    run_and_show(run_ablate, cfg, warn=warn, table="table5.md", files=("ablate.csv", "meta.json", "table5.md"))
