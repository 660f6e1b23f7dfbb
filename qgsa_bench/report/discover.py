"""Finding results folders and reading them whole, each CSV checked against its writer's schema before
any table is made (a damaged file stops the report with one error, or leaves its folder out), and each file
checked against the run's own list (meta.json `files`): a file the run did not write is not its output."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.results import read_meta, read_rows

# a results folder: meta.json beside one of these NAME.csv
RESULT_NAMES = ("sweep", "ablate", "eval", "grounding", "budget", "flops", "lmms")
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
    from qgsa_bench.integrations.lmms_run import LMMS_COLUMNS

    return {"sweep": SWEEP_COLUMNS, "ablate": ABLATE_COLUMNS, "eval": EVAL_COLUMNS, "grounding": GROUNDING_COLUMNS,
            "budget": BUDGET_COLUMNS, "flops": COUNT_COLUMNS, "accuracy": ACCURACY_COLUMNS, "pairs": PAIR_COLUMNS,
            "lmms": LMMS_COLUMNS}


def added_later() -> dict[str, tuple[str, ...]]:
    """The columns each writer added after its format's first release: folders written before them still
    make tables (their cells show "–"), so a CSV need not hold them."""
    from qgsa_bench.experiments.runner import PEER_COLUMNS, STAT_COLUMNS, THROUGHPUT_COLUMNS

    timing = (*STAT_COLUMNS, *THROUGHPUT_COLUMNS)
    views = ("longest_edge", "views", "image_input")  # sweep-resolution --longest-edge (issue 19)
    return {"sweep": ("case", *timing, *PEER_COLUMNS, *views), "ablate": ("accuracy", "accuracy_n", *timing),
            "eval": ("n_scored",), "budget": ("budget_unit", "speedup_equal_inputs", "allocation", "budget_mean_realised",
                                                     "budget_std", "latency_ms_per_query_eval", "image_size", *views),
            "accuracy": ("allocation", "k_std", "latency_ms_per_query",  # budget allocation (issue 22)
                         "tiles_mean", "image_input"),  # sweep-budget accuracy on split images (issue 19)
            # every selector at every budget (issue 22); a folder from before holds qgsa/random/norm/oracle at one k
            "grounding": ("acc_iou_0_5", "point", "question_guided", "budget", "budget_unit", "pointing", "share_in_box",
                          "kept_patches_mean", "image_input", "tile_hit", "tile_iou", "tile_jaccard", "kept_tiles_mean",
                          "global_patches_mean", "referent_tile_share"),
            "pairs": ("budget", "budget_unit"),
            "flops": ("budget", "budget_unit", "formula_fastv_prefill", "formula_ffn3_prefill", "image_size", "views",
                      "views_encoded")}


def required_columns() -> dict[str, list[str]]:
    """NAME -> the columns NAME.csv must hold: its writer's, less those added later."""
    later = added_later()
    return {name: [c for c in columns if c not in later.get(name, ())] for name, columns in schemas().items()}


def belongs(folder: Path, meta: dict, name: str, warn=None) -> bool:
    """Whether file `name` of `folder` is the run's own output: listed in meta.json's `files` (every file the
    run wrote, kept by the results driver), or any file of a folder from before that list. An unlisted file
    raises QGSAError (one line) when `warn` is None, else is warned about and left out (False)."""
    if "files" not in meta or name in meta["files"]:
        return True
    problem = (f"{folder / name} is not among the files its meta.json lists as the run's own (a file copied in or "
               f"left by another run?): move it out of {folder}, or rerun the command in its meta.json")
    if warn is None:
        raise QGSAError(problem)
    warn(f"left out of the report: {problem}")
    return False


def load_folder(folder: Path, warn=None):
    """(meta, {result name: frame}) of one results folder, its companion files (accuracy.csv, pairs.csv) included.
    A CSV that meta.json's `files` does not list raises QGSAError, or with `warn` is left out (`belongs`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QGSAError(f"results folder not found: {folder}")
    meta = read_meta(folder)
    if meta is None:
        raise QGSAError(f"{folder} has no meta.json: is it a qgsa-bench results folder?")
    present = [name for name in RESULT_NAMES if (folder / f"{name}.csv").exists()
               and belongs(folder, meta, f"{name}.csv", warn)]
    if not present:
        raise QGSAError(f"{folder} holds none of {', '.join(f'{n}.csv' for n in RESULT_NAMES)}"
                        + (" listed in its meta.json's files" if "files" in meta else ""))
    present += [name for name, beside in COMPANIONS.items() if beside in present and (folder / f"{name}.csv").is_file()
                and belongs(folder, meta, f"{name}.csv", warn)]
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
