"""`qgsa sweep-resolution`: every pipeline at every resolution, by stage, into one results folder.

Writes sweep.csv (one row per resolution x pipeline, appended as each resolution finishes),
meta.json (command, commit, versions, device, weights, settings) and table4.md. A rerun with the
same settings skips the rows already written.

With --longest-edge (the tiled analogue, issue 19) each size is the longest edge the model's own processor
resizes the image to before splitting it into tiles + a global view (models/views.py; a square image at 512,
1024, 1536, 2048 px: 1, 5, 10, 17 views of SmolVLM's 512-px tiles); the rows' `resolution` is that longest
edge, `views` the views encoded by dense and `n_patches` the patches of all views. A selector choosing T tiles
has no row where the image is one view (nothing to choose there); a T above the tiles at an edge is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.config import SweepConfig
from qgsa_bench.efficiency.compiled import compiled_engine
from qgsa_bench.experiments.parallel import per_process_folder, timing_alone
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.experiments.measure import Case
from qgsa_bench.experiments.runner import (COMPARISONS_TABLE, PEER_COLUMNS, STAT_COLUMNS, THROUGHPUT_COLUMNS, Progress,
                                           case_labels, measure_cases, measure_meta, steps_per_resolution,
                                           paper_metrics, timing_clock, timing_deadline, warn_unstable)
from qgsa_bench.models.images import command_image
from qgsa_bench.models.views import Splitting
from qgsa_bench.results import run_meta
from qgsa_bench.run.inputs import choose_input, describe_input
from qgsa_bench.run.tiles import check_views
from qgsa_bench.runtime import device_name, dtype_name, resolve_device

PAPER_K = 17  # the seed paper's mean k for SmolVLM-256M (Table 1), the default fixed budget
PAPER_SIZES = (224, 336, 384, 448, 576)  # the seed paper's Table 4 resolutions (one square view each)
SWEEP_CSV = "sweep.csv"
SWEEP_COLUMNS = [
    "model", "weights", "qgsa_weights", "device", "dtype", "batch", "resolution", "effective_resolution",
    "longest_edge", "views", "image_input",
    "pipeline", "n_patches", "n_visual_tokens", "k", "prompt_tokens", "decode_tokens",
    "flops_total", "flops_vision", "flops_select", "flops_connector", "flops_prefill",
    "flops_decode_per_token", "flops_lm_head", "flops_prefill_attention", "attn_visual_flops",
    "paper_flops_reduction", "paper_theoretical_speedup",
    "latency_ms_median", "latency_ms_p10", "latency_ms_p90", "n",
    "vision_ms", "select_ms", "connector_ms", "prefill_ms", "decode_ms_per_token", "peak_mem_mb",
    "unsupported_ops", "case", *STAT_COLUMNS, *PEER_COLUMNS, *THROUGHPUT_COLUMNS,
]
SWEEP_TABLE = Table(SWEEP_CSV, tuple(SWEEP_COLUMNS), ("batch", "resolution", "case"))


def resolve_k(k: int | None, checkpoint: str | None) -> tuple[int | None, str]:
    """The budget of every selector (each spec that does not keep all): fixed k if given; with a checkpoint
    and no k, the trained f_comp decides per question; else the paper's 17. The same rule for every selector,
    patch-level or whole-token, so the table's budget line holds for each of its rows."""
    if k is not None:
        return k, f"fixed k={k}"
    if checkpoint:
        return None, "k from the checkpoint's f_comp"
    return PAPER_K, f"fixed k={PAPER_K} (the paper's mean k; random-init f_comp is meaningless)"


def default_sizes(cfg: SweepConfig, built, warn=None) -> SweepConfig:
    """`cfg` with its sizes decided where neither --sizes nor --longest-edge was given (run/inputs.choose_input):
    the model's own views at every multiple of its tile size up to its own longest edge where it splits and every
    pipeline takes split images (SmolVLM: 512, 1024, 1536, 2048 px), else the paper's PAPER_SIZES (one square
    view each)."""
    if cfg.sizes or cfg.longest_edges:
        return cfg
    splitting = choose_input(built.adapter, specs=cfg.specs, warn=warn,
                             one_view=f"one square view per size, the paper's sweep ({' '.join(map(str, PAPER_SIZES))} px)")
    if splitting is None:
        return replace(cfg, sizes=PAPER_SIZES)
    edges = tuple(range(splitting.tile, splitting.longest_edge + 1, splitting.tile))
    return replace(cfg, longest_edges=edges)


