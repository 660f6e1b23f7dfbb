"""What every results table shares: number cells, the speedup cell, case labels, the folder header,
Markdown table rows, footnotes stated once, the untrained-module flag, the Wilson interval of an accuracy,
and the comparison of each sweep row with its dense reference."""

from __future__ import annotations

import math
from functools import lru_cache

UNTRAINED = "†"  # the mark of a row whose pipeline reads an untrained (random-init) QGSA module
UNTRAINED_NOTE = (
    "untrained QGSA module (random-init, no checkpoint): **not a result**. This pipeline reads the module "
    "(its scorer, the W_vis projection that carries the paper's patch-level `qgsa`/`random`/`norm` into the LM, "
    "or f_comp's budget where no fixed k was given), and with random weights `qgsa`, `random`, `norm` and "
    "`qgsa-vision` select and score alike, meaninglessly: train one (`qgsa train`) and pass --checkpoint.")
UNTRAINED_COST = " Its FLOPs and latency are still the architecture's at this budget."
UNTRAINED_COUNT = " Its counted FLOPs hold: a count does not depend on weights."
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval
WILSON_NOTE = (
    "95 % CI: Wilson score interval over the row's n scored questions (Wilson 1927, JASA 22:209; recommended "
    "over the normal interval by Brown, Cai & DasGupta 2001, Stat. Sci. 16:101); for a soft score (VQA's "
    "min(#matches/3, 1)) it treats the mean score as a proportion, an approximation.")


class Notes:
    """One table's footnotes: each marker's text stated once below the table, in the order first used. A text
    with `{}` lists the details its rows gave (e.g. the numbers of timing rounds)."""

    def __init__(self):
        self.texts: dict[str, str] = {}
        self.details: dict[str, dict] = {}

    def mark(self, marker: str, text: str, detail=None) -> str:
        self.texts.setdefault(marker, text)
        if detail is not None:
            self.details.setdefault(marker, {})[detail] = None
        return marker

    def lines(self) -> list[str]:
        """The footnotes as Markdown lines (empty when no row used a marker)."""
        out = []
        for marker, text in self.texts.items():
            if marker in self.details:
                text = text.replace("{}", ", ".join(map(str, self.details[marker])))
            out.append(f"{marker} {text}  ")
        return ["", *out] if out else []


def wilson(accuracy_pct, n, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (Wilson 1927) of a proportion given in percent over n trials, in percent:
    (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n). (nan, nan) without n. 8 of 10: [49.0, 94.3]."""
    try:
        n = float(n)
        p = float(accuracy_pct) / 100
    except (TypeError, ValueError):
        return float("nan"), float("nan")
    if not n > 0 or p != p:
        return float("nan"), float("nan")
    p = min(max(p, 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = max(centre - half, 0.0), min(centre + half, 1.0)
    return 100 * min(low, p), 100 * max(high, p)  # rounding never leaves p outside its own interval


def accuracy_with_ci(accuracy_pct, n, spec: str = ".2f") -> str:
    """'78.75 [74.50–82.48]': an accuracy in percent with its 95 % Wilson interval ('–' without a value)."""
    if accuracy_pct is None or accuracy_pct != accuracy_pct:
        return "–"
    low, high = wilson(accuracy_pct, n)
    return fmt(accuracy_pct, spec) + ("" if low != low else f" [{low:{spec}}–{high:{spec}}]")


def scored_n(row):
    """The questions an accuracy is over: n_scored where the row has it (samples with public answers), else n."""
    scored = row.get("n_scored")
    return scored if scored is not None and scored == scored else row.get("n")


@lru_cache(maxsize=None)
def reads_module(name: str, k_fixed: bool) -> bool:
    """Whether pipeline `name` reads the QGSA module (`Spec.reads_checkpoint`); a name that is not a spec (the
    grounding oracle) reads it only for its budget, QGSA's k, when none was fixed."""
    from qgsa_bench import QGSAError
    from qgsa_bench.run.spec import parse_spec

    try:
        spec = parse_spec(name.partition("#")[0])
    except QGSAError:
        return not k_fixed
    return spec.reads_checkpoint(1 if k_fixed else None)


def _given(value) -> bool:
    return value is not None and value == value and value != ""


def k_was_fixed(row, meta: dict | None) -> bool:
    """Whether the row's budget was fixed (a budget column, --k, budgets of sweep-budget and count-flops, the
    sweep's paper k, the fixed-k ablation) rather than f_comp's."""
    meta = meta or {}
    settings = meta.get("settings", {})
    return (_given(row.get("budget")) or _given(settings.get("k")) or bool(settings.get("budgets"))
            or str(meta.get("k_rule", "")).startswith("fixed k") or row.get("config") == "fixed-k")


def untrained(row, meta: dict | None = None) -> bool:
    """The row shows a pipeline reading a QGSA module that was never trained: its qgsa_weights (the row's, else
    meta.json's) are `random-init (seed N)` and its spec reads the module (`Spec.reads_checkpoint`)."""
    meta = meta or {}
    weights = row.get("qgsa_weights")
    if not isinstance(weights, str) or not weights:
        weights = meta.get("qgsa_weights")
    if not str(weights).startswith("random-init"):
        return False
    name = row.get("pipeline")
    if not isinstance(name, str) or not name:
        name = row.get("selector")
    return isinstance(name, str) and bool(name) and reads_module(name, k_was_fixed(row, meta))


def flag_untrained(label: str, row, meta: dict | None, notes: Notes | None = None, cost: str = "") -> str:
    """`label` with the untrained mark where `untrained(row, meta)`, its footnote (plus `cost`, what the row
    still shows) noted once in `notes`."""
    if not untrained(row, meta):
        return str(label)
    if notes is not None:
        notes.mark(UNTRAINED, UNTRAINED_NOTE + cost)
    return f"{label} {UNTRAINED}"


def dense_first(frame, column: str = "pipeline"):
    """The rows with the dense pipeline first, the others in their order (a stable sort)."""
    return frame.assign(_dense=frame[column].astype(str).str.partition("#")[0] != "dense").sort_values(
        "_dense", kind="stable").drop(columns="_dense")


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


def speedup_cell(row, notes: Notes | None = None) -> str:
    """The measured speedup with its 95 % interval, read off the row's `speedup_verdict` (`stats.compare`):
    none is claimed where the interval holds 1 ("no measurable difference") or where the row is unstable
    or timed fewer than FEW_ROUNDS rounds and the distribution-free interval does not agree ("not enough
    evidence", the ratio beside it); a claim made despite such a caveat shows the distribution-free bounds.
    A bare claim on an unstable or short row (a results file from before these caveats) reads as not enough
    evidence too; a results file from before intervals reads "– (no interval)". With `notes`, the few-rounds
    caveat is a mark whose text the table states once."""
    from qgsa_bench.efficiency.stats import CLAIMS, FEW_ROUNDS, NO_DIFFERENCE, NOT_ENOUGH  # loads no efficiency

    unstable = str(row.get("unstable")).lower() == "true"
    flag = " ⚠ unstable" if unstable else ""
    n = row.get("n")
    few = n == n and n is not None and n < FEW_ROUNDS
    if few and notes is not None:
        flag += " " + notes.mark("‡", f"timed over fewer than {FEW_ROUNDS} rounds (n = {{}}): the 95 % interval is "
                                 f"optimistic (rerun with more --reps or --reps auto).", int(n))
    elif few:
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
