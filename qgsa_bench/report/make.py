"""`qgsa report`: report.md and the figures from the results folders found, one section per folder."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.report.cells import per_batch
from qgsa_bench.report.discover import RESULT_NAMES, SEARCHED, find_results, load_folder, slugs
from qgsa_bench.report.figures import (figure_ablation, figure_batch_scaling, figure_flops_reduction, figure_latency,
                                       figure_pareto, figure_speedup, figure_stages)
from qgsa_bench.report.render import grounding_figures
from qgsa_bench.report.grounding import grounding_markdown, pairs_markdown
from qgsa_bench.report.tables import (budget_markdown, count_markdown, eval_markdown, table4_markdown,
                                      table5_markdown)


def make_report(folders: list[Path] | None, out: Path, warn=None) -> list[Path]:
    """Write report.md and the figures into `out`; returns the files written.

    `folders`: results folders, or folders to search for them. None: search results/ and runs/ of the
    current directory; a damaged folder found by searching is left out with a warning (one named
    explicitly stops the report with one error). A results file that the folder's meta.json does not list
    among the run's `files` is not its output: named explicitly, one error; found by searching, it is left
    out with a warning and the rest of its folder is reported."""
    searched = folders is None
    roots = [Path(r) for r in (SEARCHED if searched else folders)]
    for root in roots:
        if not searched and not root.is_dir():
            raise QGSAError(f"results folder not found: {root}")
    found = find_results(roots)
    if not found:
        where = "results/ or runs/ here" if searched else ", ".join(map(str, roots))
        raise QGSAError(f"no results folder (meta.json beside {', '.join(f'{n}.csv' for n in RESULT_NAMES)}) in "
                        f"{where}: make one with `qgsa sweep-resolution --out runs/sweep` (or eval, grounding, "
                        f"ablate), or pass --results DIR")
    loaded = []
    for folder in found:
        try:
            loaded.append((folder, *load_folder(folder, (warn or (lambda message: None)) if searched else None)))
        except QGSAError as err:
            if not searched:
                raise
            if warn:
                warn(f"left out of the report: {err}")
    if not loaded:
        raise QGSAError(f"every results folder found was damaged ({len(found)}): see the warnings above")
    names = slugs([folder for folder, _, _ in loaded])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, sections, sweeps = [], ["# qgsa-bench report", ""], []
    for folder, meta, tables in loaded:
        try:
            text, files = folder_section(folder, meta, tables, out, names[folder], warn)
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


def folder_section(folder: Path, meta: dict, tables: dict, out: Path, slug: str,
                   warn=None) -> tuple[str, list[Path]]:
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
        parts.append(budget_markdown(tables["budget"], meta, tables.get("accuracy")))
        written.append(figure_pareto(meta, tables["budget"], tables.get("accuracy"), out / f"pareto_{slug}.png"))
        parts.append(f"![accuracy or latency against FLOPs](pareto_{slug}.png)\n")
    if "flops" in tables:
        parts.append(count_markdown(tables["flops"].to_dict("records"), meta))
    if "lmms" in tables:
        from qgsa_bench.report.lmms import lmms_markdown

        parts.append(lmms_markdown(tables["lmms"], meta))
    if "grounding" in tables:
        parts.append(grounding_markdown(tables["grounding"], meta))
        if "pairs" in tables:
            parts.append(pairs_markdown(tables["pairs"], meta))
        figures = grounding_figures(folder, meta, out=out, suffix=f"_{slug}", warn=warn)
        written += figures
        parts += [f"![{path.stem.rpartition('_' + slug)[0]}]({path.name})\n" for path in figures]
    return "\n".join(parts), written
