"""Budget allocation: who decides *how many* visual tokens each question gets, apart from who decides *which*.

A selector picks k units; an allocation gives every evaluated sample its k, holding a requested mean
over the evaluated set, so that an allocation that follows the question is compared with a fixed budget
at equal mean visual tokens (the seed paper's claim: QGSA's complexity estimator f_comp gives complex
questions more tokens, Eq. 2). The allocations, `--allocate`:

    fixed        every sample the mean (a non-integer mean: the two nearest integers, in the samples' order)
    fcomp        in proportion to f_comp(q)'s continuous budget k_cont (Eq. 2) of a trained QGSA checkpoint,
                 scaled to the mean (`scale_to_mean`); for any selector, the peers included
    oracle-type  the per-question-type budgets that maximise accuracy at the mean, chosen from the selector's
                 own accuracy per type at a grid of budgets on a held-out split (`oracle_type_budgets`): the
                 best an allocation reading only the question's type could do, as far as that split can tell
    PATH         a file of per-sample budgets (CSV with columns id, budget, or JSON {id: budget}), used as given

Budgets count what the selector counts (`Run.units`: visual tokens, or patches for the seed's patch-level
pipelines), each within 1..n. Every allocation's realised mean and spread are reported.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qgsa_bench import QGSAError
from qgsa_bench.config import ALLOCATIONS, is_file, parse_allocation  # noqa: F401 (the names users type)

ORACLE_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 64, 128)  # budgets the held-out split is scored at (below n, and n)


def _target(mean: float, n_samples: int, n_max: int, what: str) -> int:
    """The total budget sum(k_i) = round(mean x samples); raises QGSAError where no budgets in 1..n_max give it."""
    if not 1 <= mean <= n_max:
        raise QGSAError(f"{what}: a mean budget of {mean:g} cannot be reached with budgets clipped to 1..{n_max}: "
                        f"pick a mean within 1..{n_max}")
    return int(round(mean * n_samples))


def scale_to_mean(weights, mean: float, n_max: int, what: str = "allocation") -> list[int]:
    """Integer budgets k_i in [1, n_max] proportional to `weights` (S,) (> 0) with sum(k_i) = round(mean x S):
    k_i = clip(a w_i, 1, n_max) with the scale a found by bisection (the clipped excess flows to the others),
    then floored, the remaining tokens going to the largest fractional parts (ties: in the samples' order).
    Equal weights give the fixed budget. Raises QGSAError when the mean is outside 1..n_max or a weight is
    not positive and finite."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size == 0:
        raise QGSAError(f"{what}: no samples to allocate budgets to")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise QGSAError(f"{what}: every weight must be a positive number (a budget of at least 1)")
    total = _target(mean, w.size, n_max, what)

    def spent(scale: float) -> np.ndarray:
        return np.clip(scale * w, 1.0, float(n_max))

    lo, hi = 0.0, float(n_max) / w.min()  # spent(lo).sum() = S <= total <= S n_max = spent(hi).sum()
    for _ in range(200):
        mid = (lo + hi) / 2
        if spent(mid).sum() < total:
            lo = mid
        else:
            hi = mid
    x = spent(hi)
    k = np.floor(x + 1e-9).astype(np.int64).clip(1, n_max)
    left = total - int(k.sum())
    order = sorted(range(w.size), key=lambda i: (-(x[i] - k[i]), i))
    while left != 0:  # left > 0: up by one in order; left < 0 (rounding): down by one, smallest parts first
        step = 1 if left > 0 else -1
        candidates = [i for i in (order if step > 0 else order[::-1]) if 1 <= k[i] + step <= n_max]
        for i in candidates[:abs(left)]:
            k[i] += step
            left -= step
    return k.tolist()


def fixed_budgets(n_samples: int, mean: float, n_max: int) -> list[int]:
    """`fixed`: every sample the mean (S,), a non-integer mean split between its two neighbours so that the
    total is round(mean x S). Raises QGSAError for a mean outside 1..n_max."""
    return scale_to_mean(np.ones(n_samples), mean, n_max, "fixed allocation")


def oracle_type_budgets(curves: dict[str, dict[int, float]], counts: dict[str, int], mean: float, n_max: int
                        ) -> dict[str, int]:
    """The per-type budget b_t maximising sum_t counts[t] x accuracy_t(b_t) subject to sum_t counts[t] b_t <=
    round(mean x sum_t counts[t]), each b_t among the budgets `curves[t]` was measured at (accuracy in
    percent on a held-out split; counts: the evaluated samples per type). Exact (dynamic programming over the
    total budget); ties go to the smaller total. Raises QGSAError when a type has no curve or no budget fits."""
    missing = [t for t in counts if not curves.get(t)]
    if missing:
        raise QGSAError(f"oracle-type: no held-out accuracy for question type '{missing[0]}': the held-out split "
                        f"must hold every question type of the evaluated set")
    total = _target(mean, sum(counts.values()), n_max, "oracle-type allocation")
    best: dict[int, tuple[float, dict[str, int]]] = {0: (0.0, {})}  # spent -> (correct answers, choice)
    for t in sorted(counts):
        grown: dict[int, tuple[float, dict[str, int]]] = {}
        for spent, (value, choice) in best.items():
            for b, acc in curves[t].items():
                cost = spent + counts[t] * b
                if b > n_max or cost > total:
                    continue
                gain = value + counts[t] * acc / 100.0
                if cost not in grown or gain > grown[cost][0] + 1e-12:
                    grown[cost] = (gain, {**choice, t: b})
        if not grown:
            raise QGSAError(f"oracle-type allocation: no budgets measured on the held-out split fit a mean of "
                            f"{mean:g}: the smallest measured budget is {min(curves[t])}")
        best = grown
    top = max(v for v, _ in best.values())
    spent = min(s for s, (v, _) in best.items() if v >= top - 1e-9)
    return best[spent][1]


def spread_to_total(budgets: list[int], total: int, n_max: int) -> list[int]:
    """`budgets` (S,) raised by one token at a time, samples in order (repeating), until they sum to `total`
    (the mean held exactly), none above n_max."""
    k = list(budgets)
    left = total - sum(k)
    while left > 0:
        moved = False
        for i in range(len(k)):
            if left and k[i] < n_max:
                k[i] += 1
                left -= 1
                moved = True
        if not moved:
            break
    return k


def read_budget_file(path: str, ids: list[str], n_max: int) -> list[int]:
    """Per-sample budgets (S,) in the order of `ids` from a CSV (columns id, budget) or a JSON object {id:
    budget}. Raises QGSAError for a file that misses samples, names unknown ones, or holds a budget that is
    not an integer in 1..n_max."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".json":
            raw = json.loads(p.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            table = {str(key): value for key, value in raw.items()}
        else:
            with p.open(newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"id", "budget"} <= set(reader.fieldnames):
                    raise ValueError("needs the columns id and budget")
                rows = list(reader)
                table = {row["id"]: row["budget"] for row in rows}
                twice = next((r["id"] for r in rows if table[r["id"]] != r["budget"]), None)
                if twice is not None:
                    raise ValueError(f"sample '{twice}' has two budgets: keep one row per sample (an "
                                     f"allocation.csv of several pipelines: keep one pipeline's rows)")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise QGSAError(f"budget file {path}: cannot read it ({e}): write a CSV with columns id, budget or a "
                        f"JSON object {{id: budget}}") from None
    wanted = set(ids)
    unknown = sorted(set(table) - wanted)
    missing = [i for i in ids if i not in table]
    if missing:
        raise QGSAError(f"budget file {path} has no budget for {len(missing)} evaluated sample(s), e.g. "
                        f"'{missing[0]}': give every sample of the evaluated set a budget")
    if unknown:
        raise QGSAError(f"budget file {path} names {len(unknown)} sample(s) not in the evaluated set, e.g. "
                        f"'{unknown[0]}': check --dataset, --split and --limit")
    out = []
    for i in ids:
        try:
            value = float(table[i])
        except (TypeError, ValueError):
            value = math.nan
        if not value.is_integer() or not 1 <= value <= n_max:
            raise QGSAError(f"budget file {path}: sample '{i}' has budget {table[i]!r}: budgets are integers in "
                            f"1..{n_max}")
        out.append(int(value))
    return out


def oracle_grid(n_max: int) -> list[int]:
    """The budgets a selector is scored at on the held-out split for oracle-type: ORACLE_GRID below n_max,
    and n_max."""
    return [b for b in ORACLE_GRID if b < n_max] + [n_max]


@dataclass
class Allocated:
    """One allocation's budgets for an evaluated set: `budgets` (S,) in the samples' order."""

    allocation: str
    requested_mean: float | None
    budgets: list[int]
    ids: list[str]
    chosen: dict | None = None  # oracle-type: the budget per question type

    def by_id(self) -> dict[str, int]:
        return dict(zip(self.ids, self.budgets))

    def summary(self) -> dict:
        """Realised mean, standard deviation, min and max of the budgets (what meta.json and tables carry)."""
        b = np.asarray(self.budgets, dtype=np.float64)
        return {"allocation": self.allocation, "requested_mean": self.requested_mean,
                "realised_mean": float(b.mean()), "budget_std": float(b.std()), "budget_min": int(b.min()),
                "budget_max": int(b.max()), **({"oracle_type_budgets": self.chosen} if self.chosen else {})}


def per_type(values, types: list[str], name: str) -> list[dict]:
    """The mean and spread of `values` (S,) per question type (`types` (S,)): rows with question_type, n,
    NAME_mean and NAME_std, types in sorted order."""
    rows = []
    for t in sorted(set(types)):
        v = np.asarray([x for x, tt in zip(values, types) if tt == t], dtype=np.float64)
        rows.append({"question_type": t, "n": int(v.size), f"{name}_mean": float(v.mean()),
                     f"{name}_std": float(v.std())})
    return rows


def fcomp_weights(module, adapter, questions: list[str], batch: int = 64) -> list[float]:
    """f_comp(q)'s continuous budget k_cont = k_min + (k_max - k_min) sigma(f_comp(q)) (Eq. 2) per question (S,),
    from `module` (a QGSAModule) on the adapter's question embeddings: what `fcomp` allocates in proportion to."""
    import torch

    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(questions), batch):
            q = adapter.question_embedding(questions[start:start + batch])
            _, k_cont, _ = module.budget(q.to(next(module.parameters()).dtype))
            out += k_cont.float().cpu().tolist()
    return out


