"""One pipeline for every selector; padding for per-sample k never reaches the LM."""

import pytest
import torch

from qgsa_bench import QGSAError
from qgsa_bench.run.vision import Encoded

PIPELINES = ("dense", "dense-bypass", "qgsa", "random", "norm")  # the seed paper's


@torch.no_grad()
def test_padding_never_reaches_the_lm(tiny, images):
    """A batch with k = 3 and k = 11 gives each sample the logits it gets alone."""
    a, pipe = tiny.adapter, tiny.engine
    questions = ["what color is the circle?", "is there a square?"]
    k = torch.tensor([3, 11])
    batch = pipe.run("norm").prepare(images, questions, 64, k=k)
    assert batch.inputs.n_visual.tolist() == [3, 11]
    mask = batch.inputs.attention_mask
    assert mask[0].sum() == mask[1].sum() - 8 + (len(a.tokenize(questions[0])) - len(a.tokenize(questions[1])))
    assert (mask[0, : mask.shape[1] - int(mask[0].sum())] == 0).all()  # left padding only
    batch_logits, _ = a.prefill(batch.inputs)
    for b in range(2):
        alone = pipe.run("norm").prepare(images[b:b + 1], questions[b:b + 1], 64, k=int(k[b]))
        assert alone.inputs.attention_mask.all()
        alone_logits, _ = a.prefill(alone.inputs)
        torch.testing.assert_close(batch_logits[b], alone_logits[0], rtol=1e-4, atol=1e-4)
        # the visual tokens actually spliced in are exactly the valid projected patches
        assert torch.equal(batch.selection.indices[b][batch.selection.valid[b]],
                           alone.selection.indices[0])


@torch.no_grad()
def test_visual_token_counts_per_pipeline(tiny, images):
    pipe = tiny.engine
    q = ["what color is the circle?", "what shape is the red object?"]
    counts = {}
    for name in PIPELINES:
        prepared = pipe.run(name).prepare(images, q, 64, k=None)
        counts[name] = prepared.inputs.n_visual.tolist()
        assert prepared.n_patches == 64
    assert counts["dense"] == [16, 16]  # 64 patches / scale_factor^2
    assert counts["dense-bypass"] == [64, 64]
    k_pred = tiny.module.budget(tiny.adapter.question_embedding(q))[0].tolist()
    assert counts["qgsa"] == counts["random"] == counts["norm"] == k_pred  # baselines at QGSA's k


def test_unknown_pipeline_and_empty_question(tiny, images):
    with pytest.raises(QGSAError, match="unknown pipeline 'sparse'"):
        tiny.run("sparse").prepare(images[:1], ["what?"], 64)
    with pytest.raises(QGSAError, match="empty question"):
        tiny.run("qgsa").prepare(images[:1], ["  "], 64)


def _through_connector(tiny):
    from qgsa_bench.qgsa.config import QGSAConfig
    from qgsa_bench.qgsa.module import QGSAModule
    from qgsa_bench.run.stages import Engine

    module = QGSAModule(tiny.module.d_v, tiny.module.d_q, QGSAConfig(projection="connector"))
    module.load_state_dict(tiny.module.state_dict())
    return Engine(tiny.adapter, module.eval())


