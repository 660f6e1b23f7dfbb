"""The report's PNG figures: latency vs resolution (Fig. 2), FLOPs reduction (Fig. 3), theoretical vs
measured speedup (Fig. 4), ablation latency (Fig. 5), the per-stage breakdown, batch scaling, the
budget Pareto plot, and grounding's selections. matplotlib is imported when a figure is drawn. A legend
entry or label of a pipeline reading an untrained QGSA module carries † (`cells.untrained`), with one line
under the figure saying what it means."""

from __future__ import annotations

import math
from pathlib import Path

from qgsa_bench.report.cells import UNTRAINED, case_label, scored_n, untrained, wilson, with_dense_comparison

STAGE_COLUMNS = ("vision_ms", "select_ms", "connector_ms", "prefill_ms")  # stacked in figure_stages, then decode
UNTRAINED_LINE = f"{UNTRAINED} untrained QGSA module (random-init, no checkpoint): not a result"
UNTRAINED_COST_LINE = (f"{UNTRAINED} untrained QGSA module (random-init, no checkpoint): what it selects is not a result; "
                       f"its FLOPs and time are the architecture's")
MARKERS = "os^DvP<X>hp*d"  # 13 markers: with 18 colours, (colour, marker) differs for every series up to 234
PANEL_COLUMNS = 3  # the Pareto figure's grid: one panel per question type, 3 to a row


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, top: float = 1.0, flagged: bool = False, line: str = UNTRAINED_COST_LINE) -> Path:
    """Lay out, write and close `fig`; `flagged`: `line` under it says what † means."""
    bottom = 0.0
    if flagged:
        fig.text(0.01, 0.005, line, fontsize=7, va="bottom")
        bottom = min(0.3 / fig.get_figheight(), 0.12)
    fig.tight_layout(rect=(0, bottom, 1, top))
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def model_name(meta: dict) -> str:
    """The model as a title shows it: a local folder by its last name (no file paths in titles)."""
    return Path(str(meta.get("model", "?"))).name or "?"


def _label(meta: dict) -> str:
    return f"{model_name(meta)} b{meta.get('settings', {}).get('batch', '?')}"


def _flag(label: str, row, meta: dict) -> str:
    return f"{label} {UNTRAINED}" if untrained(row, meta) else label


