"""`qgsa report`: Markdown tables and PNG figures from result folders (CSV + meta.json) only.

Tables (tables.py): a Table-4-style efficiency table per sweep (the paper's metrics beside the measured ones),
a Table-5-style ablation table, Tables 1-2-style accuracy, a Table-3-style grounding table, selectors at equal
budgets and counted FLOPs. Figures (figures.py, matplotlib loaded when drawn): latency vs resolution (Fig. 2),
FLOPs reduction (Fig. 3), theoretical vs measured speedup (Fig. 4), ablation latency (Fig. 5), a per-stage
breakdown of every case at each resolution, batch scaling and the budget Pareto plot. cells.py holds what the
tables share: a row reading an untrained QGSA module is marked † (`untrained`), every accuracy carries its n
and a 95 % Wilson interval (`wilson`), footnotes are stated once (`Notes`). discover.py finds and checks the
folders (each CSV against its writer's columns, each file against the run's own list in meta.json);
render.py writes a folder's own tables and figures after its command; make.py puts the report together.
"""

from qgsa_bench.report.cells import per_batch, speedup_cell, untrained, wilson, with_dense_comparison
from qgsa_bench.report.discover import find_results, is_results_folder, load_folder
from qgsa_bench.report.figures import (figure_ablation, figure_batch_scaling, figure_flops_reduction, figure_latency,
                                       figure_pair, figure_pareto, figure_selections, figure_speedup, figure_stages,
                                       pareto_figure)
from qgsa_bench.report.make import make_report
from qgsa_bench.report.render import render_folder
from qgsa_bench.report.grounding import grounding_markdown, pairs_markdown
from qgsa_bench.report.tables import (budget_markdown, count_markdown, eval_markdown, table4_markdown,
                                      table5_markdown, write_table4)

__all__ = [
    "budget_markdown", "count_markdown", "eval_markdown", "figure_ablation", "figure_batch_scaling",
    "figure_flops_reduction", "figure_latency", "figure_pair", "figure_pareto", "figure_selections", "figure_speedup",
    "figure_stages", "find_results", "grounding_markdown", "is_results_folder", "load_folder", "make_report",
    "pairs_markdown", "pareto_figure", "per_batch", "render_folder", "speedup_cell", "table4_markdown", "table5_markdown",
    "untrained", "wilson", "with_dense_comparison", "write_table4",
]
