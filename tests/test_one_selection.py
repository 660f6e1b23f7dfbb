"""One sample, one selection (issue 21, case 28): whatever number of passes scoring needs (each
multiple-choice option, warm-up, a rerun) and whatever batch, batch size or order the sample is in, the
random selectors keep the same items for it."""

import pytest
import torch

from qgsa_bench.selectors.selection import SampleDraws, sample_seed

QUESTIONS = ["what color is the circle?", "how many squares are there?"]
RANDOM_SPECS = ["random", "random@vision:1", "random@post-vision", "random@lm:1"]


@pytest.mark.parametrize("spec", ["random@lm:1", "fastv@lm:1", "norm@lm:1"])
@torch.no_grad()
def test_identical_options_score_identically_on_the_answer_s_selection(tiny, images, spec):
    run = tiny.run(spec)
    result = run.answer(images, QUESTIONS, 64, k=4, max_new_tokens=2, seeds=run.sample_seeds(["a", "b"]))
    kept = result.plan.kept()
    for b in range(2):
        plan = result.plan.for_rows(b, 4)
        scores = run.answer_logprob(result.inputs.rows(b, 4), plan, ["red"] * 4)
        assert torch.equal(scores, scores[:1].expand(4))  # four identical options, four identical scores
        replayed = plan.kept()  # what each option's pass kept: the answer's selection of sample b
        for row in range(4):
            assert replayed.indices[row][replayed.valid[row]].tolist() == kept.indices[b][kept.valid[b]].tolist()


@pytest.mark.parametrize("spec", RANDOM_SPECS)
@torch.no_grad()
def test_a_sample_keeps_its_random_selection_in_any_batch_order_or_pass(tiny, images, spec):
    run = tiny.run(spec)
    seeds = run.sample_seeds(["q1", "q2"])
    both = run.prepare(images, QUESTIONS, 64, k=4, seeds=seeds)
    again = run.prepare(images, QUESTIONS, 64, k=4, seeds=seeds)  # a second pass (warm-up, retry)
    swapped = run.prepare(images[::-1], QUESTIONS[::-1], 64, k=4, seeds=seeds[::-1])
    solo = [run.prepare([images[b]], [QUESTIONS[b]], 64, k=4, seeds=[seeds[b]]) for b in range(2)]
    for b in range(2):
        patches = both.selected_patches(b)
        assert len(patches) == 4 * (1 if run.spec.patches else 4)
        assert patches == again.selected_patches(b) == swapped.selected_patches(1 - b) == solo[b].selected_patches(0)
    assert both.selected_patches(0) != both.selected_patches(1)  # two samples, two draws


def test_sample_seeds_are_stable_and_draws_are_prefixes():
    assert sample_seed(0, "q1") == sample_seed(0, "q1") != sample_seed(1, "q1")
    assert sample_seed(0, "q1") == 0xcd933bd0bb0f001  # SHA-256 of "0:q1", 15 hex digits: not Python's salted hash()
    draws = SampleDraws([11, 12])
    long, short = draws.uniform(2, 9, "cpu"), draws.uniform(2, 5, "cpu")
    assert torch.equal(long[:, :5], short)  # padding a sample's items changes none of its draws
    with pytest.raises(ValueError, match="2 sample seeds for a batch of 3"):
        draws.uniform(3, 4, "cpu")
