"""Budget allocation apart from selection (issue 22): who decides how many, at an equal mean budget."""

import itertools
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.cli import app
from qgsa_bench.experiments.allocation import (oracle_grid, oracle_type_budgets, read_budget_file, scale_to_mean,
                                               spread_to_total)

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---- the arithmetic -------------------------------------------------------------------------------------------

def test_scale_to_mean_holds_the_mean_exactly_and_follows_the_weights():
    k = scale_to_mean([18, 4, 4, 4, 18, 4], 12, 49)
    assert k == [25, 6, 6, 5, 25, 5] and sum(k) == 72  # 4.5 : 1, the remainder to the first largest parts
    assert scale_to_mean([1, 1, 1, 1, 1], 2.4, 49) == [3, 3, 2, 2, 2]  # fixed at a non-integer mean
    assert scale_to_mean([7.0] * 4, 12, 49) == [12] * 4  # equal weights: the fixed budget
    clipped = scale_to_mean([100, 1, 1, 1], 30, 49)
    assert clipped == [49, 24, 24, 23] and sum(clipped) == 120  # the excess above N flows to the others
    low = scale_to_mean([1, 1000], 1.5, 49)
    assert low == [1, 2]
    for mean in (1, 3.3, 17, 48.9, 49):  # any reachable mean, any weights
        weights = [1 + (i * 37) % 11 for i in range(23)]
        k = scale_to_mean(weights, mean, 49)
        assert sum(k) == round(mean * 23) and min(k) >= 1 and max(k) <= 49
        ranked = sorted(range(23), key=lambda i: weights[i])
        assert all(k[a] <= k[b] + 1 for a, b in zip(ranked, ranked[1:]))  # monotone up to rounding


@pytest.mark.parametrize("mean, weights, message", [
    (0.5, [1, 2], "cannot be reached with budgets clipped to 1..49"),
    (50, [1, 2], "cannot be reached with budgets clipped to 1..49"),
    (4, [1, 0], "every weight must be a positive number"),
    (4, [1, float("nan")], "every weight must be a positive number"),
])
def test_unreachable_means_and_bad_weights_are_refused(mean, weights, message):
    with pytest.raises(QGSAError, match=message):
        scale_to_mean(weights, mean, 49)


def test_oracle_type_budgets_are_the_best_choice_within_the_mean():
    curves = {"count": {1: 10, 2: 20, 4: 40, 8: 60, 12: 80, 16: 85, 24: 90, 32: 92, 49: 92},
              "color": {1: 90, 2: 99, 4: 100, 8: 100, 12: 100, 16: 100, 24: 100, 32: 100, 49: 100}}
    counts = {"count": 130, "color": 270}
    assert oracle_type_budgets(curves, counts, 12, 49) == {"color": 4, "count": 24}
    assert oracle_type_budgets(curves, counts, 4, 49) == {"color": 2, "count": 8}
    # exhaustive check on uneven curves: the dynamic programme finds the brute-force optimum
    grid = oracle_grid(49)
    curves = {t: {b: (13 * b * (i + 1)) % 97 for b in grid} for i, t in enumerate("abc")}
    counts = {"a": 7, "b": 3, "c": 11}
    for mean in (2, 5, 9, 20):
        total = round(mean * 21)
        best = max((sum(counts[t] * curves[t][b] for t, b in zip("abc", pick)), -sum(counts[t] * b for t, b in
                    zip("abc", pick))) for pick in itertools.product(grid, repeat=3)
                   if sum(counts[t] * b for t, b in zip("abc", pick)) <= total)
        chosen = oracle_type_budgets(curves, counts, mean, 49)
        assert sum(counts[t] * curves[t][chosen[t]] for t in "abc") == best[0]
        assert sum(counts[t] * chosen[t] for t in "abc") == -best[1]  # ties: the smaller total