def heldout_split(dataset: str, split: str | None, evaluated: str) -> str:
    """The split oracle-type learns its per-type budgets on: `split` if given, else `val` when the data set has
    one and it is not the evaluated split. Raises QGSAError when none is available or it is the evaluated one."""
    from qgsa_bench.data.registry import splits_of

    held = split or ("val" if "val" in splits_of(dataset) else None)
    if held is None or held == evaluated:
        others = [s for s in splits_of(dataset) if s != evaluated]
        raise QGSAError(f"oracle-type learns its budgets on a held-out split, not the evaluated '{evaluated}': "
                        f"give --oracle-split ({', '.join(others) or 'no other split exists'})")
    if held not in splits_of(dataset):
        raise QGSAError(f"{dataset} has no split '{held}': use one of {', '.join(splits_of(dataset))}")
    return held


def check_types(samples, what: str) -> None:
    """oracle-type reads question types: raises QGSAError when the data set has none."""
    if not any(s.question_type for s in samples):
        raise QGSAError(f"oracle-type allocates per question type, and {what} has no question types: use "
                        f"--allocate fcomp or a budget file")


def type_curves(records_at: dict[int, list[dict]]) -> dict[str, dict[int, float]]:
    """Accuracy (percent) per question type at each budget, from the held-out records scored at each budget
    ({budget: records}); a record without a score (no public answer) does not count."""
    curves: dict[str, dict[int, float]] = {}
    for b, records in records_at.items():
        by_type: dict[str, list[float]] = {}
        for r in records:
            if r.get("score") is not None:
                by_type.setdefault(r["question_type"], []).append(float(r["score"]))
        for t, scores in by_type.items():
            curves.setdefault(t, {})[b] = 100.0 * float(np.mean(scores))
    return curves


