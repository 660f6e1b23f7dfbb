"""qgsa sweep-budget: every selector at equal budgets in one folder; qgsa report reads it."""

import json

import pandas as pd
from typer.testing import CliRunner

from qgsa_bench.cli import app

runner = CliRunner()


def test_sweep_budget_measures_every_selector_at_every_budget(tmp_path):
    out = tmp_path / "budget"
    result = runner.invoke(app, [
        "sweep-budget", "--model", "tiny", "--weights", "random", "--resolution", "64", "--budgets", "4", "8",
        "--pipelines", "dense,qgsa,fastv,pdrop@lm:1,visionzip,divprune,downsample,random@vision:1",
        "--reps", "2", "--decode-tokens", "2", "--dataset", "shapes", "--limit", "6", "--eval-batch", "3",
        "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "budget.csv")
    assert len(rows) == 1 + 7 * 2  # dense once, every selector at both budgets
    dense = rows[rows.pipeline == "dense"].iloc[0]
    assert dense.budget == 16 and dense.flops_share_of_dense == 1.0 and dense.point == "none"
    fastv = rows[rows.case == "fastv k=4"].iloc[0]
    assert fastv.point == "lm:1" and fastv.n_visual_tokens == 16 and fastv.k == 4
    assert fastv.visual_tokens_layer_avg == 10.0  # layer 0 sees 16, layer 1 sees 4
    inside = rows[rows.case == "random@vision:1 k=4"].iloc[0]
    assert inside.point == "vision:1" and inside.n_visual_tokens == 4
    assert inside.flops_vision < dense.flops_vision  # the second vision layer runs on 16 of 64 patches
    for _, r in rows.iterrows():
        assert r.flops_total > 0 and r.latency_ms_median > 0 and r.n_eval == 6
    acc = pd.read_csv(out / "accuracy.csv")
    assert set(acc.case) == set(rows.case) and {"all", "type"} <= set(acc.scope)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "sweep-budget" and meta["budgets"] == [4, 8] and meta["dense_visual_tokens"] == 16
    table = (out / "table.md").read_text()
    assert "fastv k=4 | lm:1 | 4 | 4 | 16 / 10.0" in table and "Accuracy per question type" in table
    report = runner.invoke(app, ["report", "--results", str(out), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert (tmp_path / "report" / "pareto_budget.png").is_file()


def test_sweep_budget_bad_budget_and_checkpoint_name(tmp_path):
    args = ["sweep-budget", "--model", "tiny", "--weights", "random", "--resolution", "64", "--device", "cpu",
            "--pipelines", "dense,fastv", "--out", str(tmp_path / "b")]
    result = runner.invoke(app, args + ["--budgets", "17"])
    assert result.exit_code == 2 and "budget 17 visual tokens is above the 16 dense visual tokens" in result.output
    result = runner.invoke(app, args + ["--budgets", "4", "--checkpoint", "qgsa=nowhere.pt"])
    assert result.exit_code == 2 and "checkpoint not found: nowhere.pt" in result.output
    assert not (tmp_path / "b" / "budget.csv").exists()


def test_sweep_budget_in_layer_averaged_tokens(tmp_path):
    out = tmp_path / "avg"
    result = runner.invoke(app, [
        "sweep-budget", "--model", "tiny", "--weights", "random", "--resolution", "64", "--budgets", "10",
        "--budget-unit", "layer-avg", "--pipelines", "dense,fastv@lm:1,visionzip", "--reps", "2",
        "--decode-tokens", "2", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "budget.csv").set_index("case")
    # 2 LM layers, cut before layer 1: (16 + k) / 2 <= 10 -> k = 4 kept after the cut, average 10
    assert rows.loc["fastv@lm:1 k=10", "k"] == 4 and rows.loc["fastv@lm:1 k=10", "visual_tokens_layer_avg"] == 10
    assert rows.loc["visionzip k=10", "k"] == 10 and (rows.budget_unit == "layer-avg").all()
