"""An option is applied to every pipeline it concerns, or refused; never dropped (issue 21, case 24).

sweep-resolution's --k once reached only the paper's patch-level pipelines, while its table said "fixed k"
for every row. Now every selector runs at the budget given, each row records the budget it ran at, and an
option that no pipeline reads is one error line. Downsampling, the one selector that could not take
f_comp's per-question budget, now does (grouped by budget where a batch mixes them).
"""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.cli import app
from qgsa_bench.config import AskConfig, EvalConfig, MeasureConfig
from qgsa_bench.experiments.budget import BudgetConfig

runner = CliRunner()
SPECS = "dense,qgsa,random,fastv@lm:1,visionzip,random@vision:1,divprune,norm@post-vision,pdrop@lm:1,downsample"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sweep_runs_every_selector_at_the_given_budget(tmp_path):
    out = tmp_path / "sweep"
    result = invoke("sweep-resolution", "--model", "tiny", "--weights", "random", "--sizes", "64", "--pipelines",
                    SPECS, "--k", 4, "--reps", 1, "--warmup", 0, "--decode-tokens", 2, "--device", "cpu",
                    "--no-flops", "--out", out)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "sweep.csv").set_index("pipeline")
    for spec in SPECS.split(",")[1:]:
        assert rows.loc[spec, "k"] == 4, spec  # the budget each row ran at: the one asked for
    assert pd.isna(rows.loc["dense", "k"])
    assert "Budget: fixed k=4" in (out / "table4.md").read_text()


def test_sweep_refuses_a_budget_one_selector_cannot_take_before_any_work(tmp_path):
    out = tmp_path / "sweep"
    result = invoke("sweep-resolution", "--model", "tiny", "--weights", "random", "--sizes", "64", "--pipelines",
                    "dense,qgsa,fastv@lm:1", "--k", 20, "--reps", 1, "--device", "cpu", "--out", out)
    assert result.exit_code == 2 and result.stderr.startswith("error:")
    assert "k=20 is impossible at 64px for fastv@lm:1, which has only 16 visual tokens there" in result.stderr
    assert not (out / "sweep.csv").exists()


@pytest.mark.parametrize("make, words", [
    (lambda: AskConfig(image="x.png", question="what?", pipeline="dense", k=4),
     "--k is a selector's budget, but dense keeps every visual token: drop --k, or add a selector pipeline"),
    (lambda: EvalConfig(pipelines=("dense", "dense-bypass"), k=4), "dense, dense-bypass keep every visual token"),
    (lambda: EvalConfig(pipelines=("dense", "fastv"), k=4, checkpoint="c.pt"),
     "dense, fastv at the budgets --k fixes never read it: drop --checkpoint, drop --k, or add a qgsa pipeline"),
    (lambda: AskConfig(image="x.png", question="what?", pipeline="dense", checkpoint="c.pt"),
     "dense keeps every visual token: drop --checkpoint, or add a selector pipeline"),
    (lambda: BudgetConfig(MeasureConfig(checkpoint="c.pt"), pipelines=("dense", "fastv", "random@vision:1")),
     "dense, fastv, random@vision:1 at the budgets --budgets/--shares fixes never read it: drop --checkpoint, or "
     "add a qgsa pipeline"),
])
def test_options_no_pipeline_reads_are_refused(make, words):
    with pytest.raises(QGSAError, match=words.replace("-", r"\-")):
        make()


def test_options_some_pipeline_reads_are_accepted():
    EvalConfig(pipelines=("dense", "fastv"), k=4)  # --k: fastv's budget
    EvalConfig(pipelines=("dense", "fastv"), checkpoint="c.pt")  # no --k: f_comp gives fastv's budget
    EvalConfig(pipelines=("dense", "random"), k=4, checkpoint="c.pt")  # patch-level: W_vis projects the patches
    AskConfig(image="x.png", question="what?", pipeline="qgsa", k=4, checkpoint="c.pt")


def test_ask_refuses_k_on_dense_in_one_line(image_path):
    result = invoke("ask", "--model", "tiny", "--weights", "random", "--image", image_path, "--question", "what?",
                    "--pipeline", "dense", "--k", 4, "--device", "cpu")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: --k is a selector's budget")


