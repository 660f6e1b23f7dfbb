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
