"""Options that several commands share, each declared once as an `Annotated` type; a command gives the
default in its signature (`model: Model = "smolvlm-256m"`). Runs of options that several commands share
whole are declared once as an OptionBlock (TIMING, EVALUATION). The multi-value options are here too."""

from __future__ import annotations

import inspect
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer

from qgsa_bench.cli.multivalue import multi_value_option

MODEL_HELP = ("Registry name (smolvlm-256m, smolvlm-500m, llava-1.5-7b; tests: tiny, llava-tiny) or a local "
              "model directory (Idefics3/SmolVLM or LLaVA-1.5).")
PIPELINE_HELP = ("dense | dense-bypass | qgsa | random | norm (the paper's, post-vision) | fastv | pdrop | sparsevlm "
                 "| visionzip | divprune | downsample | qgsa-vision, or SELECTOR@POINT with POINT post-vision, "
                 "vision:L or lm:K (e.g. random@vision:4); on split images (--image-splitting) also the tile "
                 "selectors qgsa-tiles | qgsa-tiles-max | random-tiles | global-only and hired (one budget over all "
                 "views).")

# ---- the model and how it runs
Model = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)]
Weights = Annotated[str, typer.Option(help="pretrained | random | auto (pretrained when found locally or on the hub, "
                                           "else random).")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")]
Dtype = Annotated[str, typer.Option(help="fp32 | bf16 | fp16 | auto (auto: bf16 on a GPU, fp32 on the CPU).")]
Seed = Annotated[int, typer.Option(help="Seed for random weights, random init and the random baseline.")]
Resolution = Annotated[Optional[int], typer.Option(help="One square view of this many px (the paper's form). Unset: "
                                                        "the model's own views (SmolVLM: tiles + a global view), "
                                                        "or one view of its native size where it does not split.")]
Checkpoint = Annotated[Optional[Path], typer.Option(help="QGSA checkpoint from `qgsa train` (else a random-init "
                                                         "module; trained ones for results/shapes/base-model are "
                                                         "in results/shapes/checkpoints/).")]
SelectorCheckpoints = Annotated[list[str], typer.Option(
    "--checkpoint", metavar="[SELECTOR=]PATH", help="QGSA checkpoint from `qgsa train`: PATH for every pipeline using "
    "the QGSA module, or SELECTOR=PATH for one (e.g. qgsa-vision=runs/v.pt); repeatable. Trained ones for "
    "results/shapes/base-model are in results/shapes/checkpoints/.")]
# who decides how many (experiments/allocation.py): the options eval and sweep-budget share beside --allocate
FcompCheckpoint = Annotated[Optional[Path], typer.Option(help="The QGSA checkpoint whose f_comp allocates with "
                                                              "--allocate fcomp (default: the qgsa pipeline's "
                                                              "--checkpoint).")]
OracleSplit = Annotated[Optional[str], typer.Option(help="oracle-type's held-out split (default: val).")]
OracleLimit = Annotated[Optional[int], typer.Option(help="oracle-type's held-out samples (default: --limit).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Empty --out of an earlier run first (else: the same "
                                         "run resumes, another run is refused).")]
Pipelines = Annotated[str, typer.Option(help="Comma-separated: " + PIPELINE_HELP)]
MaxNewTokens = Annotated[int, typer.Option(help="Greedy decoding length limit.")]
QuestionBatch = Annotated[int, typer.Option("--batch", help="Questions per batch.")]

# ---- measuring
Batch = Annotated[int, typer.Option(help="Batch size (the same image and question repeated).")]
Attn = Annotated[str, typer.Option("--attn", help="Attention implementation: sdpa | eager (| flash_attention_2).")]
Reps = Annotated[str, typer.Option(help="Timed rounds (every pipeline once per round, alternating), or 'auto': at least "
                                        "10 rounds, until every speedup interval is within 5 % and every verdict is "
                                        "settled (or --max-time is spent). Fewer than 10 rounds claim no speedup "
                                        "that a distribution-free interval does not confirm.")]
MaxTime = Annotated[Optional[float], typer.Option(help="With --reps auto: seconds of timing at most, whole command "
                                                       "(default 600).")]
Warmup = Annotated[int, typer.Option(help="Untimed warm-up runs per pipeline.")]
DecodeTokens = Annotated[int, typer.Option(help="Generated tokens per run (end to end = prefill + these).")]
Image = Annotated[Optional[Path], typer.Option(help="Image to run on (default: a generated picture; content does "
                                                    "not change cost). At most QGSA_MAX_IMAGE_PIXELS pixels "
                                                    "(environment; default 178956970, 'none': no limit).")]
# unset: the configuration's question (MeasureConfig.question; importing the configs here would slow --help)
Question = Annotated[Optional[str], typer.Option(help="Question to run with (default: 'What color is the circle?').")]
NoFlops = Annotated[bool, typer.Option("--no-flops", help="Skip fvcore FLOP counting (timing only).")]
PerProcess = Annotated[bool, typer.Option("--per-process", help="Under accelerate launch / torchrun: every process "
                                          "times its own device alone into OUT/rank-R (rows carry the rank); "
                                          "without it a launch of several processes is refused.")]
BudgetUnit = Annotated[str, typer.Option(help="tokens: visual tokens after the last cut | layer-avg: for in-LM "
                                              "selectors (fastv, pdrop, sparsevlm) averaged over the LM's layers, as "
                                              "their papers quote them.")]

# ---- the model's own views (models/views.py)
ImageSplitting = Annotated[Optional[bool], typer.Option(
    "--image-splitting/--no-image-splitting",
    help="The model's own image processor: split the image into tiles + a global view (SmolVLM: up to 4 x 4 "
         "tiles of 512 px, 1,088 visual tokens for a square photo), or one view of the tile size. Unset: the "
         "model's own setting (SmolVLM: split), unless --resolution asks for one square view (the paper's form) or "
         "a pipeline takes one view only (the paper's patch-level qgsa/random/norm, downsample: then one square "
         "view for every pipeline, with a warning).")]
LongestEdge = Annotated[Optional[int], typer.Option(
    help="Where the model's processor splits: resize the longest edge to this many px before tiling (a multiple "
         "of the tile size; SmolVLM's own: 2048).")]

# ---- several values each (--sizes 224 336)
Sizes = multi_value_option("--sizes", "INT", "Square resolutions in px, e.g. --sizes 224 336 384 448 576.")
Batches = multi_value_option("--batch", "INT", "Batch size(s), e.g. --batch 1 8 32 (the same image and question "
                                               "repeated): latency and throughput per size.")
Budgets = multi_value_option("--budgets", "INT", "Visual tokens reaching the LM, e.g. --budgets 192 128 64.")
ImageSizes = multi_value_option("--image-size", "WxH", "Image sizes in px, e.g. --image-size 2048x2048 1920x1080: "
                                                     "the image as the model's processor makes its views (tiles + a "
                                                     "global view where it splits, as SmolVLM's does; models whose "
                                                     "processor does not split need --image-splitting).")
LongestEdges = multi_value_option("--longest-edge", "INT", "Sweep the model's own split views instead of --sizes: "
                                  "the longest edge the image is resized to before tiling, e.g. --longest-edge 512 1024 "
                                  "1536 2048 (a square image: SmolVLM's 1, 5, 10, 17 views).")
Tiles = multi_value_option("--tiles", "INT", "A tile selector's budgets (qgsa-tiles, qgsa-tiles-max, random-tiles) in "
                                            "--tile-unit: "
                                            "tiles kept besides the global view, e.g. --tiles 1 2 4 8.")
TileUnit = Annotated[str, typer.Option(help="Unit of a tile selector's budgets: tiles (besides the global view) | "
                                            "tokens (visual tokens reaching the LM: the global view's 64, then whole "
                                            "tiles of 64; T = floor(k / 64) - 1 on SmolVLM).")]
BudgetsFromTiles = Annotated[bool, typer.Option("--budgets-from-tiles", help="With --image-size: every selector that "
                                                "is not a tile selector runs at the visual tokens of each --tiles "
                                                "budget ((T + 1) x 64 on SmolVLM: the peers at equal visual tokens) "
                                                "instead of --budgets.")]
Shares = multi_value_option("--shares", "NUMBER", "Budgets as fractions of the dense visual tokens "
                                                  "(default 0.04 0.1 0.25 0.5) when --budgets is not given.")

# ---- data sets
DataDir = Annotated[Optional[str], typer.Option(
    "--data-dir",
    help="Folder with the data set's published files, or hf://datasets/OWNER/NAME (optionally @REVISION). "
         "Default: the published hub repository (vqa-rad: flaviagiammarino/vqa-rad, aokvqa: HuggingFaceM4/A-OKVQA, "
         "refcoco: lmms-lab/RefCOCO), downloaded once into the HF cache, offline from the cache. Not used by shapes.")]
Split = Annotated[Optional[str], typer.Option(help="Split (default: vqa-rad test, aokvqa val, refcoco val, shapes test).")]
Limit = Annotated[Optional[int], typer.Option(help="Use at most this many samples.")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help=(
    "Skip and count unreadable images instead of stopping (any decode error, or more pixels than "
    "QGSA_MAX_IMAGE_PIXELS, default 178956970; set it to a larger number or 'none' to read such images)."))]


