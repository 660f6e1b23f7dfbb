"""`qgsa sweep-budget`: every selector at several budgets, at one resolution, into one results folder.

A budget is a number of visual tokens reaching the LM (for in-LM selectors: kept after the last cut; the
layer-averaged count the papers report is a column too); `--shares` gives it as fractions of the dense
visual tokens. Every (selector, budget) is one case of the same alternating timing rounds (runner.py), so
FLOPs by stage, latency with intervals and speedup against dense come from one measurement; with a data
set, every case is also evaluated (accuracy overall and per question type, the data set's own scoring).

Split images (the model's own views, models/views.py): `--image-size WxH` times and counts a generated picture
(or --image) at that size as the processor splits it; `--dataset D --image-splitting [--longest-edge N]` scores
each data set image split by the processor through evaluate.py's own path (`evaluate_run(..., splitting)`, the
one `qgsa eval --image-splitting` runs), timed on --image-size's picture when given, else on the data set's first
image. Tile selectors run at --tiles (tiles besides the global view), the others at --budgets visual tokens over
all views. Options that disagree on the image (one square view vs split) are one `error:` line (`_check_views`).

Writes budget.csv (one row per case), accuracy.csv (one row per case x scope), comparisons.csv,
meta.json and table.md. `qgsa report` draws the accuracy-FLOPs Pareto figure from these files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.config import EvalConfig, MeasureConfig, check_input_options
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.experiments.measure import Case
from qgsa_bench.experiments.runner import (COMPARISONS_TABLE, Progress, measure_cases, measure_meta,
                                           steps_per_resolution, timing_deadline, warn_unstable)
from qgsa_bench.experiments.sweep import SWEEP_COLUMNS
from qgsa_bench.models.images import command_image
from qgsa_bench.results import run_meta
from qgsa_bench.run.inputs import check_tile_options, choose_input, describe_input
from qgsa_bench.run.spec import check_options, parse_specs
from qgsa_bench.run.tiles import check_tile_unit, check_views, tiles_for_budget, tokens_of_tiles
from qgsa_bench.runtime import dtype_name

BUDGET_CSV = "budget.csv"
ACCURACY_CSV = "accuracy.csv"
DEFAULT_SHARES = (0.04, 0.1, 0.25, 0.5)
BUDGET_UNITS = ("tokens", "layer-avg")
DEFAULT_SELECTORS = ("dense", "qgsa", "random", "norm", "fastv", "pdrop", "sparsevlm", "visionzip", "divprune",
                     "downsample", "qgsa-vision")
BUDGET_COLUMNS = ["budget", "budget_unit", "budget_share", "selector", "point", "question_guided", "training",
                  "allocation", "budget_mean_realised", "budget_std", "flops_share_of_dense", *SWEEP_COLUMNS,
                  "accuracy", "delta_vs_dense_points", "n_eval", "latency_ms_per_query_eval",
                  "image_size"]  # --image-size: the split image (WxH)
ACCURACY_COLUMNS = ["budget", "budget_share", "case", "pipeline", "selector", "point", "allocation", "scope",
                    "question_type", "n", "n_scored", "accuracy", "delta_vs_dense_points", "k_mean", "k_std",
                    "n_visual_tokens_mean", "flops_total", "flops_share_of_dense", "latency_ms_per_query", "tiles_mean",
                    "image_input"]  # split images (--dataset --image-splitting): the tiles encoded, the processor's settings
BUDGET_TABLE = Table(BUDGET_CSV, tuple(BUDGET_COLUMNS), ("case",))
ACCURACY_TABLE = Table(ACCURACY_CSV, tuple(ACCURACY_COLUMNS), ("case", "scope", "question_type"))


@dataclass
class BudgetConfig:
    measure: MeasureConfig
    resolution: int | None = None  # None: the model's native size
    pipelines: tuple[str, ...] = DEFAULT_SELECTORS
    budgets: tuple[int, ...] = ()  # visual tokens reaching the LM; empty: from `shares`
    shares: tuple[float, ...] = DEFAULT_SHARES
    dataset: str | None = None  # accuracy on this data set (EvalConfig's loaders and scoring)
    data_dir: str | None = None
    split: str | None = None
    limit: int | None = None
    eval_batch: int = 8
    max_new_tokens: int = 10
    out: str = "results/budget"
    overwrite: bool = False
    # QGSA checkpoints by selector name ("qgsa", "qgsa-vision"), for the pipelines whose selector uses the
    # QGSA module; measure.checkpoint, if given, serves the others.
    checkpoints: dict = field(default_factory=dict)
    # "tokens": visual tokens after the last cut; "layer-avg": for in-LM selectors, averaged over the LM's
    # layers (as FastV, SparseVLM and PyramidDrop are quoted); the same thing for every other selector
    budget_unit: str = "tokens"
    # who decides how many (experiments/allocation.py): each budget is then the mean the allocation holds over
    # the data set; fixed = every sample the budget (the timed cases)
    allocations: tuple[str, ...] = ("fixed",)
    fcomp_checkpoint: str | None = None  # f_comp of this checkpoint allocates (default: the qgsa checkpoint)
    oracle_split: str | None = None
    oracle_limit: int | None = None
    # stop once the cases are timed (budget.csv written); the folder then resumes the accuracy part, also under a
    # launch of several processes (timing is never spread over processes). Not a setting.
    timing_only: bool = False
    # the image as the model's processor splits it (models/views.py): (width, height) px of the generated picture
    # (or --image), splitting and longest edge (None: the model's own), the tile selectors' budgets in tiles
    image_size: tuple[int, int] | None = None
    splitting: bool | None = None
    longest_edge: int | None = None
    tiles: tuple[int, ...] = (1, 2, 4)
    tile_unit: str = "tiles"  # or "tokens": visual tokens, T = floor(k / n_v) - 1 tiles (run/tiles.tiles_for_budget)
    budgets_from_tiles: bool = False  # the other selectors at the visual tokens of each tile budget, not --budgets

    def __post_init__(self):
        if not self.pipelines:
            raise QGSAError("--pipelines needs at least one selector")
        self.specs = parse_specs(self.pipelines)  # each spec parsed once, here (not a field)
        # every budget is fixed; --allocate fcomp reads the checkpoint's f_comp (unless --fcomp-checkpoint)
        fcomp_reads = "fcomp" in self.allocations and not self.fcomp_checkpoint
        check_options(self.specs, 1, None if fcomp_reads else self.measure.checkpoint, "--budgets/--shares")
        if any(b < 1 for b in self.budgets):
            raise QGSAError(f"--budgets are visual tokens, at least 1 each, got {list(self.budgets)}")
        if self.budget_unit not in BUDGET_UNITS:
            raise QGSAError(f"--budget-unit must be one of {', '.join(BUDGET_UNITS)}, got '{self.budget_unit}'")
        if not self.budgets and (not self.shares or any(not 0 < s <= 1 for s in self.shares)):
            raise QGSAError(f"--shares are fractions of the dense visual tokens in (0, 1], got {list(self.shares)}")
        self._check_allocations()
        self._check_views()

    def _check_views(self) -> None:
        """Raises QGSAError (one `error:` line naming what to give) for options that describe the image in two ways;
        where none is given, run/inputs.choose_input decides (the model's own views where it splits)."""
        check_input_options(self.resolution, self.splitting, self.longest_edge, self.image_size)
        check_tile_options(self.specs, split=self.splitting, needs_k=False)  # --tiles gives their budgets
        adaptive = [a for a in self.allocations if a != "fixed"]
        if adaptive and (self.image_size is not None or self.splitting):
            raise QGSAError(f"--allocate {adaptive[0]} spreads budgets over one view's visual tokens; on split images "
                            f"give fixed budgets (--tiles, --budgets): drop --allocate, or --image-size and "
                            f"--image-splitting")
        check_tile_unit(self.tile_unit)
        if any(t < 1 for t in self.tiles):
            raise QGSAError(f"--tiles are budgets in {self.tile_unit}, at least 1 each, got {list(self.tiles)}")

    def one_view_only(self) -> list[str]:
        """What makes this sweep one square view even where the model splits (run/inputs.choose_input): an allocation
        other than fixed. A data set is no reason any more: each image is scored as the processor splits it."""
        return ["--allocate"] if self.allocations != ("fixed",) else []

    def _check_allocations(self) -> None:
        from qgsa_bench.config import check_allocation
        from qgsa_bench.config import ALLOCATIONS

        bad = [a for a in self.allocations if a not in ALLOCATIONS]
        if not self.allocations or bad:
            raise QGSAError(f"--allocate takes {', '.join(ALLOCATIONS)} here (a budget file fixes its own mean: "
                            f"evaluate it with qgsa eval --allocate PATH), got {bad[0] if bad else 'nothing'}")
        if len(set(self.allocations)) != len(self.allocations):
            raise QGSAError("--allocate: give each allocation once")
        adaptive = [a for a in self.allocations if a != "fixed"]
        if adaptive and not self.dataset:
            raise QGSAError(f"--allocate {adaptive[0]} gives each question its own budget: it needs --dataset (the "
                            f"questions whose budgets it allocates)")
        if adaptive and self.budget_unit != "tokens":
            raise QGSAError("--allocate other than fixed counts budgets in visual tokens: drop --budget-unit layer-avg")
        for a in adaptive or [None]:
            check_allocation(a, 1, self.measure.checkpoint or self.checkpoints.get("qgsa"),
                             self.fcomp_checkpoint if a in (None, "fcomp") else None,
                             self.oracle_split if a in (None, "oracle-type") else None,
                             self.oracle_limit if a in (None, "oracle-type") else None)
        if "oracle-type" not in self.allocations and (self.oracle_split or self.oracle_limit):
            raise QGSAError("--oracle-split and --oracle-limit are read only by --allocate oracle-type")
        if "fcomp" not in self.allocations and self.fcomp_checkpoint:
            raise QGSAError("--fcomp-checkpoint is read only by --allocate fcomp")


def describe(run) -> dict:
    """Where a run's selection sits, whether it reads the question, whether it is trained."""
    spec = run.spec
    sel = spec.selector
    if spec.patches or sel.keeps_all:  # the seed paper's pipelines
        return {"selector": spec.text, "point": spec.where(), "question_guided": sel.question_guided,
                "training": "trained scorer" if sel.trainable else "none"}
    return {"selector": sel.name, "point": str(spec.point), "question_guided": sel.question_guided,
            "training": "trained scorer" if sel.trainable else "training-free"}


def resolve_budgets(cfg: BudgetConfig, n_dense: int) -> list[int]:
    budgets = list(cfg.budgets) or [max(1, round(s * n_dense)) for s in cfg.shares]
    too_big = [b for b in budgets if b > n_dense]
    if too_big:
        raise QGSAError(f"budget {too_big[0]} visual tokens is above the {n_dense} dense visual tokens at this "
                        f"resolution: pick budgets in 1..{n_dense}")
    return sorted(set(budgets))


def _engines(cfg: BudgetConfig, built) -> dict:
    """An engine per selector that has its own QGSA checkpoint (sharing the base model)."""
    from qgsa_bench.qgsa.checkpoint import load_checkpoint

    engines = {}
    for name, path in cfg.checkpoints.items():
        module, _ = load_checkpoint(path, built.loaded.provenance())
        engines[name] = built.engine.with_module(module.to(built.device, built.dtype).eval())
    return engines


def kept_tokens(run, budget: int, n_dense: int, unit: str) -> int:
    """A budget in visual tokens after the last cut (what the run takes), from one in `unit`."""
    from qgsa_bench.run.lm import tokens_for_layer_average

    point = run.spec.point
    if unit == "tokens" or point.kind != "lm":
        return budget
    return tokens_for_layer_average(budget, n_dense, point.layers, run.adapter.lm_depth)


def _cases(cfg: BudgetConfig, built, budgets: list[int], n_dense: int, resolution: int, engines,
           n_tiles: int | None = None) -> list[Case]:
    """Every (pipeline, budget) case. `n_tiles`: the tiles of a split image (--image-size): tile selectors run at
    each --tiles budget (`T=` in the label, or `k=` with --tile-unit tokens), global-only once, and with
    --budgets-from-tiles the others at the visual tokens of each tile budget; QGSAError for a selector that cannot
    take the image or a budget outside its tiles."""
    cases, a = [], built.adapter
    n_v = n_dense // (n_tiles + 1) if n_tiles is not None else None
    for spec in cfg.specs:
        if spec.selector.keeps_all:  # dense, dense-bypass: one case, no budget
            cases.append(Case(spec.text, built.run(spec)))
            continue
        run = engines.get(spec.selector.name, built.engine).run(spec)
        if n_tiles is not None:
            check_views(run.spec)
        elif run.spec.point.kind == "tiles":
            raise QGSAError(f"{spec.text} chooses among the tiles of a split image: give --image-size WIDTHxHEIGHT")
        if run.spec.point.kind == "tiles":
            if spec.selector.keeps_no_tiles:
                cases.append(Case(spec.text, run))
                continue
            for t in cfg.tiles:
                if n_tiles == 0:
                    raise QGSAError(f"{spec.text} chooses among tiles, and this image is one view (image splitting off, "
                                    f"or an image within one tile): drop it, or turn splitting on / give a larger image")
                if cfg.tile_unit == "tiles" and t > n_tiles:
                    raise QGSAError(f"--tiles {t} is above the {n_tiles} tiles of this image: pick 1 .. {n_tiles}")
                T = tiles_for_budget(t, cfg.tile_unit, n_v, n_tiles, spec.text)
                cases.append(Case(f"{spec.text} {'T' if cfg.tile_unit == 'tiles' else 'k'}={t}", run, T))
            continue
        for b in budgets:
            if run.spec.point.kind == "input" and a.resolution_for_tokens(b) > a.dense_resolution(resolution):
                continue
            cases.append(Case(f"{spec.text} k={b}", run, kept_tokens(run, b, n_dense, cfg.budget_unit)))
    if not any(c.run.spec.is_dense for c in cases):
        cases.insert(0, Case("dense", built.run("dense")))  # the reference of every share and speedup
    return cases


def run_budget(cfg: BudgetConfig, progress: Progress | None = None, warn=None) -> Path:
    """Every case of `cfg` timed, counted and (with a data set) scored into `cfg.out` (module docstring); the
    folder. Under a launch of several processes: with --per-process each process runs the whole sweep alone
    into OUT/rank-R (rows carry the rank); without, the accuracy part runs data-parallel and the timing must
    already be in the folder (a one-process run with --timing-only). Raises QGSAError for bad input before any
    work, and for a launch that would time; parallel.WorldLost when another process stopped."""
    from qgsa_bench.experiments.parallel import (World, everywhere, join_world, launched_rank, launched_size,
                                                 per_process_folder)

    m = cfg.measure
    alone = m.per_process and launched_size() > 1  # every process its own sweep, on its own device
    rank = launched_rank() if alone else None
    world = World() if alone else join_world(m.device)
    out = per_process_folder(cfg.out, rank) if alone else cfg.out
    image = command_image(m.image)  # the inputs are read before the model loads
    data = None
    if cfg.dataset:
        from qgsa_bench.data import load_dataset

        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.split, cfg.limit, False, m.seed)
    built = build(m.model, m.weights, m.device, m.dtype, m.checkpoint, m.seed,
                  attn_implementation=m.attn_implementation, warn=warn)
    a = built.adapter
    resolution = cfg.resolution or a.image_size
    n_tiles, scored_split = None, False
    # the model's own views of one image (run/tiles.py): of --image-size, else by default where the model splits
    # (run/inputs.py: the picture's own size with --image, else with --dataset the data set's first image as it
    # comes, else a square photo at the longest edge)
    splitting = (a.splitting(cfg.splitting, cfg.longest_edge) if cfg.image_size else
                 choose_input(a, cfg.resolution, cfg.splitting, cfg.longest_edge, cfg.specs, cfg.one_view_only(), warn))
    if splitting and not cfg.image_size and not m.image and data is not None:
        image = first_image(data)
    image_size = cfg.image_size or (splitting and (image.size if m.image or data is not None
                                                   else (splitting.longest_edge,) * 2))
    if splitting:
        scored_split = data is not None  # each data set image split as the processor does (eval's path)
        image = image.resize(image_size)
        views = a.views([image], splitting)
        resolution, n_tiles = splitting.tile, views.counts[0] - 1
        n_dense = views.counts[0] * a.n_dense_tokens(splitting.tile)
    else:
        n_dense = a.n_dense_tokens(resolution)
    budgets = resolve_budgets(cfg, n_dense)
    if cfg.budgets_from_tiles and not n_tiles:
        raise QGSAError("--budgets-from-tiles takes the budgets from the image's tiles, and this image is one view "
                        "(image splitting off or an image within one tile): give --budgets instead")
    if cfg.budgets_from_tiles:  # the peers at the visual tokens of each tile budget
        n_v = n_dense // (n_tiles + 1)
        budgets = [tokens_of_tiles(tiles_for_budget(t, cfg.tile_unit, n_v, n_tiles, "--tiles"), n_v) for t in cfg.tiles]
    unknown = [n for n in cfg.checkpoints if n not in {s.selector.name for s in cfg.specs}]
    if unknown:
        raise QGSAError(f"--checkpoint {unknown[0]}=...: no pipeline '{unknown[0]}' in --pipelines")
    cases = _cases(cfg, built, budgets, n_dense, resolution, _engines(cfg, built), n_tiles)
    for case in cases:  # every bad point or budget is found before any work starts
        res = case.run.resolution(resolution, case.k)
        if case.k is not None and case.run.spec.patches and case.k > a.n_patches(res):
            raise QGSAError(f"budget {case.k} is above N = {a.n_patches(res)} patches for {case.pipeline}")
    settings = {**m.settings(), "resolution": resolution, "pipelines": list(cfg.pipelines), "budgets": budgets,
                "budget_unit": cfg.budget_unit, "checkpoints": dict(cfg.checkpoints), "dataset": cfg.dataset,
                "data_dir": cfg.data_dir, "split": cfg.split, "limit": cfg.limit, "eval_batch": cfg.eval_batch,
                "max_new_tokens": cfg.max_new_tokens, "compile": m.compile,
                **({"image_size": "x".join(map(str, image_size)), "splitting": vars(splitting),
                    "tiles": list(cfg.tiles), "tile_unit": cfg.tile_unit,
                    "budgets_from_tiles": cfg.budgets_from_tiles, **({"scored_split": True} if scored_split else {}),
                    **({"timed_image": "the data set's first image"}
                       if data is not None and not cfg.image_size and not m.image else {})} if splitting else {}),
                **({"allocations": list(cfg.allocations), "fcomp_checkpoint": cfg.fcomp_checkpoint,
                    "oracle_split": cfg.oracle_split, "oracle_limit": cfg.oracle_limit}
                   if cfg.allocations != ("fixed",) else {})}
    with Results(out, "sweep-budget", settings, cfg.overwrite, world=world, rank=rank) as res:
        # resuming: the timing is one measurement of every case (alternating rounds), kept once written; the
        # accuracy runs keep every finished batch (predictions.jsonl)
        timed = {row["case"]: row for row in res.rows(BUDGET_TABLE)}
        timed = timed if all(c.label in timed for c in cases) else {}
        done = res.records_by(PREDICTIONS, "case") if data else {}
        adaptive = allocated_cases(cfg, cases)
        left = sum(1 for c in [*cases, *adaptive] for s in data.samples
                   if s.id not in done.get(c.label, {})) if data else 0
        if timed and not left and (not data or res.exists(ACCURACY_CSV)):
            res.finished(f"this sweep ({len(cases) + len(adaptive)} cases"
                         f"{f' on {len(data.samples)} samples' if data else ''})")
        if world.size > 1 and not timed:
            raise everywhere(world, QGSAError(
                f"sweep-budget times every case, and this launch started {world.size} processes: processes sharing "
                f"a host or a bus would time each other. Time it in one process first (the same command with "
                f"--timing-only), then this launch scores the data set data-parallel; or add --per-process"))
        meta = res.write_meta(run_meta(built, image_input=describe_input(splitting, resolution), budgets=budgets,
                                       budget_unit=cfg.budget_unit,
                                       qgsa_checkpoints=dict(cfg.checkpoints), dense_visual_tokens=n_dense,
                                       pipelines=list(cfg.pipelines), budget_rule=budget_rule(cfg.budget_unit),
                                       **(data.meta() if data else {}), **measure_meta(built, m),
                                       # the timed image's views, scaled up or stretched as the processor did
                                       **({"views_made": views.describe(0)} if splitting else {}),
                                       **({"world": world.meta()} if world.size > 1 else {})))
        if progress and not timed:  # one phase each: a timed step takes far longer than a scored sample
            where = f"a {'x'.join(map(str, image_size))} image in {n_tiles + 1} views" if splitting else f"{resolution}px"
            progress(f"timing {len(cases)} cases at {where}",
                     -steps_per_resolution(len(cases), m.reps, m.warmup, m.count_flops))
        flop_memo: dict = {}  # FLOPs counted per (pipeline, budget, resolution): the allocations' reuse them
        if timed:
            rows = [timed[c.label] for c in cases]
        else:
            rows, pairs = measure_cases(cases, [image] * m.batch, [m.question] * m.batch, resolution, m.reps,
                                        m.warmup, m.decode_tokens, m.count_flops, progress,
                                        timing_deadline(m, 1, 0), flop_memo=flop_memo, splitting=splitting)
            base = {"model": m.model, "weights": built.loaded.weights, "device": meta["device"],
                    "dtype": dtype_name(built.dtype), "batch": m.batch, "decode_tokens": m.decode_tokens}
            _describe_rows(cfg, built, cases, rows, n_dense, base, image_size, describe_input(splitting, resolution),
                           n_tiles + 1 if splitting else None, splitting.longest_edge if splitting else None)
            res.replace(BUDGET_TABLE, rows)  # at once: an interrupted accuracy run does not time again
            res.replace(COMPARISONS_TABLE, pairs)
            unstable = [r["case"] for r in rows if r.get("unstable")]
            meta = res.write_meta({**meta, "unstable_cases": unstable, "reps_stopped": rows[0].get("reps_stopped")})
            warn_unstable(warn, unstable)
        if data and not cfg.timing_only:
            save = lambda new: res.append_records(PREDICTIONS, new)  # noqa: E731
            allocated = {}
            if adaptive:
                allocated = _allocate(cfg, built, data, resolution, adaptive, res, progress)
                meta = res.write_meta({**(res.meta() or meta),
                                       "allocations": {c.label: a.summary() for c, a in allocated.items()}})
            if progress:
                progress(f"scoring {len(cases) + len(adaptive)} cases on {len(data.samples)} samples", -max(left, 1))
            accuracy_rows = _accuracy(built, cases, rows, data, resolution, cfg, progress, done, save,
                                      splitting if scored_split else None)
            if adaptive:
                flops_at = _flops_at(built, image, resolution, m, flop_memo) if m.count_flops else None
                more_rows, more_accuracy = _allocated_accuracy(built, allocated, rows, data, resolution, cfg,
                                                               progress, done, save, flops_at, cases)
                rows, accuracy_rows = rows + more_rows, accuracy_rows + more_accuracy
            _delta_vs_dense(rows, accuracy_rows, {c.label for c in cases if c.run.spec.is_dense})
            res.replace(ACCURACY_TABLE, accuracy_rows)
            res.replace(BUDGET_TABLE, rows)  # with each case's accuracy
    return res.out


