"""Measure several cases at one resolution in one process: FLOPs once, then alternating timed runs.

Alternating (case A, B, C, then B, C, A, ...) makes drift (thermal, other load) hit every case, and
pairs the cases by round: comparisons are ratios of medians with paired-bootstrap intervals
(`stats`). Latency statistics per case: n, median, p10, p90, robust dispersion, outliers and an
unstable flag, after `warmup` untimed rounds. Peak memory is CUDA's max_memory_allocated per case; on
CPU it is not measured (left empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from qgsa_bench.efficiency import stats
from qgsa_bench.efficiency.compiled import compilations
from qgsa_bench.efficiency.timing import now as timing_clock
from qgsa_bench.experiments.driver import Table
from qgsa_bench.experiments.measure import Case, count_stage_flops, peer_formulas, time_once

# the timing statistics every results CSV carries beside its own columns (see stats and measure_cases)
PEER_COLUMNS = ["formula_fastv_prefill", "formula_ffn3_prefill", "visual_tokens_layer_avg"]
STAT_COLUMNS = ["latency_dispersion", "latency_outliers", "unstable", "speedup_vs_dense", "speedup_ci_low",
                "speedup_ci_high", "speedup_verdict", "speedup_reference", "reps_stopped",
                "staged_latency_ms_median", "observation_cost_ms", "compile", "recompilations_timed",
                "speedup_equal_inputs"]
THROUGHPUT_COLUMNS = ["throughput_images_per_s", "throughput_tokens_per_s"]
COMPARISON_COLUMNS = ["batch", "resolution", "case_a", "case_b", "ratio", "ci_low", "ci_high", "verdict",
                      "equal_inputs"]
COMPARISONS_TABLE = Table("comparisons.csv", tuple(COMPARISON_COLUMNS), ("batch", "resolution", "case_a", "case_b"))
STATISTICS_NOTE = ("latency: median, p10, p90 over the timed rounds; dispersion = 1.4826 MAD / median; outliers = "
                   "rounds further from the median than 10 x 1.4826 MAD (hyperfine's threshold) and than 50 % "
                   "of it (pyperf's); unstable = dispersion > 10 % (pyperf's limit) or > 10 % outliers; speedup vs "
                   "dense = ratio of medians with a 95 % percentile-bootstrap interval over paired rounds (2,000 "
                   "resamples), claimed where that interval excludes 1, neither case is unstable and n >= 10, else "
                   "only where a distribution-free interval (order statistics, Bonferroni) excludes 1 too (the "
                   "verdict names the caveat), else 'not enough evidence'; comparisons.csv: every pair of cases")
FLOP_CONVENTION = "fvcore: one multiply-add = one FLOP; attention counted over the full Lq x Lk"
TIMED = ("latency_ms", "vision_ms", "select_ms", "connector_ms", "prefill_ms", "decode_ms_per_token")
Progress = Callable[[str, int], None]  # (description, steps just finished)


def measure_meta(built, m) -> dict:
    """What every timing command's meta.json says about how it measured (`m`: its MeasureConfig)."""
    return {
        "reps": m.reps, "warmup": m.warmup, "max_time_s": m.max_time, "statistics": STATISTICS_NOTE,
        "flop_convention": FLOP_CONVENTION,
        "timing": ("CUDA events at the stage boundaries, one synchronize per run; end to end also timed as one "
                   "region (latency_ms); peak memory max_memory_allocated" if built.device.type == "cuda"
                   else "time.perf_counter at the stage boundaries; peak memory not measured on CPU"),
        "note": ("RANDOM weights: FLOPs and latency are those of the architecture; no accuracy here"
                 if built.loaded.weights == "random" else "pretrained weights"),
        **per_process_meta(m),
    }


def per_process_meta(m) -> dict:
    """meta.json's `world` for a timing run under --per-process: this process timed its own device alone, the
    launch's other processes into the sibling folders rank-R; {} for a run of one process."""
    from qgsa_bench.experiments.parallel import launched_rank, launched_size

    if not m.per_process or launched_size() == 1:
        return {}
    return {"world": {"processes": launched_size(), "rank": launched_rank(),
                      "mode": "per-process: each process timed its own device into OUT/rank-R"}}


def warn_unstable(warn, unstable: list[str]) -> None:
    """One warning naming the cases timed unstably (flagged in the tables too)."""
    if unstable and warn:
        warn(f"{len(unstable)} case(s) timed unstably ({', '.join(unstable[:4])}{', ...' if len(unstable) > 4 else ''}"
             f": dispersion above 10 % or over 10 % of the rounds far off the median (10 robust standard "
             f"deviations and 50 %); flagged in the table, their speedups claimed only where a distribution-free "
             f"interval agrees): rerun with more --reps or --reps auto, on a quieter machine")


