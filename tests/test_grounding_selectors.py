"""Grounding for every selector (issue 22): each registered selector's kept patches through the one stage sequence,
the three metrics on a hand-made selection, per-sample random draws, RefCOCO's layouts, and bad input."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.cli import app
from qgsa_bench.data import load_dataset
from qgsa_bench.data.types import VQASample
from qgsa_bench.experiments.grounding import (ORACLE, ORACLE_TOKENS, GroundingConfig, Plan, default_pipelines,
                                              record, select_batch, summary_rows)
from qgsa_bench.metrics import hull_iou, pointing_hit, share_in_box
from qgsa_bench.selectors.registry import REGISTRY

runner = CliRunner()
TINY = ("-m", "tiny", "--device", "cpu")
# every registered selector that keeps a subset of the patches, at its default point and at the others it takes
SPECS = (*default_pipelines(), "random@vision:1", "random@lm:1", "norm@lm:1", "visionzip@vision:1", "qgsa@vision:1")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def box_data(limit=4):
    data = load_dataset("shapes", None, "test", 4 * limit, False, 0)
    return data, [s for s in data.samples if s.box is not None][:limit]


def test_every_selector_keeps_patches_of_the_image_at_its_budget(tiny):
    """Every registered selector (but dense, dense-bypass and downsample, which keep every patch or the whole
    image, and the tile selectors, which choose tiles of a split image) gives patches in 0..N-1: b of them for the
    patch-level forms, b x s^2 (b visual tokens) for the rest, VisionZip's selected tokens plus its merged ones
    making b."""
    tiles = {name for name, cls in REGISTRY.items() if cls.points == ("tiles",)}
    assert tiles == {"qgsa-tiles", "qgsa-tiles-max", "random-tiles", "global-only"}
    assert {s.partition("@")[0] for s in SPECS} == set(REGISTRY) - {"dense", "dense-bypass", "downsample"} - tiles
    data, samples = box_data(3)
    chunk, images = data.open_images(samples)
    a = tiny.adapter
    N = a.n_patches(a.image_size)
    s2 = a.unit_patches(N).shape[1]
    for spec in SPECS:
        run = tiny.run(spec)
        for b in (1, 3, 6):
            with torch.no_grad():
                    result = run.prepare(images, [s.question for s in chunk], a.image_size, b,
                                     seeds=run.sample_seeds([s.id for s in chunk]))
            for j in range(len(chunk)):
                patches = result.selected_patches(j)
                assert len(set(patches)) == len(patches) and all(0 <= p < N for p in patches), spec
                merged = result.merged_patches(j)
                if run.spec.patches:
                    assert len(patches) == b == result.kept(j), spec
                elif merged is not None:  # visionzip: its dominant tokens' patches, merged tokens not grounded
                    assert len(patches) % s2 == 0 and len(patches) // s2 + len(merged) == b, spec
                else:
                    assert len(patches) == b * s2 and result.kept(j) == b, spec


def test_metrics_on_a_hand_made_selection():
    # a 4 x 4 grid on a 40 x 40 image: 10 px patches; the box holds patches 0, 1, 4, 5
    box = [0.0, 0.0, 20.0, 20.0]
    assert (hull_iou([0, 1, 4, 5], 4, 40, 40, box), pointing_hit([0, 1, 4, 5], 4, 40, 40, box),
            share_in_box([0, 1, 4, 5], 4, 40, 40, box)) == (1.0, True, 1.0)
    # patches 0 and 15: hull 1600 - 2 x 450 = 700 px², 300 of them in the box: IoU 300 / 800; the centroid
    # (20, 20) is as far from both centres, the lower index (0, centre (5, 5)) points: a hit; half in the box
    assert hull_iou([0, 15], 4, 40, 40, box) == pytest.approx(0.375)
    assert pointing_hit([15, 0], 4, 40, 40, box) is True and share_in_box([0, 15], 4, 40, 40, box) == 0.5
    # patches 2, 3, 15: centroid (31.7, 15), nearest centre (35, 5) of patch 3, outside the box: a miss
    assert pointing_hit([2, 3, 15], 4, 40, 40, box) is False and share_in_box([2, 3, 15], 4, 40, 40, box) == 0.0
    assert (pointing_hit([], 4, 40, 40, box), share_in_box([], 4, 40, 40, box)) == (False, 0.0)
    # a 80 x 40 image seen as a square: columns 20 px, rows 10 px; patch 1's centre (30, 5) is in [20, 0, 20, 20]
    assert pointing_hit([1], 4, 80, 40, [20.0, 0.0, 20.0, 20.0]) and not pointing_hit([1], 4, 40, 40, [20, 0, 20, 20])

    sample = VQASample(id="s", question="where?", answers=["a"], image=None, box=tuple(box), question_type="color")
    records = [record(sample, (40, 40), "x", 2, "patches", 2, [0, 15], 4),
               record(sample, (40, 40), "x", 2, "patches", 3, [2, 3, 15], 4)]
    assert [(r["iou"], r["pointing"], r["share_in_box"], r["n_patches"]) for r in records] == [
        (0.375, 1, 0.5, 2), (0.0, 0, 0.0, 3)]
    info = {"x": {"point": "post-vision", "question_guided": False}}
    rows = summary_rows(records, {}, info, [("x", 2)], {"x": "patches"})
    assert [(r["question_type"], r["n"], r["mean_iou"], r["pointing"], r["share_in_box"], r["kept_patches_mean"],
             r["acc_iou_0_5"]) for r in rows] == [("all", 2, 18.75, 50.0, 25.0, 2.5, 0.0),
                                                  ("color", 2, 18.75, 50.0, 25.0, 2.5, 0.0)]


def test_a_random_selection_is_the_samples_own_in_any_batch(tiny):
    data, samples = box_data(2)
    chunk, images = data.open_images(samples)
    a = tiny.adapter
    N = a.n_patches(a.image_size)
    runs = {spec: tiny.run(spec) for spec in ("random", "random@post-vision", "random@vision:1", "random@lm:1")}
    plan = Plan(runs, [ORACLE, ORACLE_TOKENS], (2, 5), a.image_size, int(N ** 0.5), a.unit_patches(N).shape[1])
    both = select_batch(plan, tiny, images, chunk, lambda *key: True)
    alone = [r for i in range(2) for r in select_batch(plan, tiny, images[i:i + 1], chunk[i:i + 1], lambda *key: True)]
    key = lambda r: (r["id"], r["pipeline"], r["budget"])  # noqa: E731
    assert len(both) == 2 * 6 * 2 and sorted(both, key=key) == sorted(alone, key=key)
    draws = {key(r): r["patches"] for r in both}
    assert draws[chunk[0].id, "random", 5] != draws[chunk[1].id, "random", 5]  # each sample its own draw
    for s in chunk:  # the same tokens at every whole-token point: one seeded draw over the same units
        assert draws[s.id, "random@post-vision", 5] == draws[s.id, "random@vision:1", 5] == draws[s.id, "random@lm:1", 5]


def test_refcoco_layouts_are_grounded_by_every_selector_asked(tmp_path, refer_layout):
    from qgsa_bench.data import shapes

    pipelines = "qgsa,fastv,pdrop,visionzip,divprune,qgsa-vision,random@vision:1"
    shapes.write_parquet(shapes.generate(3, seed=0, split="val"), tmp_path / "parquet", "val")  # lmms-lab's layout
    refer_layout(tmp_path / "refer")
    for data_dir, split in ((tmp_path / "parquet", "val"), (tmp_path / "refer", "testA")):
        n = sum(s.box is not None for s in load_dataset("refcoco", data_dir, split).samples)
        out = tmp_path / f"out-{data_dir.name}"
        result = invoke("grounding", *TINY, "-d", "refcoco", "--data-dir", data_dir, "--split", split,
                        "--pipelines", pipelines, "--budgets", 2, 4, "--out", out)
        assert result.exit_code == 0, result.output
        rows = pd.read_csv(out / "grounding.csv")
        overall = rows[rows.question_type == "all"]
        assert list(dict.fromkeys(overall.selector)) == [*pipelines.split(","), ORACLE, ORACLE_TOKENS]
        assert set(overall.n) == {n} and sorted(set(overall.budget)) == [2, 4]
        tokens = overall[overall.budget_unit == "visual tokens"]
        assert (tokens[tokens.selector.isin(["fastv", "pdrop", "divprune"])].kept_patches_mean ==
                4 * tokens[tokens.selector.isin(["fastv", "pdrop", "divprune"])].budget).all()  # s = 2
        records = [json.loads(line) for line in (out / "grounding.jsonl").read_text().splitlines()]
        assert len(records) == n * 9 * 2
        meta = json.loads((out / "meta.json").read_text())
        assert meta["pipelines"] == [*pipelines.split(","), ORACLE, ORACLE_TOKENS] and meta["budgets"] == [2, 4]
    refer = [json.loads(line) for line in (tmp_path / "out-refer" / "grounding.jsonl").read_text().splitlines()]
    assert {r["iou"] for r in refer if r["pipeline"] == ORACLE and r["budget"] == 4} == {1.0}  # the box is 2 x 2 patches


def test_resume_overwrite_and_report(tmp_path):
    out = tmp_path / "g"
    common = ("grounding", *TINY, "--limit", 3, "--pipelines", "qgsa,fastv", "--batch", 2, "--out", out)
    args = (*common, "--budgets", 2, 3)
    assert invoke(*args).exit_code == 0
    lines = (out / "grounding.jsonl").read_text().splitlines()
    (out / "grounding.jsonl").write_text("\n".join(lines[:5]) + "\n")  # interrupted after a few records
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    resumed = (out / "grounding.jsonl").read_text().splitlines()
    assert len(resumed) == len(lines) and sorted(resumed) == sorted(lines)  # the same selections, none twice
    assert "nothing to do" in invoke(*args).output
    assert invoke(*common, "--budgets", 4).exit_code == 2  # other settings: refused
    assert invoke(*args, "--overwrite").exit_code == 0
    report = invoke("report", "--results", out, "--out", tmp_path / "r")
    assert report.exit_code == 0, report.output
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| fastv | lm:1 | no | 2 tokens | 8.0 |" in text and "pointing % [95 % CI]" in text


@pytest.mark.parametrize("args, message", [
    (("--budgets", 0), "--budgets needs positive integers"),
    (("--pipelines", "qgsa,nosuch"), "unknown pipeline 'nosuch'"),
    (("--pipelines", "downsample"), "downsample keeps the whole image at a lower resolution"),
    (("--pipelines", "dense"), "dense keeps every patch"),
    (("--pipelines", "fastv", "--budgets", 99), "budget 99 visual tokens is impossible"),
    (("--k", 4, "--budgets", 4), "not both"),
    (("--pipelines", "fastv", "--checkpoint", "qgsa-vision=results/shapes/checkpoints/qgsa-vision2.pt"),
     "no pipeline 'qgsa-vision'"),
])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    result = invoke("grounding", *TINY, "--limit", 2, *args, "--out", tmp_path / "g")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def test_default_pipelines_and_config():
    assert default_pipelines() == ("qgsa", "random", "norm", "random@post-vision", "norm@post-vision", "divprune",
                                   "fastv", "hired", "pdrop", "sparsevlm", "visionzip", "qgsa@post-vision", "qgsa-vision")
    assert GroundingConfig(k=8).budget_list == (8,) and GroundingConfig().budget_list == (None,)
    assert GroundingConfig(budgets=(8, 4, 8)).budget_list == (4, 8)
    with pytest.raises(QGSAError, match="twice"):
        GroundingConfig(pipelines=("fastv", "fastv"))
