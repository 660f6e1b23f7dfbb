"""A few-step version of the issue-6 flow: base-train a small Idefics3 on shapes, save it, load it back
through from_pretrained, train QGSA on it, then eval and grounding with question-pair analysis."""

import json

import pandas as pd
from typer.testing import CliRunner

from qgsa_bench.cli import app
from qgsa_bench.models import load_model

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_shapes_flow(tmp_path):
    base = tmp_path / "base"
    result = invoke("base-train", "--out", base, "--vision-steps", 2, "--steps", 3, "--batch", 4,
                    "--questions-per-image", 2, "--eval-every", 3, "--eval-images", 2)
    assert result.exit_code == 0, result.output
    # not a terminal: progress comes as plain lines, one per phase and the last step
    assert "vision warm-up (patch labels) [0/2]" in result.stderr and "training connector + LM [0/3]" in result.stderr
    summary = json.loads((base / "base_train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["held_out"][-1]["step"] == 3
    assert summary["vision_warmup"]["steps"] == 2 and 0 <= summary["vision_warmup"]["patch_shape"] <= 100
    log = pd.read_csv(base / "base_train_log.csv")
    assert log.phase.tolist() == ["vision"] * 2 + ["full"] * 3
    again = tmp_path / "again"  # the same command repeats the run exactly (model and patch heads seeded)
    assert invoke("base-train", "--out", again, "--vision-steps", 2, "--steps", 3, "--batch", 4,
                  "--questions-per-image", 2, "--eval-every", 3, "--eval-images", 2).exit_code == 0
    assert pd.read_csv(again / "base_train_log.csv").loss.tolist() == log.loss.tolist()
    loaded = load_model(str(base), weights="pretrained")  # the same from_pretrained path as SmolVLM
    assert loaded.weights == "pretrained" and loaded.config.vision_config.image_size == 224
    assert loaded.config.image_token_id == loaded.tokenizer.convert_tokens_to_ids("<image>")
    assert (224 // loaded.config.vision_config.patch_size) ** 2 == 196
    result = invoke("base-train", "--out", base, "--steps", 1)
    assert result.exit_code == 2 and "already holds a model" in result.stderr
    more = tmp_path / "more"
    result = invoke("base-train", "--init", base, "--out", more, "--vision-steps", 0, "--steps", 1, "--batch", 3,
                    "--questions-per-image", 3, "--eval-images", 1)
    assert result.exit_code == 0, result.output
    result = invoke("base-train", "--out", tmp_path / "odd", "--batch", 5)
    assert result.exit_code == 2 and "--batch 5 must be a multiple of --questions-per-image 6" in result.stderr
    assert load_model(str(more), "pretrained").tokenizer.get_vocab() == loaded.tokenizer.get_vocab()

    qgsa = tmp_path / "qgsa"
    result = invoke("train", "-m", base, "-d", "shapes", "--limit", 8, "--epochs", 1, "--align-encoder", "lm",
                    "--lambda-answer", 1.0, "--lambda-attr", 1.0, "--projection", "connector", "--device", "cpu",
                    "--fill", "learned", "--suff-budget", 0.5, "--out", qgsa)
    assert result.exit_code == 0, result.output
    log = pd.read_csv(qgsa / "train_log.csv")
    assert "l_answer" in log.columns and (log.l_attr > 0).all() and (log.l_budget > 0).all()

    result = invoke("eval", "-m", base, "-d", "shapes", "--limit", 4, "--pipelines", "dense,qgsa,random,norm",
                    "--checkpoint", qgsa / "checkpoint.pt", "--max-new-tokens", 2, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "eval" / "eval.csv")
    assert set(frame.weights) == {"pretrained"} and set(frame[frame.scope == "all"].n) == {4}
    assert frame[(frame.scope == "all") & (frame.pipeline == "dense")].n_visual_tokens_mean.iloc[0] == 49

    result = invoke("grounding", "-m", base, "-d", "shapes", "--limit", 30, "--k", 8, "--pipelines", "qgsa,random,norm",
                    "--checkpoint", qgsa / "checkpoint.pt", "--out", tmp_path / "g")
    assert result.exit_code == 0, result.output
    pairs = pd.read_csv(tmp_path / "g" / "pairs.csv").set_index("selector")
    assert list(pairs.index) == ["qgsa", "random", "norm"]
    assert pairs.loc["norm", "mean_jaccard"] == 1.0  # question-blind: the same 8 patches for both questions
    assert (tmp_path / "g" / "pair.png").exists()