def paper_metrics(spec, n_patches: int, k: float | None) -> dict:
    """The seed's own efficiency metrics over the N vision patches: 1 - k/N and N/k (a bound run.spec.Spec)."""
    if spec.selector.keeps_all and spec.patches:  # dense-bypass: all N patches
        return {"paper_flops_reduction": 0.0, "paper_theoretical_speedup": 1.0}
    if spec.is_dense or not k:
        return {"paper_flops_reduction": None, "paper_theoretical_speedup": None}
    return {"paper_flops_reduction": 1.0 - k / n_patches, "paper_theoretical_speedup": n_patches / k}


MIN_AUTO_ROUNDS = stats.FEW_ROUNDS  # --reps auto: at least this many timed rounds before judging intervals
MAX_AUTO_ROUNDS = 500
AUTO_PRECISION = 0.05  # --reps auto stops when every interval's half-width is within 5 % of its ratio (and no
# verdict is "not enough evidence")


def timing_deadline(measure, parts: int, index: int, started: float | None = None) -> float | None:
    """With --reps auto: the clock time by which part `index` of `parts` (resolutions) must stop timing,
    sharing --max-time (default DEFAULT_MAX_TIME) equally. None with a fixed --reps."""
    from qgsa_bench.config import DEFAULT_MAX_TIME

    if measure.reps != "auto":
        return None
    budget = measure.max_time or DEFAULT_MAX_TIME
    return (timing_clock() if started is None else started) + budget * (index + 1) / parts


def case_labels(names: list[str]) -> list[str]:
    """Names as given, numbered where one repeats (dense,dense -> dense#1, dense#2: an A/A check)."""
    counts = {n: names.count(n) for n in names}
    seen: dict[str, int] = {}
    labels = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        labels.append(f"{n}#{seen[n]}" if counts[n] > 1 else n)
    return labels


def measure_cases(cases: list[Case], images: list, questions: list[str], resolution: int, reps: int | str,
                  warmup: int, decode_tokens: int, flops: bool = True, progress: Progress | None = None,
                  deadline: float | None = None, flop_memo: dict | None = None,
                  splitting=None, where: str | None = None) -> tuple[list[dict], list[dict]]:
    """(one row per case: FLOPs by stage, latency statistics by stage, tokens, k, peak memory, speedup vs
    the first dense case with its interval; one row per pair of cases: their latency ratio and interval).

    `reps`: timed rounds, or "auto": rounds until every pairwise interval is within 5 % and no pair's
    verdict lacks evidence (`stats.compare`: an unstable pair needs its distribution-free interval to
    settle), at least MIN_AUTO_ROUNDS, at most MAX_AUTO_ROUNDS, or until the clock (`timing.now`) passes
    `deadline`.
    `flop_memo`: FLOPs already counted (see `stage_flops`), shared across calls by the caller. `splitting`
    (models.views.Splitting): every case runs on the images as the model's processor splits them (the same
    views for all), not on one square view of `resolution` px. `where`: how progress names the size (default
    "{resolution}px")."""
    adapter = cases[0].run.adapter
    where = where or f"{resolution}px"
    pixels, rows = {}, []
    for case in cases:
        if case.k is None and case.run.spec.point.kind == "input":  # downsampling at f_comp's budget
            case.k = case.run.input_budget(questions, resolution)
        res = case.run.resolution(resolution, case.k)
        if res not in pixels:
            pixels[res] = adapter.views(images, splitting) if splitting else adapter.pixel_values(images, res)
        row = {"case": case.label, "pipeline": case.pipeline, "resolution": resolution,
               "effective_resolution": res, "n_patches": adapter.n_patches(res)}
        if flops:
            row.update(stage_flops(case, pixels[res], questions, decode_tokens, res,
                                   {} if flop_memo is None else flop_memo))
        rows.append(row)
        if progress:
            progress(f"{where}: FLOPs {case.label}", 1)
    case_pixels = [pixels[row["effective_resolution"]] for row in rows]
    rounds = _timing_rounds(cases, case_pixels, questions, reps, warmup, decode_tokens, deadline,
                            lambda text, steps: progress(f"{where}: {text}", steps) if progress else None)
    reference = next((i for i, c in enumerate(cases) if c.run.spec.is_dense), None)
    for i, row in enumerate(rows):
        row.update(_case_statistics(cases[i], rounds, i, len(questions), decode_tokens))
        row["reps_stopped"] = rounds.stopped
        row.update(paper_metrics(cases[i].run.spec, row["n_patches"], row["k"]))
        row.update(peer_formulas(adapter, row["prompt_tokens"], row["n_visual_tokens"], len(questions),
                                 row.pop("layer_tokens"), row["visual_tokens_layer_avg"]))
        if reference is not None and i != reference and row["n"] >= 2:
            c = stats.compare(rounds.latencies(reference), rounds.latencies(i))
            row.update({"speedup_vs_dense": c["ratio"], "speedup_ci_low": c["ci_low"], "speedup_ci_high": c["ci_high"],
                        "speedup_verdict": c["verdict"], "speedup_reference": cases[reference].label,
                        # the same pixels as the reference (only downsampling, whose method is a smaller image, not)
                        "speedup_equal_inputs": row["effective_resolution"] == rows[reference]["effective_resolution"]})
    size = {case.label: row["effective_resolution"] for case, row in zip(cases, rows)}
    pairs = [{"resolution": resolution, **c, "equal_inputs": size[c["case_a"]] == size[c["case_b"]]}
             for c in compare(cases, rounds.samples)]
    return rows, pairs


