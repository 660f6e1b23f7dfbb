"""The `qgsa` command line through typer's CliRunner: every pipeline end to end, and bad input."""

import json

import pytest
from typer.testing import CliRunner

from qgsa_bench.cli import app

PIPELINES = ("dense", "dense-bypass", "qgsa", "random", "norm")  # the seed paper's

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0 and "info" in result.stdout and "ask" in result.stdout


def test_info_tiny(tmp_path):
    result = invoke("info", "--model", "tiny", "--out", tmp_path / "info.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "info.json").read_text())
    assert data["weights"] == "random" and data["d_v"] == 32 and data["d_q"] == 64
    assert data["base_params"]["total"] == 6_415_456
    assert data["resolutions"][0] == {"resolution": 224, "n_patches": 784, "dense_resolution": 224,
                                      "dense_visual_tokens": 196}


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_ask_every_pipeline(tmp_path, image_path, pipeline):
    out = tmp_path / "ask.json"
    budget = [] if pipeline in ("dense", "dense-bypass") else ["--k", 6]  # --k on a dense path is refused
    result = invoke("ask", "--model", "tiny", "--image", image_path, "--question", "what color is the circle?",
                    "--pipeline", pipeline, *budget, "--max-new-tokens", 3, "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["weights"] == "random" and "noise" in data["note"]
    expected_tokens = {"dense": 16, "dense-bypass": 64}.get(pipeline, 6)
    assert data["n_visual_tokens"] == expected_tokens
    if pipeline in ("qgsa", "random", "norm"):
        assert data["k"] == 6 and len(data["selected_patches"]) == 6
    assert 1 <= len(data["answer_token_ids"]) <= 3 and data["latency_ms"] > 0


def test_ask_with_checkpoint(tmp_path, image_path, tiny):
    from qgsa_bench.qgsa.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "q.pt", tiny.module, tiny.loaded.provenance())
    out = tmp_path / "ask.json"
    result = invoke("ask", "-m", "tiny", "-i", image_path, "-q", "is there a circle?", "-p", "qgsa",
                    "--checkpoint", ckpt, "--max-new-tokens", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["qgsa_weights"] == f"checkpoint:{ckpt}"


def _one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and fragment in lines[-1], result.stderr
    assert not any(line.startswith("Traceback") for line in lines)


def test_bad_input_gives_one_clear_line(tmp_path, image_path):
    base = ["ask", "-m", "tiny", "-q", "what?", "--max-new-tokens", 1]
    _one_line_error(invoke("ask", "-m", "smolvlm-9b", "-i", image_path, "-q", "what?"), "unknown model 'smolvlm-9b'")
    _one_line_error(invoke(*base, "-i", tmp_path / "missing.png"), "image not found")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    _one_line_error(invoke(*base, "-i", corrupt), "cannot read image")
    _one_line_error(invoke("ask", "-m", "tiny", "-i", image_path, "-q", "   "), "empty question")
    _one_line_error(invoke(*base, "-i", image_path, "--resolution", 70), "not a positive multiple of the patch size")
    _one_line_error(invoke(*base, "-i", image_path, "-p", "sparse"), "unknown pipeline 'sparse'")
    _one_line_error(invoke(*base, "-i", image_path, "--weights", "pretrained"), "has no pretrained weights")
    _one_line_error(invoke(*base, "-i", image_path, "-p", "qgsa", "--checkpoint", tmp_path / "nope.pt"),
                    "checkpoint not found")
    _one_line_error(invoke(*base, "-i", image_path, "--k", 0), "--k must be at least 1")
    _one_line_error(invoke(*base, "-i", image_path, "-p", "qgsa", "--k", 65), "k=65 is impossible")


@pytest.mark.parametrize("args, words", [
    (["eval", "--bogus"], "error: No such option: --bogus"),
    (["eval", "--batch", "x"], "error: Invalid value for '--batch'"),
    (["nosuch"], "error: No such command 'nosuch'"),
    (["data", "shapes", "--bogus"], "error: No such option: --bogus"),
    (["sweep-resolution", "--sizes"], "error: Option '--sizes' requires an argument"),
])
def test_usage_errors_typer_finds_are_one_error_line_too(args, words):
    """Typer and Click boxed their own usage errors over several lines (a fresh user's finding, session five):
    one `error:` line, exit status 2, as every other bad input."""
    result = invoke(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(words), result.output
    assert invoke("data", "--help").exit_code == 0 and invoke("info", "--help").exit_code == 0
