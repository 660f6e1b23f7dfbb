"""A results folder's own tables and figures, made from its files once the command that wrote them is done.

    sweep.csv -> table4.md         ablate.csv -> table5.md        eval.csv -> table.md
    budget.csv (+ accuracy.csv) -> table.md                       flops.csv -> table.md
    lmms.csv -> table.md (report/lmms.py)
    grounding.csv (+ pairs.csv) -> table3.md, selections.png, pair.png (the images read again from the data
    set the run names in meta.json: the same samples, found by id)
The commands write rows and meta.json only (experiments/); the CLI calls `render_folder` after them, and
anyone can call it again on a folder. Raises QGSAError for a folder that is not a results folder or holds a
damaged file; a file that meta.json's `files` does not list is not the run's and is left out (`warn` says so).
"""

from __future__ import annotations

import json
from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.report.discover import belongs, is_results_folder, load_folder
from qgsa_bench.report.grounding import grounding_markdown, pairs_markdown
from qgsa_bench.report.tables import (budget_markdown, count_markdown, eval_markdown, table4_markdown,
                                      table5_markdown)

FIGURE_SAMPLES = 4  # images in selections.png


def render_folder(folder, warn=None) -> list[Path]:
    """Write the tables (and grounding figures) of `folder` from its CSVs and meta.json; the paths written."""
    folder = Path(folder)
    if not is_results_folder(folder):
        return []
    warn = warn or (lambda message: None)
    meta, tables = load_folder(folder, warn)
    texts = {}
    if "sweep" in tables:
        texts["table4.md"] = table4_markdown(tables["sweep"], meta)
    if "ablate" in tables:
        texts["table5.md"] = table5_markdown(tables["ablate"], meta)
    if "eval" in tables:
        texts["table.md"] = eval_markdown(tables["eval"], meta)
    if "budget" in tables:
        texts["table.md"] = budget_markdown(tables["budget"], meta, tables.get("accuracy"))
    if "flops" in tables:
        records = [{k: v for k, v in row.items() if v == v} for row in tables["flops"].to_dict("records")]  # no NaN
        texts["table.md"] = count_markdown(records, meta)
    if "lmms" in tables:
        from qgsa_bench.report.lmms import lmms_markdown

        texts["table.md"] = lmms_markdown(tables["lmms"], meta)
    if "grounding" in tables:
        pairs = tables.get("pairs")
        texts["table3.md"] = grounding_markdown(tables["grounding"], meta) + (
            "" if pairs is None else "\n" + pairs_markdown(pairs, meta))
    written = []
    for name, text in texts.items():
        (folder / name).write_text(text)
        written.append(folder / name)
    if "grounding" in tables:
        written += grounding_figures(folder, meta, warn=warn)
    return written


GROUNDED = "grounding.jsonl"  # the per-sample selections the figures draw (experiments/grounding.py)


def grounding_figures(folder: Path, meta: dict, shown: int = FIGURE_SAMPLES, out: Path | None = None,
                      suffix: str = "", warn=None) -> list[Path]:
    """selections.png (the first `shown` samples: one selector's kept patches and the box) and pair.png (the first
    two questions about different objects of one image), on the images of the data set the run read, written
    into `out` (default: the folder) as selections{suffix}.png and pair{suffix}.png. The selector drawn: `qgsa`
    (else the run's first pipeline) at the run's first budget (`figure_records`). A folder from before meta.json
    named the patch grid gives the figures it holds; none where its grounding.jsonl is not the run's (`belongs`)
    or the data set cannot be read here (`warn` says which)."""
    from qgsa_bench.experiments.grounding import pair_indices, settings_samples
    from qgsa_bench.report.cells import UNTRAINED, untrained
    from qgsa_bench.report.figures import figure_pair, figure_selections, model_name

    grid = meta.get("grid")
    path = folder / GROUNDED
    out = Path(out or folder)
    if grid is None:  # a folder from before meta.json named the patch grid: the figures its run drew, if any
        return _copied(folder, out, suffix)
    if not path.is_file() or not belongs(folder, meta, GROUNDED, warn):
        return []
    records, label = figure_records([json.loads(line) for line in path.read_text().splitlines() if line.strip()], meta)
    if not records:
        return []
    try:
        _, samples = settings_samples(meta["settings"])
    except (QGSAError, OSError, TypeError) as err:
        if warn:
            warn(f"{folder}: no grounding figures, the data set its run read cannot be read here ({err})")
        return []
    by_id = {s.id: s for s in samples}
    title = f"{model_name(meta)} ({meta.get('weights', '?')} weights)"
    flagged = untrained({"selector": label.partition(" ")[0]}, meta) and label.startswith("qgsa")
    shown_label, note = ((f"{label} {UNTRAINED}", f"\n{UNTRAINED} untrained QGSA module (random-init, no checkpoint): "
                          f"not a result") if flagged else (label, ""))
    items = [(by_id[r["id"]].open_image(), r) for r in records[:shown] if r["id"] in by_id]
    written = [figure_selections(items, grid, out / f"selections{suffix}.png",
                                 title=f"{title}: {shown_label} (cyan) vs box (green){note}")]
    pairs = pair_indices(records)
    if pairs:
        first, second = records[pairs[0][0]], records[pairs[0][1]]
        written.append(figure_pair(by_id[first["id"]].open_image(), first, second, grid, out / f"pair{suffix}.png",
                                   title=f"{title}: two questions, one image, {shown_label} (cyan){note}"))
    return written


def figure_records(records: list[dict], meta: dict) -> tuple[list[dict], str]:
    """(the records the figures draw, each with `qgsa_patches` and `qgsa_iou` as figures.py reads them; the label
    of what they show). A grounding.jsonl of every selector (records with `pipeline`): `qgsa`'s (else the first
    pipeline's) at the first budget; a folder from before: its qgsa records as they are."""
    if not records or "pipeline" not in records[0]:
        return records, "qgsa"
    pipelines = meta.get("pipelines") or list(dict.fromkeys(r["pipeline"] for r in records))
    label = "qgsa" if "qgsa" in pipelines else pipelines[0]
    budgets = (meta.get("budgets_of") or {}).get(label, meta.get("budgets", []))  # split images: each label's own
    budget = next((None if b == "f_comp" else b for b in budgets), records[0].get("budget"))
    chosen = [{**r, "qgsa_patches": r["patches"], "qgsa_iou": r["iou"], **split_regions(r)} for r in records
              if r["pipeline"] == label and r.get("budget") == budget]
    unit = {"visual tokens": "tokens", "tiles": "tiles"}.get(chosen[0].get("unit"), "patches") if chosen else "patches"
    return chosen, label + ("" if budget is None else f" at {budget} {unit}")


def split_regions(record: dict) -> dict:
    """A split-image record's kept patches as rectangles in original pixels (`qgsa_regions`, what figures.py draws
    instead of one view's patch grid); {} for a one-view record."""
    if "view_boxes" not in record:
        return {}
    from qgsa_bench.experiments.grounding_views import kept_rects

    return {"qgsa_regions": kept_rects(record)}


def _copied(folder: Path, out: Path, suffix: str) -> list[Path]:
    """selections.png and pair.png of an old grounding folder, copied into `out` (nothing to do in place)."""
    import shutil

    if out.resolve() == folder.resolve():
        return []
    return [Path(shutil.copyfile(folder / f"{name}.png", out / f"{name}{suffix}.png"))
            for name in ("selections", "pair") if (folder / f"{name}.png").is_file()]
