"""`qgsa sweep-budget`: every selector at several budgets, at one resolution, into one results folder.

A budget is a number of visual tokens reaching the LM (for in-LM selectors: kept after the last cut; the
layer-averaged count the papers report is a column too); `--shares` gives it as fractions of the dense
visual tokens. Every (selector, budget) is one case of the same alternating timing rounds (runner.py), so
FLOPs by stage, latency with intervals and speedup against dense come from one measurement; with a data
set, every case is also evaluated (accuracy overall and per question type, the data set's own scoring).

Writes budget.csv (one row per case), accuracy.csv (one row per case x scope), comparisons.csv,
meta.json and table.md. `qgsa report` draws the accuracy-FLOPs Pareto figure from these files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.config import EvalConfig, MeasureConfig
from qgsa_bench.efficiency.measure import Case
from qgsa_bench.efficiency.runner import COMPARISON_COLUMNS, Progress, measure_cases, steps_per_resolution
from qgsa_bench.efficiency.sweep import STATISTICS_NOTE, SWEEP_COLUMNS
from qgsa_bench.models.images import demo_image, load_image
from qgsa_bench.pipeline import PIPELINES, check_pipeline, selector_spec
from qgsa_bench.results import holds_out_folder, read_meta, read_rows, replace_rows, run_meta, write_meta
from qgsa_bench.runtime import dtype_name

BUDGET_CSV = "budget.csv"
ACCURACY_CSV = "accuracy.csv"
DEFAULT_SHARES = (0.04, 0.1, 0.25, 0.5)
BUDGET_UNITS = ("tokens", "layer-avg")
DEFAULT_SELECTORS = ("dense", "qgsa", "random", "norm", "fastv", "pdrop", "sparsevlm", "visionzip", "divprune",
                     "downsample", "qgsa-vision")
BUDGET_COLUMNS = ["budget", "budget_unit", "budget_share", "selector", "point", "question_guided", "training",
                  "flops_share_of_dense", *SWEEP_COLUMNS, "accuracy",
                  "delta_vs_dense_points", "n_eval"]
ACCURACY_COLUMNS = ["budget", "budget_share", "case", "pipeline", "selector", "point", "scope", "question_type",
                    "n", "n_scored", "accuracy", "delta_vs_dense_points", "k_mean", "n_visual_tokens_mean",
                    "flops_total", "flops_share_of_dense"]


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
    # QGSA checkpoints by selector name ("qgsa", "qgsa-vision"), for the pipelines whose selector uses the
    # QGSA module; measure.checkpoint, if given, serves the others.
    checkpoints: dict = field(default_factory=dict)
    # "tokens": visual tokens after the last cut; "layer-avg": for in-LM selectors, averaged over the LM's
    # layers (as FastV, SparseVLM and PyramidDrop are quoted); the same thing for every other selector
    budget_unit: str = "tokens"

    def __post_init__(self):
        if not self.pipelines:
            raise QGSAError("--pipelines needs at least one selector")
        if any(b < 1 for b in self.budgets):
            raise QGSAError(f"--budgets are visual tokens, at least 1 each, got {list(self.budgets)}")
        if self.budget_unit not in BUDGET_UNITS:
            raise QGSAError(f"--budget-unit must be one of {', '.join(BUDGET_UNITS)}, got '{self.budget_unit}'")
        if not self.budgets and (not self.shares or any(not 0 < s <= 1 for s in self.shares)):
            raise QGSAError(f"--shares are fractions of the dense visual tokens in (0, 1], got {list(self.shares)}")


def describe(pipe, name: str) -> dict:
    """Where a pipeline's selection sits, whether it reads the question, whether it is trained."""
    spec = selector_spec(name)
    if spec is None:
        where = {"dense": "none", "dense-bypass": "none"}.get(name, "post-vision (patches, QGSA module projection)")
        return {"selector": name, "point": where, "question_guided": name == "qgsa",
                "training": "trained scorer" if name == "qgsa" else "none"}
    sel = spec.selector
    return {"selector": sel.name, "point": str(pipe.run.point(spec)), "question_guided": sel.question_guided,
            "training": "trained scorer" if sel.trainable else "training-free"}


def resolve_budgets(cfg: BudgetConfig, n_dense: int) -> list[int]:
    budgets = list(cfg.budgets) or [max(1, round(s * n_dense)) for s in cfg.shares]
    too_big = [b for b in budgets if b > n_dense]
    if too_big:
        raise QGSAError(f"budget {too_big[0]} visual tokens is above the {n_dense} dense visual tokens at this "
                        f"resolution: pick budgets in 1..{n_dense}")
    return sorted(set(budgets))


