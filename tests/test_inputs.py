"""The image input of every command (run/inputs.py, issue 19): by default the model's own views where its
processor splits (SmolVLM; here the trained tiled shapes base: 2 x 2 tiles of 224 px + a global view), one square
view where it does not (tiny, the one-view shapes base, LLaVA) or where --resolution asks for it; a pipeline that
takes one view only puts every pipeline of the command on one square view, with one warning. Every output names
its input."""

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.cli import app
from qgsa_bench.models.views import Splitting
from qgsa_bench.run.inputs import choose_input
from qgsa_bench.run.spec import parse_specs

ROOT = Path(__file__).resolve().parents[1]
TILED = str(ROOT / "results" / "tiles" / "shapes-tiled-base")  # its processor splits: 448-px edge, 224-px tiles
OWN = "the model's processor: tiles of 224 px after resizing the longest edge to 448 px, plus a global view"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiled():
    return build(TILED, "pretrained", "cpu", "fp32")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


def test_the_default_is_the_models_own_setting_unless_something_takes_one_view(tiled, tiny):
    a = tiled.adapter
    own = Splitting(True, 448, 224, 1)
    said = []
    assert choose_input(a, warn=said.append) == own
    assert choose_input(a, specs=parse_specs(["dense", "global-only", "qgsa-tiles", "fastv@lm:1", "random@post-vision",
                                              "hired", "random@vision:1"]), warn=said.append) == own
    assert said == []
    assert choose_input(a, longest_edge=224) == Splitting(True, 224, 224, 1)
    assert choose_input(a, split=False) == Splitting(False, 448, 224, 1)  # the processor's one view
    assert choose_input(a, resolution=224, warn=said.append) is None and said == []  # asked for: no warning
    # the paper's patch-level qgsa takes one view: every pipeline gets one, said once
    assert choose_input(a, specs=parse_specs(["dense", "qgsa", "downsample"]), warn=said.append) is None
    assert said == ["qgsa takes one view only, so every pipeline gets one square view of 224 px (the paper's form), "
                    "not this model's own views (tiles + a global view). For those: dense, a tile selector or a "
                    "selector at post-vision, vision:L or lm:K (sweep-resolution: with --longest-edge); --resolution R "
                    "(sweep-resolution: --sizes) asks for one view without this warning"]
    assert choose_input(a, extra=["--allocate"], warn=said.append) is None and said[-1].startswith("--allocate takes")
    with pytest.raises(QGSAError, match="--longest-edge 448 tiles the image, and qgsa takes one view only"):
        choose_input(a, longest_edge=448, specs=parse_specs(["qgsa"]))
    # a model whose processor does not split: one square view of its size, nothing to say
    assert choose_input(tiny.adapter, specs=parse_specs(["dense"]), warn=said.append) is None and len(said) == 2
    with pytest.raises(QGSAError, match="image splitting is off: add --image-splitting"):
        choose_input(tiny.adapter, longest_edge=128)


def test_ask_and_eval_take_the_models_own_views_by_default(tmp_path, tiled):
    from qgsa_bench.data import shapes

    path = tmp_path / "hires.png"
    sample = shapes.hires(1, seed=0)[0]
    sample.image.save(path)
    base = ["ask", "--model", TILED, "--image", path, "-q", sample.question, "--max-new-tokens", 2]
    out = tmp_path / "a.json"
    result = invoke(*base, "--out", out)
    assert result.exit_code == 0 and not warnings(result), result.output
    answer = json.loads(out.read_text())
    assert answer["image_input"] == OWN and answer["views"] == 5 and answer["n_visual_tokens"] == 5 * 49
    result = invoke(*base, "--pipeline", "qgsa", "--k", 8, "--out", out)  # the paper's patch-level form: one view
    assert result.exit_code == 0, result.output
    assert [w for w in warnings(result) if "takes one view only" in w] == [
        "warning: qgsa takes one view only, so every pipeline gets one square view of 224 px (the paper's form), not "
        "this model's own views (tiles + a global view). For those: dense, a tile selector or a selector at "
        "post-vision, vision:L or lm:K (sweep-resolution: with --longest-edge); --resolution R (sweep-resolution: "
        "--sizes) asks for one view without this warning"]
    assert json.loads(out.read_text())["image_input"] == "one square view of 224 px (the paper's form)"
    result = invoke(*base, "--resolution", 224, "--out", out)
    assert result.exit_code == 0 and not warnings(result), result.output
    assert json.loads(out.read_text())["image_input"] == "one square view of 224 px (the paper's form)"

    folder = tmp_path / "eval"
    result = invoke("eval", "--model", TILED, "--dataset", "shapes-hires", "--limit", 2, "--pipelines",
                    "dense,global-only,random-tiles", "--k", 1, "--max-new-tokens", 3, "--out", folder)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(folder / "eval.csv")
    assert set(rows.image_input) == {OWN} and json.loads((folder / "meta.json").read_text())["image_input"] == OWN
    assert set(rows.qgsa_weights) == {"not used"}  # no pipeline here reads the QGSA module (it was "random-init")
    explicit = tmp_path / "explicit"  # the same as naming the model's own settings
    result = invoke("eval", "--model", TILED, "--dataset", "shapes-hires", "--limit", 2, "--pipelines",
                    "dense,global-only,random-tiles", "--k", 1, "--max-new-tokens", 3, "--image-splitting",
                    "--longest-edge", 448, "--out", explicit)
    assert result.exit_code == 0, result.output
    same = ["pipeline", "scope", "accuracy", "n_visual_tokens_mean", "tiles_mean"]
    assert pd.read_csv(explicit / "eval.csv")[same].equals(rows[same])