def run_sweep(cfg: SweepConfig, progress: Progress | None = None, warn=None) -> Path:
    m = cfg.measure
    rank = timing_alone("sweep-resolution", m.per_process)  # never timed by processes that share a host
    image = command_image(m.image)  # before the model loads
    built = build(m.model, m.weights, m.device, m.dtype, m.checkpoint, m.seed,
                  attn_implementation=m.attn_implementation, warn=warn)
    cfg = default_sizes(cfg, built, warn)
    # the run's identity: a later run may add sizes and batch sizes to the folder, nothing else
    settings = {**m.settings(), "device": device_name(resolve_device(m.device)), "pipelines": list(cfg.pipelines),
                "compile": m.compile,
                **({"longest_edges": list(cfg.longest_edges), "tiles": cfg.tiles} if cfg.longest_edges else {})}
    settings.pop("batch")  # rows carry their batch size: a later run may add sizes to the folder
    out = cfg.out if rank is None else per_process_folder(cfg.out, rank)
    with Results(out, "sweep-resolution", settings, cfg.overwrite, rank=rank) as res:
        k, k_note = resolve_k(m.k, m.checkpoint)
        variants, engines = _variants(cfg, built)
        points = _points(cfg, built, image)
        for size, point in points.items():  # every budget at every size, before any work
            for spec, mode in variants.values():
                if point is None:
                    check_k_fits(engines[mode].run(spec), size, budget_of(spec, k))
                else:
                    point.check(engines[mode].run(spec), budget_of(spec, k, cfg.tiles))
        sizes = list(points)
        batches = cfg.batches or (m.batch,)
        done = {(int(b), int(r), c) for b, r, c in res.done(SWEEP_TABLE)}
        meta = res.write_meta(run_meta(built, sizes=sizes, batches=list(batches),
                                       pipelines=list(cfg.pipelines), compile=m.compile, k_rule=k_note,
                                       image_input={s: describe_input(None, s) if p is None else p.describe()
                                                    for s, p in points.items()},
                                       **measure_meta(built, m)))
        todo = [(b, s, [c for c in variants if (b, s, c) not in done and applies(points[s], variants[c][0])])
                for b in batches for s in sizes]
        skipped = [f"{c} at edge {s}px" for s in sizes for c in variants if not applies(points[s], variants[c][0])]
        if skipped:  # said once, and kept in meta.json
            meta = res.write_meta({**meta, "not_measured": {"cases": skipped, "why": "the image is one view there: "
                                                            "no tile to choose"}})
            if warn:
                warn(f"no row for {', '.join(skipped)}: the image is one view there (no tile to choose; the row would "
                     f"repeat dense's)")
        todo = [(b, s, cs) for b, s, cs in todo if cs]
        if not todo:
            res.finished(f"every (batch, size, pipeline) asked for ({len(batches)} x {len(sizes)} x {len(variants)})")
        if progress:
            total = sum(steps_per_resolution(len(cs), m.reps, m.warmup, m.count_flops) for _, _, cs in todo)
            progress(f"{len(todo)} (batch, resolution) pair(s) to measure", -total)  # negative: announce the total
        started, unstable, stopping, flop_memo = timing_clock(), [], {}, {}
        for index, (batch, size, todo_cases) in enumerate(todo):
            point = points[size]
            cases = [Case(c, engines[variants[c][1]].run(variants[c][0]),
                          budget_of(variants[c][0], k, cfg.tiles), variants[c][1]) for c in todo_cases]
            rows, pairs = measure_cases(cases, [image] * batch, [m.question] * batch,
                                        size if point is None else point.splitting.tile, m.reps, m.warmup,
                                        m.decode_tokens, m.count_flops, progress,
                                        timing_deadline(m, len(todo), index, started),
                                        flop_memo.setdefault(size, {}),  # a view's size repeats across edges
                                        splitting=None if point is None else point.splitting,
                                        where=None if point is None else f"edge {size}px, {point.views} views")
            if point is not None:
                point.describe_rows(built.adapter, cases, rows, pairs)
            else:
                for row in rows:
                    row["image_input"] = describe_input(None, size)
            base = {"model": m.model, "weights": built.loaded.weights, "qgsa_weights": built.qgsa_weights,
                    "device": meta["device"], "dtype": dtype_name(built.dtype), "batch": batch,
                    "decode_tokens": m.decode_tokens}
            res.append(SWEEP_TABLE, [{**base, **row} for row in rows])
            res.append(COMPARISONS_TABLE, [{"batch": batch, **p} for p in pairs])
            unstable += [f"{size}px batch {batch} {r['case']}" for r in rows if r["unstable"]]
            stopping[f"{size}px batch {batch}"] = rows[0]["reps_stopped"]
        if todo:
            res.write_meta({**meta, "unstable_cases": unstable, "reps_stopped": stopping})
        warn_unstable(warn, unstable)
    return res.out