def test_oracle_type_needs_every_type_and_spreads_the_rest_to_hold_the_mean():
    with pytest.raises(QGSAError, match="no held-out accuracy for question type 'shape'"):
        oracle_type_budgets({"color": {1: 50.0}}, {"color": 3, "shape": 2}, 4, 49)
    assert spread_to_total([2, 2, 8], 15, 49) == [3, 3, 9]  # one token each, in order
    assert spread_to_total([48, 49], 99, 49) == [49, 49]  # nothing above N


def test_budget_files_in_csv_and_json(tmp_path):
    ids = ["a", "b", "c"]
    (tmp_path / "b.csv").write_text("id,budget,note\na,3,x\nb,1,y\nc,49,z\n")
    assert read_budget_file(str(tmp_path / "b.csv"), ids, 49) == [3, 1, 49]
    (tmp_path / "b.json").write_text(json.dumps({"c": 2, "a": 4.0, "b": 1}))
    assert read_budget_file(str(tmp_path / "b.json"), ids, 49) == [4, 1, 2]
    cases = {"missing.csv": ("id,budget\na,3\nb,1\n", "no budget for 1 evaluated sample"),
             "unknown.csv": ("id,budget\na,3\nb,1\nc,2\nzz,4\n", "not in the evaluated set, e.g. 'zz'"),
             "big.csv": ("id,budget\na,3\nb,1\nc,50\n", "sample 'c' has budget '50': budgets are integers in 1..49"),
             "half.csv": ("id,budget\na,3\nb,1.5\nc,5\n", "sample 'b' has budget '1.5'"),
             "twice.csv": ("id,budget\na,3\na,4\nb,1\nc,5\n", "sample 'a' has two budgets"),
             "columns.csv": ("sample,k\na,3\n", "needs the columns id and budget"),
             "list.json": ("[1, 2, 3]", "cannot read it")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(QGSAError, match=message):
            read_budget_file(str(tmp_path / name), ids, 49)


# ---- qgsa eval --allocate ------------------------------------------------------------------------------------

def _records(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from qgsa_bench.build import build
    from qgsa_bench.qgsa.checkpoint import save_checkpoint

    tiny = build("tiny", weights="random", device="cpu", dtype="fp32", seed=0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "q.pt", tiny.module, tiny.loaded.provenance())


EVAL = ("eval", "--model", "tiny", "--dataset", "shapes", "--limit", 10, "--max-new-tokens", 2, "--device", "cpu")


def test_fixed_allocation_is_the_fixed_budget_and_a_file_replays_fcomp(tmp_path, checkpoint):
    plain = invoke(*EVAL, "--pipelines", "dense,fastv@lm:1,random@post-vision", "--k", 5, "--out", tmp_path / "p")
    fixed = invoke(*EVAL, "--pipelines", "dense,fastv@lm:1,random@post-vision", "--k", 5, "--allocate", "fixed",
                   "--out", tmp_path / "f")
    assert plain.exit_code == 0 and fixed.exit_code == 0, plain.output + fixed.output
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("latency_ms", "budget")} for r in rs]  # noqa: E731
    assert strip(_records(tmp_path / "p")) == strip(_records(tmp_path / "f"))
    eval_csv = pd.read_csv(tmp_path / "f" / "eval.csv")
    assert set(eval_csv[eval_csv.pipeline != "dense"].allocation) == {"fixed"}

    # fcomp at mean 6 over the 16 visual tokens: the mean held exactly, budgets following f_comp
    out = tmp_path / "c"
    result = invoke(*EVAL, "--pipelines", "fastv@lm:1,downsample", "--k", 6, "--allocate", "fcomp", "--checkpoint",
                    checkpoint, "--batch", 4, "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["allocation"] == "fcomp" and meta["fcomp_checkpoint"] == str(checkpoint)
    summary = meta["allocations"]["fastv@lm:1"]
    assert summary["realised_mean"] == 6.0 and summary["requested_mean"] == 6
    budgets = pd.read_csv(out / "allocation.csv")
    assert len(budgets) == 20 and budgets.groupby("pipeline").budget.mean().tolist() == [6.0, 6.0]
    records = _records(out)
    fastv = {r["id"]: r for r in records if r["pipeline"] == "fastv@lm:1"}
    assert all(r["k"] == r["budget"] for r in fastv.values())  # each sample kept its own budget
    # downsampling runs each sample at the size its budget gives (a square grid of tokens: 4 for a budget of 6)
    assert all(r["n_visual_tokens"] == r["k"] == int(r["budget"] ** 0.5) ** 2 for r in records
               if r["pipeline"] == "downsample")

    # the allocation file fed back, batch 1: every sample its solo result (mixed budgets in a batch change none)
    one = budgets[budgets.pipeline == "fastv@lm:1"][["id", "budget"]]
    one.to_csv(tmp_path / "budgets.csv", index=False)
    again = invoke(*EVAL, "--pipelines", "fastv@lm:1", "--allocate", tmp_path / "budgets.csv", "--batch", 1,
                   "--out", tmp_path / "r")
    assert again.exit_code == 0, again.output
    assert "warning:" not in again.output  # every budget given: no f_comp read, nothing untrained
    replay = {r["id"]: r for r in _records(tmp_path / "r")}
    assert {i: (r["prediction"], r["k"], r["selected_patches"]) for i, r in replay.items()} == \
        {i: (r["prediction"], r["k"], r["selected_patches"]) for i, r in fastv.items()}


def test_oracle_type_learns_on_the_held_out_split(tmp_path):
    out = tmp_path / "o"
    few = invoke(*EVAL, "--pipelines", "dense,random@post-vision", "--k", 4, "--allocate", "oracle-type",
                 "--oracle-limit", 2, "--out", out)
    assert few.exit_code == 2 and "has no 'count' question: raise --oracle-limit" in few.output, few.output
    result = invoke(*EVAL, "--pipelines", "dense,random@post-vision", "--k", 4, "--allocate", "oracle-type",
                    "--oracle-limit", 12, "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["oracle_split"] == "val" and meta["oracle_samples"] == 12
    summary = meta["allocations"]["random@post-vision"]
    assert summary["realised_mean"] == 4.0 and set(summary["oracle_type_budgets"]) <= {"color", "count", "exist",
                                                                                       "shape"}
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert len(held) == 12 * len(oracle_grid(16)) and all(r["id"].startswith("shapes-val-") for r in held)
    again = invoke(*EVAL, "--pipelines", "dense,random@post-vision", "--k", 4, "--allocate", "oracle-type",
                   "--oracle-limit", 12, "--out", out)
    assert again.exit_code == 0 and "nothing to do" in again.output


@pytest.mark.parametrize("args, message", [
    (("--allocate", "fcomp", "--k", 4), "--allocate fcomp needs a trained QGSA checkpoint"),
    (("--allocate", "fixed"), "--allocate fixed holds a mean budget: give it with --k"),
    (("--allocate", "sometimes", "--k", 4), "--allocate 'sometimes' is neither fixed, fcomp, oracle-type nor"),
    (("--allocate", "fixed", "--k", 4, "--oracle-split", "val"), "read only by --allocate oracle-type"),
    (("--oracle-limit", 3), "--oracle-limit is read only by --allocate oracle-type: add it"),
    (("--allocate", "oracle-type", "--k", 4, "--split", "val"), "not the evaluated 'val': give --oracle-split"),
    (("--allocate", "fcomp", "--k", 17, "--checkpoint", "CKPT"), "pick 1 <= budget <= 16"),
])
def test_bad_allocations_are_one_error_line(tmp_path, checkpoint, args, message):
    out = tmp_path / "bad"
    args = [checkpoint if a == "CKPT" else a for a in args]
    result = invoke(*EVAL, "--pipelines", "dense,fastv@lm:1", *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (out / "eval.csv").exists()


def test_oracle_type_without_question_types_and_budget_files_that_miss_samples(tmp_path):
    (tmp_path / "few.csv").write_text("id,budget\nshapes-test-00000-0,3\n")
    result = invoke(*EVAL, "--pipelines", "fastv@lm:1", "--allocate", tmp_path / "few.csv", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "has no budget for 9 evaluated sample(s)" in result.output, result.output
    with pytest.raises(QGSAError, match="has no question types"):
        from qgsa_bench.experiments.allocation import check_types
        from qgsa_bench.data.types import VQASample

        check_types([VQASample(id="x", question="q?", answers=["a"], image=None)], "refcoco split 'val'")


# ---- qgsa sweep-budget --allocate ----------------------------------------------------------------------------

def test_sweep_budget_has_the_allocation_axis_at_equal_means(tmp_path, checkpoint):
    out = tmp_path / "s"
    result = invoke("sweep-budget", "--model", "tiny", "--device", "cpu", "--pipelines", "dense,fastv@lm:1",
                    "--budgets", 3, 6, "--dataset", "shapes", "--limit", 8, "--eval-batch", 4,
                    "--allocate", "fixed,fcomp,oracle-type", "--oracle-limit", 12, "--checkpoint", checkpoint,
                    "--reps", 2, "--warmup", 0, "--decode-tokens", 2, "--out", out)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "budget.csv").set_index("case")
    assert set(rows.index) == {"dense", "fastv@lm:1 k=3", "fastv@lm:1 k=6", "fastv@lm:1 k=3 fcomp",
                               "fastv@lm:1 k=6 fcomp", "fastv@lm:1 k=3 oracle-type", "fastv@lm:1 k=6 oracle-type"}
    assert rows.loc["fastv@lm:1 k=3", "allocation"] == "fixed" and pd.isna(rows.loc["dense", "allocation"])
    for case in ("fastv@lm:1 k=3 fcomp", "fastv@lm:1 k=6 oracle-type"):
        assert rows.loc[case, "budget_mean_realised"] == rows.loc[case, "budget"]  # the same mean as fixed
        assert pd.isna(rows.loc[case, "latency_ms_median"])  # never timed: per-sample budgets
        assert rows.loc[case, "latency_ms_per_query_eval"] > 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    fcomp = [r for r in records if r["case"] == "fastv@lm:1 k=3 fcomp"]
    assert len(fcomp) == 8 and sum(r["budget"] for r in fcomp) == 24
    # end-to-end FLOPs of an allocation: the mean of the counted FLOPs at each sample's budget
    from qgsa_bench.build import build
    from qgsa_bench.experiments.measure import Case
    from qgsa_bench.experiments.runner import stage_flops
    from qgsa_bench.models.images import demo_image

    tiny = build("tiny", weights="random", device="cpu", dtype="fp32", seed=0)
    run, meta = tiny.run("fastv@lm:1"), json.loads((out / "meta.json").read_text())
    res = meta["settings"]["resolution"]
    px = tiny.adapter.pixel_values([demo_image()], res)
    at = {b: stage_flops(Case("x", run, b), px, [meta["settings"]["question"]], 2, res, {})["flops_total"]
          for b in {r["budget"] for r in fcomp}}
    assert rows.loc["fastv@lm:1 k=3 fcomp", "flops_total"] == pytest.approx(sum(at[r["budget"]] for r in fcomp) / 8)
    accuracy = pd.read_csv(out / "accuracy.csv")
    assert set(accuracy.allocation.dropna()) == {"fixed", "fcomp", "oracle-type"}
    assert "fcomp_by_type" in meta and meta["oracle_split"] == "val"
    bad = invoke("sweep-budget", "--model", "tiny", "--device", "cpu", "--pipelines", "dense,fastv@lm:1",
                 "--budgets", 3, "--allocate", "fcomp", "--checkpoint", checkpoint, "--out", tmp_path / "b")
    assert bad.exit_code == 2 and "needs --dataset" in bad.output, bad.output


def test_budget_folders_from_before_allocation_still_report(tmp_path):
    """results/shapes/budget was written before the allocation columns: its tables and figure still come out."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "results" / "shapes" / "budget"
    result = invoke("report", "--results", folder, "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "fastv k=12" in (tmp_path / "r" / "report.md").read_text()
