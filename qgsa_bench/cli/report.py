"""`qgsa report`: tables and figures from results folders only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qgsa_bench.cli.app import command, console, warn


@command()
def report(
    results: Optional[list[Path]] = typer.Option(
        None, "--results", "-r", metavar="DIR", help="Results folder(s), or folders to search for them (repeatable). "
                                                     "Default: every results folder under results/ and runs/ here."),
    out: Path = typer.Option(Path("report"), help="Where report.md and the figures go."),
):
    """Markdown tables and PNG figures (Figs. 2-5, per-stage breakdown) from result folders only."""
    from qgsa_bench.report import make_report

    written = make_report(list(results) if results else None, out, warn=warn)  # seconds: no progress bar
    console.print(f"wrote {written[0]} and {len(written) - 1} figure(s) in {out}/")