def _pipes(cfg: BudgetConfig, built) -> dict:
    """A pipeline per selector that has its own QGSA checkpoint (sharing the base model), else the default."""
    from qgsa_bench.pipeline import Pipeline
    from qgsa_bench.qgsa.checkpoint import load_checkpoint

    pipes = {}
    for name, path in cfg.checkpoints.items():
        module, _ = load_checkpoint(path, built.loaded.provenance())
        module.to(built.device, built.dtype).eval()
        pipes[name] = Pipeline(built.adapter, module, cfg.measure.seed)
    return pipes


def _selector_name(pipeline: str) -> str:
    return pipeline.split("@")[0]


def kept_tokens(pipe, name: str, budget: int, n_dense: int, unit: str) -> int:
    """A budget in visual tokens after the last cut (what the run takes), from one in `unit`."""
    from qgsa_bench.run import tokens_for_layer_average

    spec = selector_spec(name)
    if unit == "tokens" or spec is None:
        return budget
    point = pipe.run.point(spec)
    if point.kind != "lm":
        return budget
    return tokens_for_layer_average(budget, n_dense, point.layers, pipe.adapter.lm_depth)


def _cases(cfg: BudgetConfig, pipe, budgets: list[int], n_dense: int, resolution: int, pipes=None) -> list[Case]:
    cases = []
    for name in cfg.pipelines:
        if name in ("dense", "dense-bypass"):
            cases.append(Case(name, name, pipe))
            continue
        own = (pipes or {}).get(_selector_name(name), pipe)
        for b in budgets:
            if name == "downsample" and pipe.adapter.resolution_for_tokens(b) > pipe.adapter.dense_resolution(resolution):
                continue
            cases.append(Case(f"{name} k={b}", name, own, kept_tokens(own, name, b, n_dense, cfg.budget_unit)))
    if not any(c.pipeline == "dense" for c in cases):
        cases.insert(0, Case("dense", "dense", pipe))  # the reference of every share and speedup
    return cases


@holds_out_folder
def run_budget(cfg: BudgetConfig, progress: Progress | None = None, warn=None) -> Path:
    m = cfg.measure
    for name in cfg.pipelines:
        check_pipeline(name)
    built = build(m.model, m.weights, m.device, m.dtype, m.checkpoint, m.seed,
                  attn_implementation=m.attn_implementation, warn=warn)
    pipe, a = built.pipeline, built.adapter
    resolution = cfg.resolution or a.image_size
    n_dense = a.n_dense_tokens(resolution)
    budgets = resolve_budgets(cfg, n_dense)
    unknown = [n for n in cfg.checkpoints if n not in {_selector_name(p) for p in cfg.pipelines}]
    if unknown:
        raise QGSAError(f"--checkpoint {unknown[0]}=...: no pipeline '{unknown[0]}' in --pipelines")
    pipes = _pipes(cfg, built)
    cases = _cases(cfg, pipe, budgets, n_dense, resolution, pipes)
    for case in cases:  # every bad point or budget is found before any work starts
        case.pipe.resolution_for(case.pipeline, resolution, case.k)
        if case.k is not None and case.pipeline in PIPELINES and case.k > a.n_patches(resolution):
            raise QGSAError(f"budget {case.k} is above N = {a.n_patches(resolution)} patches for {case.pipeline}")
    data = None
    if cfg.dataset:
        from qgsa_bench.data import load_dataset

        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.split, cfg.limit, False, m.seed)
    out = Path(cfg.out)
    meta = run_meta(built, "sweep-budget", {**m.settings(), "resolution": resolution}, budgets=budgets,
                    budget_unit=cfg.budget_unit,
                    qgsa_checkpoints=dict(cfg.checkpoints),
                    dense_visual_tokens=n_dense, pipelines=list(cfg.pipelines), reps=m.reps, warmup=m.warmup,
                    statistics=STATISTICS_NOTE,
                    budget_rule=("visual tokens reaching the LM (in-LM selectors: kept after the last cut; "
                                 "visual_tokens_layer_avg beside)" if cfg.budget_unit == "tokens" else
                                 "visual tokens reaching the LM; for in-LM selectors averaged over the LM's layers "
                                 "(k: kept after the last cut)")
                                + "; qgsa/random/norm without @: k patches through the QGSA module's projection",
                    flop_convention="fvcore: one multiply-add = one FLOP; attention counted over the full Lq x Lk",
                    **(data.meta() if data else {}),
                    note=("RANDOM weights: FLOPs and latency only, no accuracy" if built.loaded.weights == "random"
                          else "pretrained weights"))
    write_meta(out, meta)
    if progress:
        steps = steps_per_resolution(len(cases), m.reps, m.warmup, m.count_flops)
        progress(f"{len(cases)} cases at {resolution}px", -(steps + (len(cases) * len(data.samples) if data else 0)))
    image = load_image(m.image) if m.image else demo_image()
    rows, pairs = measure_cases(cases, [image] * m.batch, [m.question] * m.batch, resolution, m.reps, m.warmup,
                                m.decode_tokens, m.count_flops, progress)
    dense_flops = next((r.get("flops_total") for r in rows if r["pipeline"] == "dense"), None)
    for case, row in zip(cases, rows):
        own = cfg.checkpoints.get(_selector_name(case.pipeline))
        budget = n_dense if case.k is None else int(case.label.rpartition("k=")[2])
        row.update({"budget": budget, "budget_share": budget / n_dense, "budget_unit": cfg.budget_unit,
                    **describe(pipe, case.pipeline), "model": m.model, "weights": built.loaded.weights,
                    "qgsa_weights": f"checkpoint:{own}" if own else built.qgsa_weights, "device": meta["device"],
                    "dtype": dtype_name(built.dtype), "batch": m.batch, "decode_tokens": m.decode_tokens})
        if dense_flops and row.get("flops_total") is not None:
            row["flops_share_of_dense"] = row["flops_total"] / dense_flops
    accuracy_rows = _accuracy(built, cases, rows, data, resolution, cfg, progress) if data else []
    replace_rows(out / BUDGET_CSV, rows, BUDGET_COLUMNS)
    replace_rows(out / "comparisons.csv", pairs, COMPARISON_COLUMNS)
    if accuracy_rows:
        replace_rows(out / ACCURACY_CSV, accuracy_rows, ACCURACY_COLUMNS)
    unstable = [r["case"] for r in rows if r.get("unstable")]
    write_meta(out, {**meta, "unstable_cases": unstable, "reps_stopped": rows[0].get("reps_stopped")})
    if unstable and warn:
        warn(f"{len(unstable)} case(s) timed unstably ({', '.join(unstable[:4])}{', ...' if len(unstable) > 4 else ''}"
             "): rerun with more --reps or --reps auto, on a quieter machine")
    from qgsa_bench.report import budget_markdown

    (out / "table.md").write_text(budget_markdown(read_rows(out / BUDGET_CSV), read_meta(out),
                                                  read_rows(out / ACCURACY_CSV) if accuracy_rows else None))
    return out


