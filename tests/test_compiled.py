"""--compile: compiled runs equal eager ones (CPU, tiny), and a changing number of visual tokens, prompt
length or resolution does not recompile while timed."""

import pytest
import torch
from typer.testing import CliRunner

from qgsa_bench.cli import app
from qgsa_bench.efficiency.compiled import compilations, compiled_engine
from qgsa_bench.experiments.measure import Case
from qgsa_bench.experiments.runner import measure_cases

QUESTION = ["what color is the circle?"]


@torch.no_grad()
def test_compiled_runs_equal_eager_and_do_not_recompile_while_timed(tiny, images):
    compiled = compiled_engine(tiny.engine, "default")
    eager_a, comp_a = tiny.adapter, compiled.adapter
    assert compiled.eager is tiny.engine and comp_a.lm.layers[0] is not eager_a.lm.layers[0]
    for k in (5, 9):  # two numbers of visual tokens: two prompt lengths
        inputs = tiny.run("qgsa").prepare(images[:1], QUESTION, 64, k=k).inputs
        px = eager_a.pixel_values(images[:1], 64)
        torch.testing.assert_close(comp_a.patch_features(px), eager_a.patch_features(px), rtol=1e-4, atol=1e-5)
        (l_eager, c_eager), (l_comp, c_comp) = eager_a.prefill(inputs), comp_a.prefill(inputs)
        torch.testing.assert_close(l_comp, l_eager, rtol=1e-4, atol=1e-5)
        ids = l_eager.argmax(-1)
        torch.testing.assert_close(comp_a.decode_step(ids, c_comp), eager_a.decode_step(ids, c_eager),
                                   rtol=1e-4, atol=1e-5)
    before = compilations()
    cases = [Case("qgsa", tiny.engine.run("qgsa"), 5), Case("qgsa+default", compiled.run("qgsa"), 5, "default")]
    for resolution, k in ((64, 5), (80, 7)):
        cases = [Case(c.label, c.run, k, c.compile) for c in cases]
        rows, _ = measure_cases(cases, images[:1], QUESTION, resolution, reps=2, warmup=1, decode_tokens=3)
        eager_row, comp_row = rows
        assert comp_row["recompilations_timed"] == 0 and eager_row["recompilations_timed"] is None
        assert comp_row["compile"] == "default" and comp_row["flops_total"] == eager_row["flops_total"]
    assert compilations() >= before


@pytest.mark.parametrize("args, message", [
    (["--compile", "fast"], "--compile must be one of none, default, reduce-overhead, max-autotune"),
    (["--compile", "default", "--warmup", "0"], "--compile needs --warmup 1 or more"),
])
def test_compile_bad_input(tmp_path, args, message):
    result = CliRunner().invoke(app, ["sweep-resolution", "--model", "tiny", "--device", "cpu", *args,
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.stderr and not (tmp_path / "o").exists()


@torch.no_grad()
def test_reduce_overhead_layers_begin_a_graph_step_and_own_their_outputs(tiny, images, monkeypatch):
    """On an H200 the layers of one stack replayed one CUDA graph that overwrote the previous layer's output
    (results/h200/compiled-reduce-overhead.log): each reduce-overhead call now begins a step and copies its
    outputs and the KV-cache entries it wrote. On the CPU the same wrapper runs (no CUDA graphs) and must
    equal eager, decoding through the cache included."""
    from qgsa_bench.efficiency.compiled import GraphStep

    steps = []
    real = torch.compiler.cudagraph_mark_step_begin
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1) or real())
    compiled = compiled_engine(tiny.engine, "reduce-overhead")
    eager_a, comp_a = tiny.adapter, compiled.adapter
    assert all(isinstance(layer, GraphStep) for layer in [*comp_a.vision_layers, *comp_a.lm.layers])
    assert comp_a.lm.layers[1].self_attn is eager_a.lm.layers[1].self_attn  # attributes pass through
    inputs = tiny.run("qgsa").prepare(images[:1], QUESTION, 64, k=5).inputs
    px = eager_a.pixel_values(images[:1], 64)
    torch.testing.assert_close(comp_a.patch_features(px), eager_a.patch_features(px), rtol=1e-4, atol=1e-5)
    assert len(steps) == eager_a.vision_depth  # one step per vision layer call
    (l_eager, c_eager), (l_comp, c_comp) = eager_a.prefill(inputs), comp_a.prefill(inputs)
    torch.testing.assert_close(l_comp, l_eager, rtol=1e-4, atol=1e-5)
    ids = l_eager.argmax(-1)
    for _ in range(2):  # decoding reads the keys and values the prefill's compiled layers wrote
        d_comp, d_eager = comp_a.decode_step(ids, c_comp), eager_a.decode_step(ids, c_eager)
        torch.testing.assert_close(d_comp, d_eager, rtol=1e-4, atol=1e-5)
    assert len(steps) == eager_a.vision_depth + 3 * len(eager_a.lm.layers)

    seen = {}
    owner = GraphStep(lambda h: seen.setdefault("out", h * 2))
    out = owner(torch.ones(2, 3))
    assert torch.equal(out, seen["out"]) and out.data_ptr() != seen["out"].data_ptr()  # a copy, not the pool's
