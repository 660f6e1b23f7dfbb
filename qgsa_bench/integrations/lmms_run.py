"""`qgsa lmms-eval`: lmms-eval's tasks answered by qgsa-bench pipelines, written as a qgsa-bench results folder.

    lmms.csv                one row per (pipeline, task, metric, filter): lmms-eval's score (its own metric and
                            aggregation) beside the mean visual tokens kept and the mean counted FLOPs by stage
                            per sample, and the share of the dense pipeline's FLOPs when dense ran too; the image
                            input (`image_input`, run/inputs.describe_input) and on split images the mean tiles encoded
    samples_{pipeline}.jsonl  lmms-eval's per-sample log (doc_id, target, resps, filtered_resps, metrics...) with
                            `task` and `qgsa` (lmms.Bridge: tokens kept, kept indices, FLOPs by stage)
    lmms_results_{pipeline}.json  lmms-eval's results (results, versions, configs, n-samples, n-shot)
    meta.json               lmms-eval's version, the tasks and their versions, the settings, the weights, the image
                            input (`image_input`; `splitting`: the processor's settings where it split)
One image input for every pipeline of a run (lmms.bridge_input: the model's own views unless resolution is given
or a pipeline takes one view only). Every check (lmms-eval installed, the options after `--`, the tasks, the
input, the pipelines against the model and the input) runs before any answer; a refused run leaves no results folder behind (driver.Results).

Under a launch of several processes (accelerate launch / torchrun ... -m qgsa_bench.cli lmms-eval) every
process joins the launch (parallel.join_world) and lmms-eval shards the documents and gathers the scores itself
(lmms_model.py); the processes' per-sample logs (visual tokens, FLOPs) are gathered to every process, and only
the main process writes the folder (driver.Results): one lmms.csv, samples in document order, one meta.json
naming the world. With --batch 1 every answer is the one-process run's; with a larger --batch a process's
batches hold other documents than one process's (d, d + W, ...), so answers equal the one-process run's only
as far as the model's batched answers equal its solo answers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.integrations.lmms import (FLOP_STAGES, Bridge, ModelArgs, bridge_input, filelock_workaround,
                                          lmms_eval_version)

LMMS_COLUMNS = ["model", "weights", "qgsa_weights", "lmms_eval", "task", "task_version", "output_type", "metric",
                "filter", "value", "stderr", "n", "pipeline", "point", "k", "share", "visual_tokens_kept_mean",
                "visual_tokens_to_lm_mean", *(f"flops_{s}" for s in FLOP_STAGES), "flops_total",
                "flops_share_of_dense", "note", "image_input", "tiles_mean"]
LMMS_TABLE = Table("lmms.csv", tuple(LMMS_COLUMNS), ("pipeline", "task", "metric", "filter"))
LMMS_SHARDS = ("lmms-eval's own: document d of a task on process d mod processes (its padding copies not answered); "
               "samples and metrics gathered to process 0")
RANDOM_NOTE = "RANDOM weights: scores are meaningless"
# lmms-eval options that `qgsa lmms-eval` gives itself, and those of lmms-eval's CLI around simple_evaluate
OURS = {"model": "--model/--pipelines/--k/--share", "model_args": "--model/--pipelines/--k/--share/--checkpoint",
        "tasks": "--tasks", "include_path": "--include-path", "batch_size": "--batch", "device": "--device",
        "output_path": "--out", "log_samples": "(always on)"}
# simple_evaluate's own arguments, and options its evaluator reads from the parsed command line (cli_args)
HONOURED = {"num_fewshot", "limit", "offset", "gen_kwargs", "system_instruction", "apply_chat_template",
            "fewshot_as_multiturn", "predict_only", "seed", "verbosity", "repeats", "baseline", "max_tokens",
            "process_docs_parallel", "write_out", "check_integrity", "cache_requests", "use_cache", "force_simple"}
FROM_CLI_ARGS = {"process_with_media", "reasoning_tags", "agentic_trace_mode"}
OURS["max_batch_size"] = "--batch"


@dataclass
class LMMSConfig:
    """`qgsa lmms-eval`: tasks, pipelines, the model and budget they share (`args`, lmms-eval's model arguments;
    each pipeline's own `pipeline`), and lmms-eval's own options (`lmms_args`, the tokens after `--`)."""

    tasks: tuple[str, ...]
    pipelines: tuple[str, ...] = ("dense",)
    args: ModelArgs = field(default_factory=ModelArgs)
    include_path: str | None = None
    lmms_args: tuple[str, ...] = ()
    out: str = "results/lmms"
    overwrite: bool = False
    specs: tuple = field(default=(), init=False, repr=False)

    def __post_init__(self):
        from qgsa_bench.run.spec import check_options, parse_specs

        if not self.tasks:
            raise QGSAError("--tasks needs at least one lmms-eval task (e.g. --tasks pope,gqa)")
        if not self.pipelines:
            raise QGSAError("--pipelines needs at least one pipeline")
        self.specs = parse_specs(self.pipelines)
        tiles = [s.text for s in self.specs if s.at_tiles and not s.selector.keeps_no_tiles]
        if tiles and self.args.share is not None:
            raise QGSAError(f"{tiles[0]} keeps whole tiles: give its budget as --k T tiles beside the global view, "
                            f"not --share")
        check_options(self.specs, self.args.k if self.args.share is None else 1, self.args.checkpoint)

    def model_args(self, pipeline: str) -> ModelArgs:
        """The shared model arguments with this pipeline."""
        return replace(self.args, pipeline=pipeline)

    def settings(self) -> dict:
        """meta.json's settings: the tasks, pipelines, shared model arguments (but the device) and lmms-eval's options."""
        shared = {("batch" if key == "batch_size" else key): value for key, value in asdict(self.args).items()
                  if key not in ("pipeline", "device")}
        return {"tasks": self.tasks, "pipelines": self.pipelines, **shared, "include_path": self.include_path,
                "lmms_args": self.lmms_args}


def lmms_options(tokens: tuple[str, ...]) -> tuple[dict, object]:
    """(simple_evaluate's keyword arguments, lmms-eval's parsed namespace for its `cli_args`) from lmms-eval's own
    options, parsed by lmms-eval's parser. Raises QGSAError (one line) for an option it does not know, a bad value,
    an option `qgsa lmms-eval` gives itself, or one of lmms-eval's CLI around simple_evaluate (loggers, config
    files, power analysis)."""
    import sys

    from lmms_eval.__main__ import parse_eval_args

    argv, sys.argv = sys.argv, ["lmms-eval"]
    try:
        parser, defaults = parse_eval_args()
    finally:
        sys.argv = argv

    def refuse(message):
        raise QGSAError(f"lmms-eval option after --: {message.splitlines()[0]}")

    parser.error = refuse
    parsed = parser.parse_args(list(tokens))
    given = {key: value for key, value in vars(parsed).items() if value != getattr(defaults, key, None)}
    for key in given:
        if key in OURS:
            raise QGSAError(f"--{key} after -- is qgsa lmms-eval's own: give {OURS[key]} instead")
        if key not in HONOURED | FROM_CLI_ARGS:
            raise QGSAError(f"--{key} is an option of lmms-eval's command line, not of its evaluator: run lmms-eval's "
                            f"own CLI for it (`lmms-eval --model qgsa ...`, README)")
    options = {key: value for key, value in given.items() if key in HONOURED and key != "seed"}
    if "seed" in given:
        options.update(zip(("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed"),
                           given["seed"]))
    if "cache_requests" in options:
        from lmms_eval.evaluator import request_caching_arg_to_dict

        options.update(request_caching_arg_to_dict(cache_requests=options.pop("cache_requests")))
    return options, parsed


def resolve_tasks(tasks: tuple[str, ...], include_path: str | None):
    """(lmms-eval's TaskManager, the task names matched). The include path is indexed first; lmms-eval's own
    tasks only when a name is not there. Raises QGSAError naming an unknown task or a missing include path."""
    from lmms_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise QGSAError(f"--include-path {include_path} is not a folder (it holds the tasks' yaml files)")
    manager = TaskManager("WARNING", include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or any(not manager.match_tasks([t]) for t in tasks):
        manager = TaskManager("WARNING", include_path=include_path)
    missing = [t for t in tasks if not manager.match_tasks([t])]
    if missing:
        where = f" nor in {include_path}" if include_path else ""
        raise QGSAError(f"unknown lmms-eval task(s) {', '.join(missing)}: not among lmms-eval's tasks{where} "
                        f"(`lmms-eval --tasks list` lists them; a local task: --include-path DIR with its yaml)")
    return manager, manager.match_tasks(list(tasks))


def run_lmms(cfg: LMMSConfig, progress=None, warn=None) -> Path:
    """Every pipeline of `cfg` through lmms-eval's evaluator on `cfg.tasks`; the results folder. Raises QGSAError
    (before any answer) for lmms-eval missing, a bad option after `--`, an unknown task, or a pipeline the model
    cannot run at the budget; resumes a folder whose earlier run finished some pipelines. Data-parallel under a
    launch of several processes (module docstring): parallel.WorldLost when another process stopped."""
    from qgsa_bench.experiments.parallel import everywhere, join_world

    version = lmms_eval_version()
    options, cli_args = lmms_options(cfg.lmms_args)
    manager, tasks = resolve_tasks(cfg.tasks, cfg.include_path)
    world = join_world(cfg.args.device)
    with Results(cfg.out, "lmms-eval", cfg.settings(), cfg.overwrite) as res:
        done = {key[0] for key in res.done(LMMS_TABLE)}
        if all(spec.text in done for spec in cfg.specs):
            res.finished(f"the lmms-eval results of {len(cfg.specs)} pipeline(s) on {', '.join(tasks)}")
        from qgsa_bench.build import build
        from qgsa_bench.results import run_meta

        a = cfg.args
        built = build(a.model, a.weights, a.device, a.dtype, a.checkpoint, a.seed, warn=warn)
        try:  # every check first; the same facts on every process: the main process says it
            splitting = bridge_input(built.adapter, a, cfg.specs, warn)  # one input for every pipeline
            bridges = [Bridge(built, cfg.model_args(spec.text), spec, splitting) for spec in cfg.specs]
        except QGSAError as err:
            raise everywhere(world, err) from None
        meta = res.write_meta(run_meta(built, lmms_eval=version, lmms_eval_workaround=filelock_workaround(),
                                       tasks=tasks, lmms_options=options, image_input=bridges[0].image_input,
                                       **({"splitting": vars(splitting)} if splitting else {}),
                                       world={**world.meta(), "shards": LMMS_SHARDS},
                                       decoding=DECODING, flop_convention=FLOP_NOTE,
                                       note=RANDOM_NOTE if built.loaded.weights == "random" else "pretrained weights"))
        if progress:
            progress(f"lmms-eval {version}: {len(bridges)} pipeline(s) on {', '.join(tasks)}", -len(bridges))
        for bridge in bridges:
            if bridge.label in done:
                if progress:
                    progress(f"{bridge.label}: done before", 1)
                continue
            results = evaluate(bridge, manager, tasks, cfg.args.batch_size, options, cli_args, world.size)
            gather_logs(world, bridge)
            write_pipeline(res, bridge, results, meta)
            meta = res.write_meta({**meta, **task_meta(results or {}, meta)})  # the main process's
            if progress:
                progress(f"{bridge.label}: answered", 1)
        res.replace(LMMS_TABLE, with_dense_share(res.rows(LMMS_TABLE)))
    return res.out


DECODING = ("greedy always (temperature, top_p, num_beams, do_sample not read); max_new_tokens honoured, stopping "
            "at the end token; `until` cuts the decoded text; loglikelihood: all options of a question scored on one "
            "selection")
FLOP_NOTE = ("fvcore, one multiply-add = one FLOP, per sample as it ran (alone: its own prompt length, visual tokens "
             "at each stage, generated tokens or option lengths), counted once per distinct shape; flops_* columns: "
             "means over a task's samples")


def evaluate(bridge: Bridge, manager, tasks: list[str], batch: int, options: dict, cli_args,
             processes: int = 1) -> dict | None:
    """lmms-eval's simple_evaluate with this bridge as the model (samples logged; lmms-eval's defaults where no
    option says otherwise, bootstrap_iters included); its results dict (None on a process other than the main one
    of a launch). Several processes: lmms-eval's collectives go through torch.distributed's group, which
    join_world started (its `torchrun` backend, as lmms-eval's own CLI picks once a group exists)."""
    from lmms_eval.evaluator import simple_evaluate

    from qgsa_bench.integrations.lmms_model import QGSALMM

    backend = {"distributed_executor_backend": "torchrun"} if processes > 1 else {}
    try:
        return simple_evaluate(model=QGSALMM.around(bridge), tasks=tasks, task_manager=manager, batch_size=batch,
                               log_samples=True, cli_args=cli_args, **backend, **options)
    except Exception as err:  # a task's data set that cannot be reached (offline, no cache) is one line
        unreachable = _unreachable(err)
        if unreachable:
            raise QGSAError(f"a task's data could not be loaded ({unreachable}): fill the HF cache with it where the "
                            f"hub is reachable (HF_HUB_OFFLINE unset), or run a local task (--include-path DIR)") from None
        raise


def _unreachable(err: BaseException) -> str:
    """The first line of the hub/network failure in err's chain (causes, contexts, retries), '' for none."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        text = str(e)
        if isinstance(e, ConnectionError) or type(e).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError") \
                or "Couldn't reach" in text:
            return (text.strip().splitlines() or [type(e).__name__])[0][:200]
        last = getattr(e, "last_attempt", None)  # tenacity's RetryError keeps the final attempt's exception
        todo += [e.__cause__, e.__context__, last.exception() if last is not None and last.failed else None]
    return ""


def samples_file(label: str) -> str:
    """The per-sample log of one pipeline (its label with the characters a file name cannot hold replaced)."""
    return "samples_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in label) + ".jsonl"


def gather_logs(world, bridge: Bridge) -> None:
    """Every process's per-sample logs in `bridge.logs` (a launch's processes answer disjoint documents)."""
    if world.size > 1:
        bridge.logs = {key: log for part in world.all_gather(bridge.logs) for key, log in part.items()}


def write_pipeline(res: Results, bridge: Bridge, results: dict | None, meta: dict) -> None:
    """One pipeline's files: the per-sample log (lmms-eval's fields + `task` + `qgsa`, in document order), lmms-eval's
    results and the rows of lmms.csv (written last: a pipeline with rows is finished). Every process of a launch
    calls it; the main process's `results` (the others' are None) are written (driver.Results)."""
    name = samples_file(bridge.label)
    results_name = name.replace("samples_", "lmms_results_").replace(".jsonl", ".json")
    records = kept = rows = None
    if results is not None:
        records = [{"task": task, **sample, "qgsa": bridge.logs.get((task, sample["doc_id"]))}
                   for task, samples in (results.get("samples") or {}).items()
                   for sample in sorted(samples, key=lambda s: s["doc_id"])]  # a launch gathers them rank by rank
        kept = {key: value for key, value in results.items() if key != "samples"}
        rows = table_rows(bridge, results, meta)
    # written whole: replaces an interrupted earlier attempt of this pipeline
    res.write_text(name, "".join(json.dumps(r, default=str) + "\n" for r in records) if records is not None else "")
    res.write_text(results_name, json.dumps(kept, indent=1, default=str) + "\n")
    res.append(LMMS_TABLE, rows or [])


def task_meta(results: dict, meta: dict) -> dict:
    """meta.json's task versions, output types and sample counts (merged over the pipelines run)."""
    configs = results.get("configs", {})
    return {"task_versions": {**meta.get("task_versions", {}), **results.get("versions", {})},
            "task_output_types": {**meta.get("task_output_types", {}),
                                  **{t: c.get("output_type") for t, c in configs.items()}},
            "n_samples": {**meta.get("n_samples", {}), **results.get("n-samples", {})}}


