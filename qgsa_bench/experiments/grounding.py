"""`qgsa grounding`: does a selection land on the object the question asks about? (the paper's Table 3, for
every selector)

For every sample with a box, every pipeline (`NAME[@POINT]`, as `qgsa eval` takes them) runs the one stage
sequence (`Run.prepare`, no decoding) at every budget, and the patches behind its kept visual tokens
(`Result.selected_patches`: indices in the image's raster frame, whatever stage chose them, in-LM selectors
included) are compared with the referent's box, in the original image's pixels:

    IoU            of the kept patches' convex hull with the box (`metrics.hull_iou`)
    pointing game  the kept patch nearest the centroid of the kept patches points; a hit when its centre lies
                   in the box (`metrics.pointing_hit`); defined on the kept set alone, so alike for every selector
    share in box   the share of the kept patches whose centre lies in the box (`metrics.share_in_box`)

A budget counts what the pipeline's budget counts (`Run.units`): patches for the seed paper's patch-level
`qgsa`, `random`, `norm`, visual tokens (s x s patches each) for every other selector; without --budgets or
--k each pipeline takes f_comp(q)'s budget per question. VisionZip's merged contextual tokens average patches
from all over the image: only its selected (dominant) tokens are grounded. Random selectors draw per sample
(`Run.sample_seeds`): a sample has one selection in any batch. Beside them at every budget, the oracle: the
best selection of at most k patches whose hull is a grid-aligned rectangle (`metrics.oracle_patches`, the
IoU ceiling): `oracle` at k = b patches, `oracle@tokens` at k = b x s^2 patches (b visual tokens).

On the model's own views (`--image-splitting [--longest-edge N]`, experiments/grounding_views.py): every pipeline
that takes split images runs on the processor's tiles + global view, and its kept patches are rectangles of the
ORIGINAL image (each view's rectangle: models/views.Views.view_boxes). Tile selectors (qgsa-tiles, random-tiles)
run at `--tiles T` and are grounded by their chosen tiles (the global view that comes with them is not counted:
chosen by none of them, the whole image whatever the question); every other selector at --budgets visual tokens
over all views, its global-view tokens counted as their blocks of the whole image. Beside the three metrics,
tile-level ones: tile_hit (the box centre lies in a tile the selection touches), tile_iou (hull of those tiles
with the box), tile_jaccard (vs the tiles the box overlaps); oracles `oracle-tiles` (the box's tiles) and
`oracle@tokens` on the patch grid of the box's tile. The one-view path is unchanged.

Writes grounding.jsonl (one record per (sample, pipeline, budget), appended as each batch finishes; a rerun
resumes), grounding.csv (one row per pipeline x budget x question type), pairs.csv (two questions about
different objects of one image: do the two selections differ?) and meta.json (pipelines, budgets, units).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.config import check_input_options
from qgsa_bench.data import load_dataset
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.experiments.evaluate import batches
from qgsa_bench.experiments.grounding_views import GLOBAL_VIEW_RULE, TILE_ORACLE, TILE_RULE, kept_patches, kept_rects
from qgsa_bench.metrics import (box_centres, centres_share_in_box, hull_iou, oracle_patches, pointing_hit,
                                share_in_box)
from qgsa_bench.results import run_meta
from qgsa_bench.run.inputs import check_tile_options, choose_input, describe_input
from qgsa_bench.run.spec import check_options, parse_spec, parse_specs

ORACLE = "oracle"  # at k = b patches (beside the patch-level pipelines)
ORACLE_TOKENS = "oracle@tokens"  # at k = b x s^2 patches: b visual tokens' worth (beside every other selector)
PATCH_LEVEL = ("qgsa", "random", "norm")  # the seed paper's pipelines, typed without @
PAIR_COLUMNS = ["model", "weights", "qgsa_weights", "dataset", "split", "selector", "budget", "budget_unit",
                "n_pairs", "mean_jaccard", "share_in_own_box", "share_in_other_box", "resolution", "note"]
GROUNDING_COLUMNS = ["model", "weights", "qgsa_weights", "dataset", "split", "selector", "point", "question_guided",
                     "budget", "budget_unit", "question_type", "n", "mean_iou", "median_iou", "acc_iou_0_5",
                     "pointing", "share_in_box", "kept_patches_mean", "k_mean", "resolution", "note",
                     "image_input", "tile_hit", "tile_iou", "tile_jaccard", "kept_tiles_mean", "global_patches_mean",
                     "referent_tile_share"]
GROUNDED = "grounding.jsonl"  # one record per (sample, pipeline, budget), appended as each batch finishes
GROUNDING_TABLE = Table("grounding.csv", tuple(GROUNDING_COLUMNS), ("selector", "budget", "question_type"))
PAIR_TABLE = Table("pairs.csv", tuple(PAIR_COLUMNS), ("selector", "budget"))
DATA_FIELDS = {"dataset": "shapes", "data_dir": None, "split": None, "limit": None, "skip_bad": False, "seed": 0}
POINTING_RULE = ("the kept patch nearest the centroid of the kept patches' centres points; a hit when its centre "
                 "lies in the box")


def default_pipelines(split: bool = False) -> tuple[str, ...]:
    """The seed paper's patch-level `qgsa`, `random`, `norm`, then every registered selector that keeps a subset
    of the patches, at its default insertion point (`random@post-vision`, `fastv`, `qgsa-vision`, ...). Left
    out: `dense` and `dense-bypass` (they keep every patch), `downsample` (it keeps the whole image at a
    lower resolution: no patch of the image is chosen, so there is nothing to ground) and the tile selectors
    (they choose tiles of a split image). `split` (the model's own views, grounding_views.py): the tile
    selectors that choose tiles (qgsa-tiles, random-tiles) instead of the seed paper's patch-level three (they
    select single patches of one view and refuse split images); `global-only` keeps no tile (nothing chosen)."""
    from qgsa_bench.selectors.registry import REGISTRY

    names = [] if split else list(PATCH_LEVEL)
    for name, cls in REGISTRY.items():
        selector = cls()
        if split and "tiles" in selector.points and not selector.keeps_no_tiles:
            names.append(name)
            continue
        if selector.keeps_all or "input" in selector.points or "tiles" in selector.points:
            continue
        names.append(f"{name}@{selector.points[0]}" if selector.patch_form else name)
    return tuple(names)


@dataclass
class GroundingConfig:
    """`qgsa grounding`: a model, a data set with boxes, pipelines and budgets. `budgets` count each pipeline's
    units (`Run.units`); empty: `k` as the one budget, or without it f_comp(q)'s budget per question.
    `pipelines` empty: `default_pipelines()`. `checkpoints`: a selector's own QGSA checkpoint by selector name
    (`qgsa-vision=PATH`, as sweep-budget takes them); `checkpoint` serves every other QGSA pipeline. Raises
    QGSAError (one line) for a pipeline that selects nothing to ground, a budget below 1, --k with --budgets,
    a checkpoint no pipeline reads. `image_splitting` (not None): the model's own views (grounding_views.py;
    `longest_edge` where the processor resizes to); `tiles`: the tile selectors' budgets in tiles, required with a
    tile selector and refused without one or on one view (QGSAError)."""

    model: str = "smolvlm-256m"
    dataset: str = "shapes"
    data_dir: str | None = None
    split: str | None = None
    limit: int | None = None
    skip_bad: bool = False
    pipelines: tuple[str, ...] = ()  # empty: default_pipelines()
    budgets: tuple[int, ...] = ()
    k: int | None = None
    weights: str = "auto"
    checkpoint: str | None = None
    checkpoints: dict = field(default_factory=dict)
    batch: int = 8
    device: str = "auto"
    dtype: str = "fp32"
    resolution: int | None = None
    seed: int = 0
    out: str = "results/grounding"
    overwrite: bool = False
    image_splitting: bool | None = None  # the model's own views (grounding_views.py); None: one square view
    longest_edge: int | None = None
    tiles: tuple[int, ...] = ()  # the tile selectors' budgets in tiles (split images only)

    def __post_init__(self):
        check_input_options(self.resolution, self.image_splitting, self.longest_edge)
        if any(t < 1 for t in self.tiles):
            raise QGSAError(f"--tiles are budgets in tiles, at least 1 each, got {list(self.tiles)}")
        self.tiles = tuple(sorted(set(self.tiles)))
        if self.batch < 1:
            raise QGSAError(f"--batch must be at least 1, got {self.batch}")
        if self.limit is not None and self.limit < 1:
            raise QGSAError(f"--limit must be at least 1, got {self.limit}")
        if self.k is not None and self.budgets:
            raise QGSAError("give the budgets once: --k B (one budget) or --budgets B1 B2 ..., not both")
        if self.k is not None and self.k < 1:
            raise QGSAError(f"--k must be at least 1, got {self.k}")
        if any(b < 1 for b in self.budgets):
            raise QGSAError(f"--budgets need positive integers (patches or visual tokens), got {list(self.budgets)}")
        self.budgets = tuple(sorted(set(self.budgets)))
        self.pipelines = tuple(self.pipelines)
        split = bool(self.image_splitting)
        # the default tile selectors where --tiles gives their budgets
        defaults = [p for p in default_pipelines(split) if self.tiles or not parse_spec(p).at_tiles]
        self.specs = parse_specs(self.pipelines or defaults)  # parsed once (not a field)
        labels = [s.text for s in self.specs]
        if len(set(labels)) < len(labels):
            raise QGSAError(f"--pipelines names {next(x for x in labels if labels.count(x) > 1)} twice: give it once")
        for spec in self.specs:
            grounded(spec)
        choosers = [s.text for s in self.specs if s.at_tiles]
        check_tile_options(self.specs, split=self.image_splitting, resolution=self.resolution, needs_k=False)
        if choosers and not self.tiles:
            raise QGSAError(f"{choosers[0]} needs budgets in tiles: give --tiles T1 T2 ... (--budgets and --k count "
                            f"the other selectors' visual tokens)")
        if self.tiles and not choosers:
            raise QGSAError("--tiles are the budgets of the tile selectors (qgsa-tiles, random-tiles), and --pipelines "
                            "has none: drop --tiles, or add one")
        fixed = "--budgets" if self.budgets else "--k"
        check_options(self.specs, None if self.budget_list == (None,) else 1, self.checkpoint, fixed)
        unknown = [n for n in self.checkpoints if n not in {s.selector.name for s in self.specs}]
        if unknown:
            raise QGSAError(f"--checkpoint {unknown[0]}=...: no pipeline '{unknown[0]}' in --pipelines")

    @property
    def budget_list(self) -> tuple[int | None, ...]:
        """The budgets every pipeline runs at: --budgets, else (--k,), else (None,): f_comp(q)'s per question."""
        return self.budgets or (self.k,)

    def settings(self) -> dict:
        """What the results depend on (meta.json `settings`; a rerun with other settings is refused)."""
        # --tiles only where given: a one-view folder's settings stay what they were before split images
        return {k: v for k, v in asdict(self).items()
                if k not in ("out", "device", "overwrite") and not (k == "tiles" and not v)}

    def budgets_of(self, spec) -> tuple[int | None, ...]:
        """The budgets pipeline `spec` runs at: --tiles for a tile selector, `budget_list` for every other."""
        return self.tiles if spec.at_tiles else self.budget_list