@dataclass
class Rounds:
    """What the timed rounds gave, per case: the runs, peak memory, compilations while timed."""

    samples: list[list[dict]]
    peaks: list[float]
    recompiled: list[int]
    stopped: str = "fixed --reps"
    cuda: bool = False

    def latencies(self, i: int) -> list[float]:
        return [r["latency_ms"] for r in self.samples[i]]


def _timing_rounds(cases: list[Case], pixels: list, questions: list[str], reps: int | str, warmup: int,
                   decode_tokens: int, deadline: float | None, progress) -> Rounds:
    """Warm-up, then rounds in which every case runs once (order rotating), until `reps` rounds or, with
    "auto", until the intervals are precise enough and every verdict settled, the deadline passes or
    MAX_AUTO_ROUNDS, judged only after whole rotations (a multiple of the number of cases), so that no case
    ran first more often."""
    device = cases[0].run.adapter.device
    cuda = device.type == "cuda"
    out = Rounds([[] for _ in cases], [0.0] * len(cases), [0] * len(cases), cuda=cuda)
    watch, auto, done = any(c.compile != "none" for c in cases), reps == "auto", 0
    while True:
        shift = done % len(cases)
        for i in [*range(shift, len(cases)), *range(shift)]:  # alternate: every case runs once per round
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            before = compilations() if watch else 0
            timing = time_run(cases[i], pixels[i], questions, decode_tokens, cuda)
            if done >= warmup:
                out.samples[i].append(timing)
                out.recompiled[i] += compilations() - before if watch else 0
            if cuda:
                out.peaks[i] = max(out.peaks[i], torch.cuda.max_memory_allocated(device) / 2**20)
            beyond = auto and done >= warmup + MIN_AUTO_ROUNDS  # not in the announced total
            progress(f"{'warm-up' if done < warmup else f'timing round {done - warmup + 1}'} {cases[i].label}",
                     0 if beyond else 1)
        done += 1
        timed = done - warmup
        if not auto:
            if timed >= reps:
                return out
            continue
        if timed < MIN_AUTO_ROUNDS or timed % len(cases):
            continue  # judge only after whole rotations: every case has held every position equally often
        pairs = compare(cases, out.samples)
        wide = any(stats.half_width(c["ratio"], c["ci_low"], c["ci_high"]) > AUTO_PRECISION for c in pairs)
        short = any(c["verdict"].startswith(stats.NOT_ENOUGH) for c in pairs)  # unstable, and not yet settled
        if not (wide or short):
            out.stopped = f"precision: every interval within {AUTO_PRECISION:.0%} after {timed} rounds"
        elif deadline is not None and timing_clock() >= deadline:
            out.stopped = f"--max-time spent after {timed} rounds ({_unsettled(wide, short)})"
        elif timed >= MAX_AUTO_ROUNDS:
            out.stopped = f"{MAX_AUTO_ROUNDS} rounds ({_unsettled(wide, short)})"
        else:
            continue
        return out


def _unsettled(wide: bool, short: bool) -> str:
    """Why --reps auto would have gone on: intervals still wide, verdicts still without enough evidence."""
    reasons = ([f"intervals wider than {AUTO_PRECISION:.0%}"] if wide else []) + \
        (["verdicts without enough evidence"] if short else [])
    return " and ".join(reasons) + " remain"


