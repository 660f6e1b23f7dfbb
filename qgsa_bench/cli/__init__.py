"""The `qgsa` command line. Each command parses its options, builds a config, calls one library function
and prints what it returns (a Rich table, or the Markdown table the run wrote).

app.py holds the Typer app and what every command shares (one `error:` line and exit status 2 for a
`QGSAError`); options.py the options several commands share, declared once; multivalue.py the options that
take several values; progress.py the progress bar every long command runs under. The commands:
explore.py (info, ask), measure.py (sweep-resolution, sweep-budget, count-flops, ablate), report.py,
data.py (eval, grounding, data shapes), training.py (train, base-train), lmms.py (lmms-eval). Nothing heavy is imported until a
command runs, so `qgsa --help` stays instant.
"""

from qgsa_bench.cli.app import app
# importing the command modules registers their commands, in the order --help lists them
from qgsa_bench.cli import explore, measure, report, data, training, lmms  # noqa: E402,F401

__all__ = ["app", "main"]


def main() -> None:
    app()