def grounded(spec) -> None:
    """Raises QGSAError (one line saying what to do) for a pipeline with no patches to ground: one that keeps
    every patch, downsampling, which keeps the whole image at a lower resolution, or global-only (no tile)."""
    if spec.selector.keeps_all:
        raise QGSAError(f"{spec.text} keeps every patch, so there is no selection to ground: drop it from --pipelines")
    if "input" in spec.selector.points:
        raise QGSAError(f"{spec.text} keeps the whole image at a lower resolution: it chooses no patches, so there "
                        f"is nothing to ground; drop it from --pipelines")
    if spec.selector.keeps_no_tiles:
        raise QGSAError(f"{spec.text} keeps no tile (the global view alone, the whole image, whatever the question): "
                        f"there is no selection to ground; drop it from --pipelines")


def box_samples(cfg):
    """(the data set, its first `cfg.limit` samples with a box): the samples a grounding run reads, the same for
    `qgsa report` drawing them again. `cfg`: anything with the DATA_FIELDS attributes (GroundingConfig,
    EvalConfig, `settings_samples`). Raises QGSAError where none has a box."""
    # shapes: about half the questions have a box, so generate enough; file data sets: boxes on all
    limit = None if cfg.limit is None else (4 * cfg.limit if cfg.dataset.startswith("shapes") else cfg.limit)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.split, limit, cfg.skip_bad, cfg.seed)
    samples = [s for s in data.samples if s.box is not None][: cfg.limit]
    if not samples:
        raise QGSAError(f"{cfg.dataset} split '{data.split}' has no samples with a box to ground")
    return data, samples


