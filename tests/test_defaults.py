"""Issue 24, defaults that mean something: `qgsa train`'s defaults are the recipe that works and run offline,
train / eval / grounding share model, data set and dtype, a warm-up as long as the run is one warning line,
an untrained QGSA module at eval time is one warning line, and the shipped shapes checkpoints load."""

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.cli import app
from qgsa_bench.config import EvalConfig, TrainConfig
from qgsa_bench.experiments.train import warmup_warning

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BASE = "results/shapes/base-model"
SHIPPED = {"qgsa-attr": "qgsa", "qgsa-vision2": "qgsa-vision@vision:2"}  # checkpoint -> the pipeline that reads it
# the recipe of results/selectors/run.sh (qgsa-attr): what `qgsa train` does without options
RECIPE = {"epochs": 6, "batch": 8, "lr": 1e-3, "warmup_steps": 20, "lambda_answer": 1.0, "lambda_attr": 1.0,
          "align_encoder": "lm", "soft_mask_space": "logits", "projection": "connector", "fill": "zero",
          "insert": "post-vision", "lambda_cs": 0.5, "lambda_align": 0.3, "lambda_sparse": 0.01,
          "entropy_coef": -0.01, "kvar_coef": -0.5, "qlen_coef": -0.3, "tau_start": 1.0, "tau_end": 0.1,
          "grad_clip": 1.0, "seed": 0, "dtype": "fp32"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def defaults(command: str) -> dict:
    click_app = typer.main.get_command(app)
    return {p.name: p.default for p in click_app.commands[command].params}


def warnings(stderr: str, about: str = "") -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:") and about in line]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped base and checkpoints are named relative to the repository


def test_train_eval_and_grounding_share_model_dataset_and_dtype():
    shared = {"model": "smolvlm-256m", "dataset": "shapes", "dtype": "fp32"}
    for command in ("train", "eval", "grounding"):
        assert {k: defaults(command)[k] for k in shared} == shared, command
    assert {k: getattr(TrainConfig(), k) for k in shared} == shared
    assert {k: getattr(EvalConfig(), k) for k in shared} == shared


def test_train_defaults_are_the_recipe_of_the_shipped_checkpoint():
    cli = defaults("train")
    assert cli["lambda_attr"] is None  # resolved by --insert: 1.0 after the encoder, 0 inside it
    assert {k: cli[k] for k in RECIPE if k != "lambda_attr"} == {k: v for k, v in RECIPE.items() if k != "lambda_attr"}
    made_with = torch.load("results/shapes/checkpoints/qgsa-attr.pt", weights_only=False)["train_config"]
    assert {k: made_with[k] for k in RECIPE} == RECIPE
    vision = torch.load("results/shapes/checkpoints/qgsa-vision2.pt", weights_only=False)["train_config"]
    assert {k: vision[k] for k in RECIPE} == {**RECIPE, "lambda_attr": 0.0, "insert": "vision:2"}


def test_default_train_runs_offline_without_clip_and_warns_once_about_warm_up(tmp_path):
    out = tmp_path / "t"
    result = invoke("train", "--model", BASE, "--dataset", "shapes", "--max-steps", 2, "--limit", 8, "--out", out)
    assert result.exit_code == 0, result.output
    assert warnings(result.stderr) == ["warning: --warmup-steps 20 is not shorter than the run's 2 steps "
                                       "(--max-steps 2): the learning rate never leaves warm-up (it rises to 10% "
                                       "of --lr 0.001 and never decays); lower --warmup-steps"]
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in RECIPE} == RECIPE
    meta = json.loads((out / "meta.json").read_text())
    assert meta["align_encoder"] == "lm-input-embeddings" and meta["weights"] == "pretrained"
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.step) == [1, 2] and (log.l_attr > 0).all() and (log.l_answer > 0).all()
    # each step's own learning rate (it once logged the next step's: 15 % where the warning said 10 %)
    assert log.lr.tolist() == pytest.approx([0.05e-3, 0.10e-3])