@torch.no_grad()
def test_connector_projection_keeps_the_models_own_tokens(tiny, images):
    """projection=connector: every patch selected gives exactly the dense tokens; a selection keeps the
    connector tokens that hold a selected patch, and each of them is the dense token's share of it."""
    pipe, a = _through_connector(tiny), tiny.adapter
    q = ["what color is the circle?"]
    V = a.patch_features(a.pixel_values(images[:1], 64))  # 8 x 8 patches, scale factor 2: 16 tokens
    question = a.question_embedding(q)
    tokens, valid = pipe.run("norm").select(Encoded(V=V), question, k=64)[:2]
    assert valid.all() and torch.equal(tokens, a.connect(V))
    groups = tiny.adapter.unit_patches(64, V.device)
    assert groups.shape == (16, 4) and sorted(groups.flatten().tolist()) == list(range(64))
    assert groups[0].tolist() == [0, 1, 8, 9]  # a token is a 2 x 2 block of patches
    tokens, valid, sel = pipe.run("norm").select(Encoded(V=V), question, k=5)[:3]
    chosen = set(sel.indices[0][sel.valid[0]].tolist())
    expected = [any(int(i) in chosen for i in g) for g in groups]
    assert valid[0].tolist() == expected and 2 <= int(valid.sum()) <= 5
    keep = torch.zeros(64, 1)
    keep[list(chosen)] = 1.0
    torch.testing.assert_close(tokens, a.connect(V * keep))
    prepared = pipe.run("qgsa").prepare(images[:1], q, 64, k=5)
    assert int(prepared.inputs.n_visual[0]) == int(pipe.run("qgsa").select(Encoded(V=V), question, k=5)[1].sum())


def test_connector_projection_passes_gradient_to_the_scorer(tiny, images):
    pipe, a = _through_connector(tiny), tiny.adapter
    pipe.module.train()
    with torch.no_grad():
        V = a.patch_features(a.pixel_values(images[:1], 64))
        question = a.question_embedding(["what color is the circle?"])
    tokens, valid = pipe.run("qgsa").select(Encoded(V=V), question, k=6, tau=1.0)[:2]
    tokens[valid].sum().backward()
    assert pipe.module.scorer.mlp[-1].weight.grad.abs().sum() > 0
    assert pipe.module.W_vis.weight.grad is None  # W_vis is not on this path


def test_connector_learned_fill_stands_in_for_unselected_patches(tiny, images):
    """fill=learned: the connector sees V * m + (1 - m) * f; all patches selected is still exactly dense,
    the fill is trained (gradient), and a fill without the connector path is refused."""
    from qgsa_bench.config import TrainConfig
    from qgsa_bench.qgsa.config import QGSAConfig
    from qgsa_bench.qgsa.module import QGSAModule
    from qgsa_bench.run.stages import Engine

    module = QGSAModule(tiny.module.d_v, tiny.module.d_q, QGSAConfig(projection="connector", fill="learned"))
    missing = module.load_state_dict(tiny.module.state_dict(), strict=False).missing_keys
    assert missing == ["fill"] and module.parameter_counts()["fill"] == tiny.module.d_v
    with torch.no_grad():
        module.fill.copy_(torch.linspace(-1, 1, tiny.module.d_v))
    pipe, a = Engine(tiny.adapter, module.eval()), tiny.adapter
    with torch.no_grad():
        V = a.patch_features(a.pixel_values(images[:1], 64))
        question = a.question_embedding(["what color is the circle?"])
        tokens, valid = pipe.run("norm").select(Encoded(V=V), question, k=64)[:2]
        assert valid.all() and torch.equal(tokens, a.connect(V))
        tokens, valid, sel = pipe.run("norm").select(Encoded(V=V), question, k=5)[:3]
        keep = torch.zeros(64, 1)
        keep[sel.indices[0][sel.valid[0]]] = 1.0
        torch.testing.assert_close(tokens, a.connect(V * keep + (1 - keep) * module.fill))
        assert not torch.allclose(tokens, a.connect(V * keep))
    module.train()
    tokens, valid = pipe.run("qgsa").select(Encoded(V=V), question, k=6, tau=1.0)[:2]
    tokens[valid].sum().backward()
    assert module.fill.grad.abs().sum() > 0 and module.scorer.mlp[-1].weight.grad.abs().sum() > 0
    with pytest.raises(QGSAError, match="--fill applies to --projection connector"):
        TrainConfig(fill="learned")
    with pytest.raises(QGSAError, match="--fill must be one of"):
        TrainConfig(projection="connector", fill="noise")
