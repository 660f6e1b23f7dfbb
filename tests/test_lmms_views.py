"""`qgsa lmms-eval` on the model's own views (issue 19): by default on a model whose processor splits (here the trained
tiled shapes base: 2 x 2 tiles of 224 px + a global view) every request's image is split as `qgsa eval` splits it;
tile selectors run with k = tiles; FLOPs count the views encoded; every output names its input; --resolution is one
square view; bad combinations are one line."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.build import build
from qgsa_bench.cli import app

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'qgsa-bench[lmms]')")

from test_lmms_eval import write_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TILED = str(ROOT / "results" / "tiles" / "shapes-tiled-base")  # its processor splits: 448-px edge, 224-px tiles
OWN = "the model's processor: tiles of 224 px after resizing the longest edge to 448 px, plus a global view"
ONE = "one square view of 224 px (the paper's form)"
LIMIT = 4
runner = CliRunner()


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lmms-view-tasks"))


@pytest.fixture(scope="module")
def tiled():
    return build(TILED, "pretrained", "cpu", "fp32")


@pytest.fixture(autouse=True)
def _own_datasets_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.getbasetemp() / "datasets-cache"))


def lmms(tasks, out, *more, model=TILED):
    return runner.invoke(app, [str(a) for a in ("lmms-eval", "--model", model, "--device", "cpu", "--include-path",
                                                tasks, "--out", out, *more)])


def samples(out, label):
    return [json.loads(line) for line in (out / f"samples_{label}.jsonl").read_text().splitlines()]


def requests_of(tasks, limit=LIMIT, new_tokens=10):
    """The shapes_qa documents as the bridge's requests (key, question, image, seed key = question_id)."""
    import io

    from PIL import Image

    from qgsa_bench.integrations.lmms import Request

    frame = pd.read_parquet(next(tasks.rglob("*.parquet")))
    return [Request(("shapes_qa", i), row.question, Image.open(io.BytesIO(row.image["bytes"])).convert("RGB"),
                    str(row.question_id), {"max_new_tokens": new_tokens, "until": []})
            for i, row in enumerate(frame.head(limit).itertuples())]


def test_split_by_default_answers_equal_run_answer_on_the_views(tasks, tiled):
    """On the tiled base, with nothing said, each answer is Run.answer's on the processor's views of that sample,
    and its FLOPs are the count of the sample alone on its views."""
    from qgsa_bench.experiments.measure import Case, count_stage_flops
    from qgsa_bench.integrations.lmms import Bridge, ModelArgs, stage_totals

    requests = requests_of(tasks)
    for pipeline, k in (("dense", None), ("qgsa-tiles", 1), ("random-tiles", 2)):
        bridge = Bridge(tiled, ModelArgs(model=TILED, pipeline=pipeline, k=k, device="cpu", batch_size=2))
        splitting = bridge.splitting
        assert (splitting.split, splitting.longest_edge, splitting.tile) == (True, 448, 224)
        assert bridge.image_input == OWN
        texts = bridge.generate(requests)
        run = bridge.run
        for request, text in zip(requests, texts):
            alone = run.answer([request.image], [request.question], 224, k, 10, run.sample_seeds([request.seed_key]),
                               splitting)
            assert text == tiled.adapter.decode_text(alone.generated[0])
            log = bridge.logs[request.key]
            assert log["views"] == 5 and log["image_input"] == OWN
            assert log["selected_tiles"] == alone.selected_tiles(0)
            assert log["visual_tokens_to_lm"] == 49 * (5 if k is None else 1 + k)
            with run.engine.same_draws():
                counted = count_stage_flops(Case(pipeline, run, k), tiled.adapter.views([request.image], splitting),
                                            [request.question], log["generated_tokens"])
            assert log["flops"] == stage_totals(counted, log["generated_tokens"])