def first_image(data):
    """The first sample's image of `data` (LoadedData), RGB, at its own size: what `sweep-budget --dataset
    --image-splitting` times and counts without --image-size. Raises QGSAError for an empty data set or an
    unreadable image (data.open_images)."""
    if not data.samples:
        raise QGSAError(f"{data.name} split '{data.split}' has no samples: nothing to time or score")
    return data.open_images(data.samples[:1])[1][0]


@dataclass(eq=False)  # a case is itself (a dict key), not its fields
class AllocatedCase:
    """A selector at a mean budget given out by an allocation (fcomp, oracle-type): answered, counted, never
    timed (each sample has its own budget; its latency is the answering runs' per query)."""

    label: str
    run: object
    mean: int
    allocation: str
    fixed: Case  # the fixed-budget case at the same mean (its row describes the selector)


def allocated_cases(cfg: BudgetConfig, cases: list[Case]) -> list[AllocatedCase]:
    """Every selector case with a budget, once per allocation other than fixed, at the same mean budget."""
    return [AllocatedCase(f"{c.label} {a}", c.run, c.k, a, c) for a in cfg.allocations if a != "fixed"
            for c in cases if c.k is not None and not c.run.spec.selector.keeps_all]


def _allocate(cfg: BudgetConfig, built, data, resolution: int, adaptive, res, progress) -> dict:
    """Each allocated case's budgets (experiments/allocation.py), before any of them is answered."""
    from qgsa_bench.experiments.allocation import make_allocator
    from qgsa_bench.experiments.evaluate import evaluate_run

    ecfg = _eval_config(cfg, data)
    allocators = {a: make_allocator(a, ecfg, built, data, resolution, evaluate_run, res, progress)
                  for a in dict.fromkeys(c.allocation for c in adaptive)}
    if "fcomp" in allocators:
        res.write_meta({**(res.meta() or {}), "fcomp_checkpoint": ecfg.fcomp_checkpoint,
                        "fcomp_by_type": fcomp_by_type(allocators["fcomp"], data, built.adapter)})
    if "oracle-type" in allocators:
        held = allocators["oracle-type"].heldout
        res.write_meta({**(res.meta() or {}), "oracle_split": held.split, "oracle_samples": len(held.samples)})
    oracle = allocators.get("oracle-type")
    if oracle is not None and progress:
        runs = list({c.run.label: c.run for c in adaptive if c.allocation == "oracle-type"}.values())
        steps = oracle.heldout_steps(runs)
        if steps:
            progress(f"oracle-type: scoring the held-out split '{oracle.heldout.split}'", -steps)
    return {c: allocators[c.allocation].budgets(c.run, c.mean) for c in adaptive}