@torch.no_grad()
def test_downsampling_runs_at_f_comp_s_budget_without_k(tiny, image_path, tmp_path):
    out = tmp_path / "ask.json"
    result = invoke("ask", "--model", "tiny", "--weights", "random", "--image", image_path, "--question",
                    "what colour is the circle?", "--pipeline", "downsample", "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    answer = json.loads(out.read_text())
    run = tiny.run("downsample")
    budget = int(run.adaptive_budgets(["what colour is the circle?"], tiny.adapter.image_size)[0])
    assert answer["k"] == answer["n_visual_tokens"] == budget


@torch.no_grad()
def test_a_batch_of_mixed_downsampling_budgets_gives_each_sample_its_solo_result(tiny, images, monkeypatch):
    from qgsa_bench.experiments.evaluate import _batch_records
    from qgsa_bench.data.types import VQASample

    run = tiny.run("downsample")
    budgets = {"what color?": 4, "how many?": 9, "where?": 4}
    monkeypatch.setattr(type(run), "adaptive_budgets",
                        lambda self, questions, requested: torch.tensor([budgets[q] for q in questions]))
    chunk = [VQASample(id=f"s{i}", question=q, answers=["red"], image=None, dataset="shapes") for i, q in enumerate(budgets)]
    pictures = [images[0], images[1], images[1]]
    cfg = EvalConfig(model="tiny", pipelines=("downsample",), batch=3, max_new_tokens=2, resolution=64)
    batched = _batch_records(run, chunk, pictures, 64, cfg)
    assert [r["id"] for r in batched] == ["s0", "s1", "s2"]  # the data set's order
    assert [r["k"] for r in batched] == [4, 9, 4] == [r["n_visual_tokens"] for r in batched]
    for b, record in enumerate(batched):
        solo = _batch_records(run, chunk[b:b + 1], pictures[b:b + 1], 64, cfg)[0]
        assert (solo["prediction"], solo["k"]) == (record["prediction"], record["k"])
    with pytest.raises(QGSAError, match=r"budgets \[4, 9\]: answer them in groups"):
        run.prepare(pictures[:2], list(budgets)[:2], 64)


def test_a_checkpoint_is_refused_at_an_insertion_point_it_was_not_trained_at(tmp_path):
    out = tmp_path / "e"
    result = invoke("eval", "--model", "results/shapes/base-model", "--checkpoint",
                    "results/shapes/checkpoints/qgsa-vision2.pt", "--pipelines", "dense,qgsa", "--limit", 2,
                    "--device", "cpu", "--out", out)
    assert result.exit_code == 2 and not out.exists()
    assert result.stderr.splitlines()[-1] == (
        "error: the QGSA checkpoint was trained at vision:2 (qgsa train --insert vision:2) and qgsa selects at "
        "post-vision: its scores would read other features; use --pipelines qgsa-vision@vision:2 with it, or "
        "another --checkpoint")


def test_eval_and_sweep_run_downsampling_at_its_budget(tmp_path):
    """Found by a fresh trial: eval refused downsample without --k, and sweep-resolution checked downsample's
    k against its own smaller grid (k=17 at 128 px: 'only 16 visual tokens')."""
    result = invoke("eval", "--model", "tiny", "--weights", "random", "--dataset", "shapes", "--limit", 2,
                    "--pipelines", "downsample", "--max-new-tokens", 1, "--device", "cpu", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    result = invoke("sweep-resolution", "--model", "tiny", "--weights", "random", "--sizes", 128, "--pipelines",
                    "dense,downsample", "--k", 17, "--reps", 1, "--warmup", 0, "--decode-tokens", 2, "--device",
                    "cpu", "--no-flops", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    row = pd.read_csv(tmp_path / "s" / "sweep.csv").set_index("pipeline").loc["downsample"]
    assert (row.k, row.effective_resolution) == (16, 64)  # the largest square grid of at most 17 tokens


@pytest.mark.parametrize("command, table, extra", [
    ("sweep-resolution", "sweep.csv", ["--sizes", 64, "--k", 4]),
    ("sweep-budget", "budget.csv", ["--resolution", 64, "--budgets", 4]),
    ("ablate", "ablate.csv", ["--resolution", 64, "--k", 4]),
])
def test_every_timing_command_stops_at_its_max_time(tmp_path, monkeypatch, command, table, extra):
    """sweep-budget accepted --max-time and ignored it (an H200 run timed 21 rounds of 11 cases past a
    30 s --max-time, results/h200/README.md): every command that times stops at the first whole rotation
    past its --max-time, here with latencies too noisy for any interval to settle."""
    import random

    from qgsa_bench.experiments import runner as timing_runner

    real, noise = timing_runner.time_run, random.Random(0)

    def noisy(*args, **kwargs):
        return {**real(*args, **kwargs), "latency_ms": noise.uniform(1.0, 100.0)}

    monkeypatch.setattr(timing_runner, "time_run", noisy)
    out = tmp_path / command
    pipelines = [] if command == "ablate" else ["--pipelines", "dense,random"]
    result = invoke(command, "--model", "tiny", "--weights", "random", *extra, *pipelines, "--reps", "auto",
                    "--max-time", 0.001, "--warmup", 0, "--decode-tokens", 1, "--device", "cpu", "--no-flops",
                    "--out", out)
    assert result.exit_code == 0, result.output
    stopped = set(pd.read_csv(out / table).reps_stopped)
    assert len(stopped) == 1 and stopped.pop().startswith("--max-time spent after "), stopped