def test_tile_selectors_and_their_flops_through_qgsa_lmms_eval(tasks, tmp_path):
    """dense, global-only and random-tiles at k = 2 tiles on the default input: the vision stage encodes 5, 1 and 3
    views of equal cost; lmms.csv, meta.json and every sample name the input."""
    out = tmp_path / "tiles"
    result = lmms(tasks, out, "--tasks", "shapes_qa", "--pipelines", "dense,global-only,random-tiles", "--k", 2,
                  "--", "--limit", LIMIT)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    dense, only, tiles = (samples(out, label) for label in ("dense", "global-only", "random-tiles"))
    for d, g, t in zip(dense, only, tiles):
        view = g["qgsa"]["flops"]["vision"]  # one view encoded
        assert d["qgsa"]["flops"]["vision"] == 5 * view and t["qgsa"]["flops"]["vision"] == 3 * view
        assert t["qgsa"]["flops"]["total"] < d["qgsa"]["flops"]["total"]
        assert len(t["qgsa"]["selected_tiles"]) == 2 and g["qgsa"]["selected_tiles"] == []
        assert {s["qgsa"]["image_input"] for s in (d, g, t)} == {OWN}
    rows = pd.read_csv(out / "lmms.csv").set_index("pipeline")
    assert set(rows.image_input) == {OWN} and set(rows.n) == {LIMIT}
    assert rows.loc["dense", "tiles_mean"] == 4 and rows.loc["random-tiles", "tiles_mean"] == 2
    assert rows.loc["global-only", "tiles_mean"] == 0 and pd.isna(rows.loc["global-only", "k"])
    assert rows.loc["random-tiles", "k"] == 2 and rows.loc["random-tiles", "visual_tokens_to_lm_mean"] == 3 * 49
    assert rows.loc["random-tiles", "flops_share_of_dense"] < 1
    meta = json.loads((out / "meta.json").read_text())
    assert meta["image_input"] == OWN and meta["splitting"]["split"] is True
    assert f"Image input: {OWN}." in (out / "table.md").read_text()
    assert meta["settings"]["image_splitting"] is None and meta["settings"]["longest_edge"] is None


def test_multiple_choice_on_split_images_scores_one_tile_selection(tasks, tmp_path):
    out = tmp_path / "mc"
    result = lmms(tasks, out, "--tasks", "shapes_mc", "--pipelines", "qgsa-tiles,fastv@lm:2", "--k", 1, "--",
                  "--limit", LIMIT)
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "QGSA module" in line]  # an untrained scorer, said once
    assert len(said) == 1 and said[0].startswith("warning: qgsa-tiles reads the QGSA module"), result.output
    for sample in samples(out, "qgsa-tiles"):
        log = sample["qgsa"]
        assert log["views"] == 5 and len(log["selected_tiles"]) == 1 and log["visual_tokens_to_lm"] == 2 * 49
        assert log["flops"]["score"] > 0 and log["flops"]["decode"] == 0
    for sample in samples(out, "fastv_lm_2"):
        log = sample["qgsa"]
        assert log["visual_tokens_to_lm"] == 5 * 49 and log["option_selections"] == [log["kept_indices"]] * len(
            sample["resps"])
    assert set(pd.read_csv(out / "lmms.csv").image_input) == {OWN}


def test_share_on_split_images_is_each_images_own(tiled, tasks):
    from qgsa_bench.integrations.lmms import Bridge, ModelArgs

    bridge = Bridge(tiled, ModelArgs(model=TILED, pipeline="fastv@lm:2", share=0.25, device="cpu", batch_size=2))
    requests = requests_of(tasks, 2, 2)
    bridge.generate(requests)
    assert bridge.k is None
    assert [bridge.logs[r.key]["budget"] for r in requests] == [round(0.25 * 5 * 49)] * 2  # 61 of 245
    assert [bridge.logs[r.key]["visual_tokens_kept"] for r in requests] == [61, 61]


