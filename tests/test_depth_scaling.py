"""Counting from depth-reduced copies is exact: the scaled count equals the count at the real depth."""

import pytest

from qgsa_bench.experiments.depth import LINEAR_KEYS, build_at_depth, count_scaled, plan_for
from qgsa_bench.experiments.measure import Case, count_stage_flops
from qgsa_bench.models.images import demo_image


@pytest.mark.parametrize("pipeline, k", [("dense", None), ("visionzip", 9), ("fastv@lm:2", 9), ("pdrop@lm:2,4", 5)])
def test_count_from_reduced_copies_equals_the_count_at_full_depth(pipeline, k):
    depth = 6
    real = build_at_depth("llava-tiny", depth)
    px = real.adapter.pixel_values([demo_image()], real.run(pipeline).resolution(84, k))
    truth = count_stage_flops(Case(pipeline, real.engine.run(pipeline), k), px, ["What is shown in the image?"], 8)
    scaled, = count_scaled("llava-tiny", [(pipeline, k)], 84, full_depth=depth)
    for key in (*LINEAR_KEYS, "flops_vision", "flops_select", "flops_total"):
        assert scaled[key] == truth[key], key
    assert truth["flops_prefill"] > 0
    copies = [int(c) for c in scaled["copies"].split(";")]
    assert max(copies) < depth  # never built at full depth


def test_linear_in_depth_at_two_depths():
    """Without cuts each extra layer adds the same count: F(3) - F(2) == F(2) - F(1) for every LM stage."""
    counts = []
    for depth in (1, 2, 3):
        built = build_at_depth("llava-tiny", depth)
        px = built.adapter.pixel_values([demo_image()], 84)
        counts.append(count_stage_flops(Case("dense", built.engine.run("dense")), px, ["what?"], 4))
    for key in LINEAR_KEYS:
        assert counts[2][key] - counts[1][key] == counts[1][key] - counts[0][key] > 0, key
    assert counts[0]["flops_vision"] == counts[2]["flops_vision"]


def test_plans_map_cuts_onto_one_layer_per_segment():
    from qgsa_bench.run.spec import parse_spec as p

    plan = plan_for(p("pdrop"), 64, 32, 23)  # default cuts 8/16/24 for 32 layers
    assert plan.cuts == (8, 16, 24) and plan.segments(32) == [8, 8, 8, 8]
    (d0, s0), (d2, s2) = plan.copy(), plan.copy(2)
    assert (d0, s0.text, s0.point.layers) == (4, "pdrop@lm:1,2,3", (1, 2, 3))
    assert (d2, s2.text, s2.point.layers) == (5, "pdrop@lm:1,2,4", (1, 2, 4))
    assert plan_for(p("dense"), None, 32, 23).copy(0)[0] == 2
    assert plan_for(p("dense"), None, 32, 23).copy(0)[1].text == "dense"
    assert plan_for(p("sparsevlm"), 64, 32, 23).cuts == (2, 6, 15)


def test_count_flops_command_by_depth_or_direct_agree_and_cross_check(tmp_path):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    frames = {}
    for mode in ("yes", "no"):
        out = tmp_path / mode
        result = CliRunner().invoke(app, ["count-flops", "--model", "llava-tiny", "--budgets", "16", "4",
                                          "--pipelines", "dense,random,fastv,pdrop@lm:1,2,visionzip",
                                          "--by-depth", mode, "--out", str(out)])
        assert result.exit_code == 0, result.output
        frames[mode] = pd.read_csv(out / "flops.csv")
    yes, no = frames["yes"], frames["no"]
    assert len(yes) == 1 + 4 * 2 and list(yes.pipeline) == list(no.pipeline)
    for key in ("flops_total", "flops_prefill", "flops_vision", "flops_decode_per_token"):
        assert (yes[key] == no[key]).all(), key
    assert set(no.copies.astype(str)) == {"3"} and "1;2" in set(yes.copies.astype(str))
    table = (tmp_path / "no" / "table.md").read_text()
    assert "| fastv | 4 | 4 | 36 / 25.3 |" in table and "difference " in table
    report = CliRunner().invoke(app, ["report", "--results", str(tmp_path / "no"), "--out", str(tmp_path / "rep")])
    assert report.exit_code == 0, report.output
    assert "Counted FLOPs by stage: llava-tiny" in (tmp_path / "rep" / "report.md").read_text()
    checks = json.loads((tmp_path / "no" / "crosscheck.json").read_text())
    # counted prefill == the analytic formula, exactly; some transformers releases (5.17) also compute the rotary
    # angles with a matmul that fvcore counts: head_dim / 2 x 48 tokens = 384 multiply-adds, and say so
    assert (checks["lm_prefill"]["difference"], checks["lm_prefill"]["explained"]) in (
        (0, "exact"), (384, checks["lm_prefill"]["explained"]))
    assert checks["lm_prefill"]["explained"] != "unexplained"
    vision = checks["vision"]
    assert vision["vision_layers_run"] == 2 and vision["skipped_by_this_run"] > 0
    result = CliRunner().invoke(app, ["count-flops", "--model", "llava-tiny", "--budgets", "37", "--out",
                                      str(tmp_path / "bad")])
    assert result.exit_code == 2 and "budget 37 visual tokens is impossible: pick 1 <= budget <= 36" in result.output
