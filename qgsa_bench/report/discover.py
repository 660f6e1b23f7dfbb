"""Finding results folders and reading them whole, each CSV checked against its writer's schema before
any table is made (a damaged file stops the report with one error, or leaves its folder out)."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.results import read_meta, read_rows

# a results folder: meta.json beside one of these NAME.csv
RESULT_NAMES = ("sweep", "ablate", "eval", "grounding", "budget", "flops")
COMPANIONS = {"accuracy": "budget", "pairs": "grounding"}  # read with the results file they sit beside
SEARCHED = ("results", "runs")  # where `qgsa report` without --results looks


def schemas() -> dict[str, list[str]]:
    """Each CSV's columns as its writer declares them. Imported here, not at module level: the writers
    import the tables of this package when they finish."""
    from qgsa_bench.experiments.ablate import ABLATE_COLUMNS
    from qgsa_bench.experiments.budget import ACCURACY_COLUMNS, BUDGET_COLUMNS
    from qgsa_bench.experiments.count import COLUMNS as COUNT_COLUMNS
    from qgsa_bench.experiments.sweep import SWEEP_COLUMNS
    from qgsa_bench.experiments.evaluate import EVAL_COLUMNS
    from qgsa_bench.experiments.grounding import GROUNDING_COLUMNS, PAIR_COLUMNS

    return {"sweep": SWEEP_COLUMNS, "ablate": ABLATE_COLUMNS, "eval": EVAL_COLUMNS, "grounding": GROUNDING_COLUMNS,
            "budget": BUDGET_COLUMNS, "flops": COUNT_COLUMNS, "accuracy": ACCURACY_COLUMNS, "pairs": PAIR_COLUMNS}


def added_later() -> dict[str, tuple[str, ...]]:
    """The columns each writer added after its format's first release: folders written before them still
    make tables (their cells show "–"), so a CSV need not hold them."""
    from qgsa_bench.experiments.runner import PEER_COLUMNS, STAT_COLUMNS, THROUGHPUT_COLUMNS

    timing = (*STAT_COLUMNS, *THROUGHPUT_COLUMNS)
    return {"sweep": ("case", *timing, *PEER_COLUMNS), "ablate": ("accuracy", "accuracy_n", *timing),
            "eval": ("n_scored",), "grounding": ("acc_iou_0_5",), "budget": ("budget_unit",),
            "flops": ("budget", "budget_unit")}


def required_columns() -> dict[str, list[str]]:
    """NAME -> the columns NAME.csv must hold: its writer's, less those added later."""
    later = added_later()
    return {name: [c for c in columns if c not in later.get(name, ())] for name, columns in schemas().items()}


def load_folder(folder: Path):
    """(meta, {result name: frame}) of one results folder, its companion files (accuracy.csv, pairs.csv) included."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QGSAError(f"results folder not found: {folder}")
    meta = read_meta(folder)
    if meta is None:
        raise QGSAError(f"{folder} has no meta.json: is it a qgsa-bench results folder?")
    present = [name for name in RESULT_NAMES if (folder / f"{name}.csv").exists()]
    if not present:
        raise QGSAError(f"{folder} holds none of {', '.join(f'{n}.csv' for n in RESULT_NAMES)}")
    present += [name for name, beside in COMPANIONS.items() if beside in present and (folder / f"{name}.csv").is_file()]
    required = required_columns()
    return meta, {name: read_rows(folder / f"{name}.csv", required[name]) for name in present}


def slugs(folders: list[Path]) -> dict[Path, str]:
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
    return (folder / "meta.json").is_file() and any((folder / f"{n}.csv").is_file() for n in RESULT_NAMES)


def find_results(roots: list[Path]) -> list[Path]:
    """Every results folder at or under `roots` (sorted, each once)."""
    found = []
    for root in map(Path, roots):
        if root.is_dir():
            found += [root] if is_results_folder(root) else \
                [p.parent for p in sorted(root.rglob("meta.json")) if is_results_folder(p.parent)]
    return list(dict.fromkeys(found))