def _variants(cfg: SweepConfig, built) -> tuple[dict, dict]:
    """(case label -> (spec, compile mode), compile mode -> engine): dense,dense -> dense#1, dense#2; with
    --compile every case also compiled."""
    m = cfg.measure
    labels = dict(zip(case_labels(list(cfg.pipelines)), cfg.specs))
    variants = {label: (spec, "none") for label, spec in labels.items()}
    engines = {"none": built.engine}
    if m.compile != "none":
        variants.update({f"{label}+{m.compile}": (spec, m.compile) for label, spec in labels.items()})
        engines[m.compile] = compiled_engine(built.engine, m.compile)
    return variants, engines


def budget_of(spec, k: int | None, tiles: int | None = None) -> int | None:
    """The sweep's budget for one spec: k for every selector, `tiles` (T) for a tile selector, None for the
    paths that keep every token and for global-only."""
    if spec.selector.keeps_all or spec.selector.keeps_no_tiles:
        return None
    return tiles if spec.at_tiles else k


@dataclass
class EdgePoint:
    """One size of a --longest-edge sweep: the model's processor settings at that longest edge and the views
    it makes of the sweep's image (`views`: tiles + the global view)."""

    splitting: Splitting
    views: int

    def describe(self) -> str:
        if self.views == 1:
            return (f"one {self.splitting.tile}-px view (at longest edge {self.splitting.longest_edge} px the image "
                    f"fits one tile: no tiles)")
        return f"{self.splitting.describe()}: {self.views} views"

    def check(self, run, budget: int | None) -> None:
        """Raises QGSAError for a selector that cannot take split images, a tile budget above the image's tiles
        at this edge (or an image not split there), or an in-LM budget above its visual tokens."""
        check_views(run.spec)
        tiles, edge = self.views - 1, self.splitting.longest_edge
        if run.spec.at_tiles and budget is not None and tiles:  # no tiles at all: not measured there (applies)
            if budget > tiles:
                raise QGSAError(f"--tiles {budget} is above the {tiles} tiles of the image at --longest-edge {edge} "
                                f"({run.label}): use --tiles 1 .. {tiles}, or drop {edge}")
        elif budget is not None:
            n = self.views * run.adapter.n_dense_tokens(self.splitting.tile)
            if budget > n:
                raise QGSAError(f"k={budget} is above the {n} visual tokens at --longest-edge {edge} for {run.label}:"
                                f" use a smaller --k or larger edges")

    def describe_rows(self, adapter, cases, rows: list[dict], pairs: list[dict]) -> None:
        """Rows (and comparison pairs) keyed by the longest edge; patches and the seed's 1 - k/N over all views
        (none for tile selectors, whose budget is in tiles)."""
        edge = self.splitting.longest_edge
        n_patches = self.views * adapter.n_patches(self.splitting.tile)
        for case, row in zip(cases, rows):
            row.update(resolution=edge, longest_edge=edge, views=self.views, image_input=self.describe(),
                       n_patches=n_patches)
            row.update(paper_metrics(case.run.spec, n_patches, None if case.run.spec.at_tiles else row["k"]))
        for pair in pairs:
            pair["resolution"] = edge


def applies(point: EdgePoint | None, spec) -> bool:
    """Whether a case is measured at a size: a selector choosing T tiles is not where the image is one view (no
    tile to choose; its row would repeat dense's), every other case everywhere."""
    return point is None or point.views > 1 or not spec.at_tiles or spec.selector.keeps_no_tiles


def _points(cfg: SweepConfig, built, image) -> dict:
    """size -> None (one square view of that many px) or, with --longest-edge, its EdgePoint. Raises
    QGSAError for a model without tiles or an edge the processor cannot use."""
    if not cfg.longest_edges:
        return {size: None for size in cfg.sizes}
    points = {}
    for edge in cfg.longest_edges:
        splitting = built.adapter.splitting(True, edge)
        points[edge] = EdgePoint(splitting, built.adapter.views([image], splitting).counts[0])
    return points


def check_k_fits(run, resolution: int, k: int | None) -> None:
    """k within the units `run`'s selector picks from at `resolution` (Run.units): raises QGSAError."""
    if k is None or run.spec.selector.keeps_all:
        return
    if run.spec.point.kind == "input":  # downsampling: k within the dense tokens at the size (its own check)
        run.resolution(resolution, k)
        return
    res = run.resolution(resolution, k)
    n, unit = run.units(res)
    if k > n:
        raise QGSAError(f"k={k} is impossible at {resolution}px for {run.label}, which has only {n} {unit} "
                        f"there: use a larger size or a smaller --k")
    run.check(resolution, k)
