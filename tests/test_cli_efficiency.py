"""sweep-resolution, ablate and report end to end on the tiny model: rows, resume, provenance, errors."""

import json

import pandas as pd
from typer.testing import CliRunner

from qgsa_bench.cli import app
from qgsa_bench.experiments.sweep import SWEEP_COLUMNS
from qgsa_bench.qgsa.checkpoint import save_checkpoint

runner = CliRunner()
FAST = ["--model", "tiny", "--reps", "1", "--warmup", "0", "--decode-tokens", "2", "--k", "5", "--device", "cpu"]
DENSE_ONLY = [a for a in FAST if a not in ("--k", "5")]  # --k with only dense is refused: no pipeline reads it


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_sweep_resume_settings_guard_and_report(tmp_path):
    out = tmp_path / "sweep"
    result = invoke("sweep-resolution", *FAST, "--sizes", "40", "64", "--pipelines", "dense,qgsa,random",
                    "--out", out)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "sweep.csv")
    assert list(frame.columns) == SWEEP_COLUMNS
    assert len(frame) == 6 and set(frame["weights"]) == {"random"}
    row = frame[(frame.resolution == 64) & (frame.pipeline == "qgsa")].iloc[0]
    assert (row.n_patches, row.n_visual_tokens, row.k) == (64, 5, 5)
    assert row.paper_flops_reduction == round(1 - 5 / 64, 6) and row.paper_theoretical_speedup == 12.8
    dense40 = frame[(frame.resolution == 40) & (frame.pipeline == "dense")].iloc[0]
    assert dense40.effective_resolution == 48 and dense40.n_visual_tokens == 9  # 40 px rounds up to 48
    meta = json.loads((out / "meta.json").read_text())
    assert meta["weights"] == "random" and meta["settings"]["k"] == 5 and "torch" in meta
    assert meta["command"].startswith("qgsa sweep-resolution")
    table = (out / "table4.md").read_text()
    assert "Random weights" in table and "| 64px | qgsa † | 64 | 5 |" in table  # † untrained module

    # interrupted-and-rerun: the finished rows are kept, only the new size is measured
    result = invoke("sweep-resolution", *FAST, "--sizes", "40", "64", "80", "--pipelines", "dense,qgsa,random",
                    "--out", out)
    assert result.exit_code == 0, result.output
    again = pd.read_csv(out / "sweep.csv")
    assert len(again) == 9 and again.iloc[:6].equals(frame)
    assert sorted(again.resolution.unique()) == [40, 64, 80]

    # other settings into the same folder: refused, nothing lost (a batch size is not one: rows carry it)
    result = invoke("sweep-resolution", *FAST[:-2], "--device", "cpu", "--dtype", "bf16", "--sizes", "48",
                    "--pipelines", "dense,qgsa,random", "--out", out)
    assert result.exit_code == 2 and "holds results made with other settings (dtype differs)" in result.stderr
    assert pd.read_csv(out / "sweep.csv").equals(again)

    result = invoke("report", "--results", out, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"report.md", "fig2_latency_vs_resolution.png", "fig3_flops_reduction.png", "fig4_speedup.png",
            "stages_sweep.png"} <= names
    assert (tmp_path / "report" / "fig4_speedup.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_bad_input(tmp_path):
    result = invoke("sweep-resolution", *FAST, "--sizes", "50", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "not a positive multiple of the patch size 8" in result.stderr
    result = invoke("sweep-resolution", *FAST, "--sizes", "16", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "k=5 is impossible at 16px" in result.stderr
    result = invoke("sweep-resolution", *FAST, "--sizes", "big", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "--sizes takes integers" in result.stderr
    result = invoke("sweep-resolution", *FAST, "--pipelines", "dense,fast", "--out", tmp_path / "d")
    assert result.exit_code == 2 and "unknown pipeline 'fast'" in result.stderr
    result = invoke("sweep-resolution", *FAST, "--reps", "0", "--out", tmp_path / "e")
    assert result.exit_code == 2 and "--reps must be at least 1" in result.stderr


def test_ablate_with_and_without_checkpoints(tmp_path, tiny):
    ckpt = save_checkpoint(tmp_path / "full.pt", tiny.module, tiny.loaded.provenance())
    out = tmp_path / "ablate"
    result = invoke("ablate", *FAST, "--resolution", "64", "--checkpoint", f"full={ckpt}", "--out", out)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "ablate.csv")
    assert list(frame.config) == ["dense", "fixed-k", "adaptive-k", "cs", "align", "full"]
    weights = dict(zip(frame.config, frame.qgsa_weights))
    assert weights["dense"] == "not used" and weights["cs"] == "random-init (seed 0)"
    assert weights["full"] == f"checkpoint:{ckpt}"
    assert frame.set_index("config").loc["fixed-k", "k"] == 5
    assert "+ both losses (full)" in (out / "table5.md").read_text()
    result = invoke("report", "--results", out, "--out", tmp_path / "r")
    assert result.exit_code == 0 and (tmp_path / "r" / "fig5_ablation_ablate.png").exists()
    result = invoke("ablate", *FAST, "--checkpoint", "best=x.pt", "--out", tmp_path / "b")
    assert result.exit_code == 2 and "--checkpoint takes NAME=PATH" in result.stderr


def test_report_bad_input(tmp_path):
    result = invoke("report", "--results", tmp_path / "none", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "results folder not found" in result.stderr
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    (folder / "sweep.csv").write_text("resolution,pipeline\n64,dense\n")
    result = invoke("report", "--results", folder, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "lacks the column(s)" in result.stderr


def test_ablate_trains_each_configuration_first(tmp_path):
    out = tmp_path / "ablate"
    result = invoke("ablate", *FAST, "--resolution", "64", "--train-dataset", "shapes", "--train-limit", "4",
                    "--train-steps", "1", "--eval-limit", "2", "--out", out)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "ablate.csv").set_index("config")
    for name in ("fixed-k", "adaptive-k", "cs", "align", "full"):
        assert frame.loc[name, "qgsa_weights"] == f"checkpoint:{out / 'train' / name / 'checkpoint.pt'}"
        config = json.loads((out / "train" / name / "config.json").read_text())
        assert (config["no_cs"], config["no_align"]) == {"fixed-k": (True, True), "adaptive-k": (True, True),
                                                         "cs": (False, True), "align": (True, False),
                                                         "full": (False, False)}[name]
    assert json.loads((out / "train" / "fixed-k" / "config.json").read_text())["fixed_k"] == 5
    assert set(frame.accuracy_n) == {2}
    assert json.loads((out / "meta.json").read_text())["image_input"] == "one square view of 64 px (the paper's form)"


def test_report_without_arguments_finds_every_results_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("report")
    assert result.exit_code == 2 and "no results folder" in result.stderr
    assert "in results/ or runs/ here: make one with `qgsa sweep-resolution --out runs/sweep`" in result.stderr
    assert not (tmp_path / "report").exists()
    for out in ("runs/e", "results/shapes/e"):
        result = invoke("eval", "--model", "tiny", "--weights", "random", "--device", "cpu", "--limit", "2",
                        "--pipelines", "dense", "--max-new-tokens", "1",
                        "--resolution", "64", "--out", out)
        assert result.exit_code == 0, result.output
    (tmp_path / "runs" / "empty").mkdir()  # no meta.json: not a results folder
    torn = tmp_path / "runs" / "torn"
    torn.mkdir()
    (torn / "meta.json").write_text("{}")
    (torn / "eval.csv").write_text("pipeline,scope\ndense,all\n")
    result = invoke("report")
    assert result.exit_code == 0, result.output
    sections = [line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("# ")]
    assert sections == ["# qgsa-bench report", "# results/shapes/e", "# runs/e"]
    assert "left out of the report: " in result.stderr and "runs/torn/eval.csv lacks the column(s)" in result.stderr
    assert "wrote report/report.md" in result.stdout
    result = invoke("report", "--results", "runs", "--out", "narrow")  # --results narrows the search
    assert result.exit_code == 2 and "lacks the column(s)" in result.stderr  # named explicitly: damage stops it
    (torn / "eval.csv").unlink()
    result = invoke("report", "--results", "runs", "--out", "narrow")
    assert result.exit_code == 0 and "# results/shapes/e" not in (tmp_path / "narrow" / "report.md").read_text()


def test_report_refuses_damaged_files_with_one_line(tmp_path):
    result = invoke("eval", "--model", "tiny", "--weights", "random", "--device", "cpu", "--limit", "2",
                    "--pipelines", "dense", "--max-new-tokens", "1", "--resolution", "64", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    csv_path, meta_path = tmp_path / "e" / "eval.csv", tmp_path / "e" / "meta.json"
    good_csv, good_meta = csv_path.read_bytes(), meta_path.read_text()
    cases = [  # (what is damaged, the one line that says so)
        (lambda: csv_path.write_bytes(good_csv[:-7]), "ends in the middle of a row"),
        (lambda: csv_path.write_bytes(good_csv.replace(b",all,all,2,", b",all,all,four,")),
         "its files do not make a table (ValueError"),
        (lambda: meta_path.write_text("[1, 2]"), "holds a JSON list, not the object qgsa-bench writes"),
    ]
    for damage, message in cases:
        csv_path.write_bytes(good_csv)
        meta_path.write_text(good_meta)
        damage()
        result = invoke("report", "--results", tmp_path / "e", "--out", tmp_path / "r")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_a_folder_in_use_is_refused_at_once_naming_the_run(tmp_path):
    from qgsa_bench.results import locked
    from qgsa_bench.runtime import set_command_line

    out = tmp_path / "sweep"
    set_command_line("qgsa sweep-resolution --out sweep  # the other run")
    with locked(out):
        result = invoke("sweep-resolution", *FAST, "--sizes", "64", "--out", out)
        assert result.exit_code == 2, result.output
        assert f"{out} is in use by another run (pid " in result.stderr
        assert "`qgsa sweep-resolution --out sweep  # the other run`" in result.stderr
        assert sorted(p.name for p in out.iterdir()) == [".qgsa.lock", ".qgsa.lock.json"]  # nothing else written
    result = invoke("sweep-resolution", *DENSE_ONLY, "--sizes", "64", "--pipelines", "dense", "--out", out)
    assert result.exit_code == 0 and (out / "sweep.csv").exists() and not (out / ".qgsa.lock.json").exists()
    result = invoke("eval", "--model", "tiny", "--weights", "random", "--device", "cpu", "--limit", "0",
                    "--out", tmp_path / "never")
    assert result.exit_code == 2 and not (tmp_path / "never").exists()  # a refused run leaves no folder behind


def test_a_torn_sweep_csv_is_found_before_measuring(tmp_path):
    out = tmp_path / "s"
    result = invoke("sweep-resolution", *DENSE_ONLY, "--sizes", "64", "--pipelines", "dense", "--out", out)
    assert result.exit_code == 0
    text = (out / "sweep.csv").read_text()
    (out / "sweep.csv").write_text(text + text.splitlines()[-1][:40])  # a crash in the middle of a row
    result = invoke("sweep-resolution", *DENSE_ONLY, "--sizes", "64", "80", "--pipelines", "dense", "--out", out)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "ends in the middle of a row" in lines[0], result.stderr
    assert (out / "sweep.csv").read_text().endswith(text.splitlines()[-1][:40])  # nothing lost, nothing measured


def test_batch_scaling_and_the_aa_pair_in_one_sweep(tmp_path):
    out = tmp_path / "b"
    result = invoke("sweep-resolution", *FAST, "--sizes", "64", "80", "--batch", "1", "2", "--pipelines",
                    "dense,dense,qgsa", "--reps", "3", "--out", out)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "sweep.csv")
    assert len(frame) == 12 and sorted(frame.batch.unique()) == [1, 2]
    assert sorted(frame.case.unique()) == ["dense#1", "dense#2", "qgsa"]
    one, two = (frame[(frame.batch == b) & (frame.resolution == 64)].set_index("case") for b in (1, 2))
    assert (two.flops_total == 2 * one.flops_total).all() and (two.attn_visual_flops == 2 * one.attn_visual_flops).all()
    rate = frame.batch / (frame.latency_ms_median / 1000)  # CSV values carry 6 decimals
    assert ((frame.throughput_images_per_s - rate).abs() <= 1e-5 * rate).all()
    assert ((frame.throughput_tokens_per_s - 2 * rate).abs() <= 1e-5 * rate).all()  # 2 generated tokens
    assert set(frame[frame.case == "dense#2"].speedup_reference) == {"dense#1"}
    pairs = pd.read_csv(out / "comparisons.csv")
    assert len(pairs) == 4 * 3 and set(pairs.batch) == {1, 2}
    meta = json.loads((out / "meta.json").read_text())
    assert "--sizes 64 80" in meta["command"] and "--batch 1 2" in meta["command"] and "batch" not in meta["settings"]
    assert meta["batches"] == [1, 2] and len(meta["reps_stopped"]) == 4
    table = (out / "table4.md").read_text()
    assert "| 2 | 80px | dense#2 |" in table and "images/s" in table
    result = invoke("report", "--results", out, "--out", tmp_path / "r")
    assert result.exit_code == 0 and (tmp_path / "r" / "batch_b.png").exists()
    result = invoke("sweep-resolution", *FAST, "--sizes", "64", "--batch", "1", "4", "--pipelines",
                    "dense,dense,qgsa", "--reps", "2", "--out", out)  # a new batch size: only it is measured
    assert result.exit_code == 0 and len(pd.read_csv(out / "sweep.csv")) == 15
    result = invoke("sweep-resolution", *FAST, "--model", "tiny", "stray", "--out", tmp_path / "c")
    assert result.exit_code == 2 and "unexpected argument(s) stray" in result.stderr
    result = invoke("sweep-resolution", *FAST, "--batch", "0", "--out", tmp_path / "d")
    assert result.exit_code == 2 and "--batch needs positive integers" in result.stderr
