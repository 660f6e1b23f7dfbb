"""The report's tables and figures from hand-written results folders (issue 24): the untrained-module flag,
n and the Wilson interval on every accuracy, footnotes stated once with dense first, the Pareto grid, the
peers' formula columns in count-flops tables, files that are not the run's left out, and grounding figures
in the report."""

import io
import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from qgsa_bench.cli import app
from qgsa_bench.report.cells import untrained, wilson
from qgsa_bench.report.discover import schemas
from qgsa_bench.report.figures import MARKERS, pareto_figure
from qgsa_bench.report.render import render_folder
from qgsa_bench.report.tables import budget_markdown, count_markdown, eval_markdown

RANDOM_INIT = "random-init (seed 0)"
CHECKPOINT = "checkpoint:runs/q/checkpoint.pt"
FLAG = "† untrained QGSA module"


def _write(folder, name, rows, meta=None):
    """NAME.csv with its writer's columns (cells not given stay empty) and, with `meta`, meta.json."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{c: row.get(c) for c in schemas()[name]} for row in rows])
    frame.to_csv(folder / f"{name}.csv", index=False)
    if meta is not None:
        (folder / "meta.json").write_text(json.dumps(meta))
    return frame


def _eval_rows(weights, k_types=(("color", 200, 90.0), ("count", 5, 80.0))):
    rows = []
    for pipeline in ("qgsa", "random", "norm", "dense", "fastv"):
        base = {"model": "tiny", "weights": "random", "qgsa_weights": weights, "dataset": "shapes",
                "split": "test", "pipeline": pipeline, "delta_vs_dense_points": 0.0, "k_mean": 4, "k_std": 0,
                "n_visual_tokens_mean": 4, "latency_ms_per_query": 1.0}
        rows.append({**base, "scope": "all", "question_type": "all", "n": 10, "n_scored": 10, "accuracy": 80.0})
        rows += [{**base, "scope": "type", "question_type": t, "n": n, "n_scored": n, "accuracy": a}
                 for t, n, a in k_types]
    return rows


def _eval_meta(weights, k=4):
    return {"model": "tiny", "weights": "random", "qgsa_weights": weights, "dataset": "shapes", "split": "test",
            "command": "qgsa eval ...", "git_commit": "0" * 40, "settings": {"k": k}}


def test_wilson_interval_is_the_score_interval():
    assert [round(x, 1) for x in wilson(80, 10)] == [49.0, 94.3]  # 8 of 10 at 95 %
    assert [round(x, 1) for x in wilson(100, 57)] == [93.7, 100.0]
    assert [round(x, 1) for x in wilson(0, 5)] == [0.0, 43.4]
    assert all(math.isnan(x) for x in wilson(50, 0))


def test_untrained_flag_follows_the_weights_and_what_the_spec_reads():
    meta = _eval_meta(RANDOM_INIT)
    for name in ("qgsa", "random", "norm", "qgsa-vision", "dense-bypass"):
        assert untrained({"pipeline": name, "qgsa_weights": RANDOM_INIT}, meta), name
        assert not untrained({"pipeline": name, "qgsa_weights": CHECKPOINT}, meta), name
    for name in ("dense", "fastv", "random@vision:3", "downsample"):  # a fixed k: the module is never read
        assert not untrained({"pipeline": name, "qgsa_weights": RANDOM_INIT}, meta), name
    adaptive = _eval_meta(RANDOM_INIT, k=None)  # f_comp gives every selector its budget: all read it
    assert untrained({"pipeline": "fastv", "qgsa_weights": RANDOM_INIT}, adaptive)
    assert not untrained({"pipeline": "dense", "qgsa_weights": RANDOM_INIT}, adaptive)
    assert untrained({"pipeline": "qgsa"}, meta)  # no column: meta.json's weights


def test_eval_table_flags_untrained_rows_with_one_footnote_n_and_interval(tmp_path):
    table = eval_markdown(_as_read(_eval_rows(RANDOM_INIT), "eval"), _eval_meta(RANDOM_INIT))
    lines = table.splitlines()
    overall = [line for line in lines if line.startswith("| ") and " | 10 | " in line]
    assert [line.split(" | ")[0] for line in overall] == ["| dense", "| qgsa †", "| random †", "| norm †", "| fastv"]
    assert table.count(FLAG) == 1  # stated once, under the tables
    assert "| 10 | 80.00 [49.02–94.33] |" in table  # n and the Wilson interval beside the accuracy
    assert "| count | dense | 5 | 80.00 [37.55–96.38] |" in table  # a type with 5 questions says so
    assert "| color | dense | 200 | 90.00 [85.06–93.43] |" in table
    assert table.count("Wilson score interval") == 1
    trained = eval_markdown(_as_read(_eval_rows(CHECKPOINT), "eval"), _eval_meta(CHECKPOINT))
    assert "†" not in trained and "| qgsa | 10 |" in trained


def _budget_rows(weights):
    rows, acc = [], []
    for pipeline, selector, point, share in (("qgsa", "qgsa", "post-vision (patches, QGSA module projection)", 0.9),
                                             ("norm@post-vision", "norm", "post-vision", 0.85),
                                             ("random@vision:1", "random", "vision:1", 0.5),
                                             ("fastv", "fastv", "lm:1", 0.95)):
        for budget in (2, 4):
            case = f"{pipeline} k={budget}"
            rows.append({"budget": budget, "selector": selector, "point": point, "pipeline": pipeline, "case": case,
                         "qgsa_weights": weights, "flops_share_of_dense": share - 0.1 / budget, "n_visual_tokens": budget,
                         "visual_tokens_layer_avg": budget, "flops_total": 1e9, "latency_ms_median": 10.0, "n": 5,
                         "accuracy": 50.0 + budget, "n_eval": 20, "k": budget})
            acc += [{"budget": budget, "case": case, "pipeline": pipeline, "selector": selector, "point": point,
                     "scope": "type", "question_type": t, "n": n, "n_scored": n, "accuracy": a + budget,
                     "flops_share_of_dense": share - 0.1 / budget}
                    for t, n, a in (("color", 12, 50.0), ("count", 5, 40.0), ("exist", 2, 30.0), ("shape", 1, 20.0))]
    rows.append({"budget": 16, "selector": "dense", "point": "none", "pipeline": "dense", "case": "dense",
                 "qgsa_weights": weights, "flops_share_of_dense": 1.0, "n_visual_tokens": 16, "n": 5,
                 "visual_tokens_layer_avg": 16, "flops_total": 1e9, "latency_ms_median": 10.0, "accuracy": 90.0,
                 "n_eval": 20})
    acc += [{"budget": 16, "case": "dense", "pipeline": "dense", "selector": "dense", "point": "none", "scope": "type",
             "question_type": t, "n": n, "n_scored": n, "accuracy": 90.0, "flops_share_of_dense": 1.0}
            for t, n in (("color", 12), ("count", 5), ("exist", 2), ("shape", 1))]
    return _as_read(rows, "budget"), _as_read(acc, "accuracy")


def _as_read(rows, name):
    """Rows as the report reads them back from NAME.csv (empty cells NaN)."""
    frame = pd.DataFrame([{c: r.get(c) for c in schemas()[name]} for r in rows])
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))


BUDGET_META = {"model": "runs/shapes/base-model", "weights": "pretrained", "qgsa_weights": RANDOM_INIT,
               "settings": {"resolution": 64, "budgets": [2, 4]}, "command": "qgsa sweep-budget ...",
               "git_commit": "0" * 40}


def test_budget_table_dense_first_n_per_type_and_footnotes_once():
    budget, accuracy = _budget_rows(RANDOM_INIT)
    table = budget_markdown(budget, BUDGET_META, accuracy)
    body = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert body[1].startswith("| dense | none | 16 |")  # dense first, above the smallest budget
    assert "| qgsa k=2 † |" in table and "| norm@post-vision k=2 |" in table  # only the module's reader
    assert "accuracy % [95 % CI] (n=20)" in table
    assert "| case | budget | color (n=12) | count (n=5) | exist (n=2) | shape (n=1) |" in table
    assert "| qgsa k=2 † | 2 | 52.0 [26.9–76.1] |" in table
    assert table.count(FLAG) == 1 and table.count("‡ timed over fewer than 10 rounds (n = 5)") == 1
    assert "(n=5 < 10: optimistic)" not in table  # the caveat is a mark, its text stated once
    budget, accuracy = _budget_rows(CHECKPOINT)
    trained = budget_markdown(budget, {**BUDGET_META, "qgsa_weights": CHECKPOINT}, accuracy)
    assert "†" not in trained


def test_pareto_figure_is_a_grid_with_short_distinct_flagged_legend():
    budget, accuracy = _budget_rows(RANDOM_INIT)
    fig = pareto_figure(BUDGET_META, budget, accuracy)  # all questions + 4 types = 5 panels
    assert len(fig.axes) == 6 and fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (2, 3)
    legend = fig.axes[5].get_legend()  # the free cell holds the legend
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["qgsa (patches) †", "norm@post-vision", "random@vision:1", "fastv@lm:1", "dense"]
    drawn = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}  # each series' data line
    styles = [(tuple(drawn[x].get_color()), drawn[x].get_marker()) for x in labels[:4]]
    assert len(set(c for c, _ in styles)) == 4 and [m for _, m in styles] == list(MARKERS[:4])
    assert "runs/" not in fig._suptitle.get_text() and "base-model" in fig._suptitle.get_text()
    assert fig.axes[0].get_title() == "all questions (n=20)" and fig.axes[2].get_title() == "count (n=5)"
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["2", "2", "2", "2", "4", "4", "4", "4"]  # budgets
    bars = [c for c in fig.axes[0].collections if c.get_segments()]  # Wilson bars: 52 % of 20 -> [31.6, 71.7]
    segments = [s for c in bars for s in c.get_segments()]
    assert any(round(s[0][1], 1) == 31.6 and round(s[1][1], 1) == 71.7 for s in segments)
    import matplotlib.pyplot as plt

    plt.close(fig)
    three = pareto_figure(BUDGET_META, budget, accuracy[accuracy["question_type"].isin(["color", "count"])])
    assert len(three.axes) == 3 and three.legends  # 3 panels fill a row: the legend goes under the grid
    plt.close(three)


def _count_rows(formulas: bool):
    rows = []
    for pipeline, budget in (("dense", None), ("qgsa", 4), ("fastv", 4)):
        row = {"pipeline": pipeline, "budget": budget, "k": budget, "n_visual_tokens": 16, "visual_tokens_layer_avg": 10,
               "prompt_tokens": 30, "flops_vision": 2e9, "flops_select": 0, "flops_connector": 0,
               "flops_prefill": 3e9, "flops_total": 6e9}
        if formulas:
            row.update(formula_fastv_prefill=2.5e9, formula_ffn3_prefill=2.9e9)
        rows.append(row)
    return rows


def test_count_table_shows_the_peers_formulas_beside_the_count():
    meta = {"model": "llava-tiny", "qgsa_weights": RANDOM_INIT, "settings": {"resolution": 84, "budgets": [4]},
            "command": "qgsa count-flops ...", "git_commit": "0" * 40}
    table = count_markdown(_count_rows(True), meta)
    assert "| prefill G (counted) | prefill G, FastV formula (2-matrix FFN) | prefill G, 3-matrix FFN formula |" in table
    assert "| 3.0 | 2.5 | 2.9 |" in table
    assert table.count("FastV's formula") == 1 and "3ndm" in table and "prefill-only" in table
    assert "| qgsa † | 4 |" in table and "| fastv | 4 |" in table and table.count(FLAG) == 1
    old = count_markdown(_count_rows(False), meta)  # a folder counted before the formula columns
    assert "FastV formula" not in old and "formula columns are absent" in old


def _two_runs(folder, files=None):
    """A folder holding eval.csv (the run's) and grounding.csv; meta.json lists `files` when given."""
    _write(folder, "eval", _eval_rows(CHECKPOINT), {**_eval_meta(CHECKPOINT), **({"files": files} if files else {})})
    _write(folder, "grounding", [{"selector": "qgsa", "question_type": "all", "n": 4, "mean_iou": 1, "median_iou": 1,
                                  "k_mean": 4, "qgsa_weights": CHECKPOINT}])


def test_a_file_not_in_meta_files_is_not_the_runs_output(tmp_path, monkeypatch):
    runner = CliRunner()
    folder = tmp_path / "runs" / "e"
    _two_runs(folder, files=["eval.csv", "predictions.jsonl"])
    result = runner.invoke(app, ["report", "--results", str(folder), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and result.stderr.count("error:") == 1
    assert "grounding.csv is not among the files its meta.json lists" in result.stderr
    monkeypatch.chdir(tmp_path)  # found by searching: left out with a warning, the run's own file reported
    result = runner.invoke(app, ["report", "--out", "r"])
    assert result.exit_code == 0, result.output
    assert "left out of the report" in result.stderr and "grounding.csv" in result.stderr
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Accuracy on shapes" in report and "Grounding IoU" not in report
    assert [p.name for p in render_folder(folder)] == ["table.md"]  # after a command: its own files only
    old = tmp_path / "old"
    _two_runs(old)  # no `files`: a folder from before the list renders whole
    assert sorted(p.name for p in render_folder(old)) == ["table.md", "table3.md"]


def test_report_on_a_grounding_run_draws_its_figures(tmp_path):
    from qgsa_bench.config import EvalConfig
    from qgsa_bench.experiments.grounding import box_samples

    settings = {"model": "tiny", "dataset": "shapes", "split": "test", "limit": 2, "k": 3}
    _, samples = box_samples(EvalConfig(**settings))
    records = [{"id": s.id, "question": s.question, "box": list(s.box), "width": 224, "height": 224, "k": 3,
                "qgsa_patches": [0, 1, 5], "random_patches": [2, 9, 30], "norm_patches": [3, 4, 5], "qgsa_iou": 0.1,
                "image_index": 0, "referent": i}
               for i, s in enumerate(samples)]
    folder = tmp_path / "g"
    meta = {"model": "tiny", "weights": "random", "qgsa_weights": RANDOM_INIT, "grid": 8, "settings": settings,
            "files": ["grounding.csv", "grounding.jsonl"], "command": "qgsa grounding ...", "git_commit": "0" * 40}
    _write(folder, "grounding", [{"selector": s, "question_type": "all", "n": 2, "mean_iou": 1, "median_iou": 1,
                                  "acc_iou_0_5": 50.0, "k_mean": 3, "qgsa_weights": RANDOM_INIT}
                                 for s in ("qgsa", "oracle")], meta)
    (folder / "grounding.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = CliRunner().invoke(app, ["report", "--results", str(folder), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "and 2 figure(s)" in result.stdout
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.md", "selections_g.png", "pair_g.png"}
    report = (tmp_path / "r" / "report.md").read_text()
    assert "![selections](selections_g.png)" in report and "| all | qgsa † | 2 |" in report
    assert "| all | oracle | 2 | 1.00 | 1.00 | 50.00 [9.45–90.55] |" in report  # k was fixed: not the module's


def test_count_flops_formulas_follow_each_layers_sequence_as_the_run_does(tmp_path, llava_tiny):
    """count-flops writes the peers' formulas from the full model's per-layer sequence (depth.py); the timed
    run computes them from the lengths its LM layers saw (runner.py): the same numbers."""
    from qgsa_bench.experiments.count import CountConfig, run_count
    from qgsa_bench.experiments.measure import Case, peer_formulas, time_once
    from qgsa_bench.models.images import demo_image

    specs = ("dense", "fastv@lm:1", "pdrop@lm:1,2", "random@post-vision")
    out = run_count(CountConfig(model="llava-tiny", pipelines=specs, budgets=(4,), by_depth="no",
                                decode_tokens=2, out=str(tmp_path / "c")))
    frame = pd.read_csv(out / "flops.csv").set_index("pipeline")
    question = CountConfig().question
    for spec in specs:
        k = None if spec == "dense" else 4
        run = llava_tiny.run(spec)
        px = llava_tiny.adapter.pixel_values([demo_image()], run.resolution(84, k))
        seen = time_once(Case(spec, run, k), px, [question], decode_tokens=2)
        want = peer_formulas(llava_tiny.adapter, seen["prompt_tokens"], seen["n_visual_tokens"], 1, seen["layer_tokens"])
        assert frame.loc[spec, "formula_fastv_prefill"] == pytest.approx(want["formula_fastv_prefill"]), spec
        assert frame.loc[spec, "formula_ffn3_prefill"] == pytest.approx(want["formula_ffn3_prefill"]), spec
    d, m = llava_tiny.adapter.text_config.hidden_size, llava_tiny.adapter.text_config.intermediate_size
    layers = llava_tiny.adapter.text_config.num_hidden_layers
    dense = frame.loc["dense"]
    assert dense.formula_ffn3_prefill - dense.formula_fastv_prefill == layers * dense.prompt_tokens * d * m  # ndm/layer
    render_folder(out)
    assert "| fastv@lm:1 | 4 | 4 |" in (out / "table.md").read_text()
