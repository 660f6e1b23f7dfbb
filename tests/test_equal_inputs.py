"""Equal inputs in every comparison (issue 23).

At 224 and 336 px SmolVLM's dense path runs at 256 and 384 px (its connector takes whole 64-px units),
and the paper's patch-level pipelines used to run at the requested size: the sweep compared 256 patches
with 196. Every pipeline now runs at the dense path's resolution; only downsampling, whose method is a
smaller image, sees other pixels, and its rows and comparisons say so.
"""

import pandas as pd
import pytest
from typer.testing import CliRunner

from qgsa_bench.build import build
from qgsa_bench.cli import app
from qgsa_bench.selectors.registry import REGISTRY

SIZES = {"smolvlm-256m": (224, 336, 384, 448, 576), "tiny": (40, 56, 64, 96), "llava-tiny": (84, 112)}


@pytest.fixture(scope="module", params=list(SIZES))
def model(request):
    return request.param, build(request.param, weights="random", device="meta", dtype="fp32")


def test_every_pipeline_encodes_the_dense_reference_s_patches(model):
    name, built = model
    a, dense = built.adapter, built.run("dense")
    for size in SIZES[name]:
        reference = a.n_patches(dense.resolution(size))
        for spec in sorted(REGISTRY):
            if spec == "downsample":
                continue  # its method is a smaller image: labelled in every row (test below)
            run = built.run(spec)
            assert a.n_patches(run.resolution(size, 4)) == reference, (name, size, spec)


def test_smolvlm_at_224_and_336_runs_every_pipeline_at_the_connector_s_size(model):
    name, built = model
    if name != "smolvlm-256m":
        pytest.skip("the SmolVLM sizes")
    for size, effective, patches in ((224, 256, 256), (336, 384, 576)):
        for spec in ("dense", "dense-bypass", "qgsa", "random", "fastv", "visionzip"):
            run = built.run(spec)
            assert run.resolution(size, 17) == effective
            assert built.adapter.n_patches(run.resolution(size, 17)) == patches


def test_sweep_rows_and_comparisons_say_whether_the_inputs_were_equal(tmp_path):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, [str(a) for a in (
        "sweep-resolution", "--model", "tiny", "--weights", "random", "--sizes", 40, "--pipelines",
        "dense,qgsa,downsample", "--k", 4, "--reps", 2, "--warmup", 0, "--decode-tokens", 2, "--device", "cpu",
        "--no-flops", "--out", out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "sweep.csv").set_index("pipeline")
    assert rows.loc["dense", "effective_resolution"] == rows.loc["qgsa", "effective_resolution"] == 48
    assert rows.loc["dense", "n_patches"] == rows.loc["qgsa", "n_patches"] == 36
    assert rows.loc["downsample", "effective_resolution"] == 32  # 4 visual tokens: a 2 x 2 grid of 16-px units
    pairs = pd.read_csv(out / "comparisons.csv").set_index(["case_a", "case_b"])
    assert bool(pairs.loc[("dense", "qgsa"), "equal_inputs"])
    assert not bool(pairs.loc[("dense", "downsample"), "equal_inputs"])
    table = (out / "table4.md").read_text()
    assert "other input: 32 px" in table  # the downsampling row's speedup is labelled, never a bare claim
