"""One run: what answers, what is timed and what is counted are the same stage sequence, by construction.

For every registered selector on both tiny families, the stages and the visual tokens each stage hands on
(per sample) are recorded by an answering run, a timed run and a counted run, and must be identical.
"""

import pytest
import torch

from qgsa_bench import QGSAError
from qgsa_bench.experiments.measure import Case, count_stage_flops, time_once
from qgsa_bench.run.spec import parse_spec
from qgsa_bench.run.stages import STAGES
from qgsa_bench.selectors.registry import REGISTRY

QUESTIONS = ["what color is the circle?", "how many squares are there?"]
FAMILIES = [("tiny", 64), ("llava_tiny", 84)]


def _budget(name: str):
    return None if REGISTRY[name].keeps_all else 4


@pytest.mark.parametrize("family, resolution", FAMILIES)
@pytest.mark.parametrize("name", sorted(REGISTRY))
@torch.no_grad()
def test_answering_timed_and_counted_runs_see_the_same_stages(request, family, resolution, name, images):
    built = request.getfixturevalue(family)
    run, k = built.run(name), _budget(name)
    answered = run.answer(images, QUESTIONS, resolution, k, max_new_tokens=3).trace
    px = built.adapter.pixel_values(images, run.resolution(resolution, k))
    timed = time_once(Case(name, run, k), px, QUESTIONS, decode_tokens=3)["trace"]
    counted = count_stage_flops(Case(name, run, k), px, QUESTIONS, decode_tokens=3)["trace"]
    assert [stage for stage, _ in answered] == list(STAGES)
    assert answered == timed == counted
    kept = answered[-1][1]
    assert kept == ([int(built.adapter.n_dense_tokens(resolution))] * 2 if name == "dense" else kept)
    if k is not None and name != "downsample":
        assert kept == [k, k]  # the budget is what reaches the LM (in-LM: after the last cut)


def test_a_spec_is_parsed_once_into_an_object():
    spec = parse_spec("fastv@lm:2")
    assert (spec.text, spec.selector.name, str(spec.point), spec.patches) == ("fastv@lm:2", "fastv", "lm:2", False)
    assert parse_spec(spec) is spec  # objects pass through: nothing parses twice
    paper = parse_spec("random")
    assert (paper.patches, str(paper.point)) == (True, "post-vision")
    assert type(paper.selector) is type(parse_spec("random@post-vision").selector)  # one random implementation
    with pytest.raises(QGSAError, match="unknown pipeline 'sparse'"):
        parse_spec("sparse")
    with pytest.raises(QGSAError, match="unknown selector 'sparse'"):
        parse_spec("sparse@lm:2")


def test_every_selector_is_registered_where_it_is_defined():
    for name, cls in REGISTRY.items():
        assert cls.name == name and cls.paper and cls.points
        module = cls.__module__
        assert module.startswith("qgsa_bench.selectors.") or module == "qgsa_bench.qgsa.selectors", module