def allocate(allocation: str, samples, mean: float | None, n_max: int, *, weights=None, curves=None) -> Allocated:
    """The budgets (S,) of `allocation` for `samples` (VQASample, the evaluated set) over n_max units at
    `mean`: `weights` (S,) for fcomp (f_comp's k_cont), `curves` (type -> budget -> accuracy %) for
    oracle-type. A budget file is used as given (`mean` None), or must average `mean` (within half a
    token). Raises QGSAError for an unreachable mean, a missing input or a bad file."""
    ids = [s.id for s in samples]
    if is_file(allocation):
        budgets = read_budget_file(allocation, ids, n_max)
        realised = float(np.mean(budgets))
        if mean is not None and abs(realised - mean) > 0.5:
            raise QGSAError(f"budget file {allocation} averages {realised:.2f} tokens, not the requested mean "
                            f"{mean:g}: drop --k to use its budgets as given")
        return Allocated(allocation, mean, budgets, ids)
    if mean is None:
        raise QGSAError(f"--allocate {allocation} needs the mean budget it holds: give --k (the mean, in the "
                        f"units the selector counts)")
    if allocation == "fixed":
        return Allocated(allocation, mean, fixed_budgets(len(ids), mean, n_max), ids)
    if allocation == "fcomp":
        return Allocated(allocation, mean, scale_to_mean(weights, mean, n_max, "fcomp allocation"), ids)
    types = [s.question_type for s in samples]
    check_types(samples, "the evaluated set")
    counts = {t: types.count(t) for t in set(types)}
    chosen = oracle_type_budgets(curves, counts, mean, n_max)
    budgets = spread_to_total([chosen[t] for t in types], int(round(mean * len(ids))), n_max)
    return Allocated(allocation, mean, budgets, ids, chosen)


