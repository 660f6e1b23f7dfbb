"""Measure several cases at one resolution in one process: FLOPs once, then alternating timed runs.

Alternating (case A, B, C, then B, C, A, ...) makes drift (thermal, other load) hit every case.
Latency statistics are the median, p10 and p90 over `reps` runs after `warmup` runs per case.
Peak memory is CUDA's max_memory_allocated per case; on CPU it is not measured (left empty).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from qgsa_bench.efficiency.measure import Case, count_stage_flops, time_once

TIMED = ("latency_ms", "vision_ms", "select_ms", "connector_ms", "prefill_ms", "decode_ms_per_token")
Progress = Callable[[str, int], None]  # (description, steps just finished)


def paper_metrics(pipeline: str, n_patches: int, k: float | None) -> dict:
    """The seed's own efficiency metrics over the N vision patches: 1 - k/N and N/k."""
    if pipeline == "dense-bypass":
        return {"paper_flops_reduction": 0.0, "paper_theoretical_speedup": 1.0}
    if pipeline == "dense" or not k:
        return {"paper_flops_reduction": None, "paper_theoretical_speedup": None}
    return {"paper_flops_reduction": 1.0 - k / n_patches, "paper_theoretical_speedup": n_patches / k}


def measure_cases(cases: list[Case], images: list, questions: list[str], resolution: int, reps: int,
                  warmup: int, decode_tokens: int, flops: bool = True,
                  progress: Progress | None = None) -> list[dict]:
    """One row per case: FLOPs by stage, latency statistics by stage, tokens, k, peak memory."""
    adapter = cases[0].pipe.adapter
    cuda = adapter.device.type == "cuda"
    pixels = {}
    rows = []
    for case in cases:
        res = case.pipe.resolution_for(case.pipeline, resolution)
        if res not in pixels:
            pixels[res] = adapter.pixel_values(images, res)
        row = {"label": case.label, "pipeline": case.pipeline, "resolution": resolution,
               "effective_resolution": res, "n_patches": adapter.n_patches(res)}
        if flops:
            row.update(count_stage_flops(case, pixels[res], questions, decode_tokens))
        rows.append(row)
        if progress:
            progress(f"{resolution}px: FLOPs {case.label}", 1)

    samples: list[list[dict]] = [[] for _ in cases]
    peaks = [0.0 for _ in cases]
    for rep in range(warmup + reps):
        order = list(range(len(cases)))
        order = order[rep % len(order):] + order[: rep % len(order)]
        for i in order:
            case = cases[i]
            res = rows[i]["effective_resolution"]
            if cuda:
                torch.cuda.reset_peak_memory_stats(adapter.device)
            timing = time_once(case, pixels[res], questions, decode_tokens)
            if cuda:
                peaks[i] = max(peaks[i], torch.cuda.max_memory_allocated(adapter.device) / 2**20)
            if rep >= warmup:
                samples[i].append(timing)
            if progress:
                progress(f"{resolution}px: {'warm-up' if rep < warmup else 'timing'} {case.label}", 1)

    for row, runs, peak in zip(rows, samples, peaks):
        lat = np.array([r["latency_ms"] for r in runs])
        row.update({
            "n": len(runs),
            "n_visual_tokens": runs[0]["n_visual_tokens"],
            "k": runs[0]["k"],
            "prompt_tokens": runs[0]["prompt_tokens"],
            "latency_ms_median": float(np.median(lat)),
            "latency_ms_p10": float(np.percentile(lat, 10)),
            "latency_ms_p90": float(np.percentile(lat, 90)),
            "peak_mem_mb": peak if cuda else None,
        })
        for key in TIMED[1:]:
            row[key] = float(np.median([r[key] for r in runs]))
        row.update(paper_metrics(row["pipeline"], row["n_patches"], row["k"]))
    return rows


def steps_per_resolution(n_cases: int, reps: int, warmup: int, flops: bool) -> int:
    return n_cases * (reps + warmup) + (n_cases if flops else 0)
