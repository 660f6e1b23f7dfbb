"""Results folders never mix two runs, and every long command resumes (issue 24).

Every command that writes a results folder goes through one driver (experiments/driver.py): the same run
resumes, a folder of another kind of run or other settings is refused with one line (`--overwrite`
replaces it), a refused run leaves the folder as it found it, a finished run rerun is a no-op that says
so, and Ctrl-C / SIGTERM says how to resume.
"""

import json
import os
import signal

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qgsa_bench.cli import app

runner = CliRunner()
TINY = ["--model", "tiny", "--weights", "random", "--device", "cpu"]
EVAL = ["eval", *TINY, "--dataset", "shapes", "--limit", 6, "--batch", 2, "--pipelines", "dense,random@lm:1",
        "--k", 4, "--max-new-tokens", 2]
BUDGET = ["sweep-budget", *TINY, "--resolution", 64, "--pipelines", "dense,fastv", "--budgets", 4, "--reps", 1,
          "--warmup", 0, "--decode-tokens", 2, "--no-flops", "--dataset", "shapes", "--limit", 4, "--eval-batch", 2]
SWEEP = ["sweep-resolution", *TINY, "--sizes", 64, "--pipelines", "dense,qgsa", "--k", 4, "--reps", 1, "--warmup", 0,
         "--decode-tokens", 2, "--no-flops"]
COUNT = ["count-flops", "--model", "tiny", "--resolution", 64, "--pipelines", "dense,fastv", "--budgets", 4,
         "--decode-tokens", 2]
GROUND = ["grounding", *TINY, "--dataset", "shapes", "--limit", 4, "--batch", 2]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("command, other", [
    (EVAL, ["--limit", 4]), (BUDGET, ["--budgets", 5]), (SWEEP, ["--k", 5]), (COUNT, ["--budgets", 5]),
    (GROUND, ["--limit", 3]),
])
def test_a_finished_run_is_a_no_op_other_settings_are_refused_and_overwrite_replaces(tmp_path, command, other):
    out = tmp_path / "r"
    first = invoke(*command, "--out", out)
    assert first.exit_code == 0, first.output
    before = files(out)
    again = invoke(*command, "--out", out)
    assert again.exit_code == 0 and "finished: nothing to do (--overwrite runs it again)" in again.output
    assert files(out) == before  # not one byte rewritten
    refused = invoke(*command, *other, "--out", out)
    assert refused.exit_code == 2 and refused.stderr.startswith("error:") and len(refused.stderr.splitlines()) == 1
    assert "holds results made with other settings" in refused.stderr and "--overwrite" in refused.stderr
    assert files(out) == before
    replaced = invoke(*command, *other, "--overwrite", "--out", out)
    assert replaced.exit_code == 0, replaced.output
    meta = json.loads((out / "meta.json").read_text())
    assert set(meta["files"]) <= set(files(out)) and "meta.json" not in meta["files"]


def test_another_kind_of_run_is_refused_in_one_line(tmp_path):
    out = tmp_path / "r"
    assert invoke(*EVAL, "--out", out).exit_code == 0
    for command in (BUDGET, SWEEP, COUNT, GROUND):
        result = invoke(*command, "--out", out)
        assert result.exit_code == 2 and "holds a `eval` run, not `" in result.stderr, result.output
    result = invoke("train", "--model", "tiny", "--weights", "random", "--dataset", "shapes", "--limit", 4,
                    "--max-steps", 1, "--align-encoder", "lm", "--device", "cpu", "--out", out)
    assert result.exit_code == 2 and "holds a `eval` run, not `train`" in result.stderr


def test_a_refused_run_leaves_nothing_that_blocks_the_corrected_command(tmp_path):
    out = tmp_path / "r"
    bad = invoke(*[a if a != 4 else 500 for a in EVAL], "--out", out)
    assert bad.exit_code == 2 and "budget 500 visual tokens is impossible" in bad.stderr
    assert not out.exists()
    assert invoke(*EVAL, "--out", out).exit_code == 0


def test_files_of_no_run_are_refused_and_overwrite_only_empties_a_results_folder(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke(*EVAL, "--out", out)
    assert result.exit_code == 2 and "holds files but no meta.json" in result.stderr
    result = invoke(*EVAL, "--overwrite", "--out", out)
    assert result.exit_code == 2 and "it is not one; choose another --out" in result.stderr
    assert (out / "notes.txt").read_text() == "mine"


def _interrupt_after(monkeypatch, module, name, calls: int, sig=None):
    """Make module.name raise KeyboardInterrupt (or deliver `sig` to this process) on call number `calls`."""
    original = getattr(module, name)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            if sig is None:
                raise KeyboardInterrupt
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("sig", [None, signal.SIGTERM])
def test_an_interrupted_eval_resumes_and_gives_the_uninterrupted_result(tmp_path, monkeypatch, sig):
    from qgsa_bench.experiments import evaluate

    whole = tmp_path / "whole"
    assert invoke(*EVAL, "--out", whole).exit_code == 0
    out = tmp_path / "r"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, evaluate, "_batch_records", 3, sig)  # dense's 3 batches (warm-up is not counted)
        stopped = invoke(*EVAL, "--out", out)
    assert stopped.exit_code == 130
    assert stopped.stderr.splitlines()[-1] == \
        f"interrupted: what finished is kept in {out}; rerun the same command to resume"
    kept = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["pipeline"] for r in kept] == ["dense"] * 4  # two whole batches
    resumed = invoke(*EVAL, "--out", out)
    assert resumed.exit_code == 0, resumed.output
    strip = ("latency_ms",)
    rows = [{k: v for k, v in json.loads(line).items() if k not in strip}
            for line in (out / "predictions.jsonl").read_text().splitlines()]
    reference = [{k: v for k, v in json.loads(line).items() if k not in strip}
                 for line in (whole / "predictions.jsonl").read_text().splitlines()]
    key = lambda r: (r["pipeline"], r["id"])  # noqa: E731
    assert sorted(rows, key=key) == sorted(reference, key=key)
    columns = ["pipeline", "scope", "question_type", "n", "accuracy", "k_mean"]
    assert pd.read_csv(out / "eval.csv")[columns].equals(pd.read_csv(whole / "eval.csv")[columns])


