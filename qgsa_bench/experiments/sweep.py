"""`qgsa sweep-resolution`: every pipeline at every resolution, by stage, into one results folder.

Writes sweep.csv (one row per resolution x pipeline, appended as each resolution finishes),
meta.json (command, commit, versions, device, weights, settings) and table4.md. A rerun with the
same settings skips the rows already written.
"""

from __future__ import annotations

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
                                           timing_clock, timing_deadline, warn_unstable)
from qgsa_bench.models.images import demo_image, load_image
from qgsa_bench.results import run_meta
from qgsa_bench.runtime import device_name, dtype_name, resolve_device

PAPER_K = 17  # the seed paper's mean k for SmolVLM-256M (Table 1), the default fixed budget
SWEEP_CSV = "sweep.csv"
SWEEP_COLUMNS = [
    "model", "weights", "qgsa_weights", "device", "dtype", "batch", "resolution", "effective_resolution",
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


def run_sweep(cfg: SweepConfig, progress: Progress | None = None, warn=None) -> Path:
    m = cfg.measure
    # the run's identity: a later run may add sizes and batch sizes to the folder, nothing else
    settings = {**m.settings(), "device": device_name(resolve_device(m.device)), "pipelines": list(cfg.pipelines),
                "compile": m.compile}
    settings.pop("batch")  # rows carry their batch size: a later run may add sizes to the folder
    rank = timing_alone("sweep-resolution", m.per_process)  # never timed by processes that share a host
    out = cfg.out if rank is None else per_process_folder(cfg.out, rank)
    with Results(out, "sweep-resolution", settings, cfg.overwrite, rank=rank) as res:
        built = build(m.model, m.weights, m.device, m.dtype, m.checkpoint, m.seed,
                      attn_implementation=m.attn_implementation, warn=warn)
        k, k_note = resolve_k(m.k, m.checkpoint)
        variants, engines = _variants(cfg, built)
        for size in cfg.sizes:  # every budget at every size, before any work
            for spec, mode in variants.values():
                check_k_fits(engines[mode].run(spec), size, budget_of(spec, k))
        batches = cfg.batches or (m.batch,)
        done = {(int(b), int(r), c) for b, r, c in res.done(SWEEP_TABLE)}
        meta = res.write_meta(run_meta(built, sizes=list(cfg.sizes), batches=list(batches),
                                       pipelines=list(cfg.pipelines), compile=m.compile, k_rule=k_note,
                                       **measure_meta(built, m)))
        todo = [(b, s, [c for c in variants if (b, s, c) not in done]) for b in batches for s in cfg.sizes]
        todo = [(b, s, cs) for b, s, cs in todo if cs]
        if not todo:
            res.finished(f"every (batch, size, pipeline) asked for ({len(batches)} x {len(cfg.sizes)} x {len(variants)})")
        if progress:
            total = sum(steps_per_resolution(len(cs), m.reps, m.warmup, m.count_flops) for _, _, cs in todo)
            progress(f"{len(todo)} (batch, resolution) pair(s) to measure", -total)  # negative: announce the total
        image = load_image(m.image) if m.image else demo_image()
        started, unstable, stopping, flop_memo = timing_clock(), [], {}, {}
        for index, (batch, size, todo_cases) in enumerate(todo):
            cases = [Case(c, engines[variants[c][1]].run(variants[c][0]), budget_of(variants[c][0], k),
                          variants[c][1]) for c in todo_cases]
            rows, pairs = measure_cases(cases, [image] * batch, [m.question] * batch, size, m.reps, m.warmup,
                                        m.decode_tokens, m.count_flops, progress,
                                        timing_deadline(m, len(todo), index, started), flop_memo)
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


def budget_of(spec, k: int | None) -> int | None:
    """The sweep's budget for one spec: k for every selector, None for the paths that keep every token."""
    return None if spec.selector.keeps_all else k


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