def test_sweep_budget_and_sweep_resolution_split_by_default(tmp_path):
    out = tmp_path / "budget"
    result = invoke("sweep-budget", "--model", TILED, "--pipelines", "dense,global-only,qgsa-tiles,fastv@lm:1",
                    "--tiles", 1, "--budgets", 98, "--reps", 1, "--warmup", 0, "--decode-tokens", 1, "--out", out)
    assert result.exit_code == 0 and not warnings(result), result.output
    rows = pd.read_csv(out / "budget.csv").set_index("case")
    assert rows.n_visual_tokens.tolist() == [245, 49, 98, 245]  # a 448 x 448 square: 5 views of 49 tokens
    assert (rows.image_size == "448x448").all() and set(rows.image_input) == {OWN}
    assert set(rows.views) == {5} and set(rows.longest_edge) == {448}
    assert json.loads((out / "meta.json").read_text())["image_input"] == OWN

    out = tmp_path / "sweep"
    result = invoke("sweep-resolution", "--model", TILED, "--pipelines", "dense,global-only", "--reps", 1,
                    "--warmup", 0, "--decode-tokens", 1, "--out", out)
    assert result.exit_code == 0 and not warnings(result), result.output
    rows = pd.read_csv(out / "sweep.csv")
    assert rows.longest_edge.tolist() == [224, 224, 448, 448] and rows.views.tolist() == [1, 1, 5, 5]
    out = tmp_path / "paper"  # the paper's sizes: one square view each, named so
    result = invoke("sweep-resolution", "--model", TILED, "--sizes", 224, "--pipelines", "dense,qgsa", "--k", 4,
                    "--reps", 1, "--warmup", 0, "--decode-tokens", 1, "--out", out)
    assert result.exit_code == 0 and not warnings(result), result.output
    assert set(pd.read_csv(out / "sweep.csv").image_input) == {"one square view of 224 px (the paper's form)"}


def test_count_flops_counts_a_square_photo_at_the_longest_edge_by_default(monkeypatch, tmp_path):
    import qgsa_bench.experiments.count as count
    import qgsa_bench.experiments.count_views as count_views

    seen = []
    monkeypatch.setattr(count_views, "run_count_views", lambda cfg, progress, warn: seen.append(("views", cfg)))
    monkeypatch.setattr(count_views, "run_count", lambda cfg, progress, warn: seen.append(("one view", cfg)))
    said = []
    for pipelines in (("dense", "qgsa-tiles", "fastv@lm:2"), ("dense", "qgsa")):
        count_views.run_count_flops(count.CountConfig(model="smolvlm-256m", pipelines=pipelines), warn=said.append)
    assert [(how, cfg.image_sizes) for how, cfg in seen] == [("views", ((2048, 2048),)), ("one view", ())]
    assert len(said) == 1 and said[0].startswith("qgsa takes one view only")
    with pytest.raises(QGSAError, match="qgsa-tiles chooses among the tiles of a split image: give --image-size"):
        count_views.run_count_flops(count.CountConfig(model="smolvlm-256m", resolution=512, pipelines=("qgsa-tiles",)))


def test_train_at_post_vision_says_it_trains_on_one_view(tmp_path):
    out = tmp_path / "t"
    result = invoke("train", "-m", TILED, "-d", "shapes", "--limit", 4, "--max-steps", 1, "--warmup-steps", 0,
                    "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    assert [w for w in warnings(result) if "trains on one square view" in w] == [
        "warning: train --insert post-vision trains on one square view of 224 px (the seed paper's form), not this "
        "model's own views (tiles + a global view): --insert tiles --fixed-k T trains the tile scorer on those; "
        "--resolution R says one view without this warning"]
    assert json.loads((out / "meta.json").read_text())["image_input"] == "one square view of 224 px (the paper's form)"
    again = invoke("train", "-m", TILED, "-d", "shapes", "--limit", 4, "--max-steps", 1, "--warmup-steps", 0,
                   "--device", "cpu", "--resolution", 224, "--out", tmp_path / "u")
    assert again.exit_code == 0 and not [w for w in warnings(again) if "one square view" in w], again.output


