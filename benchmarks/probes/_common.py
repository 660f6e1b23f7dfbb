"""What the probes share: the arguments every probe takes, and how a probe leaves its result lines.

Imported by the probes as `_common` (run as `python3 benchmarks/probes/NAME.py`, their folder is on sys.path).
"""

from __future__ import annotations

import argparse
from pathlib import Path

BASE = "results/shapes/base-model"


def probe_parser(doc: str, out_help: str, base: bool = True) -> argparse.ArgumentParser:
    """An argparse parser titled by the probe's docstring, with --base (the trained shapes base) and --out."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if base:
        parser.add_argument("--base", default=BASE, help="base model folder (qgsa base-train)")
    parser.add_argument("--out", type=Path, help=out_help)
    return parser


def run_options(parser: argparse.ArgumentParser, seed_help: str) -> argparse.ArgumentParser:
    """--seed and --device, the last options of every probe."""
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--device", default="cpu")
    return parser


def write_lines(lines: list[str], out: Path | None) -> list[str]:
    """The result lines, also written to `out` (its folder made) when given."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
    return lines