def fcomp_by_type(allocator, data, adapter) -> list[dict]:
    """f_comp's continuous budget k_cont (Eq. 2, in its own units k_min..k_max) per question type of `data`:
    what the fcomp allocation is proportional to, the learned budget per type (meta.json)."""
    from qgsa_bench.experiments.allocation import per_type

    return per_type(allocator.weights(adapter), [s.question_type or "all" for s in data.samples], "k_cont")


def _eval_config(cfg: BudgetConfig, data) -> EvalConfig:
    """The answering settings of the accuracy runs (and the allocation's held-out runs)."""
    m = cfg.measure
    ecfg = EvalConfig(model=m.model, dataset=data.name, batch=cfg.eval_batch, max_new_tokens=cfg.max_new_tokens,
                      seed=m.seed, data_dir=cfg.data_dir, limit=cfg.limit)
    ecfg.fcomp_checkpoint = cfg.fcomp_checkpoint or (m.checkpoint or cfg.checkpoints.get("qgsa"))
    ecfg.oracle_split, ecfg.oracle_limit = cfg.oracle_split, cfg.oracle_limit
    return ecfg


def _flops_at(built, image, resolution: int, m, memo: dict):
    """budget -> the end-to-end FLOPs of a run at that fixed budget on the timing batch (counted once per
    (pipeline, budget, resolution), shared with the timed cases)."""
    from qgsa_bench.experiments.runner import stage_flops

    pixels: dict[int, object] = {}

    def flops(run, budget: int) -> float:
        res = run.resolution(resolution, budget)
        if res not in pixels:
            pixels[res] = built.adapter.pixel_values([image] * m.batch, res)
        counted = stage_flops(Case(run.label, run, budget), pixels[res], [m.question] * m.batch, m.decode_tokens,
                              res, memo)
        return counted["flops_total"]
    return flops


