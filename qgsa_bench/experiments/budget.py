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
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.experiments.measure import Case
from qgsa_bench.experiments.runner import (COMPARISONS_TABLE, Progress, measure_cases, measure_meta,
                                           steps_per_resolution, warn_unstable)
from qgsa_bench.experiments.sweep import SWEEP_COLUMNS
from qgsa_bench.models.images import demo_image, load_image
from qgsa_bench.results import run_meta
from qgsa_bench.run.spec import check_options, parse_specs
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

    def __post_init__(self):
        if not self.pipelines:
            raise QGSAError("--pipelines needs at least one selector")
        self.specs = parse_specs(self.pipelines)  # each spec parsed once, here (not a field)
        check_options(self.specs, 1, self.measure.checkpoint, "--budgets/--shares")  # every budget is fixed
        if any(b < 1 for b in self.budgets):
            raise QGSAError(f"--budgets are visual tokens, at least 1 each, got {list(self.budgets)}")
        if self.budget_unit not in BUDGET_UNITS:
            raise QGSAError(f"--budget-unit must be one of {', '.join(BUDGET_UNITS)}, got '{self.budget_unit}'")
        if not self.budgets and (not self.shares or any(not 0 < s <= 1 for s in self.shares)):
            raise QGSAError(f"--shares are fractions of the dense visual tokens in (0, 1], got {list(self.shares)}")


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


def _cases(cfg: BudgetConfig, built, budgets: list[int], n_dense: int, resolution: int, engines) -> list[Case]:
    cases, a = [], built.adapter
    for spec in cfg.specs:
        if spec.selector.keeps_all:  # dense, dense-bypass: one case, no budget
            cases.append(Case(spec.text, built.run(spec)))
            continue
        run = engines.get(spec.selector.name, built.engine).run(spec)
        for b in budgets:
            if run.spec.point.kind == "input" and a.resolution_for_tokens(b) > a.dense_resolution(resolution):
                continue
            cases.append(Case(f"{spec.text} k={b}", run, kept_tokens(run, b, n_dense, cfg.budget_unit)))
    if not any(c.run.spec.is_dense for c in cases):
        cases.insert(0, Case("dense", built.run("dense")))  # the reference of every share and speedup
    return cases


def run_budget(cfg: BudgetConfig, progress: Progress | None = None, warn=None) -> Path:
    m = cfg.measure
    built = build(m.model, m.weights, m.device, m.dtype, m.checkpoint, m.seed,
                  attn_implementation=m.attn_implementation, warn=warn)
    a = built.adapter
    resolution = cfg.resolution or a.image_size
    n_dense = a.n_dense_tokens(resolution)
    budgets = resolve_budgets(cfg, n_dense)
    unknown = [n for n in cfg.checkpoints if n not in {s.selector.name for s in cfg.specs}]
    if unknown:
        raise QGSAError(f"--checkpoint {unknown[0]}=...: no pipeline '{unknown[0]}' in --pipelines")
    cases = _cases(cfg, built, budgets, n_dense, resolution, _engines(cfg, built))
    for case in cases:  # every bad point or budget is found before any work starts
        res = case.run.resolution(resolution, case.k)
        if case.k is not None and case.run.spec.patches and case.k > a.n_patches(res):
            raise QGSAError(f"budget {case.k} is above N = {a.n_patches(res)} patches for {case.pipeline}")
    data = None
    if cfg.dataset:
        from qgsa_bench.data import load_dataset

        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.split, cfg.limit, False, m.seed)
    settings = {**m.settings(), "resolution": resolution, "pipelines": list(cfg.pipelines), "budgets": budgets,
                "budget_unit": cfg.budget_unit, "checkpoints": dict(cfg.checkpoints), "dataset": cfg.dataset,
                "data_dir": cfg.data_dir, "split": cfg.split, "limit": cfg.limit, "eval_batch": cfg.eval_batch,
                "max_new_tokens": cfg.max_new_tokens, "compile": m.compile}
    with Results(cfg.out, "sweep-budget", settings, cfg.overwrite) as res:
        # resuming: the timing is one measurement of every case (alternating rounds), kept once written; the
        # accuracy runs keep every finished batch (predictions.jsonl)
        timed = {row["case"]: row for row in res.rows(BUDGET_TABLE)}
        timed = timed if all(c.label in timed for c in cases) else {}
        done = res.records_by(PREDICTIONS, "case") if data else {}
        left = sum(1 for c in cases for s in data.samples if s.id not in done.get(c.label, {})) if data else 0
        if timed and not left and (not data or res.path(ACCURACY_CSV).exists()):
            res.finished(f"this sweep ({len(cases)} cases{f' on {len(data.samples)} samples' if data else ''})")
        meta = res.write_meta(run_meta(built, budgets=budgets, budget_unit=cfg.budget_unit,
                                       qgsa_checkpoints=dict(cfg.checkpoints), dense_visual_tokens=n_dense,
                                       pipelines=list(cfg.pipelines), budget_rule=budget_rule(cfg.budget_unit),
                                       **(data.meta() if data else {}), **measure_meta(built, m)))
        if progress and not timed:  # one phase each: a timed step takes far longer than a scored sample
            progress(f"timing {len(cases)} cases at {resolution}px",
                     -steps_per_resolution(len(cases), m.reps, m.warmup, m.count_flops))
        if timed:
            rows = [timed[c.label] for c in cases]
        else:
            image = load_image(m.image) if m.image else demo_image()
            rows, pairs = measure_cases(cases, [image] * m.batch, [m.question] * m.batch, resolution, m.reps,
                                        m.warmup, m.decode_tokens, m.count_flops, progress)
            base = {"model": m.model, "weights": built.loaded.weights, "device": meta["device"],
                    "dtype": dtype_name(built.dtype), "batch": m.batch, "decode_tokens": m.decode_tokens}
            _describe_rows(cfg, built, cases, rows, n_dense, base)
            res.replace(BUDGET_TABLE, rows)  # at once: an interrupted accuracy run does not time again
            res.replace(COMPARISONS_TABLE, pairs)
            unstable = [r["case"] for r in rows if r.get("unstable")]
            meta = res.write_meta({**meta, "unstable_cases": unstable, "reps_stopped": rows[0].get("reps_stopped")})
            warn_unstable(warn, unstable)
        if data:
            if progress:
                progress(f"scoring {len(cases)} cases on {len(data.samples)} samples", -max(left, 1))
            accuracy_rows = _accuracy(built, cases, rows, data, resolution, cfg, progress, done,
                                      lambda new: res.append_records(PREDICTIONS, new))
            res.replace(ACCURACY_TABLE, accuracy_rows)
            res.replace(BUDGET_TABLE, rows)  # with each case's accuracy
    return res.out


