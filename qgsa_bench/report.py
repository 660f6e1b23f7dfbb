"""`qgsa report`: Markdown tables and PNG figures from result folders (CSV + meta.json) only.

Tables: a Table-4-style efficiency table per sweep (the paper's metrics beside the measured ones),
a Table-5-style ablation table, Tables 1-2-style accuracy and a Table-3-style grounding table. Figures: latency vs resolution (Fig. 2), FLOPs reduction
(Fig. 3), theoretical vs measured speedup (Fig. 4), ablation latency (Fig. 5) and a per-stage
breakdown of dense vs QGSA at each resolution.
"""

from __future__ import annotations

from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.efficiency.stats import FEW_ROUNDS, NO_DIFFERENCE
from qgsa_bench.results import read_meta, read_rows

STAGE_COLUMNS = ("vision_ms", "select_ms", "connector_ms", "prefill_ms")
SWEEP_REQUIRED = ("resolution", "pipeline", "n_patches", "n_visual_tokens", "latency_ms_median",
                  "flops_total", "attn_visual_flops", "paper_flops_reduction", "paper_theoretical_speedup")
ABLATE_REQUIRED = ("config", "latency_ms_median", "latency_ms_p10", "latency_ms_p90")
EVAL_REQUIRED = ("pipeline", "scope", "question_type", "n", "accuracy", "delta_vs_dense_points", "k_mean",
                 "k_std", "n_visual_tokens_mean", "latency_ms_per_query")
GROUNDING_REQUIRED = ("selector", "question_type", "n", "mean_iou", "median_iou", "k_mean")
COUNT_REQUIRED = ("pipeline", "k", "n_visual_tokens", "visual_tokens_layer_avg", "flops_vision", "flops_prefill",
                  "flops_total")
BUDGET_REQUIRED = ("budget", "budget_share", "case", "pipeline", "selector", "point", "n_visual_tokens",
                   "visual_tokens_layer_avg", "flops_total", "latency_ms_median")
RESULT_FILES = {"sweep": SWEEP_REQUIRED, "ablate": ABLATE_REQUIRED, "eval": EVAL_REQUIRED,
                "grounding": GROUNDING_REQUIRED, "budget": BUDGET_REQUIRED, "flops": COUNT_REQUIRED}


def _short_commit(commit) -> str:
    """First 10 hex digits, keeping the "-dirty" mark of a run from uncommitted code."""
    commit = str(commit)
    return commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    try:
        if value is None or value != value:  # None or NaN
            return "–"
        return f"{value:{spec}}{suffix}"
    except (TypeError, ValueError):
        return str(value)


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


def _header(meta: dict | None, title: str) -> list[str]:
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
    lines.append(f"Command: `{meta.get('command', '?')}` (commit {_short_commit(meta.get('git_commit', '?'))}).")
    lines.append("")
    return lines


def speedup_cell(row) -> str:
    """The measured speedup with its 95 % interval; none is claimed where the interval holds 1 (or where a
    results file from before intervals has none); an unstable case is flagged."""
    flag = " ⚠ unstable" if str(row.get("unstable")).lower() == "true" else ""
    n = row.get("n")
    if n == n and n is not None and n < FEW_ROUNDS:
        flag += f" (n={int(n)} < {FEW_ROUNDS}: optimistic)"
    low, high, ratio = row.get("speedup_ci_low"), row.get("speedup_ci_high"), row.get("speedup_vs_dense")
    if ratio is None or ratio != ratio or low != low:
        reference = row.get("pipeline") == "dense" and row.get("case", "dense") in ("dense", "dense#1")
        return ("reference" if reference else "– (no interval)") + flag
    interval = f"[{low:.2f}–{high:.2f}]"
    if row.get("speedup_verdict") == NO_DIFFERENCE:
        return f"no measurable difference {interval}{flag}"
    return f"{ratio:.2f}× {interval}{flag}"


def _case(row) -> str:
    case = row.get("case")
    label = case if isinstance(case, str) and case else row["pipeline"]
    again = row.get("recompilations_timed")
    if again is not None and again == again and again > 0:  # a compiled case that compiled while timed
        label += f" ⚠ {int(again)} recompilation(s) while timed"
    return label


