"""A command's own inputs (--image, --dataset) are read before the model loads: a missing or damaged file is one
`error:` line at once, not after minutes of loading weights (found by a fresh user: `qgsa ask --model
smolvlm-256m --image missing.png` loaded the model for 36 s, then said the image was not there)."""

import pytest
from typer.testing import CliRunner

from qgsa_bench.cli import app


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the command's inputs were read")


@pytest.fixture
def no_model(monkeypatch):
    for module in ("ask", "sweep", "budget", "ablate"):
        monkeypatch.setattr(f"qgsa_bench.experiments.{module}.build", _no_model)


COMMANDS = {
    "ask": ["ask", "--question", "what?"],
    "sweep-resolution": ["sweep-resolution", "--sizes", "64", "--reps", "1"],
    "sweep-budget": ["sweep-budget", "--budgets", "4", "--reps", "1"],
    "ablate": ["ablate", "--reps", "1"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("damage, words", [
    ("missing", "error: image not found: "),
    ("damaged", "error: cannot read image "),
])
def test_a_bad_image_is_one_line_before_the_model_loads(tmp_path, no_model, command, damage, words):
    image = tmp_path / "photo.png"
    if damage == "damaged":
        image.write_bytes(b"not an image")
    out = tmp_path / "out"
    args = [*COMMANDS[command], "--model", "tiny", "--weights", "random", "--device", "cpu", "--image", str(image)]
    if command != "ask":
        args += ["--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(words), result.output
    assert not out.exists()  # nothing written


def test_sweep_budget_reads_its_data_set_before_the_model_loads(tmp_path, no_model):
    result = CliRunner().invoke(app, ["sweep-budget", "--model", "tiny", "--weights", "random", "--device", "cpu",
                                      "--dataset", "textvqa", "--data-dir", str(tmp_path / "nowhere"), "--budgets",
                                      "4", "--reps", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "the model was loaded" not in result.output


@pytest.mark.parametrize("args, words", [
    (["ask", "--question", "what?", "--pipeline", "qgsa-tiles-max"],
     "error: qgsa-tiles-max needs a budget in tiles: --k T, the tiles encoded besides the global view"),
    (["ask", "--question", "what?", "--pipeline", "qgsa-tiles", "--k", "2", "--no-image-splitting"],
     "error: qgsa-tiles chooses among the tiles of a split image, and --no-image-splitting gives one view: drop "
     "--no-image-splitting"),
    (["eval", "--dataset", "shapes", "--pipelines", "dense,random-tiles", "--k", "1", "--resolution", "64"],
     "error: random-tiles chooses among the tiles of a split image, and --resolution 64 gives one view"),
    (["eval", "--dataset", "shapes", "--pipelines", "global-only,qgsa-tiles"],
     "error: qgsa-tiles needs a budget in tiles"),
    (["sweep-budget", "--pipelines", "dense,random-tiles", "--tiles", "1", "--no-image-splitting"],
     "error: random-tiles chooses among the tiles of a split image, and --no-image-splitting gives one view"),
    # grounding's own copy of the first check told a user who gave --no-image-splitting to add --image-splitting,
    # and found --resolution only after the model loaded: both now the one check
    (["grounding", "--dataset", "shapes", "--pipelines", "qgsa-tiles", "--tiles", "1", "--no-image-splitting"],
     "error: qgsa-tiles chooses among the tiles of a split image, and --no-image-splitting gives one view: drop "
     "--no-image-splitting"),
    (["grounding", "--dataset", "shapes", "--pipelines", "qgsa-tiles", "--tiles", "1", "--resolution", "64"],
     "error: qgsa-tiles chooses among the tiles of a split image, and --resolution 64 gives one view: drop "
     "--resolution 64"),
])
def test_a_tile_selectors_options_are_checked_before_the_model_loads(tmp_path, no_model, monkeypatch, args, words):
    """What the options alone settle for a tile selector (no budget in ask / eval; one view asked for) is refused
    before the weights load (found by the fresh-user trial of session seven: 10-13 s of loading smolvlm-256m first)."""
    monkeypatch.setattr("qgsa_bench.experiments.evaluate.build", _no_model)
    monkeypatch.setattr("qgsa_bench.experiments.grounding.build", _no_model)
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (200, 150), (200, 30, 30)).save(image)
    extra = ["--image", str(image)] if args[0] == "ask" else ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--model", "tiny", "--weights", "random", "--device", "cpu", *extra])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(words), result.output
