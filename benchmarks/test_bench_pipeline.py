"""One LM prefill per pipeline on the tiny model (random weights, CPU, fp32).

Run: python3 -m pytest benchmarks --benchmark-only
"""

import pytest
import torch

from qgsa_bench.build import build
from qgsa_bench.models.images import demo_image

PIPELINES = ("dense", "dense-bypass", "qgsa", "random", "norm")  # the seed paper's


@pytest.fixture(scope="module")
def tiny():
    return build("tiny", weights="random", device="cpu", dtype="fp32")


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_prefill(benchmark, tiny, pipeline):
    prepared = tiny.run(pipeline).prepare([demo_image(64)], ["what color is the circle?"], 64, k=8)

    @torch.no_grad()
    def run():
        return tiny.adapter.prefill(prepared.inputs)[0]

    logits = benchmark(run)
    assert logits.shape == (1, tiny.adapter.loaded.config.text_config.vocab_size)