def test_warm_up_warning_only_when_the_run_never_leaves_it(tmp_path):
    cfg = TrainConfig(warmup_steps=50, epochs=2, lr=3e-4)
    assert warmup_warning(cfg, 40) == ("--warmup-steps 50 is not shorter than the run's 40 steps (--epochs 2): the "
                                       "learning rate never leaves warm-up (it rises to 80% of --lr 0.0003 and never "
                                       "decays); lower --warmup-steps")
    result = invoke("train", "-m", "tiny", "--weights", "random", "--limit", 8, "--max-steps", 2,
                    "--warmup-steps", 1, "--device", "cpu", "--out", tmp_path / "short")
    assert result.exit_code == 0, result.output
    assert warnings(result.stderr) == []
    with pytest.raises(QGSAError, match="--warmup-steps must be 0 or more"):
        TrainConfig(warmup_steps=-1)


def test_lambda_attr_default_follows_the_insertion_point(tmp_path):
    result = invoke("train", "-m", "tiny", "--weights", "random", "--limit", 8, "--max-steps", 1, "--warmup-steps", 0,
                    "--insert", "vision:1", "--device", "cpu", "--out", tmp_path / "v")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "v" / "config.json").read_text())["lambda_attr"] == 0.0
    result = invoke("train", "-m", "tiny", "--weights", "random", "--insert", "vision:1", "--lambda-attr", 1,
                    "--out", tmp_path / "w")
    assert result.exit_code == 2 and "use them with --insert post-vision" in result.stderr


