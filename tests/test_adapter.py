"""The adapter's dense path reproduces the HF model; geometry, decoding and teacher forcing."""

import pytest
import torch

from qgsa_bench import QGSAError


def test_dense_path_equals_hf_forward(tiny, images):
    a = tiny.adapter
    questions = ["what color is the circle?", "is there a blue square on the left of the red one?"]
    with torch.no_grad():
        prepared = tiny.run("dense").prepare(images, questions, 64)
        ours = a.logits(prepared.inputs)  # (B, L, vocab), left-padded batch
        pixel_values = a.pixel_values(images, 64)
        for b, question in enumerate(questions):
            ids = a.prompt_ids(question, prepared.inputs.n_visual[b].item())
            hf = tiny.loaded.model(
                input_ids=torch.tensor([ids]), pixel_values=pixel_values[b:b + 1, None],
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            ).logits[0]
            assert prepared.inputs.attention_mask[b].sum().item() == len(ids)
            torch.testing.assert_close(ours[b, -len(ids):], hf, rtol=1e-5, atol=1e-5)


def test_patch_features_at_any_multiple_of_patch_size(tiny, images):
    a = tiny.adapter  # patch 8, native 64
    for res, n in [(48, 36), (64, 64), (72, 81), (128, 256)]:
        V = a.patch_features(a.pixel_values(images, res))
        assert V.shape == (2, n, a.d_v)


def test_resolution_rules(tiny):
    a = tiny.adapter  # patch 8, scale factor 2: the dense path needs multiples of 16
    assert a.dense_resolution(72) == 80 and a.dense_resolution(64) == 64
    assert a.n_dense_tokens(72) == 25
    assert tiny.run("qgsa").resolution(72) == 80  # every pipeline at the dense path's size: equal inputs
    assert tiny.run("dense").resolution(72) == 80
    with pytest.raises(QGSAError, match="not a positive multiple of the patch size 8"):
        tiny.run("qgsa").resolution(70)
    with pytest.raises(QGSAError):
        a.n_patches(0)


def test_question_embedding_is_mean_of_token_embeddings(tiny):
    a = tiny.adapter
    q = a.question_embedding(["what shape is the red object?"])
    ids = torch.tensor(a.tokenize("what shape is the red object?"))
    torch.testing.assert_close(q[0], a.embed(ids).mean(0))


@torch.no_grad()
def test_greedy_generation_with_cache_equals_recomputation(tiny, images):
    a = tiny.adapter
    prepared = tiny.run("qgsa").prepare(images, ["what color?", "how many squares are there?"], 64)
    cached = a.generate(prepared.inputs, max_new_tokens=5)
    for b in range(2):  # recompute the whole sequence each step, no cache, one sample at a time
        mask = prepared.inputs.attention_mask[b:b + 1]
        embeds = prepared.inputs.inputs_embeds[b:b + 1][:, mask[0].bool()]
        tokens = []
        for _ in range(5):
            pos = torch.arange(embeds.shape[1])[None]
            hidden = a.lm_forward(embeds, torch.ones(1, embeds.shape[1], dtype=torch.long), pos)
            nxt = int(a.lm_head(hidden[:, -1]).argmax(-1))
            tokens.append(nxt)
            if nxt in a.end_ids:
                break
            embeds = torch.cat([embeds, a.embed(torch.tensor([[nxt]]))], dim=1)
        assert cached[b] == tokens


@torch.no_grad()
def test_answer_logprob_matches_logits(tiny, images):
    a = tiny.adapter
    prepared = tiny.run("norm").prepare(images[:1], ["what color is the circle?"], 64, k=5)
    lp = a.answer_logprob(prepared.inputs, ["red circle"])
    ids = a.tokenize(" red circle")
    full = torch.cat([prepared.inputs.inputs_embeds, a.embed(torch.tensor([ids]))], dim=1)
    logits = a.lm_head(a.lm_forward(full, torch.ones(1, full.shape[1], dtype=torch.long),
                                    torch.arange(full.shape[1])[None]))
    L = prepared.inputs.inputs_embeds.shape[1]
    logp = torch.log_softmax(logits[0, L - 1:L - 1 + len(ids)], -1)
    expected = sum(logp[i, t] for i, t in enumerate(ids))
    torch.testing.assert_close(lp[0], expected, rtol=1e-5, atol=1e-4)