def _allocated_accuracy(built, allocated: dict, rows, data, resolution, cfg: BudgetConfig, progress, done, save,
                        flops_at, cases) -> tuple[list[dict], list[dict]]:
    """(a budget.csv row and accuracy.csv rows per allocated case): accuracy per scope, the realised budgets,
    end-to-end FLOPs = the mean over the samples of the FLOPs at each one's budget, latency per query of the
    answering runs."""
    from qgsa_bench.experiments.evaluate import evaluate_run, summary_rows

    ecfg = _eval_config(cfg, data)
    fixed_rows = {c.label: r for c, r in zip(cases, rows)}
    dense_flops = next((r.get("flops_total") for c, r in zip(cases, rows) if c.run.spec.is_dense), None)
    budget_rows, accuracy_rows = [], []
    for case, alloc in allocated.items():
        keep = (lambda new, label=case.label: save([{**r, "case": label} for r in new])) if save else None
        with case.run.engine.same_draws():
            records = evaluate_run(case.run, data, resolution, ecfg, progress, done.get(case.label, {}), keep,
                                   alloc.by_id())
        own = alloc.by_id()
        flops = {}
        if flops_at is not None:
            for b in sorted(set(alloc.budgets)):
                flops[b] = flops_at(case.run, b)
        summary = alloc.summary()
        base = fixed_rows[case.fixed.label]
        row = {key: base.get(key) for key in ("budget", "budget_unit", "budget_share", "selector", "point",
                                                "question_guided", "training", "model", "weights", "device",
                                                "dtype", "batch", "decode_tokens", "qgsa_weights", "resolution",
                                                "effective_resolution", "n_patches")}
        row.update({"case": case.label, "pipeline": case.run.label, "allocation": case.allocation,
                    "budget_mean_realised": summary["realised_mean"], "budget_std": summary["budget_std"]})
        for scope_row in summary_rows(records, case.run.label):
            part = [r for r in records if scope_row["scope"] == "all"
                    or r.get("question_type" if scope_row["scope"] == "type" else "answer_type")
                    == scope_row["question_type"]]
            mean_flops = (sum(flops[own[r["id"]]] for r in part) / len(part)) if flops and part else None
            accuracy_rows.append({"budget": row["budget"], "budget_share": row["budget_share"], "case": case.label,
                                  "selector": row["selector"], "point": row["point"], "allocation": case.allocation,
                                  "flops_total": mean_flops,
                                  "flops_share_of_dense": mean_flops / dense_flops if mean_flops and dense_flops
                                  else None, **scope_row})
            if scope_row["scope"] == "all":
                row.update({"accuracy": scope_row["accuracy"], "n_eval": scope_row["n"], "flops_total": mean_flops,
                            "flops_share_of_dense": accuracy_rows[-1]["flops_share_of_dense"],
                            "k": scope_row["k_mean"], "n_visual_tokens": scope_row["n_visual_tokens_mean"],
                            "latency_ms_per_query_eval": scope_row["latency_ms_per_query"]})
        budget_rows.append(row)
    return budget_rows, accuracy_rows