def table_rows(bridge: Bridge, results: dict, meta: dict) -> list[dict]:
    """lmms.csv's rows of one pipeline: each task's metrics (lmms-eval's `METRIC,FILTER` keys) with the task's
    per-sample means of visual tokens and FLOPs."""
    spec = bridge.run.spec
    fixed = bridge.args.k is not None or bridge.args.share is not None  # else f_comp(q) gives the budget
    # the QGSA module's origin where this pipeline reads it (Spec.reads_checkpoint), else "not used" (as eval.csv)
    qgsa_weights = meta.get("qgsa_weights") if spec.reads_checkpoint(1 if fixed else None) else "not used"
    base = {"model": meta.get("model"), "weights": meta.get("weights"), "qgsa_weights": qgsa_weights,
            "lmms_eval": meta.get("lmms_eval"), "pipeline": bridge.label, "point": spec.where(), "k": bridge.k,
            "share": bridge.args.share, "note": meta.get("note"), "image_input": bridge.image_input}
    rows = []
    for task, scores in results.get("results", {}).items():
        means = sample_means([log for (t, _), log in bridge.logs.items() if t == task])
        config = results.get("configs", {}).get(task, {})
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        for key, value in scores.items():
            metric, comma, filt = key.partition(",")
            if not comma or "_stderr" in metric or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            stderr = scores.get(f"{metric}_stderr,{filt}")
            rows.append({**base, "task": task, "task_version": results.get("versions", {}).get(task),
                         "output_type": config.get("output_type"), "metric": metric, "filter": filt,
                         "value": float(value), "stderr": stderr if isinstance(stderr, (int, float)) else None,
                         "n": n, **means})
    return rows


