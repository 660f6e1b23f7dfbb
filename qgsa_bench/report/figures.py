"""The report's PNG figures: latency vs resolution (Fig. 2), FLOPs reduction (Fig. 3), theoretical vs
measured speedup (Fig. 4), ablation latency (Fig. 5), the per-stage breakdown, batch scaling, the
budget Pareto plot, and grounding's selections. matplotlib is imported when a figure is drawn."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench.report.cells import case_label, with_dense_comparison

STAGE_COLUMNS = ("vision_ms", "select_ms", "connector_ms", "prefill_ms")  # stacked in figure_stages, then decode


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, top: float = 1.0) -> Path:
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def _label(meta: dict) -> str:
    return f"{meta.get('model', '?')} b{meta.get('settings', {}).get('batch', '?')}"


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


def figure_batch_scaling(meta: dict, frame, path: Path) -> Path:
    """Throughput (images/s) against batch size, one panel per resolution, one line per pipeline."""
    plt = _plt()
    sizes = sorted(frame["resolution"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.4), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        part = frame[frame["resolution"] == size]
        for case, rows in part.assign(_case=[case_label(r) for _, r in part.iterrows()]).groupby("_case"):
            rows = rows.sort_values("batch")
            ax.plot(rows["batch"], rows["throughput_images_per_s"], "o-", label=case)
        ax.set(xscale="log", xlabel="batch", title=f"{int(size)}px")
        ax.set_xticks(sorted(part["batch"].unique()), [str(int(b)) for b in sorted(part["batch"].unique())])
    axes[0][0].set_ylabel("images / s (median latency)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Batch scaling: {meta.get('model', '?')}, {meta.get('device', '')}", fontsize=9)
    return _save(fig, path, top=0.9)


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