def table4_markdown(frame, meta: dict | None) -> str:
    frame = with_dense_comparison(frame)
    if "batch" not in frame:
        frame = frame.assign(batch=(meta or {}).get("settings", {}).get("batch", 1))
    frame = frame.assign(_case=[_case(r) for _, r in frame.iterrows()]).sort_values(["batch", "resolution", "_case"])
    lines = _header(meta, "Efficiency by resolution (cf. the paper's Table 4)")
    lines += [
        "| Batch | Resolution | Pipeline | N patches | visual tokens to LM | latency ms median [p10–p90] "
        "| measured speedup vs dense [95 % CI] | images/s | generated tokens/s | paper FLOPs↓ (1−k/N) "
        "| paper speedup (N/k) | end-to-end GFLOPs | measured end-to-end FLOPs↓ vs dense "
        "| LM visual-attention FLOPs↓ vs dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in frame.iterrows():
        lines.append(
            f"| {int(r['batch'])} | {int(r['resolution'])}px | {r['_case']} | {int(r['n_patches'])} "
            f"| {_fmt(r['n_visual_tokens'], '.0f')} "
            f"| {_fmt(r['latency_ms_median'])} [{_fmt(r.get('latency_ms_p10'))}–{_fmt(r.get('latency_ms_p90'))}] "
            f"| {speedup_cell(r)} | {_fmt(r.get('throughput_images_per_s'), '.2f')} "
            f"| {_fmt(r.get('throughput_tokens_per_s'), '.1f')} | {_fmt(100 * r['paper_flops_reduction'], '.1f', '%')} "
            f"| {_fmt(r['paper_theoretical_speedup'], '.1f', '×')} | {_fmt(r['flops_total'] / 1e9, '.2f')} "
            f"| {_fmt(100 * r['measured_flops_reduction'], '.1f', '%')} | {_fmt(100 * r['attn_visual_reduction'], '.1f', '%')} |"
        )
    lines += [
        "",
        "FLOPs: fvcore's convention, one multiply-add = one FLOP; attention counted over the full "
        "Lq×Lk rectangle. *Paper* columns are the seed's metrics over the N vision patches "
        "(1−k/N, N/k); *measured* columns compare this row with the dense pipeline at the same "
        "resolution, end to end (vision + selection/connector + prefill + decode). Dense runs at "
        "the next multiple of patch×scale factor when the resolution is not one (see "
        "`effective_resolution` in the CSV). Speedup: ratio of median latencies (dense / this row) with "
        "a 95 % percentile-bootstrap interval over the paired, alternating rounds; where the interval "
        "holds 1 no speedup is claimed; from fewer than 10 rounds the interval is optimistic (simulated "
        "A/A pairs: 7.7 % called different at 5 rounds, 2.5 % at 10: benchmarks/aa_coverage.py). "
        "⚠ unstable: robust dispersion above 10 % or over 10 % outliers (rerun with more --reps or "
        "--reps auto on a quieter machine).",
    ]
    if "formula_fastv_prefill" in frame:
        lines += ["", "The peers' accounting (formulas, not counts; for mapping these rows onto published tables):", "",
                  "| Batch | Resolution | Pipeline | prompt tokens n | visual tokens entering the LM | visual tokens, "
                  "mean over LM layers | FastV formula, prefill GFLOPs (2ndm FFN) | 3-matrix FFN formula (3ndm) "
                  "| counted prefill GFLOPs (fvcore) |", "|---|---|---|---|---|---|---|---|---|"]
        for _, r in frame.iterrows():
            lines.append(f"| {int(r['batch'])} | {int(r['resolution'])}px | {r['_case']} | {_fmt(r.get('prompt_tokens'), '.0f')} "
                         f"| {_fmt(r['n_visual_tokens'], '.1f')} | {_fmt(r.get('visual_tokens_layer_avg'), '.1f')} "
                         f"| {_fmt(r['formula_fastv_prefill'] / 1e9, '.3f')} | {_fmt(r['formula_ffn3_prefill'] / 1e9, '.3f')} "
                         f"| {_fmt(r.get('flops_prefill', float('nan')) / 1e9, '.3f')} |")
        lines += ["", "Formulas per LM layer, summed over layers, times the batch: FastV (Chen et al., ECCV 2024) "
                  "4nd² + 2n²d + 2ndm; with a gated 3-matrix FFN as LLaMA-family LMs have, 4nd² + 2n²d + 3ndm "
                  "(n prompt tokens, d LM width, m MLP width; multiply-adds). Both assume full-width K/V "
                  "projections and leave out the LM head; the counted column is fvcore's count of our prefill "
                  "(grouped-query K/V, norms, the head on the last position)."]
    cost = frame.get("observation_cost_ms")
    if cost is not None and cost.dropna().abs().max() > 0:
        lines.append(f"Cost of observing stages (GPU: the run with CUDA events at the stage boundaries minus the "
                     f"same run as one region, medians): {cost.min():.2f} to {cost.max():.2f} ms "
                     f"(`observation_cost_ms` in the CSV).")
    if meta and meta.get("reps_stopped"):
        lines.append("Repetitions: " + "; ".join(f"{k}{'px' if str(k).isdigit() else ''}: {v}"
                                                 for k, v in meta["reps_stopped"].items()) + ".")
    unsupported = sorted({op for ops in frame.get("unsupported_ops", []).dropna() for op in str(ops).split(";") if op})
    if unsupported:
        lines.append(f"Ops fvcore could not count (not elementwise): {', '.join(unsupported)}.")
    return "\n".join(lines) + "\n"


def write_table4(frame, path: Path, meta: dict | None) -> Path:
    Path(path).write_text(table4_markdown(frame, meta))
    return Path(path)


def table5_markdown(frame, meta: dict | None) -> str:
    lines = _header(meta, "Component ablation latency (cf. the paper's Table 5)")
    lines += ["| Configuration | QGSA weights | mean k | latency ms median [p10–p90] | speedup vs dense [95 % CI] "
              "| end-to-end GFLOPs | accuracy (%) |", "|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r.get('label', r['config'])} (`{r['config']}`) | {r.get('qgsa_weights', '–')} | {_fmt(r.get('k'), '.1f')} "
                     f"| {_fmt(r['latency_ms_median'])} [{_fmt(r['latency_ms_p10'])}–{_fmt(r['latency_ms_p90'])}] "
                     f"| {speedup_cell(r)} | {_fmt(r.get('flops_total', float('nan')) / 1e9, '.2f')} | {_fmt(r.get('accuracy'))} |")
    lines += ["", "Configurations without a checkpoint use the randomly initialised module (labelled "
              "`random-init`): their latencies differ only by noise and by k, not by training. Speedup: "
              "ratio of median latencies with a 95 % paired-bootstrap interval (as in Table 4)."]
    if meta and isinstance(meta.get("reps_stopped"), str):
        lines.append(f"Repetitions: {meta['reps_stopped']}.")
    return "\n".join(lines) + "\n"


def eval_markdown(frame, meta: dict | None) -> str:
    meta = meta or {}
    lines = _header(meta, f"Accuracy on {meta.get('dataset', '?')} ({meta.get('split', '?')}) (cf. the paper's Tables 1-2)")
    if meta.get("weights") == "random":
        lines.append("**Accuracy with random weights is meaningless**: these rows test the plumbing only.\n")
    overall = frame[frame["scope"] == "all"]
    lines += ["| Pipeline | n | Accuracy (%) | Δ vs dense (points) | MC accuracy (%) | mean k (± std) "
              "| visual tokens | latency ms / query |", "|---|---|---|---|---|---|---|---|"]
    for _, r in overall.iterrows():
        lines.append(f"| {r['pipeline']} | {int(r['n'])} | {_accuracy(r)} | {_fmt(r['delta_vs_dense_points'], '+.2f')} "
                     f"| {_fmt(r.get('mc_accuracy'))} | {_fmt(r['k_mean'], '.1f')} ± {_fmt(r['k_std'], '.1f')} "
                     f"| {_fmt(r['n_visual_tokens_mean'], '.1f')} | {_fmt(r['latency_ms_per_query'])} |")
    types = frame[frame["scope"].isin(["type", "answer_type"])]
    if len(types):
        lines += ["", "Per question type (the paper's section 4.7 / A.1 analysis; VQA-RAD also per answer type):", "",
                  "| Question type | Pipeline | n | Accuracy (%) | Δ vs dense | mean k |", "|---|---|---|---|---|---|"]
        for _, r in types.sort_values(["scope", "question_type", "pipeline"]).iterrows():
            label = f"answer type {r['question_type']}" if r["scope"] == "answer_type" else r["question_type"]
            lines.append(f"| {label} | {r['pipeline']} | {int(r['n'])} | {_accuracy(r)} "
                         f"| {_fmt(r['delta_vs_dense_points'], '+.2f')} | {_fmt(r['k_mean'], '.1f')} |")
    if meta.get("scoring"):
        lines += ["", f"Scoring ({meta.get('dataset')}): {meta['scoring']}."]
    return "\n".join(lines) + "\n"


def _accuracy(row) -> str:
    """The accuracy cell: '–' with the reason where no sample of the row has public references."""
    if row.get("n_scored") == 0:
        return "– (no public answers)"
    return _fmt(row["accuracy"])


def grounding_markdown(frame, meta: dict | None) -> str:
    meta = meta or {}
    lines = _header(meta, f"Grounding IoU on {meta.get('dataset', '?')} ({meta.get('split', '?')}) (cf. the paper's Table 3)")
    lines += ["| Question type | Selector | n | mean IoU (%) | median IoU (%) | IoU ≥ 0.5 (%) | mean k |",
              "|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['question_type']} | {r['selector']} | {int(r['n'])} | {_fmt(r['mean_iou'])} "
                     f"| {_fmt(r['median_iou'])} | {_fmt(r.get('acc_iou_0_5'))} | {_fmt(r['k_mean'], '.1f')} |")
    lines += ["", "IoU between the convex hull of the selected patches (in the original image's pixels) and "
              "the ground-truth box. All selectors use QGSA's k per sample; the oracle is the best "
              "rectangular hull of at most k patches (the ceiling). IoU ≥ 0.5: the share of boxes found, "
              "RefCOCO's comprehension accuracy rule (MAttNet's evaluation, with the hull as the predicted region)."]
    return "\n".join(lines) + "\n"


def pairs_markdown(frame) -> str:
    lines = ["### Question dependence: two questions about different objects of one image", "",
             "| Selector | pairs | mean Jaccard of the two selections | share inside own object's box "
             "| share inside the other object's box |", "|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['selector']} | {int(r['n_pairs'])} | {_fmt(r['mean_jaccard'], '.3f')} "
                     f"| {_fmt(100 * r['share_in_own_box'], '.1f', '%')} | {_fmt(100 * r['share_in_other_box'], '.1f', '%')} |")
    lines += ["", "For `random` the two selections are independent draws (chance overlap). `norm` ignores the "
              "question, so its two selections are identical (Jaccard 1) whenever k is the same."]
    return "\n".join(lines) + "\n"


# ---- figures ---------------------------------------------------------------------------------
def figure_pair(image, first: dict, second: dict, grid: int, path: Path, title: str = "") -> Path:
    """One image, two questions: each question's selected patches and its object's box, side by side."""
    return figure_selections([(image, first), (image, second)], grid, path, title)


def figure_selections(items, grid: int, path: Path, title: str = "") -> Path:
    """Overlay the selected patches (cyan) and the ground-truth box (green) on a few images."""
    from matplotlib.patches import Rectangle

    from qgsa_bench.metrics import patch_boxes

    plt = _plt()
    fig, axes = plt.subplots(1, max(len(items), 1), figsize=(3.2 * max(len(items), 1), 3.6), squeeze=False)
    for ax, (image, record) in zip(axes[0], items):
        w, h = image.size
        ax.imshow(image)
        for x0, y0, x1, y1 in patch_boxes(record["qgsa_patches"], grid, w, h):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor="cyan", edgecolor="black", lw=0.5, alpha=0.45))
        x, y, bw, bh = record["box"]
        ax.add_patch(Rectangle((x, y), bw, bh, fill=False, edgecolor="lime", lw=2))
        ax.set_title(f"{record['question'][:38]}\nIoU {100 * record['qgsa_iou']:.1f}%", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    return _save(fig, path, top=0.9)

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(meta: dict) -> str:
    return f"{meta.get('model', '?')} b{meta.get('settings', {}).get('batch', '?')}"


def figure_latency(sweeps, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for meta, frame in sweeps:
        for pipeline, part in frame.sort_values("resolution").groupby("pipeline"):
            err = [part["latency_ms_median"] - part["latency_ms_p10"], part["latency_ms_p90"] - part["latency_ms_median"]]
            ax.errorbar(part["resolution"], part["latency_ms_median"], yerr=err, marker="o", capsize=3,
                        label=f"{_label(meta)} {pipeline}")
    ax.set(xlabel="input resolution (px)", ylabel="end-to-end latency, median (ms)",
           title="Latency vs resolution (Fig. 2); bars: p10–p90")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _qgsa_curves(sweeps, path: Path, series, ylabel: str, title: str, log: bool = False) -> Path:
    """Curves over resolution for the qgsa rows of each sweep; series: (values(rows), style, name)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for meta, frame in sweeps:
        part = with_dense_comparison(frame)
        part = part[part["pipeline"] == "qgsa"].sort_values("resolution")
        for values, style, name in series:
            if part.empty:
                continue
            y = values(part)
            if "CI" in name and "speedup_ci_low" in part:  # a measured speedup is drawn with its interval
                err = [y - part["speedup_ci_low"], part["speedup_ci_high"] - y]
                ax.errorbar(part["resolution"], y, yerr=err, fmt=style, capsize=3, label=f"{_label(meta)} {name}")
            else:
                ax.plot(part["resolution"], y, style, label=f"{_label(meta)} {name}")
    if log:
        ax.set_yscale("log")
    ax.axhline(1 if log else 0, color="grey", lw=0.5)
    ax.set(xlabel="input resolution (px)", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def figure_flops_reduction(sweeps, path: Path) -> Path:
    return _qgsa_curves(sweeps, path, [
        (lambda p: 100 * p["paper_flops_reduction"], "o--", "paper: 1−k/N"),
        (lambda p: 100 * p["attn_visual_reduction"], "s-", "measured: LM visual attention vs dense"),
        (lambda p: 100 * p["measured_flops_reduction"], "^-", "measured: end to end vs dense"),
    ], "FLOPs reduction (%)", "QGSA FLOPs reduction (Fig. 3)")


def figure_speedup(sweeps, path: Path) -> Path:
    return _qgsa_curves(sweeps, path, [
        (lambda p: p["paper_theoretical_speedup"], "o--", "paper: N/k"),
        (lambda p: p["speedup_vs_dense"] if "speedup_vs_dense" in p else float("nan") * p["resolution"], "s-",
         "measured latency vs dense (95 % CI)"),
        (lambda p: p["dense_flops_total"] / p["flops_total"], "^-", "measured end-to-end FLOPs ratio"),
    ], "speedup (×, log scale)", "Theoretical vs measured speedup (Fig. 4)", log=True)


def figure_stages(meta, frame, path: Path) -> Path:
    """Stacked per-stage time of dense vs qgsa at each resolution: where the time goes."""
    plt = _plt()
    part = frame[frame["pipeline"].isin(["dense", "qgsa"])].sort_values(["resolution", "pipeline"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    eff = part["effective_resolution"] if "effective_resolution" in part else part["resolution"]
    labels = [f"{int(r)}\n{p}" + (f"\n(ran {int(e)})" if int(e) != int(r) else "")
              for r, e, p in zip(part["resolution"], eff, part["pipeline"])]
    decode_total = part["decode_ms_per_token"] * (part["decode_tokens"] - 1).clip(lower=0)
    stages = [(c.replace("_ms", ""), part[c]) for c in STAGE_COLUMNS] + [("decode (all tokens)", decode_total)]
    bottom = None
    for name, values in stages:
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = values if bottom is None else bottom + values
    ax.set(ylabel="median time (ms)", title=f"Where the time goes: {_label(meta)}, {meta.get('device', '')}")
    ax.legend(fontsize=7)
    return _save(fig, path)


def figure_ablation(meta, frame, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    err = [frame["latency_ms_median"] - frame["latency_ms_p10"], frame["latency_ms_p90"] - frame["latency_ms_median"]]
    ax.bar(frame["config"], frame["latency_ms_median"], yerr=err, capsize=3)
    ax.set(ylabel="end-to-end latency, median (ms)", title=f"Ablation latency (Fig. 5): {_label(meta)}")
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path)


def _save(fig, path: Path, top: float = 1.0) -> Path:
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


# ---- the command -----------------------------------------------------------------------------
def load_folder(folder: Path):
    """(meta, {result name: frame}) of one results folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QGSAError(f"results folder not found: {folder}")
    meta = read_meta(folder)
    if meta is None:
        raise QGSAError(f"{folder} has no meta.json: is it a qgsa-bench results folder?")
    tables = {name: read_rows(folder / f"{name}.csv", required) for name, required in RESULT_FILES.items()
              if (folder / f"{name}.csv").exists()}
    if not tables:
        raise QGSAError(f"{folder} holds none of {', '.join(f'{n}.csv' for n in RESULT_FILES)}")
    return meta, tables


SEARCHED = ("results", "runs")


def _slugs(folders: list[Path]) -> dict[Path, str]:
    """File-name parts for figures: each folder's name, with as many parent names as make it unique
    (results/a/sweep and runs/sweep -> a_sweep and runs_sweep)."""
    parts = {f: [p for p in Path(f).resolve().parts if p != "/"] for f in folders}
    depth = {f: 1 for f in folders}
    while True:
        names = {f: "_".join(parts[f][-depth[f]:]) for f in folders}
        clash = [f for f in folders if list(names.values()).count(names[f]) > 1 and depth[f] < len(parts[f])]
        if not clash:
            return names
        for f in clash:
            depth[f] += 1


def is_results_folder(folder: Path) -> bool:
    """A folder holding meta.json beside one of the results CSVs."""
    return (folder / "meta.json").is_file() and any((folder / f"{n}.csv").is_file() for n in RESULT_FILES)


def find_results(roots: list[Path]) -> list[Path]:
    """Every results folder at or under `roots` (sorted, each once)."""
    found = []
    for root in map(Path, roots):
        if root.is_dir():
            found += [root] if is_results_folder(root) else \
                [p.parent for p in sorted(root.rglob("meta.json")) if is_results_folder(p.parent)]
    return list(dict.fromkeys(found))


def make_report(folders: list[Path] | None, out: Path, warn=None) -> list[Path]:
    """Write report.md and the figures into `out`; returns the files written.

    `folders`: results folders, or folders to search for them. None: search results/ and runs/ of the
    current directory; a damaged folder found by searching is left out with a warning (one named
    explicitly stops the report with one error)."""
    searched = folders is None
    roots = [Path(r) for r in (SEARCHED if searched else folders)]
    for root in roots:
        if not searched and not root.is_dir():
            raise QGSAError(f"results folder not found: {root}")
    found = find_results(roots)
    if not found:
        where = "results/ or runs/ here" if searched else ", ".join(map(str, roots))
        raise QGSAError(f"no results folder (meta.json beside {', '.join(f'{n}.csv' for n in RESULT_FILES)}) in "
                        f"{where}: make one with `qgsa sweep-resolution --out runs/sweep` (or eval, grounding, "
                        f"ablate), or pass --results DIR")
    loaded = []
    for folder in found:
        try:
            loaded.append((folder, *load_folder(folder)))
        except QGSAError as err:
            if not searched:
                raise
            if warn:
                warn(f"left out of the report: {err}")
    if not loaded:
        raise QGSAError(f"every results folder found was damaged ({len(found)}): see the warnings above")
    slugs = _slugs([folder for folder, _, _ in loaded])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, sections, sweeps = [], ["# qgsa-bench report", ""], []
    for folder, meta, tables in loaded:
        try:
            text, files = _folder_section(folder, meta, tables, out, slugs[folder])
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
            problem = QGSAError(f"{folder}: its files do not make a table ({err.__class__.__name__}: {err}); "
                                f"a damaged or hand-edited file? rerun the command in its meta.json")
            if not searched:
                raise problem from None
            if warn:
                warn(f"left out of the report: {problem}")
            continue
        sections.append(text)
        written += files
        if "sweep" in tables:
            sweeps += per_batch(meta, tables["sweep"])
    if sweeps:
        written += [figure_latency(sweeps, out / "fig2_latency_vs_resolution.png"),
                    figure_flops_reduction(sweeps, out / "fig3_flops_reduction.png"),
                    figure_speedup(sweeps, out / "fig4_speedup.png")]
        sections += ["## Figures", "", "![latency](fig2_latency_vs_resolution.png)",
                     "![FLOPs reduction](fig3_flops_reduction.png)", "![speedup](fig4_speedup.png)", ""]
    (out / "report.md").write_text("\n".join(sections))
    return [out / "report.md", *written]


def per_batch(meta: dict, frame) -> list[tuple[dict, object]]:
    """A sweep's rows split by batch size, each with a meta that names its batch (for the figures)."""
    if "batch" not in frame:
        return [(meta, frame)]
    return [({**meta, "settings": {**meta.get("settings", {}), "batch": int(b)}}, part)
            for b, part in frame.groupby("batch")]


def figure_batch_scaling(meta: dict, frame, path: Path) -> Path:
    """Throughput (images/s) against batch size, one panel per resolution, one line per pipeline."""
    plt = _plt()
    sizes = sorted(frame["resolution"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        part = frame[frame["resolution"] == size]
        for case, rows in part.assign(_case=[_case(r) for _, r in part.iterrows()]).groupby("_case"):
            rows = rows.sort_values("batch")
            ax.plot(rows["batch"], rows["throughput_images_per_s"], "o-", label=case)
        ax.set(xscale="log", xlabel="batch", title=f"{int(size)}px")
        ax.set_xticks(sorted(part["batch"].unique()), [str(int(b)) for b in sorted(part["batch"].unique())])
    axes[0][0].set_ylabel("images / s (median latency)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Batch scaling: {meta.get('model', '?')}, {meta.get('device', '')}", fontsize=9)
    return _save(fig, path, top=0.9)


def _folder_section(folder: Path, meta: dict, tables: dict, out: Path, slug: str) -> tuple[str, list[Path]]:
    """One results folder's tables (and its own figures) as Markdown."""
    parts, written = [f"# {folder}\n"], []
    if "sweep" in tables:
        frame = tables["sweep"]
        parts.append(table4_markdown(frame, meta))
        first = per_batch(meta, frame)[0]
        written.append(figure_stages(*first, out / f"stages_{slug}.png"))
        parts.append(f"![per-stage time, batch {first[0].get('settings', {}).get('batch', '?')}](stages_{slug}.png)\n")
        if "batch" in frame and frame["batch"].nunique() > 1 and "throughput_images_per_s" in frame:
            written.append(figure_batch_scaling(meta, frame, out / f"batch_{slug}.png"))
            parts.append(f"![batch scaling](batch_{slug}.png)\n")
    if "ablate" in tables:
        parts.append(table5_markdown(tables["ablate"], meta))
        written.append(figure_ablation(meta, tables["ablate"], out / f"fig5_ablation_{slug}.png"))
        parts.append(f"![ablation latency](fig5_ablation_{slug}.png)\n")
    if "eval" in tables:
        parts.append(eval_markdown(tables["eval"], meta))
    if "budget" in tables:
        accuracy = read_rows(folder / "accuracy.csv") if (folder / "accuracy.csv").is_file() else None
        parts.append(budget_markdown(tables["budget"], meta, accuracy))
        written.append(figure_pareto(meta, tables["budget"], accuracy, out / f"pareto_{slug}.png"))
        parts.append(f"![accuracy or latency against FLOPs](pareto_{slug}.png)\n")
    if "flops" in tables:
        parts.append(count_markdown(tables["flops"].to_dict("records"), meta))
    if "grounding" in tables:
        parts.append(grounding_markdown(tables["grounding"], meta))
        if (folder / "pairs.csv").is_file():
            parts.append(pairs_markdown(read_rows(folder / "pairs.csv")))
    return "\n".join(parts), written


def budget_markdown(frame, meta: dict | None, accuracy=None) -> str:
    """Every selector at every budget: where it sits, tokens, FLOPs by stage, latency, accuracy."""
    meta = meta or {}
    lines = _header(meta, f"Selectors at equal budgets, {meta.get('settings', {}).get('resolution', '?')} px "
                          f"({meta.get('dense_visual_tokens', '?')} dense visual tokens)")
    lines += [f"Budget: {meta.get('budget_rule', 'visual tokens reaching the LM')}. FLOPs: multiply-adds (fvcore), "
              "G = 10^9, for the whole batch end to end.  ", ""]
    has_acc = "accuracy" in frame and frame["accuracy"].notna().any()
    head = ["selector", "insertion point", "budget", "kept after the last cut", "visual tokens (LM in / layer avg)",
            "vision GFLOPs",
            "select GFLOPs", "prefill GFLOPs", "end-to-end GFLOPs", "share of dense", "latency ms (p10–p90)",
            "speedup vs dense"] + (["accuracy %", "Δ vs dense"] if has_acc else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    frame = frame.sort_values(["budget", "selector"], kind="stable")
    for _, r in frame.iterrows():
        cells = [_case(r), str(r["point"]), str(int(r["budget"])), _fmt(r.get("k"), ".0f"),
                 f"{_fmt(r['n_visual_tokens'], '.0f')} / {_fmt(r['visual_tokens_layer_avg'], '.1f')}",
                 _fmt(r.get("flops_vision", float("nan")) / 1e9, ".3f"),
                 _fmt((r.get("flops_select", 0) + r.get("flops_connector", 0)) / 1e9, ".3f"),
                 _fmt(r.get("flops_prefill", float("nan")) / 1e9, ".3f"), _fmt(r["flops_total"] / 1e9, ".3f"),
                 _fmt(100 * r.get("flops_share_of_dense", float("nan")), ".1f", " %"),
                 f"{_fmt(r['latency_ms_median'], '.1f')} ({_fmt(r.get('latency_ms_p10'), '.1f')}–"
                 f"{_fmt(r.get('latency_ms_p90'), '.1f')})", speedup_cell(r)]
        if has_acc:
            cells += [_fmt(r.get("accuracy"), ".2f"), _fmt(r.get("delta_vs_dense_points"), "+.2f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if accuracy is not None and len(accuracy):
        types = accuracy[accuracy["scope"] != "all"]
        if len(types):
            lines += ["### Accuracy per question type (%)", ""]
            qtypes = sorted(types["question_type"].unique())
            lines += ["| case | budget | " + " | ".join(qtypes) + " |", "|" + "---|" * (len(qtypes) + 2)]
            for case, part in types.groupby("case", sort=False):
                by = dict(zip(part["question_type"], part["accuracy"]))
                lines.append(f"| {case} | {int(part['budget'].iloc[0])} | "
                             + " | ".join(_fmt(by.get(t), ".1f") for t in qtypes) + " |")
            lines.append("")
    return "\n".join(lines)


def figure_pareto(meta: dict, frame, accuracy, path: Path) -> Path:
    """Accuracy (with a data set; else median latency) against end-to-end FLOPs as a share of dense, one
    line per selector over its budgets, dense as a star; with per-type accuracy one panel per type too."""
    plt = _plt()
    y_col = "accuracy" if "accuracy" in frame and frame["accuracy"].notna().any() else "latency_ms_median"
    share = "flops_share_of_dense" in frame and frame["flops_share_of_dense"].notna().any()
    x_col, x_label = (("flops_share_of_dense", "end-to-end FLOPs, % of dense") if share
                      else ("flops_total", "end-to-end GFLOPs (multiply-adds)"))
    scale = 100 if share else 1e-9
    panels = [("all", frame)]
    if accuracy is not None and y_col == "accuracy":
        types = accuracy[accuracy["scope"] == "type"]
        panels += [(t, part) for t, part in types.groupby("question_type")]
    series = list(dict.fromkeys(zip(frame["selector"], frame["point"])))
    colours = plt.get_cmap("tab20")
    style = {key: (colours(i % 20), "osD^v<>ph*"[i % 10]) for i, key in enumerate(series)}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 2.6, 3.6), squeeze=False)
    for ax, (title, part) in zip(axes[0], panels):
        for (selector, point), rows in part.groupby(["selector", "point"], sort=False):
            rows = rows.sort_values(x_col)
            colour, marker = style.get((selector, point), ("k", "o"))
            if selector == "dense":
                ax.plot(rows[x_col] * scale, rows[y_col], "k*", ms=10, label="dense")
            else:
                ax.plot(rows[x_col] * scale, rows[y_col], "-", marker=marker, color=colour, ms=4,
                        label=f"{selector} @ {point}")
        ax.set(xlabel=x_label, title=title, ylabel="accuracy %" if y_col == "accuracy" else "median latency ms")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    res = meta.get("settings", {}).get("resolution", "?")
    fig.suptitle(f"Selectors at equal budgets: {meta.get('model', '?')} ({meta.get('weights', '?')} weights), {res}px",
                 fontsize=9)
    return _save(fig, path, top=0.86)


def count_markdown(rows: list[dict], meta: dict) -> str:
    """Counted FLOPs by stage per (pipeline, budget), and the cross-checks (count-flops)."""
    s = meta.get("settings", {})
    lines = [f"## Counted FLOPs by stage: {meta.get('model', '?')} at {s.get('resolution', '?')} px, batch "
             f"{s.get('batch', '?')}, {s.get('decode_tokens', '?')} generated tokens", "",
             f"{meta.get('counting', '')}. Budget: {'visual tokens averaged over the LM layers for in-LM selectors' if s.get('budget_unit') == 'layer-avg' else 'visual tokens after the last cut'}. Multiply-adds (fvcore), G = 10^9. Weights play no part in a count "
             f"(random weights). Command: `{meta.get('command', '?')}` (commit "
             f"{_short_commit(meta.get('git_commit', '?'))}).", ""]
    head = ["pipeline", "budget", "kept after the last cut", "visual tokens (LM in / layer avg)", "prompt", "vision G",
            "select + connector G",
            "prefill G", "decode G/token", "end-to-end G", "share of dense", "saved"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        k, budget = r.get("k"), r.get("budget", r.get("k"))
        lines.append("| " + " | ".join([
            str(r["pipeline"]), "–" if budget is None or budget != budget else str(int(budget)),
            "–" if k is None or k != k else str(int(k)),
            f"{_fmt(r['n_visual_tokens'], '.0f')} / {_fmt(r['visual_tokens_layer_avg'], '.1f')}",
            _fmt(r.get("prompt_tokens"), ".0f"), _fmt(r["flops_vision"] / 1e9, ".2f"),
            _fmt((r.get("flops_select", 0) + r.get("flops_connector", 0)) / 1e9, ".3f"),
            _fmt(r["flops_prefill"] / 1e9, ".1f"), _fmt(r.get("flops_decode_per_token", float("nan")) / 1e9, ".2f"),
            _fmt(r["flops_total"] / 1e9, ".1f"), _fmt(100 * r.get("flops_share_of_dense", float("nan")), ".1f", " %"),
            _fmt(r.get("flops_saved_pct"), ".1f", " %")]) + " |")
    checks = meta.get("crosscheck") or {}
    vision, lm = checks.get("vision"), checks.get("lm_prefill")
    if vision:
        lines += ["", "Cross-checks:", "",
                  f"* Vision tower as HF runs it (all {vision['vision_layers_total']} layers and its final norm): "
                  f"{vision['vision_tower_hf_forward'] / 1e9:.2f} G"
                  + (f"; published {vision['published_vision'] / 1e9:.2f} G ({vision['published_source']}): "
                     f"{vision['hf_forward_vs_published_pct']:+.2f} %" if vision.get("published_vision") else "")
                  + f". This run stops at the feature layer ({vision['vision_layers_run']} layers): "
                    f"{vision['vision_stage_counted'] / 1e9:.2f} G, {vision['skipped_by_this_run'] / 1e9:.2f} G "
                    f"fewer (layers whose output LLaVA never uses)."]
    if lm:
        lines.append(f"* Dense LM prefill over {lm['prompt_tokens']} tokens: counted {lm['counted'] / 1e9:.3f} G, "
                     f"analytic {lm['analytic'] / 1e9:.3f} G (difference {lm['difference']:,} multiply-adds"
                     + (f": {lm['explained']}" if lm.get("explained") not in (None, "exact") else "") + ").")
    return "\n".join(lines) + "\n"
