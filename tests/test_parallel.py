"""Several processes (accelerate launch / torchrun, two or three CPU processes on gloo): data-parallel eval,
grounding, sweep-budget accuracy and train give the one-process numbers; timing commands refuse a launch unless
--per-process; a process that dies leaves a folder that resumes. The launched processes run as subprocesses."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from qgsa_bench import QGSAError
from qgsa_bench.experiments.parallel import World, in_rounds, launched_size, shared_outcome, timing_alone

ROOT = Path(__file__).resolve().parents[1]
BASE = str(ROOT / "results" / "shapes" / "base-model")
EVAL = ["eval", "--model", BASE, "--dataset", "shapes", "--limit", "9", "--pipelines", "dense,fastv@lm:2,random",
        "--k", "8", "--max-new-tokens", "3", "--device", "cpu", "--batch", "2"]


def _env(**more) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **more}


def one(*args, **env) -> subprocess.CompletedProcess:
    """`qgsa ARGS` in one process (one thread, as each launched process runs)."""
    return subprocess.run([sys.executable, "-m", "qgsa_bench.cli", *map(str, args)], capture_output=True, text=True,
                          env=_env(**env), timeout=300)


def launch(n: int, *args, script=None, module="qgsa_bench.cli", **env) -> subprocess.CompletedProcess:
    """`qgsa ARGS` (or `python -m MODULE ARGS`) in `n` processes started by torchrun (gloo on the CPU)."""
    target = [str(script)] if script else ["-m", module]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           *target, *map(str, args)], capture_output=True, text=True, env=_env(**env), timeout=300)


def accelerate_launch(n: int, *args, **env) -> subprocess.CompletedProcess:
    """`qgsa ARGS` in `n` CPU processes started by accelerate launch: --multi_gpu starts them through torch's
    launcher (accelerate 1.x's --cpu starts one process unless MPI is configured); without a GPU they join over
    gloo."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(port), "-m", "qgsa_bench.cli", *map(str, args)],
                          capture_output=True, text=True, env=_env(**env), timeout=300)


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line and "elastic" not in line]


def table(path: Path) -> pd.DataFrame:
    """A results CSV without its latency columns (the one thing a process count may change)."""
    frame = pd.read_csv(path)
    return frame[[c for c in frame.columns if "latency" not in c]]


def records(path: Path, key="latency_ms") -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != key} for line in path.read_text().splitlines()]


