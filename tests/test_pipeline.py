"""One pipeline for every selector; padding for per-sample k never reaches the LM."""

import pytest
import torch

from qgsa_bench import QGSAError
from qgsa_bench.pipeline import PIPELINES


@torch.no_grad()
def test_padding_never_reaches_the_lm(tiny, images):
    """A batch with k = 3 and k = 11 gives each sample the logits it gets alone."""
    a, pipe = tiny.adapter, tiny.pipeline
    questions = ["what color is the circle?", "is there a square?"]
    k = torch.tensor([3, 11])
    batch = pipe.lm_inputs("norm", images, questions, 64, k=k)
    assert batch.inputs.n_visual.tolist() == [3, 11]
    mask = batch.inputs.attention_mask
    assert mask[0].sum() == mask[1].sum() - 8 + (len(a.tokenize(questions[0])) - len(a.tokenize(questions[1])))
    assert (mask[0, : mask.shape[1] - int(mask[0].sum())] == 0).all()  # left padding only
    batch_logits, _ = a.prefill(batch.inputs)
    for b in range(2):
        alone = pipe.lm_inputs("norm", images[b:b + 1], questions[b:b + 1], 64, k=int(k[b]))
        assert alone.inputs.attention_mask.all()
        alone_logits, _ = a.prefill(alone.inputs)
        torch.testing.assert_close(batch_logits[b], alone_logits[0], rtol=1e-4, atol=1e-4)
        # the visual tokens actually spliced in are exactly the valid projected patches
        assert torch.equal(batch.selection.indices[b][batch.selection.valid[b]],
                           alone.selection.indices[0])


@torch.no_grad()
def test_visual_token_counts_per_pipeline(tiny, images):
    pipe = tiny.pipeline
    q = ["what color is the circle?", "what shape is the red object?"]
    counts = {}
    for name in PIPELINES:
        prepared = pipe.lm_inputs(name, images, q, 64, k=None)
        counts[name] = prepared.inputs.n_visual.tolist()
        assert prepared.n_patches == 64
    assert counts["dense"] == [16, 16]  # 64 patches / scale_factor^2
    assert counts["dense-bypass"] == [64, 64]
    k_pred = tiny.module.budget(tiny.adapter.question_embedding(q))[0].tolist()
    assert counts["qgsa"] == counts["random"] == counts["norm"] == k_pred  # baselines at QGSA's k


def test_unknown_pipeline_and_empty_question(tiny, images):
    with pytest.raises(QGSAError, match="unknown pipeline 'sparse'"):
        tiny.pipeline.lm_inputs("sparse", images[:1], ["what?"], 64)
    with pytest.raises(QGSAError, match="empty question"):
        tiny.pipeline.lm_inputs("qgsa", images[:1], ["  "], 64)