def settings_samples(settings: dict):
    """`box_samples` of the data a grounding run's meta.json `settings` name (either format)."""
    return box_samples(SimpleNamespace(**{k: settings.get(k, default) for k, default in DATA_FIELDS.items()}))


def _key(record: dict) -> tuple:
    return record["id"], record["pipeline"], record.get("budget")


def _runs(cfg: GroundingConfig, built, warn=None) -> dict:
    """label -> Run, each on the engine of its own checkpoint (`--checkpoint SELECTOR=PATH`). Of the default
    pipelines, a QGSA selector whose checkpoint was trained at another insertion point sits where it was trained
    (`qgsa-vision@vision:2`) when it can, else is left out (`warn` says why); a pipeline the user named is
    refused instead (QGSAError)."""
    from qgsa_bench.experiments.budget import _engines

    engines = _engines(cfg, built)
    runs = {}
    for spec in cfg.specs:
        engine = engines.get(spec.selector.name, built.engine)
        try:
            run = engine.run(spec)
        except QGSAError as err:
            trained = getattr(engine.module, "trained_at", None)
            if cfg.pipelines or not trained:
                raise
            if spec.point is None and not spec.patches and trained.partition(":")[0] in spec.selector.points:
                run = engine.run(parse_spec(f"{spec.text}@{trained}"))
            else:
                if warn:
                    warn(f"{spec.text} left out: {err}")
                continue
        runs[run.label] = run
    if not runs:
        raise QGSAError("no pipeline is left to ground: give --pipelines, or a --checkpoint trained where they sit")
    return runs