class OptionBlock:
    """A run of options that several commands share whole, declared once. As a decorator, it puts its
    options into the command's signature where the command's parameter `name` stands (--help lists them
    there) and calls the command with their values gathered in that parameter, as a dict."""

    def __init__(self, name: str, **options: tuple[object, object]):
        self.name, self.options = name, options  # option -> (its Annotated type, its default)

    def __call__(self, command):
        signature = inspect.signature(command, eval_str=True)
        keyword = inspect.Parameter.KEYWORD_ONLY
        params = []
        for param in signature.parameters.values():
            if param.name == self.name:
                params += [inspect.Parameter(name, keyword, annotation=kind, default=default)
                           for name, (kind, default) in self.options.items()]
            else:
                params.append(param.replace(kind=keyword))

        @wraps(command)
        def wrapper(**kwargs):
            block = {name: kwargs.pop(name) for name in self.options}
            return command(**kwargs, **{self.name: block})

        wrapper.__signature__ = signature.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    def with_defaults(self, **defaults) -> OptionBlock:
        """The same options, some with a command's own default (sweep-resolution: --reps auto)."""
        return OptionBlock(self.name, **{name: (kind, defaults.get(name, default))
                                         for name, (kind, default) in self.options.items()})

    def with_options(self, **options: tuple[object, object]) -> OptionBlock:
        """The same options, some declared otherwise for one command (grounding: a repeatable --checkpoint)."""
        return OptionBlock(self.name, **{**self.options, **options})


