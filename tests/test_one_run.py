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
    if REGISTRY[name].keeps_all or REGISTRY[name].keeps_no_tiles:
        return None
    return 2 if _tiles(name) else 4  # tile selectors count tiles


def _tiles(name: str) -> bool:
    return REGISTRY[name].points == ("tiles",)


# every selector on both families; the tile selectors on the split images of the family that has them
CASES = [(name, family, resolution) for name in sorted(REGISTRY) for family, resolution in FAMILIES
         if not (_tiles(name) and family == "llava_tiny")]


@pytest.mark.parametrize("name, family, resolution", CASES)
@torch.no_grad()
def test_answering_timed_and_counted_runs_see_the_same_stages(request, family, resolution, name, images):
    built = request.getfixturevalue(family)
    run, k = built.run(name), _budget(name)
    splitting = built.adapter.splitting(True) if _tiles(name) else None  # 96 x 80 px: 4 x 4 tiles + global
    answered = run.answer(images, QUESTIONS, resolution, k, max_new_tokens=3, splitting=splitting).trace
    px = built.adapter.views(images, splitting) if splitting else \
        built.adapter.pixel_values(images, run.resolution(resolution, k))
    timed = time_once(Case(name, run, k), px, QUESTIONS, decode_tokens=3)["trace"]
    counted = count_stage_flops(Case(name, run, k), px, QUESTIONS, decode_tokens=3)["trace"]
    assert [stage for stage, _ in answered] == list(STAGES)
    assert answered == timed == counted
    kept = answered[-1][1]
    assert kept == ([int(built.adapter.n_dense_tokens(resolution))] * 2 if name == "dense" else kept)
    if splitting:  # the global view and the chosen tiles, 16 visual tokens each
        assert kept == [(1 + (k or 0)) * 16] * 2 and answered[0][1] == [(1 + (k or 0)) * 64] * 2
    elif k is not None and name != "downsample":
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
    for keeps_all in ("dense@post-vision", "dense-bypass@post-vision"):  # nothing to place: refused, not relabelled
        with pytest.raises(QGSAError, match="selects nothing, so it has no insertion point"):
            parse_spec(keeps_all)


def test_every_selector_is_registered_where_it_is_defined():
    for name, cls in REGISTRY.items():
        assert cls.name == name and cls.paper and cls.points
        module = cls.__module__
        assert module.startswith("qgsa_bench.selectors.") or module == "qgsa_bench.qgsa.selectors", module


@pytest.mark.parametrize("spec", ["visionzip", "visionzip@vision:1"])
@torch.no_grad()
def test_visionzip_reports_its_merged_tokens_as_kept_at_every_point(tiny, images, spec):
    result = tiny.run(spec).prepare(images, QUESTIONS, 64, k=4)
    assert [result.kept(b) for b in range(2)] == result.inputs.n_visual.tolist() == [4, 4]


def test_count_flops_without_a_dense_case_renders_its_table(tmp_path):
    from typer.testing import CliRunner

    from qgsa_bench.cli import app

    out = tmp_path / "count"
    result = CliRunner().invoke(app, ["count-flops", "--model", "tiny", "--pipelines", "random,fastv", "--budgets", "4",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = (out / "table.md").read_text()
    assert "| random † | 4 |" in table and "| fastv | 4 |" in table  # † the patch-level form reads the untrained module