HELDOUT = "heldout.jsonl"  # oracle-type's held-out records, one per (case, sample), appended as batches finish


def heldout_case(label: str, budget: int) -> str:
    """The key of one held-out run in heldout.jsonl: the pipeline at one budget of the oracle grid."""
    return f"{label} k={budget}"


class Allocator:
    """One allocation for the runs of one command on one evaluated set (`data`, a LoadedData).

    `fcomp_module`: the QGSA module whose f_comp allocates (fcomp); `heldout`: the held-out LoadedData
    (oracle-type); `results`: the results folder keeping the held-out records (resume); `cfg`: an EvalConfig
    (batch, max new tokens) for the held-out runs; `evaluate`: what answers them (evaluate.evaluate_run, passed
    in so that this module does not import the command that uses it). Budgets are computed once per
    (pipeline, mean)."""

    def __init__(self, allocation: str, data, resolution: int, cfg, evaluate, fcomp_module=None, heldout=None,
                 results=None, progress=None):
        self.allocation, self.data, self.resolution, self.cfg = allocation, data, resolution, cfg
        self.evaluate = evaluate
        self.fcomp_module, self.heldout, self.results, self.progress = fcomp_module, heldout, results, progress
        self._weights: list[float] | None = None
        self._curves: dict[str, dict] = {}
        self._done: dict | None = None

    def done(self) -> dict:
        """case -> sample id -> held-out record an interrupted run finished (heldout.jsonl, read once)."""
        if self._done is None:
            self._done = self.results.records_by(HELDOUT, "case") if self.results is not None else {}
        return self._done

    def n_max(self, run) -> int:
        """The units the run's budget counts at this resolution (visual tokens, or patches)."""
        return run.units(run.check(self.resolution))[0]

    def weights(self, adapter) -> list[float]:
        if self._weights is None:
            if self.fcomp_module is None:
                raise QGSAError("--allocate fcomp needs a trained QGSA checkpoint whose f_comp gives the budgets: "
                                "give --checkpoint PATH or --fcomp-checkpoint PATH (results/shapes/checkpoints/"
                                "qgsa-suff.pt for the shapes base)")
            self._weights = fcomp_weights(self.fcomp_module, adapter, [s.question for s in self.data.samples])
        return self._weights

    def curves(self, run) -> dict[str, dict[int, float]]:
        """The run's accuracy per question type at each budget of the oracle grid on the held-out split
        (evaluated once, kept in heldout.jsonl)."""
        from copy import copy

        if run.label not in self._curves:
            done = self.done()
            records_at = {}
            for b in oracle_grid(self.n_max(run)):
                case = heldout_case(run.label, b)
                cfg = copy(self.cfg)
                cfg.k = b

                def save(new, case=case):
                    if self.results is not None:
                        self.results.append_records(HELDOUT, [{**r, "case": case} for r in new])

                progress = (lambda text, steps, b=b: self.progress(f"held-out {text} k={b}", steps)) \
                    if self.progress else None
                with run.engine.same_draws():
                    records_at[b] = self.evaluate(run, self.heldout, self.resolution, cfg, progress,
                                                 done.get(case, {}), save)
            self._curves[run.label] = type_curves(records_at)
        return self._curves[run.label]

    def heldout_steps(self, runs) -> int:
        """Progress steps of the held-out runs still to do (oracle-type), for a progress bar's total."""
        if self.allocation != "oracle-type":
            return 0
        done = self.done()
        return sum(1 for run in runs if not run.spec.selector.keeps_all for b in oracle_grid(self.n_max(run))
                   for s in self.heldout.samples if s.id not in done.get(heldout_case(run.label, b), {}))

    def budgets(self, run, mean: float | None) -> Allocated:
        """The budgets (S,) of the evaluated samples for `run` at `mean` (see `allocate`)."""
        weights = self.weights(run.adapter) if self.allocation == "fcomp" else None
        curves = self.curves(run) if self.allocation == "oracle-type" else None
        return allocate(self.allocation, self.data.samples, mean, self.n_max(run), weights=weights, curves=curves)