def palette(n: int) -> list:
    """n distinct, saturated colours (tab10, then Dark2, then Set1): no pale tab20 halves."""
    plt = _plt()
    colours = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors, *plt.get_cmap("Set1").colors]
    return [colours[i % len(colours)] for i in range(n)]


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
        regions = record.get("qgsa_regions")  # split images: rectangles in original pixels (report/render.py)
        for x0, y0, x1, y1 in regions if regions is not None else patch_boxes(record["qgsa_patches"], grid, w, h):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor="cyan", edgecolor="black", lw=0.5, alpha=0.45))
        x, y, bw, bh = record["box"]
        ax.add_patch(Rectangle((x, y), bw, bh, fill=False, edgecolor="lime", lw=2))
        ax.set_title(f"{record['question'][:38]}\nIoU {100 * record['qgsa_iou']:.1f}%", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    return _save(fig, path, top=0.9)


def figure_latency(sweeps, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    flagged = False
    for meta, frame in sweeps:
        for pipeline, part in frame.sort_values("resolution").groupby("pipeline"):
            err = [part["latency_ms_median"] - part["latency_ms_p10"], part["latency_ms_p90"] - part["latency_ms_median"]]
            label = _flag(f"{_label(meta)} {pipeline}", part.iloc[0], meta)
            flagged |= label.endswith(UNTRAINED)
            ax.errorbar(part["resolution"], part["latency_ms_median"], yerr=err, marker="o", capsize=3, label=label)
    ax.set(xlabel="input resolution (px)", ylabel="end-to-end latency, median (ms)",
           title="Latency vs resolution (Fig. 2); bars: p10–p90")
    ax.legend(fontsize=7)
    return _save(fig, path, flagged=flagged)


def _qgsa_curves(sweeps, path: Path, series, ylabel: str, title: str, log: bool = False) -> Path:
    """Curves over resolution for the qgsa rows of each sweep; series: (values(rows), style, name)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    flagged = False
    for meta, frame in sweeps:
        part = with_dense_comparison(frame)
        part = part[part["pipeline"] == "qgsa"].sort_values("resolution")
        for values, style, name in series:
            if part.empty:
                continue
            y = values(part)
            label = _flag(f"{_label(meta)} {name}", part.iloc[0], meta)
            flagged |= label.endswith(UNTRAINED)
            if "CI" in name and "speedup_ci_low" in part:  # a measured speedup is drawn with its interval
                err = [y - part["speedup_ci_low"], part["speedup_ci_high"] - y]
                ax.errorbar(part["resolution"], y, yerr=err, fmt=style, capsize=3, label=label)
            else:
                ax.plot(part["resolution"], y, style, label=label)
    if log:
        ax.set_yscale("log")
    ax.axhline(1 if log else 0, color="grey", lw=0.5)
    ax.set(xlabel="input resolution (px)", ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    return _save(fig, path, flagged=flagged)


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
    """Stacked per-stage time of every case the sweep ran (dense first), one panel per resolution, PANEL_COLUMNS
    to a row: where the time goes."""
    plt = _plt()
    frame = frame.assign(_case=[_flag(case_label(r), r, meta) for _, r in frame.iterrows()],
                         _dense=frame["pipeline"] != "dense")
    sizes = sorted(frame["resolution"].unique())
    rows, columns = math.ceil(len(sizes) / min(PANEL_COLUMNS, len(sizes))), min(PANEL_COLUMNS, len(sizes))
    width = max(frame.groupby("resolution").size().max() * 0.55 + 1.2, 3.6)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, 3.9 * rows + 0.5), squeeze=False)
    for ax, size in zip(axes.flat, sizes):
        part = frame[frame["resolution"] == size].sort_values("_dense", kind="stable")
        eff = part["effective_resolution"] if "effective_resolution" in part else part["resolution"]
        labels = [c + (f" (ran {int(e)})" if e == e and int(e) != int(size) else "") for e, c in zip(eff, part["_case"])]
        decode_total = (part["decode_ms_per_token"] * (part["decode_tokens"] - 1).clip(lower=0)).fillna(0)
        stages = [(c.replace("_ms", ""), part[c].fillna(0)) for c in STAGE_COLUMNS]
        stages.append(("decode (all tokens)", decode_total))
        bottom = None
        for name, values in stages:
            ax.bar(range(len(part)), values.to_numpy(), bottom=bottom, label=name)
            bottom = values.to_numpy() if bottom is None else bottom + values.to_numpy()
        ax.set_xticks(range(len(part)), labels, fontsize=7, rotation=35, ha="right")
        ax.set(title=f"{int(size)} px", ylabel="median time (ms)")
    spare = list(axes.flat)[len(sizes):]
    for ax in spare:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    (spare[0] if spare else axes.flat[-1]).legend(handles[::-1], names[::-1], fontsize=7,
                                                  loc="center" if spare else "upper left",
                                                  bbox_to_anchor=None if spare else (1.01, 1))
    fig.suptitle(f"Where the time goes: {_label(meta)}, {meta.get('device', '')}", fontsize=10)
    return _save(fig, path, top=0.93, flagged=frame["_case"].str.endswith(UNTRAINED).any())


def figure_ablation(meta, frame, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    err = [frame["latency_ms_median"] - frame["latency_ms_p10"], frame["latency_ms_p90"] - frame["latency_ms_median"]]
    labels = [_flag(str(r["config"]), r, meta) for _, r in frame.iterrows()]
    ax.bar(labels, frame["latency_ms_median"], yerr=err, capsize=3)
    ax.set(ylabel="end-to-end latency, median (ms)", title=f"Ablation latency (Fig. 5): {_label(meta)}")
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path, flagged=any(label.endswith(UNTRAINED) for label in labels))


def figure_batch_scaling(meta: dict, frame, path: Path) -> Path:
    """Throughput (images/s) against batch size, one panel per resolution, one line per pipeline."""
    plt = _plt()
    sizes = sorted(frame["resolution"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.4), squeeze=False)
    flagged = False
    for ax, size in zip(axes[0], sizes):
        part = frame[frame["resolution"] == size]
        for case, rows in part.assign(_case=[_flag(case_label(r), r, meta) for _, r in part.iterrows()]).groupby("_case"):
            rows = rows.sort_values("batch")
            flagged |= case.endswith(UNTRAINED)
            ax.plot(rows["batch"], rows["throughput_images_per_s"], "o-", label=case)
        ax.set(xscale="log", xlabel="batch", title=f"{int(size)}px")
        ax.set_xticks(sorted(part["batch"].unique()), [str(int(b)) for b in sorted(part["batch"].unique())])
    axes[0][0].set_ylabel("images / s (median latency)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Batch scaling: {model_name(meta)}, {meta.get('device', '')}", fontsize=9)
    return _save(fig, path, top=0.9, flagged=flagged)


def series_label(pipeline: str, point: str) -> str:
    """A selector as a legend shows it, short: the spec as typed, with its point where the default hides it;
    the paper's patch-level forms as '(patches)'."""
    point = str(point)
    if "@" in pipeline or point in ("none", "input", "default", "nan"):
        return pipeline
    if point.startswith("post-vision (patches"):
        return f"{pipeline} (patches)"
    return f"{pipeline}@{point}"


ALLOCATION_LINES = {"fixed": "-", "fcomp": "--", "oracle-type": ":"}  # who decided how many (sweep-budget)


def allocation_of(frame) -> list[str]:
    """Each row's allocation (sweep-budget --allocate), "fixed" where none is named (dense, older results)."""
    if "allocation" not in frame:
        return ["fixed"] * len(frame)
    return [a if isinstance(a, str) and a else "fixed" for a in frame["allocation"]]


def pareto_grid(panels: int) -> tuple[int, int]:
    """(rows, columns) of the Pareto figure: PANEL_COLUMNS to a row; fewer panels, one row with a cell to spare
    for the legend."""
    if panels < PANEL_COLUMNS:
        return 1, panels + 1
    return math.ceil(panels / PANEL_COLUMNS), PANEL_COLUMNS


def pareto_figure(meta: dict, frame, accuracy=None):
    """The Pareto figure, not yet saved: accuracy (with a data set, Wilson 95 % bars; else median latency,
    p10–p90 bars) against end-to-end FLOPs (share of dense), one line per selector over its budgets, each
    point labelled with its budget, dense as a black star; one panel for all questions and one per question
    type, PANEL_COLUMNS to a row, the legend in a free cell (or under the grid)."""
    plt = _plt()
    accuracy_y = "accuracy" in frame and frame["accuracy"].notna().any()
    share = "flops_share_of_dense" in frame and frame["flops_share_of_dense"].notna().any()
    x_col, x_label = (("flops_share_of_dense", "end-to-end FLOPs, % of dense") if share
                      else ("flops_total", "end-to-end GFLOPs (multiply-adds)"))
    scale = 100 if share else 1e-9
    whole = frame.assign(_n=frame["n_eval"] if "n_eval" in frame else float("nan"))
    panels = [("all questions", whole)]
    if accuracy is not None and accuracy_y and len(accuracy):
        types = accuracy[accuracy["scope"] == "type"]
        panels += [(t, part.assign(_n=[scored_n(r) for _, r in part.iterrows()]))
                   for t, part in types.groupby("question_type")]
    flagged = {r["pipeline"] for _, r in frame.iterrows() if untrained(r, meta)}
    dense = set(frame.loc[frame["selector"] == "dense", "pipeline"])
    series = [p for p in dict.fromkeys(frame["pipeline"]) if p not in dense]
    panels = [(title, part.assign(_allocation=allocation_of(part))) for title, part in panels]
    colours = palette(len(series))
    style = {p: (colours[i], MARKERS[i % len(MARKERS)]) for i, p in enumerate(series)}
    rows, columns = pareto_grid(len(panels))
    fig, axes = plt.subplots(rows, columns, figsize=(4.3 * columns, 3.5 * rows + 0.6), squeeze=False)
    handles = {}
    for ax, (title, part) in zip(axes.flat, panels):
        for (pipeline, allocation), points in part.groupby(["pipeline", "_allocation"], sort=False):
            points = points.sort_values(x_col)
            x, y = points[x_col] * scale, points["accuracy" if accuracy_y else "latency_ms_median"]
            if accuracy_y:
                bounds = [wilson(a, n) for a, n in zip(y, points["_n"])]
                err = [[max(a - low, 0) if low == low else 0 for a, (low, _) in zip(y, bounds)],
                       [max(high - a, 0) if high == high else 0 for a, (_, high) in zip(y, bounds)]]
            else:
                err = [points["latency_ms_median"] - points["latency_ms_p10"],
                       points["latency_ms_p90"] - points["latency_ms_median"]]
            dense = (points["selector"] == "dense").all()
            first = points.iloc[0]
            label = "dense" if dense else series_label(pipeline, first.get("point", ""))
            label += f" · {allocation}" if allocation != "fixed" and not dense else ""
            label += f" {UNTRAINED}" if pipeline in flagged else ""
            colour, marker = ("black", "*") if dense else style.get(pipeline, ("grey", "o"))
            line = "none" if dense else ALLOCATION_LINES.get(allocation, "-")
            drawn = ax.errorbar(x, y, yerr=err, linestyle=line, marker=marker, color=colour,
                                ms=11 if dense else 5, lw=1.2, elinewidth=0.8, capsize=2, alpha=0.9, label=label,
                                zorder=3 if dense else 2)
            handles.setdefault(label, drawn)
            if not dense:
                for xi, yi, b in zip(x, y, points["budget"]):
                    ax.annotate(str(int(b)), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=6,
                                color=colour)
        n = part["_n"].dropna()
        ax.set(xlabel=x_label, title=f"{title}" + (f" (n={int(n.iloc[0])})" if len(n) else ""),
               ylabel="accuracy % (95 % CI)" if accuracy_y else "median latency ms (p10–p90)")
        ax.grid(alpha=0.3)
    spare = list(axes.flat)[len(panels):]
    for ax in spare:
        ax.axis("off")
    allocated = any(set(part["_allocation"]) - {"fixed"} for _, part in panels)
    legend = dict(fontsize=7, frameon=False, title_fontsize=7,
                  title="selector · allocation (numbers: mean budget; solid fixed, dashed fcomp, dotted oracle-type)"
                  if allocated else "selector (numbers: budget)")
    if spare:
        spare[0].legend(handles.values(), handles.keys(), loc="center", ncol=2 if len(handles) > 12 else 1, **legend)
    else:
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 5), **legend)
    s = meta.get("settings", {})
    res = f"a {s['image_size']} image in tiles" if s.get("image_size") else f"{s.get('resolution', '?')} px"
    fig.suptitle(f"Selectors at equal budgets: {model_name(meta)} ({meta.get('weights', '?')} weights), {res}",
                 fontsize=10)
    fig.pareto_flagged, fig.pareto_accuracy = bool(flagged), bool(accuracy_y)
    fig.pareto_legend_below = not spare
    return fig


def figure_pareto(meta: dict, frame, accuracy, path: Path) -> Path:
    """`pareto_figure`, written to `path`."""
    fig = pareto_figure(meta, frame, accuracy)
    bottom = 0.0
    if fig.pareto_legend_below:
        bottom = min(0.25 * (1 + math.ceil(len(fig.legends[0].get_texts()) / 5)) / fig.get_figheight(), 0.3)
    if fig.pareto_flagged:
        fig.text(0.01, 0.005, UNTRAINED_LINE if fig.pareto_accuracy else UNTRAINED_COST_LINE, fontsize=7,
                 va="bottom")
        bottom += 0.25 / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 0.95))
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path
