"""`qgsa lmms-eval`: lmms-eval's tasks with any qgsa-bench model, selector and budget; lmms-eval's own options
after `--`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qgsa_bench.cli.app import command, text_or_none, warn
from qgsa_bench.cli.multivalue import RawArgsCommand
from qgsa_bench.cli.options import (PIPELINE_HELP, Checkpoint, Device, Dtype, ImageSplitting, LongestEdge,
                                    MaxNewTokens, Model, NoFlops, Overwrite, QuestionBatch, Resolution, Seed, Weights,
                                    pipeline_list)
from qgsa_bench.cli.progress import run_and_show

PASSED_ON = "qgsa_passed_on"  # click context meta: the tokens after `--`, lmms-eval's own options


class PassOnCommand(RawArgsCommand):
    """A command whose tokens after `--` are not its own: kept in ctx.meta[PASSED_ON] for another tool."""

    def parse_args(self, ctx, args):
        if "--" in args:
            cut = args.index("--")
            args, ctx.meta[PASSED_ON] = args[:cut], list(args[cut + 1:])
        return super().parse_args(ctx, args)


@command("lmms-eval", cls=PassOnCommand, context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def lmms_eval_command(
    ctx: typer.Context,
    tasks: str = typer.Option(..., help="Comma-separated lmms-eval tasks (e.g. pope,gqa), or local ones found in "
                                        "--include-path."),
    model: Model = "smolvlm-256m",
    pipelines: str = typer.Option("dense", "--pipelines", "--pipeline", help="Comma-separated: " + PIPELINE_HELP),
    k: Optional[int] = typer.Option(None, help="Visual tokens kept (the paper's patch-level pipelines: patches; tile "
                                               "selectors: tiles beside the global view); default: f_comp(q) per "
                                               "question."),
    share: Optional[float] = typer.Option(None, help="The budget as a fraction (0-1] of the visual tokens, instead "
                                                     "of --k."),
    checkpoint: Checkpoint = None,
    weights: Weights = "auto",
    device: Device = "auto",
    dtype: Dtype = "fp32",
    resolution: Resolution = None,
    image_splitting: ImageSplitting = None,
    longest_edge: LongestEdge = None,
    seed: Seed = 0,
    batch: QuestionBatch = 1,
    max_new_tokens: MaxNewTokens = 16,
    include_path: Optional[Path] = typer.Option(None, "--include-path", help="Folder of lmms-eval task yaml files "
                                                                             "(local tasks)."),
    no_flops: NoFlops = False,
    out: Path = typer.Option(Path("results/lmms"), help="Results folder (lmms.csv, samples_*.jsonl, "
                                                        "lmms_results_*.json, meta.json)."),
    overwrite: Overwrite = False,
):
    """lmms-eval's tasks answered by any model, selector and budget; lmms-eval's own options after `--` (e.g.
    `-- --limit 100`). Each image as the model's own processor makes it (SmolVLM: tiles + a global view) unless
    --resolution asks for one square view or a pipeline takes one view only. Scores per task against counted FLOPs in lmms.csv; `qgsa report` reads it."""
    from qgsa_bench.integrations.lmms import ModelArgs
    from qgsa_bench.integrations.lmms_run import LMMSConfig, run_lmms

    args = ModelArgs(model=model, k=k, share=share, checkpoint=text_or_none(checkpoint), weights=weights, device=device,
                     dtype=dtype, resolution=resolution, image_splitting=image_splitting, longest_edge=longest_edge,
                     seed=seed, batch_size=batch, max_new_tokens=max_new_tokens, count_flops=not no_flops)
    cfg = LMMSConfig(tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()),
                     pipelines=pipeline_list(pipelines), args=args, include_path=text_or_none(include_path),
                     lmms_args=tuple(ctx.meta.get(PASSED_ON, ())), out=str(out), overwrite=overwrite)
    from qgsa_bench.cli.data import untrained, warned_when_started
    from qgsa_bench.run.spec import parse_specs

    # a pipeline reading a random-init QGSA module answers as an untrained selector: said once, as eval says it
    message = untrained(parse_specs(cfg.pipelines), 1 if share is not None else k, lambda spec: args.checkpoint)
    run_and_show(warned_when_started(run_lmms, message), cfg, warn=warn, table="table.md",
                 files=("lmms.csv", "samples_*.jsonl", "lmms_results_*.json", "table.md", "meta.json"))