def test_grounding_takes_the_models_own_views_by_default(tmp_path):
    out = tmp_path / "g"
    result = invoke("grounding", "--model", TILED, "--dataset", "shapes-hires", "--limit", 2, "--pipelines",
                    "random-tiles,random@post-vision", "--tiles", 1, "--budgets", 98, "--out", out)
    assert result.exit_code == 0 and not warnings(result), result.output
    assert json.loads((out / "meta.json").read_text())["image_input"] == OWN
    rows = pd.read_csv(out / "grounding.csv")
    assert {"random-tiles", "random@post-vision"} <= set(rows.selector)
    one = invoke("grounding", "--model", TILED, "--dataset", "shapes-hires", "--limit", 2, "--pipelines", "qgsa",
                 "--k", 8, "--out", tmp_path / "one")  # the paper's patch-level qgsa: one view, said once
    assert one.exit_code == 0 and [w for w in warnings(one) if "takes one view only" in w], one.output
    assert json.loads((tmp_path / "one" / "meta.json").read_text())["image_input"] == \
        "one square view of 224 px (the paper's form)"


def test_an_image_smaller_than_the_longest_edge_is_said_to_be_scaled_up(tmp_path):
    """As SmolVLM's processor does, a small image is scaled up to the longest edge before tiling (a 640 x 480 photo
    becomes 13 views): not an error, said in the output (tiny: 64-px tiles, longest edge 256)."""
    from PIL import Image

    path = tmp_path / "small.png"
    Image.new("RGB", (200, 150), (200, 30, 30)).save(path)
    out = tmp_path / "a.json"
    result = invoke("ask", "--model", "tiny", "--image", path, "-q", "what color?", "--image-splitting",
                    "--max-new-tokens", 1, "--out", out)
    assert result.exit_code == 0, result.output
    answer = json.loads(out.read_text())
    assert answer["views_made"] == ("13 views: 3 x 4 tiles + a global view; the 200x150 image scaled up to a longest "
                                    "edge of 256 px, as the model's processor does") and answer["scaled_up"] is True
    folder = tmp_path / "e"
    result = invoke("eval", "--model", "tiny", "--dataset", "shapes", "--limit", 2, "--image-splitting",
                    "--pipelines", "dense", "--max-new-tokens", 1, "--out", folder)
    assert result.exit_code == 0, result.output
    note = ("2 of 2 images are smaller than the longest edge 256 px and were scaled up to it before tiling, as the "
            "model's processor does")
    assert any(note in w for w in warnings(result)), result.output
    assert json.loads((folder / "meta.json").read_text())["scaled_up"].startswith(note)
    big = invoke("eval", "--model", "tiny", "--dataset", "shapes", "--limit", 2, "--image-splitting", "--longest-edge",
                 128, "--pipelines", "dense", "--max-new-tokens", 1, "--out", tmp_path / "big")
    assert big.exit_code == 0 and not any("scaled up" in w for w in warnings(big)), big.output


def test_what_a_fresh_user_found_in_session_six(tmp_path):
    """Found by trying the new defaults as a new user: count-flops told a local model directory it was allowed;
    train --insert tiles kept --resolution in its config without using it; hints led into a second error (add
    --image-splitting beside --resolution, --no-image-splitting where the command has none, 'pick 1 .. 0'
    tiles); a one-view sweep-budget titled its table as split."""
    for args, words in [
        (["count-flops", "--model", TILED, "--pipelines", "dense"], "count-flops builds its copies from a registry preset"),
        (["train", "-m", TILED, "-d", "shapes-hires", "--insert", "tiles", "--fixed-k", 1, "--resolution", 224],
         "--insert tiles trains on the model's own views (tiles + a global view; --longest-edge sets their edge): drop "
         "--resolution"),
        (["ask", "-m", TILED, "-i", ROOT / "examples" / "shapes.png", "-q", "what?", "-p", "random-tiles", "--k", 1,
          "--resolution", 224], "random-tiles chooses among the tiles of a split image, and --resolution 224 gives "
                                "one view: drop --resolution 224"),
        (["sweep-budget", "--model", TILED, "--pipelines", "dense,qgsa-tiles", "--tiles", 1, "--no-image-splitting"],
         "qgsa-tiles chooses among the tiles of a split image, and --no-image-splitting gives one view: drop "
         "--no-image-splitting"),
        (["info", "--model", TILED, "--image-size", "448x448", "--no-image-splitting", "--longest-edge", 672],
         "drop --no-image-splitting, or drop --longest-edge"),
        (["ask", "-m", str(ROOT / "results" / "shapes" / "base-model"), "-i", ROOT / "examples" / "shapes.png", "-q",
          "what?", "--image-splitting"], "run it on one view (drop the splitting options and tile selectors"),
    ]:
        result = invoke(*args, "--out", tmp_path / "x")
        lines = [line for line in result.stderr.splitlines() if line.startswith(("error:", "warning:"))]
        assert result.exit_code == 2 and words in lines[-1], (args, result.output)
    out = tmp_path / "one"
    result = invoke("sweep-budget", "--model", TILED, "--pipelines", "dense,fastv@lm:1", "--budgets", 16,
                    "--no-image-splitting", "--reps", 1, "--warmup", 0, "--decode-tokens", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert "a 448x448 image as one 224-px view (image splitting off)" in (out / "table.md").read_text()
    assert set(pd.read_csv(out / "budget.csv").image_input) == {
        "the model's processor: one 224-px view (image splitting off)"}