PREDICTIONS = "predictions.jsonl"  # the accuracy runs' per-sample records, with their case


def budget_rule(unit: str) -> str:
    """How budgets are counted, as meta.json says it."""
    return (("visual tokens reaching the LM (in-LM selectors: kept after the last cut; visual_tokens_layer_avg "
             "beside)" if unit == "tokens" else
             "visual tokens reaching the LM; for in-LM selectors averaged over the LM's layers (k: kept after the "
             "last cut)") + "; qgsa/random/norm without @: k patches through the QGSA module's projection")


def _describe_rows(cfg: BudgetConfig, built, cases, rows, n_dense: int, base: dict) -> None:
    """Each case's row gains its budget, share, selector description, weights and FLOPs share of dense."""
    dense_flops = next((r.get("flops_total") for c, r in zip(cases, rows) if c.run.spec.is_dense), None)
    for case, row in zip(cases, rows):
        own = cfg.checkpoints.get(case.run.spec.selector.name)
        budget = n_dense if case.k is None else int(case.label.rpartition("k=")[2])
        row.update({"budget": budget, "budget_share": budget / n_dense, "budget_unit": cfg.budget_unit,
                    **describe(case.run), **base,
                    "qgsa_weights": f"checkpoint:{own}" if own else built.qgsa_weights})
        if dense_flops and row.get("flops_total") is not None:
            row["flops_share_of_dense"] = row["flops_total"] / dense_flops


def _accuracy(built, cases, rows, data, resolution, cfg: BudgetConfig, progress, done=None, save=None) -> list[dict]:
    """Every case evaluated on the data set (per-sample scoring of evaluate.py), summarised per scope. `done`
    (case -> id -> record): finished by an interrupted run; `save`: each batch's new records, with their case."""
    from qgsa_bench.experiments.evaluate import evaluate_run, summary_rows, warm_up

    m = cfg.measure
    ecfg = EvalConfig(model=m.model, dataset=data.name, batch=cfg.eval_batch, max_new_tokens=cfg.max_new_tokens,
                      seed=m.seed)
    done = done or {}
    if any(s.id not in done.get(c.label, {}) for c in cases for s in data.samples):
        warm_up([built.run("dense")], data, resolution, ecfg)
    out, dense = [], {}
    for case, row in zip(cases, rows):
        ecfg.k = case.k
        keep = (lambda new, label=case.label: save([{**r, "case": label} for r in new])) if save else None
        with case.run.engine.same_draws():
            records = evaluate_run(case.run, data, resolution, ecfg, progress, done.get(case.label, {}), keep)
        for summary in summary_rows(records, case.pipeline):
            key = (summary["scope"], summary["question_type"])
            if case.run.spec.is_dense:
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