def test_an_interrupted_budget_sweep_keeps_its_timing_and_resumes_the_accuracy(tmp_path, monkeypatch):
    from qgsa_bench.experiments import evaluate

    out = tmp_path / "r"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, evaluate, "_batch_records", 4)  # after dense's 2 batches and fastv's first
        stopped = invoke(*BUDGET, "--out", out)
    assert stopped.exit_code == 130 and "rerun the same command to resume" in stopped.stderr
    timing = (out / "budget.csv").read_bytes()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    resumed = invoke(*BUDGET, "--out", out)
    assert resumed.exit_code == 0, resumed.output
    frame = pd.read_csv(out / "budget.csv")
    assert list(frame.case) == ["dense", "fastv k=4"] and set(frame.n_eval) == {4}
    assert pd.read_csv(out / "budget.csv", usecols=["case", "latency_ms_median"]).equals(
        pd.read_csv(pd.io.common.BytesIO(timing), usecols=["case", "latency_ms_median"]))  # not timed again
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 8


def test_eval_says_when_selectors_reach_the_lm_with_different_visual_tokens():
    from qgsa_bench.experiments.evaluate import unequal_tokens

    def row(pipeline, tokens, dense=False):
        return {"pipeline": pipeline, "scope": "all", "dense": dense, "k_mean": None if dense else 18.0,
                "n_visual_tokens_mean": tokens}

    # k = 18 patches through the connector: clustered (qgsa) and spread (random) patches, other token counts
    line = unequal_tokens([row("dense", 49, True), row("qgsa", 9.8), row("random", 15.6)])
    assert line == ("not an equal-budget comparison: the visual tokens reaching the LM differ (qgsa 9.8, random "
                    "15.6 on average); `qgsa sweep-budget` compares selectors at equal visual tokens")
    assert unequal_tokens([row("dense", 49, True), row("qgsa", 18), row("fastv@lm:1", 18.0)]) == ""


def test_the_time_left_is_estimated_from_steps_of_the_phase_running(monkeypatch):
    """sweep-budget times its cases (slow steps), then scores samples (fast steps): one bar over both said
    13:51 left for a run of a minute. Each phase now has its own bar and estimate."""
    from qgsa_bench.cli.progress import RichProgress

    now = {"t": 0.0}
    progress = RichProgress(get_time=lambda: now["t"])
    with progress:
        progress("timing", -10)
        for _ in range(10):  # 10 timed runs of 2 s
            now["t"] += 2.0
            progress("timing", 1)
        progress("scoring", -1000)
        for _ in range(100):  # then 1000 samples of 10 ms each: 100 done, 9 s left
            now["t"] += 0.01
            progress("scoring", 1)
        left = progress.bar.tasks[-1].time_remaining
    assert len(progress.bar.tasks) == 2 and progress.bar.tasks[0].completed == 10
    assert 9 <= left <= 10  # Rich rounds up to whole seconds


@pytest.mark.parametrize("failure, hint", [
    (RuntimeError("Error: accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run."),
     "run with --compile default (Inductor without CUDA graphs)"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "lower --batch or --resolution"),
    (ValueError("something no one foresaw\nsecond line"), "rerun with QGSA_DEBUG=1 for the traceback and report it"),
])
def test_a_library_failure_is_one_error_line_and_keeps_what_finished(tmp_path, monkeypatch, failure, hint):
    """A failure inside torch or transformers (on the H200 a CUDA-graph RuntimeError reached the user as a
    120-line traceback: results/h200/compiled-reduce-overhead.log) is one `error:` line with its kind, its
    first line and what to do, exit status 1; the rows written before it stay, and QGSA_DEBUG=1 re-raises."""
    from qgsa_bench.experiments import evaluate

    out = tmp_path / "r"
    original, count = evaluate._batch_records, {"n": 0}

    def failing(*args, **kwargs):
        count["n"] += 1
        if count["n"] == 3:
            raise failure
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluate, "_batch_records", failing)
    result = invoke(*EVAL, "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    line, = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: {type(failure).__name__}: ") and hint in line and "second line" not in line
    assert line.endswith(f"what finished is kept in {out}; rerun the same command to resume")
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4  # two whole batches of dense
    count["n"] = 2
    monkeypatch.setenv("QGSA_DEBUG", "1")
    debug = invoke(*EVAL, "--out", out)
    assert debug.exit_code == 1 and debug.exception is failure
