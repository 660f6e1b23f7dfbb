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
from qgsa_bench.efficiency.compiled import compiled_pipeline
from qgsa_bench.efficiency.measure import Case
from qgsa_bench.efficiency.runner import (COMPARISON_COLUMNS, PEER_COLUMNS, STAT_COLUMNS, THROUGHPUT_COLUMNS,
                                          Progress, case_labels, measure_cases, steps_per_resolution, timing_clock,
                                          timing_deadline)
from qgsa_bench.models.images import demo_image, load_image
from qgsa_bench.pipeline import SPARSE_PIPELINES, check_pipeline
from qgsa_bench.results import (append_rows, check_same_settings, holds_out_folder, read_meta, read_rows, run_meta,
                                write_meta)
from qgsa_bench.runtime import device_name, dtype_name

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
COMPARISONS_CSV = "comparisons.csv"


def resolve_k(k: int | None, checkpoint: str | None) -> tuple[int | None, str]:
    """Fixed k if given; with a checkpoint and no k, the trained f_comp decides; else the paper's 17."""
    if k is not None:
        return k, f"fixed k={k}"
    if checkpoint:
        return None, "k from the checkpoint's f_comp"
    return PAPER_K, f"fixed k={PAPER_K} (the paper's mean k; random-init f_comp is meaningless)"


@holds_out_folder
def run_sweep(cfg: SweepConfig, progress: Progress | None = None, warn=None) -> Path:
    m = cfg.measure
    for name in cfg.pipelines:
        check_pipeline(name)
    out = Path(cfg.out)
    built = build(m.model, m.weights, m.device, m.dtype, m.checkpoint, m.seed,
                  attn_implementation=m.attn_implementation, warn=warn)
    settings = {**m.settings(), "device": device_name(built.device)}
    settings.pop("batch")  # rows carry their batch size: a later run may add sizes to the folder
    check_same_settings(out, settings)
    k, k_note = resolve_k(m.k, m.checkpoint)
    sparse = any(p in SPARSE_PIPELINES for p in cfg.pipelines)
    for size in cfg.sizes:
        check_k_fits(built.adapter.n_patches(size), size, k if sparse else None)
    csv_path = out / SWEEP_CSV
    labels = dict(zip(case_labels(list(cfg.pipelines)), cfg.pipelines))  # dense,dense -> dense#1, dense#2
    variants = {label: (p, "none") for label, p in labels.items()}  # label -> (pipeline, compile mode)
    pipes = {"none": built.pipeline}
    if m.compile != "none":
        variants.update({f"{label}+{m.compile}": (p, m.compile) for label, p in labels.items()})
        pipes[m.compile] = compiled_pipeline(built.pipeline, m.compile)
    batches = cfg.batches or (m.batch,)
    done = set()
    if csv_path.exists():
        previous = read_rows(csv_path, ["resolution", "pipeline", "batch"])
        cases_done = previous["case"].fillna(previous["pipeline"]) if "case" in previous else previous["pipeline"]
        done = set(zip(previous["batch"].astype(int), previous["resolution"].astype(int), cases_done))
    meta = run_meta(
        built, "sweep-resolution", settings,
        sizes=list(cfg.sizes), batches=list(batches), pipelines=list(cfg.pipelines), compile=m.compile,
        reps=m.reps, warmup=m.warmup,
        k_rule=k_note, max_time_s=m.max_time, statistics=STATISTICS_NOTE,
        flop_convention="fvcore: one multiply-add = one FLOP; attention counted over the full Lq x Lk",
        timing=("CUDA events at the stage boundaries, one synchronize per run; end to end also timed as one "
                "region (latency_ms); peak memory max_memory_allocated" if built.device.type == "cuda"
                else "time.perf_counter at the stage boundaries; peak memory not measured on CPU"),
        note=("RANDOM weights: FLOPs and latency are those of the architecture; no accuracy here"
              if built.loaded.weights == "random" else "pretrained weights"),
    )
    write_meta(out, meta)
    image = load_image(m.image) if m.image else demo_image()
    todo = [(b, s, [c for c in variants if (b, s, c) not in done]) for b in batches for s in cfg.sizes]
    todo = [(b, s, cs) for b, s, cs in todo if cs]
    if progress:
        total = sum(steps_per_resolution(len(cs), m.reps, m.warmup, m.count_flops) for _, _, cs in todo)
        progress(f"{len(todo)} (batch, resolution) pair(s) to measure", -total)  # negative: announce the total
    started, unstable, stopping, flop_memo = timing_clock(), [], {}, {}
    for index, (batch, size, todo_cases) in enumerate(todo):
        cases = [Case(c, variants[c][0], pipes[variants[c][1]], k if variants[c][0] in SPARSE_PIPELINES else None,
                      variants[c][1]) for c in todo_cases]
        rows, pairs = measure_cases(cases, [image] * batch, [m.question] * batch, size, m.reps, m.warmup,
                                    m.decode_tokens, m.count_flops, progress,
                                    timing_deadline(m, len(todo), index, started), flop_memo)
        base = {"model": m.model, "weights": built.loaded.weights, "qgsa_weights": built.qgsa_weights,
                "device": meta["device"], "dtype": dtype_name(built.dtype), "batch": batch,
                "decode_tokens": m.decode_tokens}
        append_rows(csv_path, [{**base, **row} for row in rows], SWEEP_COLUMNS)
        append_rows(out / COMPARISONS_CSV, [{"batch": batch, **p} for p in pairs], COMPARISON_COLUMNS)
        unstable += [f"{size}px batch {batch} {r['case']}" for r in rows if r["unstable"]]
        stopping[f"{size}px batch {batch}"] = rows[0]["reps_stopped"]
    if todo:
        write_meta(out, {**meta, "unstable_cases": unstable, "reps_stopped": stopping})
    if unstable and warn:
        warn(f"{len(unstable)} case(s) timed unstably ({', '.join(unstable[:4])}{', ...' if len(unstable) > 4 else ''}: "
             f"dispersion above 10 % or over 10 % outliers; flagged in the table): rerun with more --reps or "
             f"--reps auto, on a quieter machine")
    from qgsa_bench.report import write_table4

    write_table4(read_rows(csv_path), out / "table4.md", read_meta(out))
    return out


STATISTICS_NOTE = ("latency: median, p10, p90 over the timed rounds; dispersion = 1.4826 MAD / median; unstable = "
                   "dispersion > 10 % or > 10 % outliers (modified z > 3.5); speedup vs dense = ratio of medians "
                   "with a 95 % percentile-bootstrap interval over paired rounds (2,000 resamples); comparisons.csv: "
                   "every pair of cases")


def check_k_fits(n_patches: int, resolution: int, k: int | None) -> None:
    if k is not None and k > n_patches:
        raise QGSAError(f"k={k} is impossible at {resolution}px, which has only N={n_patches} patches: "
                        f"use a larger size or a smaller --k")