# ---- in one process -------------------------------------------------------------------------------------------
def test_world_shards_whole_batches_strided():
    batches = [[0, 1], [2, 3], [4, 5], [6]]
    assert World(3, 1).rounds(4) == 2
    assert [World(3, r).mine(batches, 0) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    assert [World(3, r).mine(batches, 1) for r in range(3)] == [[6], None, None]  # idle, not stuck


def test_rounds_alone_are_the_batches(tiny):
    from qgsa_bench.data import load_dataset

    data = load_dataset("shapes", None, None, 5, False, 0)
    batches = [data.samples[:2], data.samples[2:4], data.samples[4:]]
    seen = list(in_rounds(World(), batches, lambda chunk, images: [s.id for s in chunk], data))
    assert [ids for ids, _ in seen] == [[s.id for s in b] for b in batches]
    assert [part for _, part in seen] == [[b] for b in batches]


def test_alone_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_size() == 1 and timing_alone("ablate", False) is None
    assert shared_outcome(World(), lambda: 7) == 7
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(QGSAError, match="ablate times, and this launch started 2 processes"):
        timing_alone("ablate", False)
    assert timing_alone("ablate", True) == 1
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(QGSAError, match="not a positive number of processes"):
        launched_size()


def test_help_does_not_import_accelerate():
    code = "import sys; from qgsa_bench.cli import app; print('accelerate' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env())
    assert result.stdout.strip() == "False"


# ---- launched -------------------------------------------------------------------------------------------------
def test_eval_two_processes_equal_one(tmp_path):
    assert one(*EVAL, "--out", tmp_path / "one").returncode == 0
    two = accelerate_launch(2, *EVAL, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert table(tmp_path / "two" / "eval.csv").equals(table(tmp_path / "one" / "eval.csv"))
    assert records(tmp_path / "two" / "predictions.jsonl") == records(tmp_path / "one" / "predictions.jsonl")
    overall = table(tmp_path / "one" / "eval.csv").query("scope == 'all'").set_index("pipeline").accuracy
    assert overall["dense"] > overall["random"]  # a trained base: the predictions compared are answers
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["world"]["processes"] == 2 and meta["world"]["backend"] == "gloo"
    assert not (tmp_path / "two" / "rank-1").exists() and errors(two) == []


def test_a_dying_process_leaves_a_folder_that_resumes_in_one(tmp_path):
    assert one(*EVAL, "--out", tmp_path / "one").returncode == 0
    out = tmp_path / "two"
    died = launch(2, *EVAL, "--out", out, script=ROOT / "tests" / "launch_dying.py", DIE_RANK="1", DIE_AT="2")
    assert died.returncode != 0
    said = [line for line in died.stderr.splitlines() if line.startswith(("interrupted", "error:"))]
    assert len(said) == 1 and str(out) in said[0] and "resume" in said[0]
    assert not (out / "eval.csv").exists()  # never looks finished
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4  # round 1: two batches of two
    resumed = one(*EVAL, "--out", out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert table(out / "eval.csv").equals(table(tmp_path / "one" / "eval.csv"))


def test_grounding_with_more_processes_than_batches(tmp_path):
    args = ["grounding", "--model", BASE, "--dataset", "shapes", "--limit", 2, "--batch", 1, "--pipelines",
            "fastv,random", "--budgets", 4, "--device", "cpu"]
    assert one(*args, "--out", tmp_path / "one").returncode == 0
    three = launch(3, *args, "--out", tmp_path / "three")  # process 2 answers nothing
    assert three.returncode == 0, three.stderr[-3000:]
    assert table(tmp_path / "three" / "grounding.csv").equals(table(tmp_path / "one" / "grounding.csv"))
    assert records(tmp_path / "three" / "grounding.jsonl") == records(tmp_path / "one" / "grounding.jsonl")
    assert json.loads((tmp_path / "three" / "meta.json").read_text())["world"]["processes"] == 3


def test_sweep_budget_scores_in_parallel_once_timed(tmp_path):
    args = ["sweep-budget", "--model", "tiny", "--pipelines", "dense,fastv,random", "--budgets", 4, "--dataset",
            "shapes", "--limit", 5, "--eval-batch", 2, "--reps", 1, "--warmup", 0, "--no-flops", "--device", "cpu"]
    out = tmp_path / "two"
    refused = launch(2, *args, "--out", out)
    assert refused.returncode != 0 and len(errors(refused)) == 1
    assert errors(refused)[0].startswith("error: sweep-budget times every case, and this launch started 2")
    assert one(*args, "--timing-only", "--out", out).returncode == 0
    assert (out / "budget.csv").exists() and not (out / "accuracy.csv").exists()
    scored = launch(2, *args, "--out", out)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert one(*args, "--out", tmp_path / "one").returncode == 0
    assert table(out / "accuracy.csv").equals(table(tmp_path / "one" / "accuracy.csv"))


def test_timing_refuses_a_launch_unless_per_process(tmp_path):
    args = ["sweep-resolution", "--model", "tiny", "--sizes", 64, "--pipelines", "dense,qgsa", "--reps", 2,
            "--warmup", 0, "--no-flops", "--device", "cpu", "--out", tmp_path / "s"]
    refused = launch(2, *args)
    assert refused.returncode != 0 and len(errors(refused)) == 1 and not (tmp_path / "s").exists(), \
        refused.stderr[-3000:]  # once, on a loaded machine, no error line came: its stderr, should it recur
    assert "sweep-resolution times, and this launch started 2 processes" in errors(refused)[0]
    apart = launch(2, *args, "--per-process")
    assert apart.returncode == 0, apart.stderr[-3000:]
    for rank in (0, 1):
        rows = pd.read_csv(tmp_path / "s" / f"rank-{rank}" / "sweep.csv")
        assert list(rows["rank"]) == [rank, rank] and list(rows.case) == ["dense", "qgsa"]
        world = json.loads((tmp_path / "s" / f"rank-{rank}" / "meta.json").read_text())["world"]
        assert world["processes"] == 2 and world["rank"] == rank


def test_train_two_processes_take_the_one_process_step(tmp_path):
    args = ["train", "--model", "tiny", "--dataset", "shapes", "--limit", 8, "--max-steps", 1, "--kvar-coef", 0,
            "--qlen-coef", 0, "--no-align", "--warmup-steps", 0, "--device", "cpu"]
    assert one(*args, "--batch", 4, "--out", tmp_path / "one").returncode == 0
    two = launch(2, *args, "--batch", 2, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    assert a["global_batch"] == b["global_batch"] == 4 and a["step"] == b["step"] == 1
    # the gradients themselves (AdamW's first moment after one step: (1 - beta1) x gradient) agree, and are not 0
    moments = [(a["optimizer"]["state"][i]["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])
               for i in a["optimizer"]["state"]]
    assert max(m.abs().max().item() for m, _ in moments) > 1e-4
    for m_one, m_two in moments:
        torch.testing.assert_close(m_two, m_one, rtol=1e-4, atol=1e-7)
    for key, value in a["qgsa_state"].items():
        torch.testing.assert_close(b["qgsa_state"][key], value, rtol=1e-5, atol=1e-6)
    logs = [pd.read_csv(tmp_path / name / "train_log.csv") for name in ("one", "two")]
    for column in ("loss", "l_cs", "l_answer", "l_attr", "k_mean"):
        assert logs[1][column][0] == pytest.approx(logs[0][column][0], rel=1e-6)
    assert not (tmp_path / "two" / "rank-1").exists()


# ---- lmms-eval under a launch: lmms-eval shards the documents and gathers the scores itself ----------------------
LMMS = ["lmms-eval", "--model", BASE, "--device", "cpu", "--tasks", "shapes_qa,shapes_mc", "--pipelines",
        "dense,fastv@lm:2", "--k", 8, "--batch", 2, "--max-new-tokens", 10]


@pytest.fixture(scope="module")
def lmms_alone(tmp_path_factory):
    """(the local tasks' folder, the datasets cache, `qgsa lmms-eval` in one process on 7 of their 8 documents)."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'qgsa-bench[lmms]')")
    from test_lmms_eval import write_tasks

    root = tmp_path_factory.mktemp("lmms-launch")
    tasks, cache = write_tasks(root / "tasks"), str(root / "datasets-cache")
    alone = one(*LMMS, "--include-path", tasks, "--out", root / "one", "--", "--limit", 7, HF_DATASETS_CACHE=cache)
    assert alone.returncode == 0, alone.stderr[-3000:]
    return tasks, cache, root / "one"


def test_lmms_eval_two_processes_equal_one(lmms_alone, tmp_path):
    tasks, cache, alone = lmms_alone
    # 7 documents on 2 processes: lmms-eval deals 4 and 3, and pads process 1 with a copy it never answers
    two = accelerate_launch(2, *LMMS, "--include-path", tasks, "--out", tmp_path / "two", "--", "--limit", 7,
                            HF_DATASETS_CACHE=cache)
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]  # one folder, written by the main process
    assert table(tmp_path / "two" / "lmms.csv").equals(table(alone / "lmms.csv"))  # scores, tokens, FLOPs
    for name in ("samples_dense.jsonl", "samples_fastv_lm_2.jsonl"):
        assert (tmp_path / "two" / name).read_text() == (alone / name).read_text()  # in document order
    rows = pd.read_csv(alone / "lmms.csv")
    assert set(rows.n) == {7} and rows.flops_total.notna().all()
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["world"]["processes"] == 2 and meta["world"]["backend"] == "gloo"
    assert "d mod processes" in meta["world"]["shards"] and errors(two) == []


def test_lmms_eval_own_cli_under_torchrun(lmms_alone, tmp_path):
    """lmms-eval's own CLI builds the qgsa model, which joins the process group lmms-eval's Accelerator started
    (on CPUs only when told: ACCELERATE_USE_CPU=1); the scores and answers are the one-process run's."""
    tasks, cache, alone = lmms_alone
    args = ["--model", "qgsa", "--model_args", f"model={BASE},device=cpu,pipeline=fastv@lm:2,k=8,max_new_tokens=10",
            "--tasks", "shapes_qa,shapes_mc", "--include_path", tasks, "--limit", 7, "--batch_size", 2,
            "--log_samples", "--output_path", tmp_path / "own"]
    two = launch(2, *args, module="lmms_eval", HF_DATASETS_CACHE=cache, ACCELERATE_USE_CPU="1")
    assert two.returncode == 0, two.stderr[-3000:]
    said = two.stdout + two.stderr  # process 0 post-processes its 4 documents of 7 (process 1 shows no bar)
    assert "Postprocessing: 100%" in said and "| 4/4 [" in said and "| 7/7 [" not in said
    results = json.loads(next((tmp_path / "own").glob("*/*_results.json")).read_text())["results"]
    ours = [json.loads(line) for line in (alone / "samples_fastv_lm_2.jsonl").read_text().splitlines()]
    for task, metric in (("shapes_qa", "exact_match"), ("shapes_mc", "acc")):
        scores = {s["doc_id"]: s[metric] for s in ours if s["task"] == task}
        assert results[task][f"{metric},none"] == sum(scores.values()) / 7  # lmms.csv rounds to 6 digits
        samples = [json.loads(line) for line in next((tmp_path / "own").glob(f"*/*_samples_{task}.jsonl")).open()]
        assert {s["doc_id"]: s[metric] for s in samples} == scores  # every document, scored as one process did


# ---- one process's work under a launch: count-flops and ask on the main process only, base-train refused ------
ONE_PROCESS = [["count-flops", "--model", "tiny", "--pipelines", "dense,fastv", "--budgets", 4, "--decode-tokens", 2],
               ["ask", "--model", "tiny", "--question", "what color is the circle?", "--max-new-tokens", 2,
                "--device", "cpu"]]


def test_one_process_commands_on_a_launch_s_other_process(tmp_path, image_path, monkeypatch):
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    runner, out = CliRunner(), tmp_path / "out"
    count, ask = ONE_PROCESS
    for args in ([*count, "--out", out / "count"], [*ask, "--image", image_path, "--out", out / "ask.json"]):
        result = runner.invoke(app, [str(a) for a in args])
        assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")  # stops at once, says nothing
    base = ["base-train", "--steps", 1, "--vision-steps", 0, "--out", out / "base"]
    assert (runner.invoke(app, [str(a) for a in base]).exit_code, out.exists()) == (2, False)
    monkeypatch.setenv("RANK", "0")
    refused = runner.invoke(app, [str(a) for a in base])
    assert refused.exit_code == 2 and refused.stderr.strip().splitlines() == [
        "error: base-train runs in one process (it trains the small shapes base on one device; `qgsa train` is "
        "data-parallel), and this launch started 2: run it without accelerate launch or torchrun"]
    assert not out.exists()


def test_count_flops_and_ask_run_once_under_a_launch(tmp_path, image_path):
    count, ask = ONE_PROCESS
    assert one(*count, "--out", tmp_path / "one").returncode == 0
    two = launch(2, *count, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    said = [line for line in two.stderr.splitlines() if line.startswith("warning:")]
    assert said == ["warning: count-flops is one process's work (the same result in any number): process 0 of this "
                    "launch's 2 runs it, the others stop at once"]
    assert table(tmp_path / "two" / "flops.csv").equals(table(tmp_path / "one" / "flops.csv"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["one", "two"]
    asked = launch(2, *ask, "--image", image_path)
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert asked.stdout.count("qgsa ask: dense") == 1