# how sweep-resolution, sweep-budget and ablate time a run (see measure.measure_config)
TIMING = OptionBlock("timing", device=(Device, "auto"), dtype=(Dtype, "auto"), attn=(Attn, "sdpa"),
                     weights=(Weights, "auto"), reps=(Reps, "5"), max_time=(MaxTime, None), warmup=(Warmup, 1),
                     decode_tokens=(DecodeTokens, 8), seed=(Seed, 0), image=(Image, None), question=(Question, None),
                     no_flops=(NoFlops, False), per_process=(PerProcess, False))
# where eval and grounding read their data set, and how they run the model (dtype fp32, as `qgsa train`
# trains: a checkpoint is scored in the numerics it was trained in; --dtype auto or bf16 for speed on a GPU)
EVALUATION = OptionBlock("evaluation", data_dir=(DataDir, None), split=(Split, None), limit=(Limit, None),
                         skip_bad=(SkipBad, False), weights=(Weights, "auto"), checkpoint=(Checkpoint, None),
                         device=(Device, "auto"), dtype=(Dtype, "fp32"), resolution=(Resolution, None), seed=(Seed, 0),
                         image_splitting=(ImageSplitting, None), longest_edge=(LongestEdge, None))


def pipeline_list(text: str) -> tuple[str, ...]:
    """Comma-separated pipelines; a bare number continues the previous item's layer list (pdrop@lm:8,16,24)."""
    items: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part.isdigit() and items and "@" in items[-1]:
            items[-1] += "," + part
        elif part:
            items.append(part)
    return tuple(items)
