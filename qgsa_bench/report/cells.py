"""What every results table shares: number cells, the speedup cell, case labels, the folder header,
Markdown table rows, and the comparison of each sweep row with its dense reference."""

from __future__ import annotations


def short_commit(commit) -> str:
    """First 10 hex digits, keeping the "-dirty" mark of a run from uncommitted code."""
    commit = str(commit)
    return commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")


def fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    try:
        if value is None or value != value:  # None or NaN
            return "–"
        return f"{value:{spec}}{suffix}"
    except (TypeError, ValueError):
        return str(value)


def markdown_rows(head: list[str], rows) -> list[str]:
    """A Markdown table: the header, its rule, and one line per row of cells."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def header(meta: dict | None, title: str) -> list[str]:
    """A results folder's section title and what it was measured with (model, weights, device, command)."""
    meta = meta or {}
    lines = [f"## {title}", ""]
    facts = [f"model **{meta.get('model', '?')}**", f"weights **{meta.get('weights', '?')}**",
             f"QGSA module {meta.get('qgsa_weights', '?')}", f"device {meta.get('device', '?')}",
             f"dtype {meta.get('dtype', '?')}",
             f"batch {', '.join(map(str, meta['batches'])) if meta.get('batches') else meta.get('settings', {}).get('batch', '?')}"]
    if "decode_tokens" in meta.get("settings", {}):
        facts.append(f"{meta['settings']['decode_tokens']} generated tokens")
    lines.append("; ".join(facts) + ".  ")
    if meta.get("weights") == "random":
        lines.append("**Random weights**: FLOPs and latency are the architecture's; nothing here is accuracy.  ")
    if meta.get("k_rule"):
        lines.append(f"Budget: {meta['k_rule']}.  ")
    lines.append(f"Command: `{meta.get('command', '?')}` (commit {short_commit(meta.get('git_commit', '?'))}).")
    lines.append("")
    return lines


def speedup_cell(row) -> str:
    """The measured speedup with its 95 % interval, read off the row's `speedup_verdict` (`stats.compare`):
    none is claimed where the interval holds 1 ("no measurable difference") or where the row is unstable
    or timed fewer than FEW_ROUNDS rounds and the distribution-free interval does not agree ("not enough
    evidence", the ratio beside it); a claim made despite such a caveat shows the distribution-free bounds.
    A bare claim on an unstable or short row (a results file from before these caveats) reads as not enough
    evidence too; a results file from before intervals reads "– (no interval)"."""
    from qgsa_bench.efficiency.stats import CLAIMS, FEW_ROUNDS, NO_DIFFERENCE, NOT_ENOUGH  # loads no efficiency

    unstable = str(row.get("unstable")).lower() == "true"
    flag = " ⚠ unstable" if unstable else ""
    n = row.get("n")
    few = n == n and n is not None and n < FEW_ROUNDS
    if few:
        flag += f" (n={int(n)} < {FEW_ROUNDS}: optimistic)"
    if str(row.get("speedup_equal_inputs")).lower() == "false":  # downsampling: a smaller image is its method
        flag += f" (other input: {int(row['effective_resolution'])} px)"
    low, high, ratio = row.get("speedup_ci_low"), row.get("speedup_ci_high"), row.get("speedup_vs_dense")
    if ratio is None or ratio != ratio or low != low:
        reference = row.get("pipeline") == "dense" and row.get("case", "dense") in ("dense", "dense#1")
        return ("reference" if reference else "– (no interval)") + flag
    interval = f"[{low:.2f}–{high:.2f}]"
    said = str(row.get("speedup_verdict"))
    if said == NO_DIFFERENCE:
        return f"no measurable difference {interval}{flag}"
    if said.startswith(NOT_ENOUGH) or (said in CLAIMS and (unstable or few)):
        return f"not enough evidence: {ratio:.2f}× {interval}{flag}"
    held = said.partition("distribution-free ")[2].rstrip(")")
    return f"{ratio:.2f}× {interval}{flag}" + (f", distribution-free [{held}]" if held else "")


def case_label(row) -> str:
    """The row's case (dense#1, a compiled case, ...) or else its pipeline; flags recompilation while timed."""
    case = row.get("case")
    label = case if isinstance(case, str) and case else row["pipeline"]
    again = row.get("recompilations_timed")
    if again is not None and again == again and again > 0:  # a compiled case that compiled while timed
        label += f" ⚠ {int(again)} recompilation(s) while timed"
    return label


def with_dense_comparison(frame):
    """Add measured comparisons against the dense row at the same resolution (and batch size)."""
    if "batch" in frame and frame["batch"].nunique() > 1:
        import pandas as pd

        return pd.concat([with_dense_comparison(part) for _, part in frame.groupby("batch")])
    frame = frame.copy()
    # the reference: the first dense case at each resolution (dense#1 of an A/A pair)
    dense = frame[frame["pipeline"] == "dense"].drop_duplicates("resolution").set_index("resolution")
    for col, src in (("dense_latency_ms", "latency_ms_median"), ("dense_flops_total", "flops_total"),
                     ("dense_attn_visual_flops", "attn_visual_flops")):
        frame[col] = frame["resolution"].map(dense[src]) if len(dense) else float("nan")
    frame["measured_flops_reduction"] = 1 - frame["flops_total"] / frame["dense_flops_total"]
    frame["attn_visual_reduction"] = 1 - frame["attn_visual_flops"] / frame["dense_attn_visual_flops"]
    return frame


def per_batch(meta: dict, frame) -> list[tuple[dict, object]]:
    """A sweep's rows split by batch size, each with a meta that names its batch (for the figures)."""
    if "batch" not in frame:
        return [(meta, frame)]
    return [({**meta, "settings": {**meta.get("settings", {}), "batch": int(b)}}, part)
            for b, part in frame.groupby("batch")]
