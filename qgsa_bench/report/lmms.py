"""The table of an lmms-eval results folder (lmms.csv, written by `qgsa lmms-eval`): each task's score by lmms-eval's
own metric against the counted FLOPs per sample, per pipeline and budget."""

from __future__ import annotations

from qgsa_bench.report.cells import Notes, dense_first, flag_untrained, fmt, header, markdown_rows


def lmms_markdown(frame, meta: dict | None) -> str:
    """lmms.csv as Markdown: one line per (task, metric, filter, pipeline), dense first within a task; a pipeline
    reading an untrained QGSA module is marked † (cells.untrained) with its footnote."""
    meta, notes = meta or {}, Notes()
    lines = header(meta, f"lmms-eval {meta.get('lmms_eval', '?')} tasks: score against counted FLOPs")
    rows = dense_first(frame).sort_values(["task", "metric", "filter"], kind="stable")
    lines += markdown_rows(
        ["Task (version)", "Metric (filter)", "Pipeline", "k", "n", "Score [± stderr]", "visual tokens kept",
         "GFLOPs / sample", "FLOPs vs dense"],
        ([f"{r['task']} ({fmt(r['task_version'], '')})", f"{r['metric']} ({r['filter']})",
          flag_untrained(r["pipeline"], r, meta, notes),
          fmt(r["k"], ".0f"), fmt(r["n"], ".0f"), f"{fmt(r['value'], '.4f')} [± {fmt(r['stderr'], '.4f')}]",
          fmt(r["visual_tokens_kept_mean"], ".1f"), fmt(r["flops_total"] / 1e9 if r["flops_total"] == r["flops_total"]
                                                        else None, ".3f"),
          fmt(r["flops_share_of_dense"], ".1%")] for _, r in rows.iterrows()))
    lines += notes.lines()
    lines += ["", "Scores: lmms-eval's own metric and aggregation for each task. FLOPs: fvcore, one multiply-add = one "
              "FLOP, each sample counted as it ran (its own prompt length, visual tokens at each stage, generated "
              "tokens or option lengths), the mean over the task's samples; per stage in lmms.csv and per sample in "
              f"samples_*.jsonl. Decoding: {meta.get('decoding', 'greedy')}."
              + (f" Image input: {meta['image_input']}." if meta.get("image_input") else "")]
    return "\n".join(lines) + "\n"