def sample_means(logs: list[dict]) -> dict:
    """Means over a task's samples of the tokens kept, the tokens entering the LM, the FLOPs by stage and (split
    images) the tiles encoded (a tile selector's kept tiles, else every tile: views - 1)."""
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    flops = [log["flops"] for log in logs if log.get("flops")]
    tiles = [len(log["selected_tiles"]) if log.get("selected_tiles") is not None else log["views"] - 1
             for log in logs if log.get("views") is not None]
    return {"visual_tokens_kept_mean": mean(log["visual_tokens_kept"] for log in logs),
            "visual_tokens_to_lm_mean": mean(log["visual_tokens_to_lm"] for log in logs),
            **{f"flops_{stage}": mean(f[stage] for f in flops) for stage in (*FLOP_STAGES, "total")},
            "tiles_mean": mean(tiles)}


def with_dense_share(rows: list[dict]) -> list[dict]:
    """Each row with flops_share_of_dense: its mean FLOPs over the dense pipeline's on the same task and metric
    (empty without a dense row)."""
    dense = {(r["task"], r["metric"], r["filter"]): r["flops_total"] for r in rows if r["pipeline"] == "dense"}
    for row in rows:
        ref = dense.get((row["task"], row["metric"], row["filter"]))
        row["flops_share_of_dense"] = row["flops_total"] / ref if ref and row["flops_total"] is not None else None
    return rows