def make_allocator(allocation: str, cfg, built, data, resolution: int, evaluate, results=None,
                   progress=None) -> Allocator:
    """The Allocator of `cfg` (an EvalConfig, or one with the same allocation fields) for `built` (build.Built)
    on `data`: loads --fcomp-checkpoint (else uses the model's QGSA checkpoint) for fcomp, the held-out split
    for oracle-type. Raises QGSAError before any work for fcomp without a trained checkpoint, or oracle-type
    on a data set without question types or without a held-out split."""
    from qgsa_bench.data import load_dataset

    module, heldout = None, None
    if allocation == "fcomp":
        if cfg.fcomp_checkpoint:
            from qgsa_bench.qgsa.checkpoint import load_checkpoint

            module, _ = load_checkpoint(cfg.fcomp_checkpoint, built.loaded.provenance())
            module = module.to(built.device, built.dtype).eval()
        elif built.qgsa_weights.startswith("checkpoint:"):
            module = built.module
    if allocation == "oracle-type":
        check_types(data.samples, f"{data.name} split '{data.split}'")
        split = heldout_split(data.name, cfg.oracle_split, data.split)
        heldout = load_dataset(data.name, cfg.data_dir, split, cfg.oracle_limit or cfg.limit, cfg.skip_bad, cfg.seed)
        check_types(heldout.samples, f"{data.name} split '{split}'")
        missing = sorted({s.question_type for s in data.samples} - {s.question_type for s in heldout.samples})
        if missing:
            raise QGSAError(f"oracle-type: the held-out split '{split}' ({len(heldout.samples)} samples) has no "
                            f"'{missing[0]}' question: raise --oracle-limit so that it holds every question type")
    return Allocator(allocation, data, resolution, cfg, evaluate, module, heldout, results, progress)


def fcomp_source(cfg, built) -> str | None:
    """Which checkpoint's f_comp allocates (meta.json), or None when the allocation is not fcomp."""
    if cfg.allocate != "fcomp":
        return None
    return cfg.fcomp_checkpoint or built.qgsa_weights.removeprefix("checkpoint:")