def run_grounding(cfg: GroundingConfig, progress=None, warn=None) -> Path:
    """Ground every pipeline at every budget into `cfg.out` (module docstring); the folder. Resumes an
    interrupted run of the same settings. Data-parallel under a launch of several processes (`ground`); only
    the main process writes. Raises QGSAError before any work for bad input (a budget outside a pipeline's
    1..n, a checkpoint trained elsewhere, data without boxes); parallel.WorldLost when another process stopped."""
    from qgsa_bench.experiments.parallel import join_world

    world = join_world(cfg.device)
    with Results(cfg.out, "grounding", cfg.settings(), cfg.overwrite) as res:
        data, samples = box_samples(cfg)
        done = {_key(r): r for r in res.read_records(GROUNDED)}  # an interrupted run's finished batches
        before = res.meta() or {}
        finished_before = before.get("budgets_of") or {p: cfg.budget_list for p in before.get("pipelines") or []}
        if before.get("pipelines") and res.exists(GROUNDING_TABLE.file) and all(
                (s.id, p, None if b == "f_comp" else b) in done for s in samples for p in before["pipelines"]
                for b in finished_before.get(p, cfg.budget_list)):
            res.finished(f"the grounding of {len(samples)} boxes")
        built = build(cfg.model, cfg.weights, cfg.device, cfg.dtype, cfg.checkpoint, cfg.seed, warn=warn)
        runs = _runs(cfg, built, warn)
        a = built.adapter
        # the model's own views by default where it splits (run/inputs.py); one square view where asked or needed
        splitting = choose_input(a, cfg.resolution, cfg.image_splitting, cfg.longest_edge, cfg.specs, warn=warn)
        choosers = [label for label, run in runs.items() if run.spec.at_tiles]
        if splitting is None and choosers:
            raise QGSAError(f"{choosers[0]} chooses among the tiles of a split image: add --image-splitting (the "
                            f"model's own views), or drop it from --pipelines")
        budgets_of = {label: cfg.budgets_of(run.spec) for label, run in runs.items()}
        if splitting is None:
            requested = cfg.resolution or a.image_size
            resolution = next(iter(runs.values())).check(requested)
            for run in runs.values():  # every (pipeline, budget) checked before any work
                for b in cfg.budget_list:
                    run.check(requested, b)
            image_input = describe_input(None, resolution)
        else:
            requested = resolution = splitting.tile
            check_split(runs, budgets_of, splitting, a)
            image_input = describe_input(splitting, resolution)
        N = a.n_patches(resolution)
        grid = int(N ** 0.5)
        s2 = a.unit_patches(N).shape[1]
        units = {label: "tiles" if run.spec.at_tiles else run.units(resolution)[1] for label, run in runs.items()}
        kinds = ((ORACLE, "patches"), (ORACLE_TOKENS, "visual tokens"), (TILE_ORACLE, "tiles"))
        oracles = [name for name, unit in kinds if unit in units.values()]
        for name, unit in kinds:
            units[name] = unit
            budgets_of[name] = cfg.tiles if unit == "tiles" else cfg.budget_list
        labels = [*runs, *oracles]
        note = "RANDOM base weights: the selections mean nothing" if built.loaded.weights == "random" else ""
        own = {label: f"checkpoint:{cfg.checkpoints[run.spec.selector.name]}"
               for label, run in runs.items() if run.spec.selector.name in cfg.checkpoints}
        shown = lambda bs: [b if b is not None else "f_comp" for b in bs]  # noqa: E731
        views_meta = {} if splitting is None else {
            "splitting": vars(splitting), "tiles": list(cfg.tiles), "global_view": GLOBAL_VIEW_RULE,
            "tile_metrics": TILE_RULE, "budgets_of": {label: shown(budgets_of[label]) for label in labels},
            "geometry": "each view's rectangle in original pixels: models/views.Views.view_boxes; a view's patches "
                        "divide it evenly (metrics.view_patch_boxes)"}
        meta = res.write_meta(run_meta(
            built, **{**data.meta(), "n_samples": len(samples)}, requested_resolution=requested,
            resolution=resolution, grid=grid, unit_patches=s2, pipelines=labels,
            budgets=shown(cfg.budget_list), image_input=image_input,
            budget_units={label: units[label] for label in labels}, qgsa_checkpoints=dict(cfg.checkpoints),
            note=note, world=world.meta(), pointing=POINTING_RULE,
            oracle="best IoU over selections of <= k patches whose hull is a grid-aligned rectangle; k = b patches "
                   f"(oracle) or b x {s2} patches (oracle@tokens, b visual tokens)"
                   + ("" if splitting is None else ", on the patch grid of the tile holding the box's centre; "
                      "oracle-tiles: the tiles the box overlaps, most overlapped first, at most T"),
            visionzip="only the selected (dominant) tokens are grounded; the merged contextual tokens are not",
            **views_meta))
        order = [(label, b) for label in labels for b in budgets_of[label]]
        if progress:
            n_budgets = len({b for label in labels for b in budgets_of[label]})
            progress(f"{data.name}: {len(samples)} boxes x {len(runs)} pipelines x {n_budgets} budgets",
                     -len(samples))
            finished = sum(all((s.id, p, b) in done for p, b in order) for s in samples)
            if finished:
                progress("resumed", finished)
        plan = Plan(runs, oracles, cfg.budget_list, resolution, grid, s2, splitting, budgets_of)
        records, samples = ground(built, data, samples, plan, cfg.batch, progress, done,
                                  lambda new: res.append_records(GROUNDED, new))
        res.write_meta({**meta, **data.meta(), "n_samples": len(samples)})
        base = {"model": cfg.model, "weights": built.loaded.weights, "qgsa_weights": built.qgsa_weights,
                "dataset": data.name, "split": data.split, "resolution": resolution, "note": note,
                "image_input": image_input}
        info = {label: describe_pipeline(run, own.get(label)) for label, run in runs.items()}
        info.update({name: {"point": "–", "question_guided": False} for name in oracles})
        res.replace(GROUNDING_TABLE, summary_rows(records, base, info, order, units))
        pairs = question_pairs(records, grid)
        if pairs:
            res.replace(PAIR_TABLE, [{**base, **({"qgsa_weights": own[r["selector"]]} if r["selector"] in own else {}),
                                      **r} for r in pairs])
    return res.out