def _delta_vs_dense(rows: list[dict], accuracy_rows: list[dict], dense_cases: set[str]) -> None:
    """Every row's accuracy difference (points) to that of the dense case (`dense_cases`: its label) in the same
    scope, allocated cases included: budget.csv's rows against dense overall, accuracy.csv's per scope."""
    dense = {(r["scope"], r["question_type"]): r["accuracy"] for r in accuracy_rows if r["case"] in dense_cases}
    for r in accuracy_rows:
        ref = dense.get((r["scope"], r["question_type"]))
        r["delta_vs_dense_points"] = None if ref is None or r["accuracy"] is None else r["accuracy"] - ref
    ref_all = dense.get(("all", "all"))
    for row in rows:
        if row.get("accuracy") is not None and ref_all is not None:
            row["delta_vs_dense_points"] = row["accuracy"] - ref_all


PREDICTIONS = "predictions.jsonl"  # the accuracy runs' per-sample records, with their case


def budget_rule(unit: str) -> str:
    """How budgets are counted, as meta.json says it."""
    return (("visual tokens reaching the LM (in-LM selectors: kept after the last cut; visual_tokens_layer_avg "
             "beside)" if unit == "tokens" else
             "visual tokens reaching the LM; for in-LM selectors averaged over the LM's layers (k: kept after the "
             "last cut)") + "; qgsa/random/norm without @: k patches through the QGSA module's projection")


