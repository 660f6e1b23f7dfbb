"""`qgsa eval`: accuracy of each pipeline on a data set, per question type, with k and latency.

Scoring: each data set's own rule (`metrics.SCORING`, named in the README). A-OKVQA multiple choice
picks the choice with the highest answer log-probability under the same pipeline. Greedy decoding,
`max_new_tokens`. Samples without public references (A-OKVQA test) get predictions but no score:
their accuracy is left empty, never 0, and A-OKVQA predictions are also written in the leaderboard's
format (`predictions_{split}-{pipeline}.json`).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.config import EvalConfig
from qgsa_bench.data import load_dataset
from qgsa_bench.efficiency.timing import Stopwatch
from qgsa_bench.experiments.driver import Results, Table
from qgsa_bench.metrics import SCORING, multiple_choice_score, score
from qgsa_bench.results import run_meta
from qgsa_bench.run.inputs import ONE_VIEW_TILES, choose_input, describe_input
from qgsa_bench.run.tiles import check_views

EVAL_COLUMNS = [
    "model", "weights", "qgsa_weights", "dataset", "split", "pipeline", "scope", "question_type", "n",
    "n_scored", "accuracy", "delta_vs_dense_points", "mc_accuracy", "k_mean", "k_std", "n_visual_tokens_mean",
    "latency_ms_per_query", "resolution", "allocation", "requested_mean", "note", "image_input", "tiles_mean",
]
EVAL_TABLE = Table("eval.csv", tuple(EVAL_COLUMNS), ("pipeline", "scope", "question_type"))
RANDOM_NOTE = "RANDOM weights: accuracy is meaningless"
PRIVATE_NOTE = "no public answers for this split: predictions only"


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def _multiple_choice(run, result, samples) -> list[int]:
    """Index of the most probable choice per sample, scored on the same LM inputs and the same selection as
    the generated answer: each sample's row repeated once per choice, an in-LM selection replayed
    (LMPlan.for_rows), never drawn again."""
    picks = []
    for b, sample in enumerate(samples):
        n = len(sample.choices)
        plan = None if result.plan is None else result.plan.for_rows(b, n)
        picks.append(int(run.answer_logprob(result.inputs.rows(b, n), plan, list(sample.choices)).argmax()))
    return picks


def eval_splitting(cfg: EvalConfig, adapter, warn=None):
    """The input of `cfg`'s pipelines (run/inputs.choose_input): the model's own views (models/views.Splitting;
    by default where the model splits), or None for one square view. Raises QGSAError for settings the processor
    or the model cannot take (Idefics3Adapter.splitting)."""
    return choose_input(adapter, cfg.resolution, cfg.image_splitting, cfg.longest_edge, cfg.specs,
                        ["--allocate"] if cfg.allocate else [], warn)


def scaled_up_note(records: list[dict], splitting) -> str | None:
    """One line where split images were smaller than the processor's longest edge and so scaled up before
    tiling (records' `scaled_up`, Views.scaled_up), as the model's processor does; None where none was."""
    ids = {r["id"] for r in records if r.get("scaled_up")}
    if not ids:
        return None
    total = len({r["id"] for r in records})
    return (f"{len(ids)} of {total} images are smaller than the longest edge {splitting.longest_edge} px and were "
            f"scaled up to it before tiling, as the model's processor does (SmolVLM: a 640x480 photo becomes 13 "
            f"views); --longest-edge sets a smaller edge, --resolution R one square view")


def run_budget(run, k):
    """The budget `run` gets: none for budget-free pipelines (dense, global-only), as the --k help says."""
    return None if run.spec.selector.keeps_no_tiles else k


def check_run(run, resolution: int, k, splitting) -> None:
    """Before any work: `run` can take the input and the budget. On split images a tile selector's budget is
    1..the most tiles `splitting` makes ((longest edge / tile)^2); an image with fewer tiles is refused when
    it comes (run/tiles.py). Raises QGSAError."""
    if splitting is None:
        if run.spec.point.kind == "tiles":
            raise QGSAError(f"{run.label} {ONE_VIEW_TILES}")
        run.check(resolution, k)
        return
    check_views(run.spec)
    if run.spec.point.kind != "tiles" or run.spec.selector.keeps_no_tiles:
        return
    most = (splitting.longest_edge // splitting.tile) ** 2
    if k is None:
        raise QGSAError(f"{run.label} needs a budget in tiles: --k T with 1 <= T <= {most}")
    if not 1 <= k <= most:
        raise QGSAError(f"--k {k} tiles is impossible for {run.label}: at --longest-edge {splitting.longest_edge} an "
                        f"image has at most {most} tiles of {splitting.tile} px; use 1 <= --k <= {most}")


@torch.no_grad()
def evaluate_run(run, data, resolution: int, cfg: EvalConfig,
                 progress: Callable[[str, int], None] | None = None, done: dict | None = None,
                 save: Callable[[list[dict]], None] | None = None, budgets: dict | None = None,
                 splitting=None) -> list[dict]:
    """Per-sample records of `data` (LoadedData) answered by `run` (run.stages.Run): prediction, score, k,
    visual tokens, latency share, selected patches, in the data set's order. Samples whose image cannot be
    read are dropped under --skip-bad. Resuming: `done` (sample id -> record) are kept as they are and not
    run again; `save` receives each batch's new records as soon as the batch finishes. `budgets` (sample id
    -> budget, an allocation's): each sample's own k instead of cfg.k; a batch of mixed budgets gives each
    sample its solo result (the selection takes a budget per sample). Under a launch of several processes
    (`parallel.join_world`) each answers its share of the batches (`parallel.in_rounds`) and every process
    returns every record; `save` is called on every process with each round's records. Raises QGSAError for
    an unreadable image without --skip-bad; parallel.WorldLost when another process stopped. `splitting`
    (models/views.Splitting): each image as the model's processor splits it, else one square view."""
    from qgsa_bench.experiments.parallel import in_rounds, joined

    done = done or {}
    new = {}
    todo = [s for s in data.samples if s.id not in done]
    work = lambda chunk, images: _batch_records(run, chunk, images, resolution, cfg, budgets, splitting)  # noqa: E731
    for records, part in in_rounds(joined(), list(batches(todo, cfg.batch)), work, data):
        new.update((r["id"], r) for r in records)
        if save and records:
            save(records)
        if progress:
            progress(f"{run.label}: {len(done) + len(new)}/{len(data.samples)}", sum(map(len, part)))
    return [done.get(s.id) or new[s.id] for s in data.samples if s.id in done or s.id in new]


def chunk_budget(budgets: dict | None, chunk, k=None):
    """The budget argument of one batch: `k` without `budgets`; else the samples' own budgets, one int when
    they agree, a (B,) tensor when they differ."""
    if budgets is None:
        return k
    values = [int(budgets[s.id]) for s in chunk]
    return values[0] if len(set(values)) == 1 else torch.tensor(values)


def _batch_records(run, chunk, images, resolution: int, cfg: EvalConfig, budgets: dict | None = None,
                   splitting=None) -> list[dict]:
    """One timed batch (selection, prefill, decode) and its per-sample records, in the chunk's order. A batch
    that cannot run at once (downsampling at different budgets: f_comp's per question, or an allocation's)
    runs in groups of one budget (`Run.budget_groups`), each timed as its own batch. `splitting`: the
    model's own views (records then keep `views` and the encoded `selected_tiles`)."""
    questions = [s.question for s in chunk]
    k = chunk_budget(budgets, chunk, run_budget(run, cfg.k))
    groups = run.budget_groups(questions, resolution, k)
    if len(groups) > 1:
        by_index = {}
        for group in groups:
            part = _batch_records(run, [chunk[i] for i in group], [images[i] for i in group], resolution, cfg,
                                  budgets, splitting)
            by_index.update(zip(group, part))
        return [by_index[i] for i in range(len(chunk))]
    adapter = run.adapter
    seeds = run.sample_seeds(s.id for s in chunk)  # one sample, one selection, in any batch or shard
    with Stopwatch(adapter.device) as sw:
        prepared = run.answer(images, questions, resolution, k, cfg.max_new_tokens, seeds, splitting)
    generated = prepared.generated
    mc = (_multiple_choice(run, prepared, chunk)
          if all(s.choices for s in chunk) else [None] * len(chunk))
    records = []
    for b, sample in enumerate(chunk):
        prediction = adapter.decode_text(generated[b])
        records.append({
            "id": sample.id, "pipeline": run.label, "question": sample.question,
            "question_type": sample.question_type or "all", "answer_type": sample.answer_type,
            "answers": sample.answers, "choices": sample.choices,
            "prediction": prediction, "score": score(prediction, sample),
            "mc_choice": mc[b], "mc_correct": multiple_choice_score(mc[b], sample),
            "k": prepared.kept(b),
            **({} if budgets is None else {"budget": int(budgets[sample.id])}),
            "n_visual_tokens": int(prepared.inputs.n_visual[b]),
            "latency_ms": sw.ms / len(chunk),
            **prepared.patch_fields(b),
        })
    return records


@torch.no_grad()
def warm_up(runs, data, resolution: int, cfg: EvalConfig, splitting=None) -> int:
    """One untimed run of every pipeline on the first readable batch, before anything is timed, so that
    first-call costs (allocations, thread pools, lazy initialisation) fall on no pipeline's latency and
    the latency column does not depend on the order of --pipelines. The random baseline's generator is
    restored afterwards: the evaluated selections are those of a run without warm-up. Returns the batch
    size used."""
    with ExitStack() as stack:
        for engine in {id(r.engine): r.engine for r in runs}.values():
            stack.enter_context(engine.same_draws())
        for start in range(0, len(data.samples), cfg.batch):
            chunk, images = data.open_images(data.samples[start:start + cfg.batch])
            if chunk:
                for run in runs:
                    group = run.budget_groups([s.question for s in chunk], resolution, cfg.k)[0]
                    run.answer([images[i] for i in group], [chunk[i].question for i in group], resolution,
                               run_budget(run, cfg.k), cfg.max_new_tokens, run.sample_seeds(chunk[i].id for i in group),
                               splitting)
                return len(chunk)
    return 0


def summarise(records: list[dict], pipeline: str, scope: str, qtype: str) -> dict:
    ks = [r["k"] for r in records if r["k"] is not None]
    tiles = [len(r["selected_tiles"]) if r.get("selected_tiles") is not None else r["views"] - 1
             for r in records if r.get("views") is not None]
    mc = [r["mc_correct"] for r in records if r["mc_correct"] is not None]
    scored = [r["score"] for r in records if r["score"] is not None]
    return {
        "pipeline": pipeline, "scope": scope, "question_type": qtype, "n": len(records), "n_scored": len(scored),
        "accuracy": 100 * float(np.mean(scored)) if scored else None,
        "mc_accuracy": 100 * float(np.mean(mc)) if mc else None,
        "k_mean": float(np.mean(ks)) if ks else None, "k_std": float(np.std(ks)) if ks else None,
        "n_visual_tokens_mean": float(np.mean([r["n_visual_tokens"] for r in records])),
        "latency_ms_per_query": float(np.mean([r["latency_ms"] for r in records])),
        "tiles_mean": float(np.mean(tiles)) if tiles else None,
    }


def summary_rows(records: list[dict], pipeline: str) -> list[dict]:
    """All, per question type and (VQA-RAD) per answer type (CLOSED / OPEN)."""
    rows = [summarise(records, pipeline, "all", "all")]
    for scope, key in (("type", "question_type"), ("answer_type", "answer_type")):
        for value in sorted({r[key] for r in records if r.get(key)}):
            rows.append(summarise([r for r in records if r.get(key) == value], pipeline, scope, value))
    return rows


PREDICTIONS = "predictions.jsonl"


def run_eval(cfg: EvalConfig, progress=None, warn=None) -> Path:
    """Evaluate every pipeline of `cfg` into `cfg.out` (module docstring); the folder. Data-parallel under a
    launch of several processes (`evaluate_run`); only the main process writes. Raises QGSAError for bad
    input before any work, parallel.WorldLost when another process stopped."""
    from qgsa_bench.experiments.parallel import join_world

    world = join_world(cfg.device)
    with Results(cfg.out, "eval", cfg.settings(), cfg.overwrite) as res:  # never mixes two evaluations
        data = load_dataset(cfg.dataset, cfg.data_dir, cfg.split, cfg.limit, cfg.skip_bad, cfg.seed)
        done = res.records_by(PREDICTIONS, "pipeline")  # what an interrupted run finished
        labels = [spec.text for spec in cfg.specs]
        skipped = set((res.meta() or {}).get("skipped_bad_ids", []))
        left = sum(1 for label in labels for s in data.samples if s.id not in done.get(label, {})
                   and s.id not in skipped)
        if not left and res.exists(EVAL_TABLE.file):
            res.finished(f"this evaluation ({len(data.samples)} samples x {len(labels)} pipelines)")
        built = build(cfg.model, cfg.weights, cfg.device, cfg.dtype, cfg.checkpoint, cfg.seed, warn=warn)
        splitting = eval_splitting(cfg, built.adapter, warn)
        resolution = splitting.tile if splitting else cfg.resolution or built.adapter.image_size
        runs = [built.run(spec) for spec in cfg.specs]  # every point checked against the model before any work
        for run in runs:  # every resolution and budget too: a refused run writes nothing
            check_run(run, resolution, cfg.k, splitting)
        image_input = describe_input(splitting, resolution)
        random_weights = built.loaded.weights == "random"
        private = not any(s.answers or s.correct_choice is not None for s in data.samples)
        note = PRIVATE_NOTE if private else (RANDOM_NOTE if random_weights else "")
        meta = res.write_meta(run_meta(
            built, **data.meta(), resolution=resolution, scoring=SCORING[data.name][1],
            note=note or "pretrained weights", world=world.meta(), image_input=image_input,
            **({"splitting": vars(splitting)} if splitting else {}),
            latency="mean per query over the batches (selection, prefill and decode), after one untimed warm-up "
                    "batch of every pipeline"))
        allocated = {}
        if cfg.allocate:  # each sample's budget, before anything is answered (oracle-type: its held-out runs)
            from qgsa_bench.experiments.allocation import fcomp_source, make_allocator

            allocator = make_allocator(cfg.allocate, cfg, built, data, resolution, evaluate_run, res, progress)
            if progress and allocator.heldout_steps(runs):
                progress(f"oracle-type: scoring the held-out split '{allocator.heldout.split}'",
                         -allocator.heldout_steps(runs))
            allocated = {run.label: allocator.budgets(run, cfg.k) for run in runs if not run.spec.selector.keeps_all}
            res.replace(ALLOCATION_TABLE, allocation_rows(allocated, data))
            meta = res.write_meta({**meta, "allocation": cfg.allocate, "fcomp_checkpoint": fcomp_source(cfg, built),
                                   "allocations": {label: a.summary() for label, a in allocated.items()},
                                   **({"oracle_split": allocator.heldout.split, "oracle_samples":
                                       len(allocator.heldout.samples)} if allocator.heldout else {})})
        if progress:
            total = len(data.samples) * len(runs)
            progress(f"{data.name}: {left} of {total} (sample, pipeline) left", -total)
            if left < total:
                progress("resumed", total - left)
        if left:
            warm_up(runs, data, resolution, cfg, splitting)

        def save(records):
            res.append_records(PREDICTIONS, [{**r, "weights": built.loaded.weights} for r in records])

        rows, all_records, written = [], [], []
        for run in runs:
            own = allocated.get(run.label)
            records = evaluate_run(run, data, resolution, cfg, progress, done.get(run.label, {}), save,
                                   own.by_id() if own else None, splitting)
            all_records += records
            rows += [{**row, "dense": run.spec.is_dense, **allocation_fields(own)}
                     for row in summary_rows(records, run.label)]
            if data.name == "aokvqa":
                written.append(f"predictions_{data.split}-{run.label}.json")
                res.write_text(written[-1], aokvqa_submission(records))
        if not all_records:
            raise QGSAError(f"{data.name} split '{data.split}': no image could be read ({data.skipped} skipped)")
        base = {"model": cfg.model, "weights": built.loaded.weights, "qgsa_weights": built.qgsa_weights,
                "dataset": data.name, "split": data.split, "resolution": resolution, "note": note,
                "image_input": image_input}
        # the QGSA module's origin where the pipeline reads it (Spec.reads_checkpoint), else "not used"
        reads = {run.label: run.spec.reads_checkpoint(cfg.k) for run in runs}
        res.replace(EVAL_TABLE, [{**base, **r, **({} if reads.get(r["pipeline"], True) else {"qgsa_weights": "not used"})}
                                 for r in with_delta_vs_dense(rows)])
        unequal = unequal_tokens(rows)
        if unequal and warn:
            warn(unequal)
        scaled = scaled_up_note(all_records, splitting)
        if scaled and warn:
            warn(scaled)
        # again: images skipped under --skip-bad are known only now
        res.write_meta({**meta, **data.meta(), "submission_files": written,
                        "unequal_visual_tokens": unequal, **({"scaled_up": scaled} if scaled else {})})
    return res.out


ALLOCATION_TABLE = Table("allocation.csv", ("pipeline", "allocation", "requested_mean", "id", "question_type", "budget"),
                         ("pipeline", "requested_mean", "id"))


def allocation_rows(allocated: dict, data) -> list[dict]:
    """allocation.csv: every (pipeline, sample)'s budget; the file `--allocate PATH` reads back."""
    types = {s.id: s.question_type for s in data.samples}
    return [{"pipeline": label, "allocation": a.allocation, "requested_mean": a.requested_mean, "id": i,
             "question_type": types.get(i), "budget": b}
            for label, a in allocated.items() for i, b in zip(a.ids, a.budgets)]


def allocation_fields(allocated) -> dict:
    """An eval.csv row's allocation columns (empty without --allocate)."""
    if allocated is None:
        return {}
    return {"allocation": allocated.allocation, "requested_mean": allocated.requested_mean}


def unequal_tokens(rows: list[dict]) -> str:
    """The line saying that the selectors did not get the same visual tokens into the LM (e.g. k patches
    through the connector give as many tokens as the 2 x 2 units they touch: clustered patches fewer), so
    accuracy differences are not at equal budget; "" when every selector's mean agrees within half a token."""
    means = {r["pipeline"]: r["n_visual_tokens_mean"] for r in rows
             if r["scope"] == "all" and not r["dense"] and r["k_mean"] is not None}
    if len(means) < 2 or max(means.values()) - min(means.values()) <= 0.5:
        return ""
    listed = ", ".join(f"{p} {v:.1f}" for p, v in means.items())
    return (f"not an equal-budget comparison: the visual tokens reaching the LM differ ({listed} on average); "
            f"`qgsa sweep-budget` compares selectors at equal visual tokens")


def with_delta_vs_dense(rows: list[dict]) -> list[dict]:
    """Each summary row (its "dense": from the dense run) with its accuracy difference to the dense row of the
    same scope (points)."""
    dense = {(r["scope"], r["question_type"]): r["accuracy"] for r in rows if r["dense"]}
    for row in rows:
        ref = dense.get((row["scope"], row["question_type"]))
        row["delta_vs_dense_points"] = None if ref is None or row["accuracy"] is None else row["accuracy"] - ref
    return rows


def aokvqa_submission(records: list[dict]) -> str:
    """A-OKVQA's leaderboard format (allenai/aokvqa evaluation/prepare_predictions.py) as JSON text:
    {question_id: {"multiple_choice": the picked choice, "direct_answer": the generated answer}}."""
    by_id = {}
    for r in records:
        entry = {"direct_answer": r["prediction"]}
        if r.get("mc_choice") is not None:
            entry["multiple_choice"] = r["choices"][r["mc_choice"]]
        by_id[r["id"]] = entry
    return json.dumps(by_id, indent=1) + "\n"