def check_split(runs: dict, budgets_of: dict, splitting, adapter) -> None:
    """Before any work on split images: every pipeline takes split images (run/tiles.check_views), a tile budget
    lies in 1..the most tiles `splitting` makes ((longest edge / tile)^2), a budget in visual tokens in 1..the
    visual tokens of the most views. An image with fewer tiles or views is refused when it comes (run/tiles.py,
    run/view_select.py). Raises QGSAError (one line naming the option to change)."""
    from qgsa_bench.run.tiles import check_views

    most = (splitting.longest_edge // splitting.tile) ** 2 if splitting.split else 0
    n_v = adapter.n_dense_tokens(splitting.tile)
    for label, run in runs.items():
        check_views(run.spec)
        for b in budgets_of[label]:
            if b is None:
                continue
            if run.spec.at_tiles and not 1 <= b <= most:
                raise QGSAError(f"--tiles {b} is impossible for {label}: at --longest-edge {splitting.longest_edge} an "
                                f"image has at most {most} tiles of {splitting.tile} px; use 1 <= --tiles <= {most}")
            if not run.spec.at_tiles and not 1 <= b <= (most + 1) * n_v:
                raise QGSAError(f"budget {b} visual tokens is impossible for {label}: an image split at --longest-edge "
                                f"{splitting.longest_edge} has at most {most + 1} views of {n_v} visual tokens; use "
                                f"--budgets within 1 .. {(most + 1) * n_v}")


def describe_pipeline(run, checkpoint: str | None = None) -> dict:
    """Where a pipeline's selection sits, whether it reads the question, and the QGSA weights it reads where it
    has its own checkpoint (`checkpoint`, `--checkpoint SELECTOR=PATH`)."""
    from qgsa_bench.experiments.budget import describe

    described = describe(run)
    return {"point": described["point"], "question_guided": described["question_guided"],
            **({"qgsa_weights": checkpoint} if checkpoint else {})}


@dataclass
class Plan:
    """What a grounding run selects: `runs` (label -> Run), the oracle labels, the budgets (None: f_comp's per
    question), the encoder resolution (split images: the view size), the patch grid (grid x grid = N patches, of
    each view) and s^2, the patches of a visual token. `splitting`: the model's own views (grounding_views.py),
    None for one square view; `budgets_of`: label -> its own budgets (a tile selector's in tiles), else
    `budgets` for every label."""

    runs: dict
    oracles: list
    budgets: tuple
    resolution: int
    grid: int
    s2: int
    splitting: object | None = None
    budgets_of: dict | None = None

    def budgets_for(self, label: str) -> tuple:
        """The budgets pipeline (or oracle) `label` runs at."""
        return (self.budgets_of or {}).get(label, self.budgets)


@torch.no_grad()
def select_batch(plan: Plan, built, images, samples, todo) -> list[dict]:
    """The records of one batch: for every pipeline and budget `todo(sample_id, label, budget)` holds, the kept
    patches of each sample (`Result.selected_patches`, indices in [0, N)) and their metrics (`record`), from one
    `Run.prepare` over the samples that need it; random selectors draw per sample (`Run.sample_seeds`). The
    oracle's k: b patches (`oracle`), b x s^2 (`oracle@tokens`); without a budget, f_comp(q)'s per question.
    Split images (`plan.splitting`): `split_batch`."""
    if plan.splitting is not None:
        return split_batch(plan, built, images, samples, todo)
    questions = [s.question for s in samples]
    sizes = [img.size for img in images]
    out = []
    for label, run in plan.runs.items():
        unit = run.units(plan.resolution)[1]
        for budget in plan.budgets_for(label):
            need = [i for i, s in enumerate(samples) if todo(s.id, label, budget)]
            if not need:
                continue
            result = run.prepare([images[i] for i in need], [questions[i] for i in need], plan.resolution, budget,
                                 new_tokens=0, seeds=run.sample_seeds([samples[i].id for i in need]))
            for j, i in enumerate(need):
                merged = result.merged_patches(j)
                extra = {} if merged is None else {"merged_tokens": len(merged)}
                out.append(record(samples[i], sizes[i], label, budget, unit, result.kept(j),
                                  result.selected_patches(j), plan.grid, extra))
    for label in plan.oracles:
        tokens = label == ORACLE_TOKENS
        for budget in plan.budgets_for(label):
            need = [i for i, s in enumerate(samples) if todo(s.id, label, budget)]
            if not need:
                continue
            ks = oracle_budgets(plan, built, [questions[i] for i in need], budget, tokens)
            for j, i in enumerate(need):
                (w, h), box = sizes[i], samples[i].box
                patches = _oracle(plan.grid, w, h, box, ks[j])
                out.append(record(samples[i], sizes[i], label, budget, "visual tokens" if tokens else "patches",
                                  ks[j] // plan.s2 if tokens else ks[j], patches, plan.grid))
    return out


@torch.no_grad()
def split_batch(plan: Plan, built, images, samples, todo) -> list[dict]:
    """`select_batch` on the model's own views: every pipeline through `Run.prepare(..., splitting=...)`, its
    records in original pixels (grounding_views.result_record: a tile selector's chosen tiles, a whole-token
    selector's kept patches over all views); `oracle-tiles` at each tile budget, `oracle@tokens` at each token
    budget on the patch grid of the box's tile (grounding_views.py)."""
    from qgsa_bench.experiments.grounding_views import oracle_tiles_record, oracle_tokens_record, result_record

    questions = [s.question for s in samples]
    out = []
    for label, run in plan.runs.items():
        unit = "tiles" if run.spec.at_tiles else run.units(plan.resolution)[1]
        for budget in plan.budgets_for(label):
            need = [i for i, s in enumerate(samples) if todo(s.id, label, budget)]
            if not need:
                continue
            result = run.prepare([images[i] for i in need], [questions[i] for i in need], plan.resolution, budget,
                                 new_tokens=0, seeds=run.sample_seeds([samples[i].id for i in need]),
                                 splitting=plan.splitting)
            out += [result_record(result, j, samples[i], label, budget, unit, plan.grid) for j, i in enumerate(need)]
    views = None
    for label in plan.oracles:
        for budget in plan.budgets_for(label):
            need = [i for i, s in enumerate(samples) if todo(s.id, label, budget)]
            if not need:
                continue
            if views is None:  # the geometry only (each view's rectangle in original pixels)
                views = built.adapter.views(images, plan.splitting)
            if label == TILE_ORACLE:
                out += [oracle_tiles_record(samples[i], views, i, budget, plan.grid) for i in need]
                continue
            ks = oracle_budgets(plan, built, [questions[i] for i in need], budget, True)
            out += [oracle_tokens_record(samples[i], views, i, budget, ks[j] // plan.s2, plan.s2, plan.grid, label)
                    for j, i in enumerate(need)]
    return out


def oracle_budgets(plan: Plan, built, questions: list[str], budget, tokens: bool) -> list[int]:
    """The oracle's k in patches per question: `budget` patches, or `budget` x s^2 for a token budget; None:
    f_comp(q)'s budget (the default QGSA module's, counted in patches or in visual tokens x s^2)."""
    if budget is not None:
        return [budget * plan.s2 if tokens else budget] * len(questions)
    run = built.run("random")  # reads the module's f_comp only (no scorer, so no insertion point to check)
    n = run.adapter.n_patches(plan.resolution) // (plan.s2 if tokens else 1)
    ks = run.default_budget(run.question(questions), n).tolist()
    return [int(k) * (plan.s2 if tokens else 1) for k in ks]


def _oracle(grid: int, width: float, height: float, box, k: int) -> list[int]:
    # its selection holds at most 4 patches (a rectangle's corners), so every k >= 4 gives the same one
    return list(_oracle_cached(grid, float(width), float(height), tuple(box), min(int(k), 4)))


@lru_cache(maxsize=4096)
def _oracle_cached(grid: int, width: float, height: float, box: tuple, k: int) -> tuple[int, ...]:
    return tuple(oracle_patches(grid, width, height, list(box), k))


def record(sample, size, label: str, budget, unit: str, kept, patches: list[int], grid: int,
           extra: dict | None = None) -> dict:
    """One (sample, pipeline, budget) record: the sample's question and box (original pixels [x, y, w, h]),
    `k` (units kept: patches or visual tokens), the kept `patches` (indices in [0, grid^2)), and the
    three metrics on them: `iou` (0..1), `pointing` (0 or 1), `share_in_box` (0..1)."""
    w, h = size
    return {"id": sample.id, "pipeline": label, "budget": budget, "unit": unit, "question": sample.question,
            "question_type": sample.question_type, "box": list(sample.box), "width": w, "height": h,
            "image_index": sample.extra.get("image_index"), "referent": sample.extra.get("referent"),
            "k": None if kept is None else int(kept), "n_patches": len(patches), "patches": patches,
            "iou": round(hull_iou(patches, grid, w, h, sample.box), 6),
            "pointing": int(pointing_hit(patches, grid, w, h, sample.box)),
            "share_in_box": round(share_in_box(patches, grid, w, h, sample.box), 6), **(extra or {})}


def ground(built, data, samples, plan: Plan, batch: int, progress=None, done=None, save=None):
    """(every record of the readable samples, those samples), in the samples' order. `done` ((id, pipeline,
    budget) -> record): finished by an interrupted run, kept; `save`: receives each batch's new records when
    the batch finishes (under a launch of several processes: every round's records, on every process; each
    process selects its share of the batches, `parallel.in_rounds`). Raises QGSAError when no image could be
    read; parallel.WorldLost when another process stopped."""
    from qgsa_bench.experiments.parallel import in_rounds, joined

    done = done or {}
    labels = [*plan.runs, *plan.oracles]
    keys = [(label, b) for label in labels for b in plan.budgets_for(label)]
    new: dict[tuple, dict] = {}
    complete = lambda sid: all((sid, label, b) in done for label, b in keys)  # noqa: E731
    todo = [s for s in samples if not complete(s.id)]
    work = lambda chunk, images: select_batch(plan, built, images, chunk,  # noqa: E731
                                              lambda sid, label, b: (sid, label, b) not in done)
    for records, part in in_rounds(joined(), list(batches(todo, batch)), work, data):
        new.update((_key(r), r) for r in records)
        if save and records:
            save(records)
        if progress:
            progress(f"grounding {len(samples) - len(todo) + len({r['id'] for r in new.values()})}/{len(samples)}",
                     sum(map(len, part)))
    everything = {**done, **new}
    kept = [s for s in samples if all((s.id, label, b) in everything for label, b in keys)]
    if not kept:
        raise QGSAError(f"{data.name} split '{data.split}': no image could be read ({data.skipped} skipped)")
    return [everything[(s.id, label, b)] for s in kept for label, b in keys], kept


def summary_rows(records: list[dict], base: dict, info: dict, order: list[tuple], units: dict) -> list[dict]:
    """One row per (pipeline, budget) of `order` and question type ('all' first): n, IoU (mean, median, share
    >= 0.5), pointing hit rate and share of kept patches in the box, all in percent; the mean kept patches and
    the mean budget in the pipeline's units (`k_mean`). `info`: label -> point, question_guided (and its own
    qgsa_weights); `units`: label -> 'patches' or 'visual tokens'."""
    rows = []
    types = ["all", *sorted({r["question_type"] for r in records} - {"", None})]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["pipeline"], r.get("budget")), []).append(r)
    for label, budget in order:
        for qtype in types:
            part = [r for r in groups.get((label, budget), []) if qtype == "all" or r["question_type"] == qtype]
            if not part:
                continue
            ious = [r["iou"] for r in part]
            rows.append({**base, **info[label], "selector": label, "budget": budget, "budget_unit": units[label],
                         "question_type": qtype, "n": len(part), "mean_iou": 100 * float(np.mean(ious)),
                         "median_iou": 100 * float(np.median(ious)),
                         "acc_iou_0_5": 100 * float(np.mean([iou >= 0.5 for iou in ious])),
                         "pointing": 100 * float(np.mean([r["pointing"] for r in part])),
                         "share_in_box": 100 * float(np.mean([r["share_in_box"] for r in part])),
                         "kept_patches_mean": float(np.mean([r["n_patches"] for r in part])),
                         "k_mean": float(np.mean([r["k"] for r in part if r["k"] is not None] or [np.nan])),
                         **tile_columns(part)})
    return rows


def tile_columns(part: list[dict]) -> dict:
    """The tile-level columns of records on split images (grounding_views.py): tile_hit, tile_iou, tile_jaccard,
    referent_tile_share in percent, the mean tiles touched and the mean kept patches of the global view; {} for
    one-view records (and an unsplit image: no tile)."""
    tiled = [r for r in part if r.get("tile_hit") is not None]
    if not tiled:
        return {}
    keys = ("tile_hit", "tile_iou", "tile_jaccard", "referent_tile_share")
    out = {key: 100 * float(np.mean([r[key] for r in tiled])) for key in keys}
    out["kept_tiles_mean"] = float(np.mean([len(r["tiles"]) for r in tiled]))
    out["global_patches_mean"] = float(np.mean([r["global_patches"] for r in tiled]))
    return out


def pair_indices(records: list[dict]) -> list[tuple[int, int]]:
    """Index pairs into `records` (of one selection each sample): the first two questions of an image that
    ask about different objects (image_index, referent)."""
    by_image: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        if r.get("image_index") is not None and r.get("referent") is not None:
            by_image.setdefault(r["image_index"], []).append(i)
    return [(idx[0], idx[1]) for idx in by_image.values()
            if len(idx) >= 2 and records[idx[0]]["referent"] != records[idx[1]]["referent"]]


def question_pairs(records: list[dict], grid: int) -> list[dict]:
    """Question dependence, per (pipeline, budget): for two questions on one image about different objects, the
    Jaccard overlap of their kept patches and the share (0..1) of each set inside its own object's box (vs the
    other's). For random selectors the two sets are two independent draws: the chance level. The oracle reads
    the box, not the question: left out."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r["pipeline"] not in (ORACLE, ORACLE_TOKENS, TILE_ORACLE):
            groups.setdefault((r["pipeline"], r.get("budget")), []).append(r)
    rows = []
    for (label, budget), part in groups.items():
        pairs = pair_indices(part)
        if not pairs:
            continue
        jac, own, other = [], [], []
        for a, b in pairs:
            ra, rb = part[a], part[b]
            if "view_boxes" in ra:  # split images: the joint frame; shares on each kept patch's rectangle
                sa, sb = set(kept_patches(ra)), set(kept_patches(rb))
                jac.append(len(sa & sb) / max(len(sa | sb), 1))
                for r, r_other in ((ra, rb), (rb, ra)):
                    centres = box_centres(kept_rects(r))
                    own.append(centres_share_in_box(centres, r["box"]))
                    other.append(centres_share_in_box(centres, r_other["box"]))
                continue
            sa, sb = set(ra["patches"]), set(rb["patches"])
            jac.append(len(sa & sb) / max(len(sa | sb), 1))
            for r, s_own, r_other in ((ra, sa, rb), (rb, sb, ra)):
                own.append(share_in_box(sorted(s_own), grid, r["width"], r["height"], r["box"]))
                other.append(share_in_box(sorted(s_own), grid, r["width"], r["height"], r_other["box"]))
        rows.append({"selector": label, "budget": budget, "budget_unit": part[0]["unit"], "n_pairs": len(pairs),
                     "mean_jaccard": float(np.mean(jac)), "share_in_own_box": float(np.mean(own)),
                     "share_in_other_box": float(np.mean(other))})
    return rows