def _with_pipe(built, pipe):
    """`built` evaluating through `pipe` (a selector's own QGSA checkpoint on the same base)."""
    from dataclasses import replace

    return built if pipe is built.pipeline else replace(built, pipeline=pipe, module=pipe.module)


def _accuracy(built, cases, rows, data, resolution, cfg: BudgetConfig, progress) -> list[dict]:
    """Every case evaluated on the data set (per-sample scoring of evaluate.py), summarised per scope."""
    from qgsa_bench.evaluate import evaluate_pipeline, summary_rows, warm_up

    m = cfg.measure
    ecfg = EvalConfig(model=m.model, dataset=data.name, batch=cfg.eval_batch, max_new_tokens=cfg.max_new_tokens,
                      seed=m.seed)
    warm_up(built, ["dense"], data, resolution, ecfg)
    out, dense = [], {}
    for case, row in zip(cases, rows):
        ecfg.k = case.k
        with case.pipe.same_draws():
            records = evaluate_pipeline(_with_pipe(built, case.pipe), case.pipeline, data, resolution, ecfg, progress)
        for summary in summary_rows(records, case.pipeline):
            key = (summary["scope"], summary["question_type"])
            if case.pipeline == "dense":
                dense[key] = summary["accuracy"]
            out.append({"budget": row["budget"], "budget_share": row["budget_share"], "case": case.label,
                        "selector": row["selector"], "point": row["point"], "flops_total": row.get("flops_total"),
                        "flops_share_of_dense": row.get("flops_share_of_dense"), **summary})
        overall = next(s for s in summary_rows(records, case.pipeline) if s["scope"] == "all")
        row.update({"accuracy": overall["accuracy"], "n_eval": overall["n"]})
    for r in out:
        ref = dense.get((r["scope"], r["question_type"]))
        r["delta_vs_dense_points"] = None if ref is None or r["accuracy"] is None else r["accuracy"] - ref
    ref_all = dense.get(("all", "all"))
    for row in rows:
        if row.get("accuracy") is not None and ref_all is not None:
            row["delta_vs_dense_points"] = row["accuracy"] - ref_all
    return out
