"""The commands on data sets: `eval` (accuracy, Tables 1-2), `grounding` (IoU, Table 3) and `data shapes`
(the generated set)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qgsa_bench.cli.app import app, command, console, text_or_none, warn
from qgsa_bench.cli.multivalue import MULTI_VALUE_COMMAND, ints, multi_value_option
from qgsa_bench.cli.options import (EVALUATION, PIPELINE_HELP, FcompCheckpoint, MaxNewTokens, Model, OracleLimit,
                                    OracleSplit, Overwrite, Pipelines, QuestionBatch, SelectorCheckpoints,
                                    pipeline_list)
from qgsa_bench.cli.progress import run_and_show

data_app = typer.Typer(help="Data set utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def eval_config(**kwargs):
    """An EvalConfig from the options (paths as text)."""
    from qgsa_bench.config import EvalConfig

    return EvalConfig(**{key: text_or_none(value) if isinstance(value, Path) else value
                         for key, value in kwargs.items()})


def untrained(specs, k=None, checkpoint_of=lambda spec: None, option: str = "--checkpoint FILE") -> str | None:
    """The warning for pipelines that read the QGSA checkpoint (`Spec.reads_checkpoint`) but have none: their
    module is then random-init, and what they select (or, without --k, every budget f_comp gives) is an
    untrained module's. `checkpoint_of(spec)`: the checkpoint that spec's run would read, or None."""
    names = [spec.text for spec in specs if spec.reads_checkpoint(k) and not checkpoint_of(spec)]
    if not names:
        return None
    budget = "" if k is not None else ", or f_comp's budget without --k"
    return (f"{', '.join(names)} read{'s' if len(names) == 1 else ''} the QGSA module (its scorer, its W_vis "
            f"projection{budget}), which without a checkpoint is random-init: those results are an untrained "
            f"selector's; pass {option} from `qgsa train` (committed: results/shapes/checkpoints/ for the shapes "
            f"base, results/tiles/checkpoints/ for the tiled base)")


def warned_when_started(run, message: str | None):
    """`run`, saying `message` in one warning line at its first progress report: after its own checks, so that a
    refused command still prints its one error line only."""
    if not message:
        return run

    def started(*args, progress=None, **kwargs):
        said = []

        def report(description, steps):
            if not said:
                said.append(message)
                warn(message)
            if progress:
                progress(description, steps)

        return run(*args, progress=report, **kwargs)

    return started


@command("eval")
@EVALUATION
def eval_command(
    model: Model = "smolvlm-256m",
    dataset: str = typer.Option("shapes", "--dataset", "-d", help="vqa-rad | aokvqa | refcoco | shapes | shapes-hires "
                                                                   "(generated; shapes-hires: 448-px canvases, small "
                                                                   "objects, for split images)."),
    evaluation: dict = None,
    pipelines: Pipelines = "dense,qgsa",
    k: Optional[int] = typer.Option(None, help="Fixed budget for sparse pipelines (default: f_comp per question), in "
                                               "each selector's units: visual tokens (patches for the paper's qgsa, "
                                               "random, norm); for the tile selectors qgsa-tiles, qgsa-tiles-max and "
                                               "random-tiles "
                                               "(with --image-splitting) tiles, what sweep-budget calls --tiles. "
                                               "Dense and global-only take none. With --allocate: the mean budget "
                                               "the allocation holds."),
    allocate: Optional[str] = typer.Option(None, "--allocate", metavar="fixed|fcomp|oracle-type|PATH",
                                           help="Who decides how many: every sample --k (fixed), in proportion to "
                                                "f_comp(q) (fcomp), the best budget per question type learned on "
                                                "--oracle-split (oracle-type), all at the mean --k; or PATH, a CSV "
                                                "(id,budget) or JSON of per-sample budgets. Default: each selector's "
                                                "own budget."),
    fcomp_checkpoint: FcompCheckpoint = None,
    oracle_split: OracleSplit = None,
    oracle_limit: OracleLimit = None,
    batch: QuestionBatch = 4,
    max_new_tokens: MaxNewTokens = 10,
    out: Path = typer.Option(Path("results/eval"), help="Results folder (eval.csv, predictions.jsonl, meta.json, "
                                                        "table.md; allocation.csv with --allocate)."),
    overwrite: Overwrite = False,
):
    """Accuracy per pipeline and per question type, with Δ vs dense, k and latency (Tables 1-2)."""
    from qgsa_bench.experiments.evaluate import run_eval

    cfg = eval_config(model=model, dataset=dataset, **evaluation, pipelines=pipeline_list(pipelines), k=k, batch=batch,
                      max_new_tokens=max_new_tokens, out=out, overwrite=overwrite, allocate=allocate,
                      fcomp_checkpoint=text_or_none(fcomp_checkpoint), oracle_split=oracle_split,
                      oracle_limit=oracle_limit)
    # with --allocate every budget is given (f_comp of the selector's module is never read for it)
    run = warned_when_started(run_eval, untrained(cfg.specs, 1 if cfg.allocate else cfg.k,
                                                  lambda spec: cfg.checkpoint))
    run_and_show(run, cfg, warn=warn, table="table.md",
                 files=("eval.csv", "predictions.jsonl", "predictions_*.json", "allocation.csv", "heldout.jsonl",
                        "table.md", "meta.json"))


GroundingBudgets = multi_value_option(
    "--budgets", "INT", "Budgets, each in its pipeline's own units: patches for the paper's patch-level qgsa, random "
    "and norm, visual tokens for every other selector (e.g. --budgets 4 8 12 24); default: --k, else f_comp(q)'s "
    "budget per question.")
GroundingTiles = multi_value_option(
    "--tiles", "INT", "With --image-splitting: the tile selectors' budgets (qgsa-tiles, qgsa-tiles-max, random-tiles), "
    "in tiles kept "
    "besides the global view, e.g. --tiles 1 2; the other selectors take --budgets (visual tokens over all views).")


@command(**MULTI_VALUE_COMMAND)
@EVALUATION.with_options(checkpoint=(SelectorCheckpoints, []))
def grounding(
    model: Model = "smolvlm-256m",
    dataset: str = typer.Option("shapes", "--dataset", "-d",
                                help="refcoco | shapes | shapes-hires (samples with a box)."),
    evaluation: dict = None,
    pipelines: Optional[str] = typer.Option(
        None, help="Comma-separated selectors, as qgsa eval takes them (NAME or NAME@POINT). Default: the paper's "
                   "patch-level qgsa, random, norm and every registered selector at its default insertion point "
                   "(downsample is left out: it keeps the whole image at a lower resolution, no patches to ground). "
                   "With --image-splitting: every selector that takes split images, the tile selectors where --tiles "
                   "gives their budgets (not global-only: it keeps no tile). "
                   + PIPELINE_HELP),
    budgets: GroundingBudgets = [],
    tiles: GroundingTiles = [],
    k: Optional[int] = typer.Option(None, help="One budget (as --budgets K); default: f_comp per question."),
    batch: QuestionBatch = 8,
    out: Path = typer.Option(Path("results/grounding"), help="Results folder (grounding.csv, .jsonl, pairs.csv, "
                                                             "table3.md, selections.png)."),
    overwrite: Overwrite = False,
):
    """Where each selector looks: IoU of its kept patches' hull with the referent's box, pointing game, share of
    the kept patches in the box, for every selector at every budget, beside the oracle (Table 3).

    With --image-splitting: on the model's own views, in the original image's pixels; tile selectors at --tiles
    (their chosen tiles), every other selector at --budgets visual tokens over all views, with tile-level hit,
    IoU and Jaccard beside (README, "Where a selection lands on the model's own views")."""
    from qgsa_bench.config import SelectorCheckpoints as Checkpoints
    from qgsa_bench.experiments.grounding import GroundingConfig, run_grounding

    options = {key: text_or_none(value) if isinstance(value, Path) else value for key, value in evaluation.items()}
    checkpoints = Checkpoints(tuple(options.pop("checkpoint") or ()))
    cfg = GroundingConfig(model=model, dataset=dataset, **options, pipelines=pipeline_list(pipelines or ""),
                          budgets=ints("--budgets", budgets) if budgets else (), k=k, checkpoint=checkpoints.default,
                          tiles=ints("--tiles", tiles) if tiles else (),
                          checkpoints=checkpoints.by_selector, batch=batch, out=str(out), overwrite=overwrite)
    fixed = cfg.budget_list != (None,)
    reading = [spec for spec in cfg.specs if spec.selector.uses_module or not fixed]  # whose selection the module makes
    message = untrained(reading, 1 if fixed else None, lambda spec: cfg.checkpoints.get(spec.selector.name)
                        or cfg.checkpoint, "--checkpoint [SELECTOR=]PATH")
    run_and_show(warned_when_started(run_grounding, message), cfg, warn=warn, table="table3.md",
                 files=("grounding.csv", "grounding.jsonl", "pairs.csv", "table3.md", "selections.png", "pair.png",
                        "meta.json"))


@command("shapes", group=data_app)
def data_shapes(
    n: int = typer.Option(200, "--n", help="Number of images (two questions each)."),
    out: Path = typer.Option(..., help="Folder to write (RefCOCO parquet layout: data/{split}-*.parquet)."),
    split: str = typer.Option("test", help="train | val | test (each split has its own images)."),
    seed: int = typer.Option(0, help="Generator seed: the same seed gives the same data."),
    hires: bool = typer.Option(False, "--hires", help="The shapes-hires set (as --dataset shapes-hires): 448-px "
                                                      "canvases, 3-8 small objects each inside one 224-px tile."),
):
    """Generate the synthetic multi-object `shapes` set and write it in the RefCOCO parquet layout."""
    from qgsa_bench.config import ShapesConfig
    from qgsa_bench.data import shapes

    cfg = ShapesConfig(out=str(out), n=n, split=split, seed=seed, hires=hires)
    samples = (shapes.hires if cfg.hires else shapes.generate)(cfg.n, seed=cfg.seed, split=cfg.split)
    path = shapes.write_parquet(samples, out, cfg.split)
    console.print(f"wrote {len(samples)} questions on {n} images to {path}")
