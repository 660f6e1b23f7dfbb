"""Table 3 and the question pairs of a grounding folder (experiments/grounding.py): every selector at every
budget (IoU, pointing game, share of kept patches in the box), or, for a folder from before every selector was
grounded, qgsa / random / norm / oracle at one k. `qgsa report` and the command's own table3.md call these."""

from __future__ import annotations

from qgsa_bench.report.cells import Notes, accuracy_with_ci, flag_untrained, fmt, header, markdown_rows


def grounding_markdown(frame, meta: dict | None) -> str:
    """Table 3: a grounding folder's rows. Every selector at every budget (`budget_unit` column, since issue 22):
    one row per selector x budget (all questions), then IoU / pointing / share per question type; a folder from
    before: one row per selector and question type at one k."""
    if "budget_unit" in frame and frame["budget_unit"].notna().any():
        return selectors_grounding_markdown(frame, meta)
    meta = meta or {}
    lines = header(meta, f"Grounding IoU on {meta.get('dataset', '?')} ({meta.get('split', '?')}) (cf. the paper's Table 3)")
    notes = Notes()
    lines += markdown_rows(
        ["Question type", "Selector", "n", "mean IoU (%)", "median IoU (%)", "IoU ≥ 0.5 (%) [95 % CI]", "mean k"],
        ([r["question_type"], flag_untrained(r["selector"], r, meta, notes), int(r["n"]), fmt(r["mean_iou"]),
          fmt(r["median_iou"]), accuracy_with_ci(r.get("acc_iou_0_5"), r["n"]), fmt(r["k_mean"], ".1f")]
         for _, r in frame.iterrows()))
    lines += notes.lines()
    k = (meta.get("settings") or {}).get("k")
    budget = f"the fixed k = {k}" if k is not None else "QGSA's k per sample (f_comp)"
    lines += ["", "IoU between the convex hull of the selected patches (in the original image's pixels) and "
              f"the ground-truth box. All selectors use {budget}; the oracle is the best "
              "rectangular hull of at most k patches (the ceiling). IoU ≥ 0.5: the share of boxes found, "
              "RefCOCO's comprehension accuracy rule (MAttNet's evaluation, with the hull as the predicted region), "
              "with its 95 % Wilson score interval over the n boxes."]
    return "\n".join(lines) + "\n"


GROUNDING_NOTE = (
    "Each selector's kept patches are those behind the visual tokens it keeps (after its last cut for the in-LM "
    "selectors), mapped back to the original image's pixels. A budget counts the pipeline's own units: patches for "
    "the seed paper's patch-level `qgsa`, `random`, `norm` (and `oracle`), visual tokens of s×s patches for every "
    "other selector (and `oracle@tokens`); *kept patches* shows what was compared. **IoU**: of the kept patches' "
    "convex hull with the box (IoU ≥ 0.5: the share of boxes found, RefCOCO's comprehension rule, with its 95 % "
    "Wilson interval). **Pointing**: the kept patch nearest the centroid of the kept patches points; a hit when "
    "its centre lies in the box (95 % Wilson interval). **In box**: the share of the kept patches whose centre "
    "lies in the box. The oracle is the best selection of at most k patches whose hull is a grid-aligned rectangle "
    "(IoU's ceiling; k = b patches, or b·s² for b visual tokens; its ≤ 4 corner patches are what its pointing and "
    "in-box columns read, not a ceiling for them). VisionZip: only its selected (dominant) tokens are grounded, not "
    "the contextual tokens it merges from the rest of the image. Random selectors draw per sample.")


SPLIT_NOTE = (
    "**On the model's own views** (experiments/grounding_views.py): every kept patch is the rectangle of the original "
    "image it covers (a tile's patch a small one, a global-view patch a block of the whole image). A tile selector "
    "(budget in tiles) is grounded by its chosen tiles; the global view that comes with it is not counted (chosen by "
    "none, the whole image whatever the question). Every other selector keeps visual tokens over all views, its "
    "global-view tokens included as their blocks. **Tiles touched**: a tile selector's chosen tiles, else the tiles "
    "holding a kept token; **tile hit**: the box's centre lies in a touched tile; **tile IoU**: hull of the touched "
    "tiles with the box; **tile Jaccard**: touched tiles vs the tiles the box overlaps; **in box's tiles**: the share "
    "of the kept tile patches (global view left out) in the tiles the box overlaps (chance: their share of the "
    "tiles). `oracle-tiles`: the box's tiles (at most T); `oracle@tokens`: the one-view oracle on the patch grid of "
    "the box's tile.")


def _budget_cell(row) -> str:
    unit = "tokens" if str(row.get("budget_unit")) == "visual tokens" else str(row.get("budget_unit"))
    budget = row.get("budget")
    if budget is None or budget != budget or budget == "":
        return f"f_comp (mean {fmt(row.get('k_mean'), '.1f')} {unit})"
    return f"{int(float(budget))} {unit}"


def _grounding_flag(label: str, row, meta: dict, notes: Notes) -> str:
    """The untrained mark where the row's selection is an untrained module's: a QGSA scorer, or f_comp's budget
    (no fixed budget); the patch-level `random`/`norm` read the module only to answer, not to select."""
    from qgsa_bench import QGSAError
    from qgsa_bench.report.cells import UNTRAINED, UNTRAINED_NOTE
    from qgsa_bench.run.spec import parse_spec

    weights = row.get("qgsa_weights") if isinstance(row.get("qgsa_weights"), str) else meta.get("qgsa_weights")
    if not str(weights).startswith("random-init"):
        return label
    budget = row.get("budget")
    try:
        reads = parse_spec(label).selector.uses_module
    except QGSAError:  # the oracle
        reads = False
    if not reads and budget is not None and budget == budget and budget != "":
        return label
    notes.mark(UNTRAINED, UNTRAINED_NOTE)
    return f"{label} {UNTRAINED}"


