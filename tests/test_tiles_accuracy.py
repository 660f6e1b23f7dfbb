"""Accuracy where tiles matter (issue 19): the shapes-hires set, eval on the model's own views, and base-train
on split images (the shapes-tiled preset)."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qgsa_bench.cli import app
from qgsa_bench.data import load_dataset, shapes

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SPLIT = ("--image-splitting", "--longest-edge", 128)  # tiny: 64-px tiles -> 2 x 2 tiles + the global view
PIPELINES = ("dense", "global-only", "qgsa-tiles", "random-tiles")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_shapes_hires_keeps_every_object_inside_one_tile():
    samples = shapes.hires(30, seed=0)
    again = shapes.hires(30, seed=0)
    assert [s.question for s in samples] == [s.question for s in again]
    assert [s.box for s in samples] == [s.box for s in again]
    assert samples[0].id == "shapes-hires-test-00000-0" and samples[0].dataset == "shapes-hires"
    assert {s.image.size for s in samples} == {(448, 448)}
    counts = [len(s.extra["objects"]) for s in samples[::2]]
    assert min(counts) >= 3 and max(counts) <= 8 and len(set(counts)) > 2
    for s in samples:
        for obj in s.extra["objects"]:
            x, y, w, h = obj["box"]
            assert x // 224 == (x + w - 1) // 224 and y // 224 == (y + h - 1) // 224  # one tile
            assert 26 <= obj["side"] <= 58  # the base set's sizes: fractions of a 224-px tile
    assert {s.question_type for s in samples} == set(shapes.QUESTION_TYPES)
    assert [s.question for s in shapes.generate(5, seed=0)] != [s.question for s in shapes.hires(5, seed=0)]
    loaded = load_dataset("shapes-hires", limit=6)
    assert [s.id for s in loaded.samples] == [s.id for s in samples[:6]]


def test_data_shapes_writes_the_hires_set(tmp_path):
    import pandas as pd

    result = invoke("data", "shapes", "--hires", "--n", 2, "--out", tmp_path / "h")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "h" / "data" / "test-00000-of-00001.parquet")
    assert table["question_id"].tolist() == [s.id for s in shapes.hires(2)]
    assert set(table["dataset"]) == {"shapes-hires"}


def test_eval_on_split_images_equals_each_samples_own_answer(tmp_path, tiny):
    out = tmp_path / "e"
    result = invoke("eval", "--model", "tiny", "--weights", "random", "--device", "cpu", "--dataset", "shapes-hires",
                    "--limit", 6, *SPLIT, "--pipelines", ",".join(PIPELINES), "--k", 2, "--batch", 3,
                    "--max-new-tokens", 3, "--out", out)
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.output.splitlines() if line.startswith("warning:"))
    assert "qgsa-tiles reads the QGSA module" in warning  # global-only takes no budget: no f_comp, no module
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6 * len(PIPELINES)
    samples = {s.id: s for s in shapes.hires(3, seed=0)}
    splitting = tiny.adapter.splitting(True, 128)
    for r in records:
        run = tiny.engine.run(r["pipeline"])
        k = 2 if r["pipeline"] in ("qgsa-tiles", "random-tiles") else None
        solo = run.answer([samples[r["id"]].image], [r["question"]], 0, k, 3, run.sample_seeds([r["id"]]), splitting)
        assert r["prediction"] == tiny.adapter.decode_text(solo.generated[0]), r
        assert r["views"] == 5 and r["selected_tiles"] == solo.selected_tiles(0)
        assert r["n_visual_tokens"] == {"dense": 80, "global-only": 16}.get(r["pipeline"], 48)
    assert all(len(r["selected_tiles"]) == 2 for r in records if r["pipeline"].endswith("tiles"))
    rows = {row["pipeline"]: row for row in __import__("csv").DictReader((out / "eval.csv").open())
            if row["scope"] == "all"}
    assert [float(rows[p]["tiles_mean"]) for p in PIPELINES] == [4.0, 0.0, 2.0, 2.0]
    assert [rows[p]["qgsa_weights"] for p in PIPELINES] == ["not used", "not used", "random-init (seed 0)", "not used"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splitting"] == {"split": True, "longest_edge": 128, "tile": 64, "resample": 1}
    assert meta["image_input"].startswith("the model's processor: tiles of 64 px")
    table = (out / "table.md").read_text()  # --k counts tiles, k visual tokens: the table shows both
    assert "| visual tokens | tiles encoded (mean) |" in table and "| 80.0 | 4.00 |" in table
    assert "Input: the model's processor: tiles of 64 px" in table


@pytest.mark.parametrize("args, words", [
    (("--pipelines", "qgsa-tiles", "--k", 1), "add --image-splitting"),
    (("--pipelines", "random-tiles", "--k", 5, *SPLIT), "use 1 <= --k <= 4"),
    (("--pipelines", "qgsa-tiles", *SPLIT), "needs a budget in tiles"),
    (("--pipelines", "qgsa", "--k", 4, *SPLIT), "selects single patches of one view"),
    (("--longest-edge", 128), "add --image-splitting"),
    (("--image-splitting", "--longest-edge", 100), "not a positive multiple of the tile size"),
])
def test_eval_refuses_bad_tile_settings_in_one_line(tmp_path, args, words):
    out = tmp_path / "e"
    result = invoke("eval", "--model", "tiny", "--weights", "random", "--device", "cpu", "--dataset", "shapes-hires",
                    "--limit", 2, *args, "--out", out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in result.output, result.output
    assert not (out / "predictions.jsonl").exists()


def test_base_train_continues_a_base_on_split_images(tmp_path):
    from safetensors.torch import load_file

    from qgsa_bench.build import build
    from qgsa_bench.models.views import Splitting

    base = ROOT / "results" / "shapes" / "base-model"
    out = tmp_path / "tiled"
    result = invoke("base-train", "--preset", "shapes-tiled", "--dataset", "shapes-hires", "--init", base,
                    "--freeze-vision", "--out", out, "--steps", 1, "--batch", 6, "--questions-per-image", 6,
                    "--eval-images", 1)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "base_train_summary.json").read_text())
    assert summary["steps"] == 1 and summary["views"].startswith("tiles of 224 px")
    assert summary["vocab_size"] == json.loads((base / "base_train_summary.json").read_text())["vocab_size"] + 4
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    vision = [name for name in before if ".vision_model." in name]
    assert vision and all(torch.equal(before[name], after[name]) for name in vision)  # the encoder stayed frozen
    built = build(str(out), weights="pretrained", device="cpu", dtype="fp32", seed=0)
    assert built.adapter.splitting() == Splitting(True, 448, 224, 1)  # its processor was saved with it
    result = built.engine.run("dense").answer([shapes.hires(1)[0].image], ["how many circles are there?"], 0,
                                               max_new_tokens=2, splitting=built.adapter.splitting())
    assert result.views.counts == [5] and int(result.inputs.n_visual[0]) == 5 * 49


def test_base_train_refuses_a_tiled_preset_without_a_frozen_encoder(tmp_path):
    result = invoke("base-train", "--preset", "shapes-tiled", "--out", tmp_path / "t", "--steps", 1)
    assert result.exit_code == 2 and "pass --init DIR --freeze-vision" in result.output, result.output
    result = invoke("base-train", "--dataset", "vqa-rad", "--out", tmp_path / "t", "--steps", 1)
    assert result.exit_code == 2 and "shapes or shapes-hires" in result.output, result.output


def test_qgsa_tiles_takes_a_post_vision_checkpoint_and_refuses_one_from_inside_the_encoder():
    """qgsa-tiles' scorer reads the global view's patch features after the encoder: what a post-vision module
    was trained on. A module trained inside the encoder (vision:2) scores other features: refused."""
    from qgsa_bench import QGSAError
    from qgsa_bench.build import build

    base, ckpt = ROOT / "results" / "shapes" / "base-model", ROOT / "results" / "shapes" / "checkpoints"
    built = build(str(base), weights="pretrained", device="cpu", dtype="fp32", checkpoint=str(ckpt / "qgsa-attr.pt"))
    assert built.engine.run("qgsa-tiles").module.trained_at == "post-vision"
    inside = build(str(base), weights="pretrained", device="cpu", dtype="fp32",
                   checkpoint=str(ckpt / "qgsa-vision2.pt"))
    with pytest.raises(QGSAError, match="trained at vision:2 .* qgsa-tiles selects at tiles"):
        inside.engine.run("qgsa-tiles")


@torch.no_grad()
def test_the_flops_of_qgsa_tiles_hold_its_scorer_over_the_global_view(tiny):
    """The chosen tiles leave the traced graph as Python indices: the count still holds the scorer (Eq. 1 over
    the global view's patches), exactly what fvcore counts for the scorer alone; random-tiles adds nothing."""
    from qgsa_bench.efficiency.flops import count_flops
    from qgsa_bench.run.observers import FlopCounter

    splitting = tiny.adapter.splitting(True, 128)
    views = tiny.adapter.views([shapes.hires(1)[0].image], splitting)
    question = ["what color is the circle?"]

    def vision(name):
        counter = FlopCounter(tiny.engine, [tiny.loaded.model, tiny.module])
        tiny.engine.run(name).execute(views, question, k=1, observer=counter)
        return counter.counts["vision"].total

    q = tiny.adapter.question_embedding(question)
    V = tiny.adapter.patch_features(views.pixel_values[-1:])  # the global view (1, N_v, d_v)
    scorer = count_flops(tiny.module.scorer, q, V, modules=[tiny.module]).total
    assert scorer > 0 and vision("qgsa-tiles") == vision("random-tiles") + scorer