def _case_statistics(case: Case, rounds: Rounds, i: int, batch: int, decode_tokens: int) -> dict:
    """One case's row fields from its timed runs: latency statistics, stage medians, throughput."""
    runs = rounds.samples[i]
    lat = stats.summary(rounds.latencies(i))
    staged = float(np.median([r["staged_latency_ms"] for r in runs]))
    seconds = lat["median"] / 1000.0  # one end-to-end run of the whole batch
    row = {
        "n": lat["n"], "n_visual_tokens": runs[0]["n_visual_tokens"], "k": runs[0]["k"],
        "prompt_tokens": runs[0]["prompt_tokens"], "layer_tokens": runs[0]["layer_tokens"],
        "visual_tokens_layer_avg": runs[0]["visual_tokens_layer_avg"],
        "latency_ms_median": lat["median"], "latency_ms_p10": lat["p10"], "latency_ms_p90": lat["p90"],
        "latency_dispersion": lat["dispersion"], "latency_outliers": lat["outliers"], "unstable": lat["unstable"],
        "peak_mem_mb": rounds.peaks[i] if rounds.cuda else None,
        "staged_latency_ms_median": staged, "observation_cost_ms": staged - lat["median"],
        "compile": case.compile, "recompilations_timed": rounds.recompiled[i] if case.compile != "none" else None,
        "throughput_images_per_s": batch / seconds, "throughput_tokens_per_s": batch * decode_tokens / seconds,
    }
    row.update({key: float(np.median([r[key] for r in runs])) for key in TIMED[1:]})
    return row


FLOP_KEYS = ("flops_total", "flops_vision", "flops_select", "flops_connector", "flops_prefill",
             "flops_decode_per_token", "flops_lm_head", "flops_prefill_attention", "attn_visual_flops")


def stage_flops(case: Case, pixel_values, questions: list[str], decode_tokens: int, resolution: int,
                memo: dict) -> dict:
    """count_stage_flops, counted once per (pipeline, k, resolution, module): an A/A pair counts once, and a
    larger batch of the same image and question is the counted batch scaled exactly (every count is
    linear in the batch when the samples are identical: no padding differs)."""
    engine = case.run.engine
    eager = getattr(engine, "eager", engine)  # a compiled case does the eager case's arithmetic
    key = (case.pipeline, case.k, resolution, id(eager))
    batch = len(questions)
    if key not in memo:
        eager_case = Case(case.label, eager.run(case.run.spec), case.k)
        counted = count_stage_flops(eager_case, pixel_values, questions, decode_tokens)
        counted.pop("trace")
        memo[key] = (batch, counted)
    counted_batch, counted = memo[key]
    if counted_batch == batch:
        return dict(counted)
    return {k: (v // counted_batch * batch if k in FLOP_KEYS else v) for k, v in counted.items()}


def time_run(case: Case, pixel_values, questions: list[str], decode_tokens: int, cuda: bool) -> dict:
    """One round's measurement of a case. On GPU two runs: with CUDA events at the stage boundaries (the
    stages) and as one region with no boundary (`latency_ms`, the end-to-end time every statistic
    uses); `staged_latency_ms` is the first run's total, so their difference is the cost of observing
    stages. On CPU one run: perf_counter reads at the boundaries cost nothing measurable (the two are
    the same number)."""
    staged = time_once(case, pixel_values, questions, decode_tokens)
    if not cuda:
        return {**staged, "staged_latency_ms": staged["latency_ms"]}
    whole = time_once(case, pixel_values, questions, decode_tokens, stages=False)
    return {**staged, "staged_latency_ms": staged["latency_ms"], "latency_ms": whole["latency_ms"]}


def compare(cases: list[Case], samples: list[list[dict]]) -> list[dict]:
    """Every pair (a, b), a before b: median latency of a / of b (b's speedup over a) with its interval and
    verdict (`stats.compare`)."""
    out = []
    for i in range(len(cases)):
        for j in range(i + 1, len(cases)):
            a = [r["latency_ms"] for r in samples[i]]
            b = [r["latency_ms"] for r in samples[j]]
            if len(a) < 2:
                continue
            out.append({"case_a": cases[i].label, "case_b": cases[j].label, **stats.compare(a, b)})
    return out


def steps_per_resolution(n_cases: int, reps: int | str, warmup: int, flops: bool) -> int:
    """Progress steps of one resolution (with --reps auto: up to the first judgement of the intervals)."""
    rounds = MIN_AUTO_ROUNDS if reps == "auto" else reps
    return n_cases * (rounds + warmup) + (n_cases if flops else 0)