def selectors_grounding_markdown(frame, meta: dict | None) -> str:
    """Every selector x budget: where it sits, whether it reads the question, the budget in its units, the mean
    kept patches, IoU (mean, >= 0.5), pointing and share in box, over all questions; then per question type."""
    meta = meta or {}
    notes = Notes()
    order = {label: i for i, label in enumerate(meta.get("pipelines") or dict.fromkeys(frame["selector"]))}
    frame = frame.assign(_order=[order.get(x, len(order)) for x in frame["selector"]],
                         _budget=[float("inf") if b != b or b == "" else float(b) for b in frame["budget"]])
    frame = frame.sort_values(["_budget", "_order"], kind="stable")
    overall = frame[frame["question_type"] == "all"]
    ns = sorted({int(n) for n in overall["n"]})
    lines = header(meta, f"Grounding IoU, pointing game and share in the box of every selector on "
                         f"{meta.get('dataset', '?')} ({meta.get('split', '?')}) (cf. the paper's Table 3)")
    split = "splitting" in meta
    where = (f"on the model's own views ({meta.get('image_input', '?')}), in the original image's pixels: a patch grid "
             f"of {meta.get('grid', '?')}×{meta.get('grid', '?')} per {meta.get('resolution', '?')}-px view"
             if split else f"a patch grid of {meta.get('grid', '?')}×{meta.get('grid', '?')} at "
                           f"{meta.get('resolution', '?')} px")
    lines += [f"{ns[0] if len(ns) == 1 else ', '.join(map(str, ns))} boxes per row; {where}, "
              f"{meta.get('unit_patches', '?')} patches per visual token.", ""]
    tiled = "tile_hit" in overall and overall["tile_hit"].notna().any()

    def tile_cells(r) -> list[str]:
        if not tiled:
            return []
        return [fmt(r.get("kept_tiles_mean"), ".2f"), fmt(r.get("tile_hit"), ".1f"), fmt(r.get("tile_iou"), ".1f"),
                fmt(r.get("tile_jaccard"), ".1f"), fmt(r.get("referent_tile_share"), ".1f")]

    lines += markdown_rows(
        ["selector", "insertion point", "question-guided", "budget", "kept patches", "IoU %", "IoU ≥ 0.5 % [95 % CI]",
         "pointing % [95 % CI]", "in box %",
         *(["tiles touched", "tile hit %", "tile IoU %", "tile Jaccard %", "in box's tiles %"] if tiled else [])],
        ([_grounding_flag(r["selector"], r, meta, notes), r.get("point", "–"),
          "yes" if str(r.get("question_guided")) == "True" else "no", _budget_cell(r),
          fmt(r.get("kept_patches_mean"), ".1f"), fmt(r["mean_iou"], ".1f"),
          accuracy_with_ci(r.get("acc_iou_0_5"), r["n"], ".1f"), accuracy_with_ci(r.get("pointing"), r["n"], ".1f"),
          fmt(r.get("share_in_box"), ".1f"), *tile_cells(r)] for _, r in overall.iterrows()))
    types = [t for t in dict.fromkeys(frame["question_type"]) if t != "all"]
    if types:
        per = frame[frame["question_type"] != "all"].set_index(["selector", "_budget", "question_type"])
        n_of = {t: int(per.xs(t, level="question_type")["n"].max()) for t in types}
        lines += ["", "Per question type: IoU % / pointing % / in box %", ""]
        rows = []
        for _, r in overall.iterrows():
            cells = []
            for t in types:
                key = (r["selector"], r["_budget"], t)
                cells.append("–" if key not in per.index else
                             f"{fmt(per.loc[key, 'mean_iou'], '.1f')} / {fmt(per.loc[key, 'pointing'], '.1f')} / "
                             f"{fmt(per.loc[key, 'share_in_box'], '.1f')}")
            rows.append([_grounding_flag(r["selector"], r, meta, notes), _budget_cell(r), *cells])
        lines += markdown_rows(["selector", "budget", *(f"{t} (n={n_of[t]})" for t in types)], rows)
    lines += notes.lines() + ["", GROUNDING_NOTE] + (["", SPLIT_NOTE] if split else [])
    return "\n".join(lines) + "\n"


def pairs_markdown(frame, meta: dict | None = None) -> str:
    notes = Notes()
    lines = ["### Question dependence: two questions about different objects of one image", ""]
    budgets = "budget_unit" in frame and frame["budget_unit"].notna().any()
    if budgets:  # every selector at every budget (since issue 22)
        label = lambda r: _grounding_flag(r["selector"], r, meta or {}, notes)  # noqa: E731
    else:
        label = lambda r: flag_untrained(r["selector"], r, meta, notes)  # noqa: E731
    lines += markdown_rows(
        ["Selector", *(["budget"] if budgets else []), "pairs", "mean Jaccard of the two selections",
         "share inside own object's box", "share inside the other object's box"],
        ([label(r), *([_budget_cell(r)] if budgets else []), int(r["n_pairs"]), fmt(r["mean_jaccard"], ".3f"),
          fmt(100 * r["share_in_own_box"], ".1f", "%"),
          fmt(100 * r["share_in_other_box"], ".1f", "%")] for _, r in frame.iterrows()))
    lines += notes.lines() + ["", "For `random` the two selections are independent draws (chance overlap). `norm` ignores the "
              "question, so its two selections are identical (Jaccard 1) whenever k is the same."]
    return "\n".join(lines) + "\n"