def _describe_rows(cfg: BudgetConfig, built, cases, rows, n_dense: int, base: dict, image_size=None,
                   image_input: str | None = None, views: int | None = None, longest_edge: int | None = None) -> None:
    """Each case's row gains its budget, share, selector description, weights and FLOPs share of dense, its
    `image_input` (run/inputs.describe_input), and where the processor made the views `image_size` ((width,
    height) px), `views` (the image's views) and `longest_edge` (px)."""
    dense_flops = next((r.get("flops_total") for c, r in zip(cases, rows) if c.run.spec.is_dense), None)
    for case, row in zip(cases, rows):
        own = cfg.checkpoints.get(case.run.spec.selector.name)
        if case.run.spec.point is not None and case.run.spec.point.kind == "tiles":  # budget: tiles besides the global
            tokens = " k=" in case.label  # --tile-unit tokens: the budget as given, in visual tokens
            budget = int(case.label.rpartition("k=")[2]) if tokens else case.k or 0
            share, unit = row["n_visual_tokens"] / n_dense, "tokens" if tokens else "tiles"
        else:
            budget = n_dense if case.k is None else int(case.label.rpartition("k=")[2])
            share, unit = budget / n_dense, cfg.budget_unit
        row["image_input"] = image_input
        if image_size:
            row.update(image_size="x".join(map(str, image_size)), views=views, longest_edge=longest_edge)
        row.update({"budget": budget, "budget_share": share, "budget_unit": unit,
                    **describe(case.run), **base, "allocation": None if case.k is None else "fixed",
                    "qgsa_weights": f"checkpoint:{own}" if own else built.qgsa_weights})
        if dense_flops and row.get("flops_total") is not None:
            row["flops_share_of_dense"] = row["flops_total"] / dense_flops