def test_resolution_is_one_square_view_as_before(tasks, tmp_path):
    out = tmp_path / "one"
    result = lmms(tasks, out, "--tasks", "shapes_qa", "--pipelines", "dense", "--resolution", 224, "--", "--limit", 2)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "lmms.csv")
    assert list(rows.image_input) == [ONE] and rows.visual_tokens_to_lm_mean.tolist() == [49]
    assert rows.tiles_mean.isna().all()
    assert all("views" not in s["qgsa"] for s in samples(out, "dense"))
    assert json.loads((out / "meta.json").read_text())["image_input"] == ONE


def test_a_one_view_pipeline_puts_every_pipeline_on_one_view_with_one_warning(tasks, tmp_path):
    out = tmp_path / "fallback"
    result = lmms(tasks, out, "--tasks", "shapes_qa", "--pipelines", "dense,qgsa", "--k", 8, "--", "--limit", 2)
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "takes one view only" in line]
    assert len(said) == 1 and said[0].startswith("warning: qgsa takes one view only")
    rows = pd.read_csv(out / "lmms.csv")
    assert set(rows.image_input) == {ONE}
    assert rows.set_index("pipeline").visual_tokens_to_lm_mean.to_dict() == {"dense": 49, "qgsa": 8}


def test_a_model_that_does_not_split_keeps_one_view_and_forced_splitting_splits(tiny):
    from qgsa_bench.integrations.lmms import Bridge, ModelArgs

    assert Bridge(tiny, ModelArgs(model="tiny", device="cpu")).splitting is None
    forced = Bridge(tiny, ModelArgs(model="tiny", device="cpu", image_splitting=True, pipeline="random-tiles", k=1))
    assert forced.splitting.split and forced.image_input.startswith("the model's processor: tiles of")


@pytest.mark.parametrize("args, message", [
    (["--resolution", 224, "--image-splitting"], "--resolution is one square view (the paper's form); "
                                                 "--image-splitting uses the model's own processor"),
    (["--resolution", 224, "--longest-edge", 448], "--longest-edge uses the model's own processor"),
    (["--pipelines", "qgsa-tiles", "--share", 0.5], "qgsa-tiles keeps whole tiles: give its budget as --k T tiles"),
    (["--pipelines", "qgsa-tiles"], "qgsa-tiles needs a budget in tiles: --k T with 1 <= T <= 4"),
    (["--pipelines", "qgsa-tiles", "--k", 5], "--k 5 tiles is impossible for qgsa-tiles"),
    (["--pipelines", "qgsa-tiles", "--k", 2, "--resolution", 224], "qgsa-tiles chooses among the tiles"),
    (["--pipelines", "qgsa", "--k", 8, "--longest-edge", 448], "--longest-edge 448 tiles the image, and qgsa takes"),
    (["--longest-edge", 300], "--longest-edge 300 is not a positive multiple of the tile size 224"),
])
def test_bad_combinations_are_one_line(tasks, tmp_path, args, message):
    out = tmp_path / "bad"
    result = lmms(tasks, out, "--tasks", "shapes_qa", *args)
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not out.exists()


def test_model_arguments_of_the_input(tiled):
    from qgsa_bench.integrations.lmms import Bridge, parse_model_args

    args = parse_model_args({"model": TILED, "image_splitting": "false", "device": "cpu"})
    assert args.image_splitting is False
    bridge = Bridge(tiled, args)
    assert not bridge.splitting.split and bridge.image_input == "the model's processor: one 224-px view (image " \
                                                                "splitting off)"
    assert parse_model_args({"longest_edge": "224"}).longest_edge == 224
    with pytest.raises(QGSAError, match="model argument image_splitting takes true or false"):
        parse_model_args({"image_splitting": "maybe"})
    with pytest.raises(QGSAError, match="--resolution is one square view"):
        parse_model_args({"resolution": "224", "image_splitting": "true"})
    with pytest.raises(QGSAError, match="random-tiles keeps whole tiles: give its budget as k tiles"):
        Bridge(tiled, parse_model_args({"model": TILED, "pipeline": "random-tiles", "share": "0.5"}))
    assert torch.is_grad_enabled()