def test_the_paper_s_clip_encoder_is_one_error_line_offline(tmp_path):
    result = invoke("train", "-m", "tiny", "--weights", "random", "--limit", 8, "--align-encoder", "clip",
                    "--out", tmp_path / "c")
    assert result.exit_code == 2
    assert "CLIP ViT-B/32 text encoder weights are not available" in result.stderr


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoints_load_on_the_shapes_base(name, tmp_path):
    from qgsa_bench.build import build

    path = f"results/shapes/checkpoints/{name}.pt"
    assert Path(path).stat().st_size < 1_000_000  # module weights and provenance only
    built = build(BASE, "pretrained", "cpu", "fp32", checkpoint=path)
    assert built.qgsa_weights == f"checkpoint:{path}"
    payload = torch.load(path, weights_only=False)
    assert "optimizer" not in payload
    assert payload["base"]["architecture_hash"] == built.loaded.provenance()["architecture_hash"]
    assert payload["provenance"]["command"].startswith("qgsa ") and payload["step"] == payload["total_steps"] == 1200
    out = tmp_path / "e"
    result = invoke("eval", "--model", BASE, "--limit", 2, "--pipelines", SHIPPED[name], "--checkpoint", path,
                    "--max-new-tokens", 1, "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    assert warnings(result.stderr, "QGSA module") == []
    assert set(pd.read_csv(out / "eval.csv").qgsa_weights) == {f"checkpoint:{path}"}


def test_a_shipped_checkpoint_cannot_be_resumed(tmp_path):
    from qgsa_bench.data import load_dataset
    from qgsa_bench.experiments.train import _trainer

    cfg = TrainConfig(model=BASE, weights="pretrained", device="cpu", limit=8, out=str(tmp_path / "r"))
    trainer = _trainer(cfg, load_dataset("shapes", None, "train", 8))
    with pytest.raises(QGSAError, match="holds the module's weights only .* but not resumed"):
        trainer.resume_from(Path("results/shapes/checkpoints/qgsa-attr.pt"))


def test_shipped_checkpoints_are_not_git_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for name in SHIPPED:
        ignored = subprocess.run(["git", "check-ignore", "-q", f"results/shapes/checkpoints/{name}.pt"], cwd=ROOT)
        assert ignored.returncode == 1, name  # 1: not ignored


def test_an_untrained_qgsa_module_is_one_warning_line(tmp_path):
    result = invoke("eval", "-m", "tiny", "--limit", 2, "--pipelines", "dense,qgsa,random@vision:1",
                    "--max-new-tokens", 1, "--device", "cpu", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    assert warnings(result.stderr, "QGSA module") == [
        "warning: qgsa, random@vision:1 read the QGSA module (its scorer, its W_vis projection, or f_comp's budget "
        "without --k), which without a checkpoint is random-init: those results are an untrained selector's; pass "
        "--checkpoint FILE from `qgsa train` (committed: results/shapes/checkpoints/ for the shapes base, "
        "results/tiles/checkpoints/ for the tiled base)"]
    result = invoke("eval", "-m", "tiny", "--limit", 2, "--pipelines", "dense,random@vision:1", "--k", 4,
                    "--max-new-tokens", 1, "--device", "cpu", "--out", tmp_path / "f")
    assert result.exit_code == 0, result.output
    assert warnings(result.stderr, "QGSA module") == []  # random inside the encoder at a fixed k never reads it
    result = invoke("grounding", "-m", "tiny", "--limit", 2, "--device", "cpu", "--out", tmp_path / "g")
    assert result.exit_code == 0, result.output  # every selector at f_comp's budget: all read the module
    assert [w[:40] for w in warnings(result.stderr, "QGSA module")] == ["warning: qgsa, random, norm, random@post"]
    result = invoke("grounding", "-m", "tiny", "--limit", 2, "--budgets", 2, "--device", "cpu", "--out", tmp_path / "h")
    assert result.exit_code == 0, result.output  # at a fixed budget only QGSA's scorers choose with the module
    assert [w[:48] for w in warnings(result.stderr, "QGSA module")] == [
        "warning: qgsa, qgsa@post-vision, qgsa-vision rea"]


def test_sweep_budget_warns_for_an_untrained_selector_it_scores():
    from qgsa_bench.cli.data import untrained
    from qgsa_bench.run.spec import parse_specs

    specs = parse_specs(("dense", "qgsa", "qgsa-vision@vision:1", "fastv"))
    own = {"qgsa": "q.pt"}  # --checkpoint qgsa=q.pt: qgsa-vision has none, fastv at a budget reads none
    assert untrained(specs, 0, lambda spec: own.get(spec.selector.name), "--checkpoint [SELECTOR=]PATH") == (
        "qgsa-vision@vision:1 reads the QGSA module (its scorer, its W_vis projection), which without a checkpoint "
        "is random-init: those results are an untrained selector's; pass --checkpoint [SELECTOR=]PATH from `qgsa "
        "train` (committed: results/shapes/checkpoints/ for the shapes base, results/tiles/checkpoints/ for the "
        "tiled base)")
    assert untrained(specs, 0, lambda spec: "all.pt") is None


def test_a_refused_command_prints_its_error_line_only(tmp_path):
    out = tmp_path / "e"
    assert invoke("eval", "-m", "tiny", "--limit", 2, "--pipelines", "dense", "--max-new-tokens", 1,
                  "--device", "cpu", "--out", out).exit_code == 0
    refused = invoke("eval", "-m", "tiny", "--limit", 2, "--max-new-tokens", 1, "--device", "cpu", "--out", out)
    assert refused.exit_code == 2 and refused.stderr.startswith("error:") and len(refused.stderr.splitlines()) == 1
    result = invoke("sweep-budget", "-m", "tiny", "--weights", "random", "--device", "cpu", "--budgets", 4, "--reps",
                    1, "--warmup", 0, "--no-flops", "--decode-tokens", 1, "--pipelines", "dense,qgsa",
                    "--dataset", "shapes", "--limit", 2, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert [w[:31] for w in warnings(result.stderr, "QGSA module")] == ["warning: qgsa reads the QGSA mo"]