def _accuracy(built, cases, rows, data, resolution, cfg: BudgetConfig, progress, done=None, save=None,
              splitting=None) -> list[dict]:
    """Every case evaluated on the data set (per-sample scoring of evaluate.py, its very path:
    `evaluate_run`), summarised per scope. `splitting`: each image as the model's processor splits it (as `qgsa eval
    --image-splitting`; a tile selector's budget T tiles, global-only none), else one square view. `done`
    (case -> id -> record): finished by an interrupted run; `save`: each batch's new records, with their case.
    Each row and case gains its accuracy; the differences to dense are `_delta_vs_dense`'s."""
    from qgsa_bench.experiments.evaluate import evaluate_run, summary_rows, warm_up

    ecfg = _eval_config(cfg, data)
    done = done or {}
    if any(s.id not in done.get(c.label, {}) for c in cases for s in data.samples):
        warm_up([built.run("dense")], data, resolution, ecfg, splitting)
    out = []
    for case, row in zip(cases, rows):
        ecfg.k = case.k
        keep = (lambda new, label=case.label: save([{**r, "case": label} for r in new])) if save else None
        with case.run.engine.same_draws():
            records = evaluate_run(case.run, data, resolution, ecfg, progress, done.get(case.label, {}), keep,
                                   splitting=splitting)
        for summary in summary_rows(records, case.pipeline):
            out.append({"budget": row["budget"], "budget_share": row["budget_share"], "case": case.label,
                        "selector": row["selector"], "point": row["point"], "flops_total": row.get("flops_total"),
                        "flops_share_of_dense": row.get("flops_share_of_dense"), "allocation": row.get("allocation"),
                        "image_input": describe_input(splitting, resolution), **summary})
        overall = next(s for s in summary_rows(records, case.pipeline) if s["scope"] == "all")
        row.update({"accuracy": overall["accuracy"], "n_eval": overall["n"],
                    "latency_ms_per_query_eval": overall["latency_ms_per_query"]})
    return out
