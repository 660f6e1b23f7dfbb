"""Configuration dataclasses with the seed paper's defaults (section 3.2, 3.5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qgsa_bench import QGSAError
from qgsa_bench.run.spec import check_options, parse_spec, parse_specs
from qgsa_bench.qgsa.config import FILLS, PROJECTIONS, SOFT_MASK_SPACES

DEFAULT_QUESTION = "What color is the circle?"
DEFAULT_MAX_TIME = 600.0  # --reps auto without --max-time: seconds of timing per command at most


@dataclass
class MeasureConfig:
    """What every efficiency run shares (sweep-resolution and ablate)."""

    model: str = "smolvlm-256m"
    weights: str = "auto"
    batch: int = 1
    device: str = "auto"
    dtype: str = "auto"  # bf16 on GPU, fp32 on CPU
    attn_implementation: str = "sdpa"
    reps: int | str = 5  # timed rounds (every pipeline once per round, alternating), or "auto" (see runner)
    max_time: float | None = None  # with reps "auto": seconds of timing at most (None: DEFAULT_MAX_TIME)
    warmup: int = 1
    decode_tokens: int = 8  # end to end = prefill + this many generated tokens
    k: int | None = None  # fixed k for sparse pipelines; None: 17 (the paper's mean) or f_comp with a checkpoint
    checkpoint: str | None = None
    seed: int = 0
    image: str | None = None  # None: a generated picture (content does not change FLOPs or time)
    question: str = DEFAULT_QUESTION
    count_flops: bool = True
    compile: str = "none"  # also measure every pipeline compiled with this torch.compile mode (compiled.py)
    # under a launch of several processes: each process times its own device into OUT/rank-R (else refused);
    # not a setting: the folder of one process is the same run either way
    per_process: bool = False

    def __post_init__(self):
        if isinstance(self.reps, str) and self.reps != "auto":
            if not self.reps.strip().isdigit():
                raise QGSAError(f"--reps takes a number of rounds or 'auto', got '{self.reps}'")
            self.reps = int(self.reps)
        if self.max_time is not None and not self.max_time > 0:
            raise QGSAError(f"--max-time must be a positive number of seconds, got {self.max_time}")
        if self.max_time is not None and self.reps != "auto":
            raise QGSAError("--max-time bounds --reps auto: give --reps auto, or drop --max-time")
        for name in ("batch", "reps", "decode_tokens"):
            if getattr(self, name) == "auto":
                continue
            if getattr(self, name) < 1:
                raise QGSAError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise QGSAError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.k is not None and self.k < 1:
            raise QGSAError(f"--k must be at least 1, got {self.k}")
        from qgsa_bench.efficiency.compiled import check_compile

        check_compile(self.compile, self.warmup)

    def settings(self) -> dict:
        """The settings a results folder is tied to (a resumed run must match them)."""
        keys = ("model", "weights", "batch", "dtype", "attn_implementation", "decode_tokens", "k",
                "checkpoint", "seed", "image", "question")
        return {key: getattr(self, key) for key in keys}


@dataclass
class SweepConfig:
    measure: MeasureConfig
    # one square view per size (the paper's sweep); with neither sizes nor longest_edges, the model's own views at
    # every longest edge up to its own where it splits, else PAPER_SIZES (experiments/sweep.default_sizes)
    sizes: tuple[int, ...] = ()
    pipelines: tuple[str, ...] = ("dense", "dense-bypass", "qgsa", "random")
    out: str = "results/sweep"
    batches: tuple[int, ...] = ()  # several batch sizes (--batch 1 8 32); empty: measure.batch
    overwrite: bool = False  # empty a results folder of an earlier run first (driver.Results)
    # the tiled analogue (issue 19): the model's own views of the image at each longest edge (SmolVLM: 512,
    # 1024, 1536, 2048 px give a square image 1, 5, 10, 17 views) instead of one square view per size
    longest_edges: tuple[int, ...] = ()
    tiles: int | None = None  # the tile selectors' budget: tiles encoded besides the global view

    def __post_init__(self):
        if self.sizes and self.longest_edges:
            raise QGSAError("--sizes are square views, --longest-edge the model's own split views: give one of them")
        if not self.pipelines:
            raise QGSAError("--pipelines needs at least one pipeline")
        self.specs = parse_specs(self.pipelines)  # each spec parsed once, here (not a field: settings() skip it)
        check_options(self.specs, self.measure.k, self.measure.checkpoint)
        tiled = [s.text for s in self.specs if s.at_tiles]
        if tiled and self.sizes:
            raise QGSAError(f"{tiled[0]} chooses among the tiles of a split image: sweep --longest-edge "
                            f"(multiples of the model's tile size, e.g. SmolVLM's --longest-edge 1024 1536 2048), not "
                            f"--sizes")
        needs_t = [s.text for s in self.specs if s.at_tiles and not s.selector.keeps_no_tiles]
        if needs_t and self.tiles is None:
            raise QGSAError(f"{needs_t[0]} keeps T tiles: give its budget with --tiles T (e.g. --tiles 1)")
        if self.tiles is not None and not needs_t:
            raise QGSAError("--tiles is the budget of qgsa-tiles / random-tiles, and no such selector is in "
                            "--pipelines: add one, or drop --tiles")
        if self.tiles is not None and self.tiles < 1:
            raise QGSAError(f"--tiles counts the tiles encoded besides the global view: at least 1, got {self.tiles}")


@dataclass
class AblateConfig:
    measure: MeasureConfig
    resolution: int = 384  # the paper's SmolVLM input size (section 3.5)
    checkpoints: dict | None = None  # ablation config name -> QGSA checkpoint path
    out: str = "results/ablate"
    train_dataset: str | None = None  # train every configuration without a checkpoint first (qgsa train)
    train_data_dir: str | None = None
    train_limit: int | None = None
    train_steps: int | None = None
    align_encoder: str = "lm"  # for the trained configurations that use L_align
    eval_limit: int | None = None  # with trained checkpoints: accuracy on this many questions of the data set
    overwrite: bool = False

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in ("resolution", "train_dataset", "train_data_dir", "train_limit",
                                             "train_steps", "align_encoder", "eval_limit")}


def check_input_options(resolution: int | None, split: bool | None, longest_edge: int | None,
                        image_size=None) -> None:
    """--resolution (one square view, the paper's form) and the processor's options (--image-splitting,
    --no-image-splitting, --longest-edge; sweep-budget's and count-flops' --image-size, a picture the processor
    splits) exclude each other (run/inputs.py). Raises QGSAError naming both."""
    if resolution is not None and image_size:
        raise QGSAError("--resolution is one square view; --image-size splits the image as the model's processor "
                        "does: give one of them")
    if resolution is not None and (split is not None or longest_edge is not None):
        given = "--longest-edge" if split is None else "--image-splitting" if split else "--no-image-splitting"
        raise QGSAError(f"--resolution is one square view (the paper's form); {given} uses the model's own processor "
                        f"(its tile size): give one of them")


@dataclass
class EvalConfig:
    """`qgsa eval` and `qgsa grounding`: a model, a data set, pipelines (eval) or selectors (grounding)."""

    model: str = "smolvlm-256m"
    dataset: str = "shapes"
    data_dir: str | None = None
    split: str | None = None
    limit: int | None = None
    skip_bad: bool = False
    pipelines: tuple[str, ...] = ("dense", "qgsa")
    weights: str = "auto"
    checkpoint: str | None = None
    k: int | None = None  # None: f_comp(q) per question
    batch: int = 4
    device: str = "auto"
    dtype: str = "fp32"  # as TrainConfig: the numerics a checkpoint was trained in
    resolution: int | None = None  # None: the model's native size
    max_new_tokens: int = 10
    seed: int = 0
    out: str = "results/eval"
    overwrite: bool = False
    # who decides how many (experiments/allocation.py): None (each selector's own budget: --k, else f_comp's),
    # fixed | fcomp | oracle-type (each at the mean --k) or a budget file
    allocate: str | None = None
    fcomp_checkpoint: str | None = None  # the QGSA checkpoint whose f_comp allocates (default: --checkpoint)
    oracle_split: str | None = None  # oracle-type's held-out split (default: val)
    oracle_limit: int | None = None  # its samples (default: --limit)
    # the model's own views (models/views.py); None: the model's own setting (run/inputs.choose_input)
    image_splitting: bool | None = None
    longest_edge: int | None = None

    def __post_init__(self):
        check_input_options(self.resolution, self.image_splitting, self.longest_edge)
        if self.image_splitting is not None and self.allocate:
            raise QGSAError("--allocate spreads budgets over one view's visual tokens; on the model's own views "
                            "give tile selectors a budget in tiles with --k: drop --allocate or --image-splitting")
        if self.batch < 1:
            raise QGSAError(f"--batch must be at least 1, got {self.batch}")
        if self.max_new_tokens < 1:
            raise QGSAError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.k is not None and self.k < 1:
            raise QGSAError(f"--k must be at least 1, got {self.k}")
        if not self.pipelines:
            raise QGSAError("--pipelines needs at least one pipeline")
        self.specs = parse_specs(self.pipelines)  # each spec parsed once, here (not a field: settings() skip it)
        from qgsa_bench.run.inputs import check_tile_options

        check_tile_options(self.specs, self.k, self.image_splitting, self.resolution)
        # --allocate fcomp reads --checkpoint's f_comp (unless --fcomp-checkpoint names another)
        fcomp_reads = self.allocate == "fcomp" and not self.fcomp_checkpoint
        check_options(self.specs, self.k, None if fcomp_reads else self.checkpoint)
        check_allocation(self.allocate, self.k, self.checkpoint, self.fcomp_checkpoint, self.oracle_split,
                         self.oracle_limit)

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("out", "device", "overwrite")}


# who decides how many (experiments/allocation.py): the names --allocate takes, besides a budget file's path
ALLOCATIONS = ("fixed", "fcomp", "oracle-type")


def parse_allocation(text: str | None) -> str | None:
    """One allocation as typed: fixed | fcomp | oracle-type, or the path of an existing budget file. None:
    no allocation (each selector's own budget, as before). Raises QGSAError for anything else."""
    from pathlib import Path

    if text is None:
        return None
    text = text.strip()
    if text in ALLOCATIONS:
        return text
    if Path(text).is_file():
        return text
    raise QGSAError(f"--allocate '{text}' is neither {', '.join(ALLOCATIONS)} nor an existing budget file "
                    f"(CSV with columns id, budget, or JSON {{id: budget}})")


def is_file(allocation: str | None) -> bool:
    """Whether a parsed --allocate names a budget file (not one of ALLOCATIONS)."""
    return allocation is not None and allocation not in ALLOCATIONS


def check_allocation(allocate: str | None, mean, checkpoint: str | None, fcomp_checkpoint: str | None,
                     oracle_split: str | None = None, oracle_limit: int | None = None) -> None:
    """The allocation options, before any work: a known allocation or an existing budget file; a mean (--k)
    for fixed, fcomp and oracle-type; a checkpoint for fcomp; oracle options only with oracle-type. Raises
    QGSAError (one line)."""
    from pathlib import Path

    allocate = parse_allocation(allocate)
    if allocate is None:
        for given, option, reader in ((fcomp_checkpoint, "--fcomp-checkpoint", "fcomp"),
                                      (oracle_split, "--oracle-split", "oracle-type"),
                                      (oracle_limit, "--oracle-limit", "oracle-type")):
            if given is not None:
                raise QGSAError(f"{option} is read only by --allocate {reader}: add it, or drop {option}")
        return
    if mean is None and not is_file(allocate):
        raise QGSAError(f"--allocate {allocate} holds a mean budget: give it with --k (e.g. --k 12)")
    if allocate == "fcomp" and not (fcomp_checkpoint or checkpoint):
        raise QGSAError("--allocate fcomp needs a trained QGSA checkpoint whose f_comp gives the budgets: give "
                        "--checkpoint PATH or --fcomp-checkpoint PATH (results/shapes/checkpoints/qgsa-suff.pt "
                        "for the shapes base)")
    if fcomp_checkpoint is not None and allocate != "fcomp":
        raise QGSAError(f"--fcomp-checkpoint is read only by --allocate fcomp, not {allocate}: drop it")
    if fcomp_checkpoint is not None and not Path(fcomp_checkpoint).is_file():
        raise QGSAError(f"--fcomp-checkpoint not found: {fcomp_checkpoint}")
    if allocate != "oracle-type" and (oracle_split is not None or oracle_limit is not None):
        raise QGSAError(f"--oracle-split and --oracle-limit are read only by --allocate oracle-type, not {allocate}")
    if oracle_limit is not None and oracle_limit < 1:
        raise QGSAError(f"--oracle-limit must be at least 1, got {oracle_limit}")


@dataclass
class TrainConfig:
    """`qgsa train`: Algorithm 1 of the seed paper. The objective's defaults here are the paper's (section 3.5)
    except the encoder for L_align; `qgsa train`'s own defaults are the recipe that works on the shapes base
    (cli/training.py: connector projection, Eq. 4 on logits, L_answer, L_attr, lr 1e-3, 20 warm-up steps, 6
    epochs; README). Model, data set and dtype: as EvalConfig's (the paper: smolvlm-256m on vqa-rad)."""

    model: str = "smolvlm-256m"
    dataset: str = "shapes"
    data_dir: str | None = None
    split: str = "train"
    limit: int | None = None
    skip_bad: bool = False
    weights: str = "auto"
    epochs: int = 5
    batch: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    tau_start: float = 1.0
    tau_end: float = 0.1
    lambda_cs: float = 0.5
    lambda_align: float = 0.3
    lambda_sparse: float = 0.01
    entropy_coef: float = -0.01  # L_entropy = entropy_coef * H(softmax(s / tau)) (the paper: -0.01)
    kvar_coef: float = -0.5  # L_kvar = kvar_coef * Var(c)
    qlen_coef: float = -0.3  # L_qlen = qlen_coef * corr(|Q|, c)
    lambda_answer: float = 0.0  # not in the paper: weight of L_answer = -log P(a | V_sparse, q) (see README)
    lambda_attr: float = 0.0  # not in the paper: weight of L_attr, scores follow the base's own patch attribution
    attr_budget: float = 0.0  # not in the paper: >0 adds L_budget, f_comp's k follows the patches holding this p* mass
    # not in the paper: >0 adds L_budget with k* = the fewest top-p* patches (of k_min, 2 k_min, ..., k_max)
    # that keep log P(answer) within this many nats of the dense path (losses.sufficient_budget)
    suff_budget: float = 0.0
    no_cs: bool = False
    no_align: bool = False
    fixed_k: int | None = None
    align_encoder: str = "lm"  # the paper: "clip" (open_clip ViT-B/32), whose weights are often not there
    clip_checkpoint: str | None = None
    spacy_model: str | None = None
    soft_mask_space: str = "softmax"
    projection: str = "w_vis"
    fill: str = "zero"
    resolution: int | None = None
    max_steps: int | None = None
    save_every: int = 50
    mixed_precision: str = "no"  # no | bf16 | fp16: the losses under accelerate's autocast (GPUs only; ddp.py)
    cache_features: bool = False
    # Where the scorer sits: "post-vision" (the paper), "vision:L" (inside the encoder: the selected units
    # go on through the encoder's remaining layers; the `qgsa-vision@vision:L` pipeline) or "tiles" (before the
    # encoder on the model's own split views: qgsa-tiles at --fixed-k T tiles).
    insert: str = "post-vision"
    longest_edge: int | None = None  # --insert tiles: the processor's longest edge (None: the model's own)
    device: str = "auto"
    dtype: str = "fp32"  # the module trains in the base's dtype (bf16 on a GPU would train it in bf16)
    seed: int = 0
    out: str = "runs/train"
    overwrite: bool = False

    def __post_init__(self):
        for name in ("epochs", "batch", "save_every"):
            if getattr(self, name) < 1:
                raise QGSAError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise QGSAError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.warmup_steps < 0:
            raise QGSAError(f"--warmup-steps must be 0 or more, got {self.warmup_steps}")
        if self.lr <= 0 or self.tau_start <= 0 or self.tau_end <= 0:
            raise QGSAError("--lr, --tau-start and --tau-end must be positive")
        if self.insert != "tiles" and self.longest_edge is not None:
            raise QGSAError("--longest-edge splits the images into tiles: it goes with --insert tiles")
        if self.insert == "tiles" and self.resolution is not None:
            raise QGSAError("--resolution is one square view; --insert tiles trains on the model's own views (tiles + a "
                            "global view; --longest-edge sets their edge): drop --resolution")
        if self.insert != "post-vision":
            from qgsa_bench.selectors.base import parse_point

            if self.insert.partition(":")[0] not in ("vision", "tiles"):
                raise QGSAError(f"--insert takes post-vision, vision:L or tiles, got '{self.insert}'")
            point = parse_point(self.insert)
            if self.lambda_attr or self.budget_target:
                raise QGSAError("--lambda-attr, --attr-budget and --suff-budget score patches after the encoder: "
                                "use them with --insert post-vision")
            if point.kind == "tiles" and self.cache_features:
                raise QGSAError("--cache-features keeps one view's features; with --insert tiles each step encodes the "
                                "global views and the tiles chosen: drop --cache-features")
            if point.kind == "tiles" and self.fixed_k is None:
                raise QGSAError("--insert tiles trains qgsa-tiles at a budget in tiles: give --fixed-k T (f_comp "
                                "predicts visual tokens, not tiles)")
        if self.fixed_k is not None and self.fixed_k < 1:
            raise QGSAError(f"--fixed-k must be at least 1, got {self.fixed_k}")
        if self.soft_mask_space not in SOFT_MASK_SPACES:
            raise QGSAError(f"--soft-mask-space must be one of {', '.join(SOFT_MASK_SPACES)}")
        if not 0.0 <= self.attr_budget <= 1.0:
            raise QGSAError(f"--attr-budget is a share of the attribution mass in (0, 1] (0: off), got {self.attr_budget}")
        if self.suff_budget < 0 or (self.suff_budget and self.attr_budget):
            raise QGSAError("--suff-budget is a tolerance in nats (> 0; 0: off) and excludes --attr-budget")
        if self.suff_budget and self.projection != "connector":
            raise QGSAError("--suff-budget measures patches through the model's connector: add --projection connector")
        if self.projection not in PROJECTIONS:
            raise QGSAError(f"--projection must be one of {', '.join(PROJECTIONS)}")
        if self.fill not in FILLS:
            raise QGSAError(f"--fill must be one of {', '.join(FILLS)}")
        if self.fill != "zero" and self.projection != "connector":
            raise QGSAError("--fill applies to --projection connector only")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def budget_target(self) -> bool:
        """f_comp has a direct target (--attr-budget or --suff-budget): it then learns from that alone."""
        return bool(self.attr_budget or self.suff_budget)

    def run_identity(self) -> dict:
        """What a resumed run must share with the run it continues (length and output may change)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("max_steps", "epochs", "out", "device", "save_every", "cache_features", "overwrite",
                             "mixed_precision")}


@dataclass
class AskConfig:
    """`qgsa ask`: one question about one image with one pipeline."""

    image: str
    question: str
    model: str = "smolvlm-256m"
    pipeline: str = "dense"
    weights: str = "auto"
    checkpoint: str | None = None
    resolution: int | None = None  # None: the model's native size
    k: int | None = None  # fixed number of patches for sparse pipelines; None: f_comp
    max_new_tokens: int = 16
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    # the model's own views (models/views.py); None: the model's own setting (run/inputs.choose_input)
    image_splitting: bool | None = None
    longest_edge: int | None = None
    tile_unit: str = "tiles"  # a tile selector's --k: tiles, or visual tokens (run/tiles.tiles_for_budget)

    def __post_init__(self):
        self.spec = parse_spec(self.pipeline)  # parsed once, here (not a field)
        from qgsa_bench.run.tiles import check_tile_unit

        check_tile_unit(self.tile_unit)
        check_input_options(self.resolution, self.image_splitting, self.longest_edge)
        if not self.question.strip():
            raise QGSAError("empty question: pass a non-empty --question")
        if self.k is not None and self.k < 1:
            raise QGSAError(f"--k must be at least 1, got {self.k}")
        if self.max_new_tokens < 1:
            raise QGSAError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        check_options((self.spec,), self.k, self.checkpoint)
        from qgsa_bench.run.inputs import check_tile_options

        check_tile_options((self.spec,), self.k, self.image_splitting, self.resolution)


@dataclass
class ShapesConfig:
    """`qgsa data shapes`: how many generated images, which split, which seed, where."""

    out: str
    n: int = 200
    split: str = "test"
    seed: int = 0
    hires: bool = False  # the shapes-hires set (448-px canvases, small objects inside 224-px tiles)

    def __post_init__(self):
        from qgsa_bench.data.shapes import SPLIT_OFFSET

        if self.n < 1:
            raise QGSAError(f"--n must be at least 1, got {self.n}")
        if self.split not in SPLIT_OFFSET:
            raise QGSAError(f"--split must be one of {', '.join(SPLIT_OFFSET)}, got '{self.split}'")


@dataclass
class SelectorCheckpoints:
    """`qgsa sweep-budget --checkpoint`: PATH for every pipeline that uses the QGSA module (once at most),
    SELECTOR=PATH for one selector (e.g. qgsa-vision=runs/v.pt). Every file must exist."""

    values: tuple[str, ...] = ()

    def __post_init__(self):
        from pathlib import Path

        if len([v for v in self.values if "=" not in v]) > 1:
            raise QGSAError("give one --checkpoint PATH for all, and SELECTOR=PATH for the others")
        for value in self.values:
            path = value.partition("=")[2] if "=" in value else value
            if not Path(path).is_file():
                raise QGSAError(f"checkpoint not found: {path}")

    @property
    def default(self) -> str | None:
        """The checkpoint of every QGSA pipeline not named with SELECTOR=PATH."""
        return next((v for v in self.values if "=" not in v), None)

    @property
    def by_selector(self) -> dict[str, str]:
        return dict(v.split("=", 1) for v in self.values if "=" in v)
