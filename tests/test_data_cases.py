"""The field cases of ../shared/field-cases (05, 16, 07, 08, 14), each as a test of the whole kind of fault:
each data set read and scored the way its publishers do."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from qgsa_bench import QGSAError
from qgsa_bench.cli import app
from qgsa_bench.data import VQASample, load_dataset
from qgsa_bench.data.types import open_image
from qgsa_bench.metrics import multiple_choice_score, score
from qgsa_bench.models.images import demo_image, load_image

TINY = ["--model", "tiny", "--weights", "random", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---- 05: a split without public answers is never scored as wrong ----------------------------------
def test_aokvqa_test_split_without_answers_gets_predictions_not_accuracy(tmp_path):
    data = tmp_path / "data"
    (data / "test2017").mkdir(parents=True)
    for i in (1, 2):
        demo_image(64).save(data / "test2017" / f"{i:012d}.jpg")
    records = [{"split": "test", "image_id": i, "question_id": f"q_test_{i}", "question": q,
                "choices": ["ball", "cat", "car", "tree"], "difficult_direct_answer": False}
               for i, q in ((1, "What is the red object?"), (2, "What color is the square?"))]
    (data / "aokvqa_v1p0_test.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    result = invoke("eval", *TINY, "--dataset", "aokvqa", "--data-dir", data, "--split", "test", "--limit", 2,
                    "--pipelines", "dense", "--max-new-tokens", 2, "--out", out)
    assert result.exit_code == 0, result.output
    import pandas as pd

    frame = pd.read_csv(out / "eval.csv")
    row = frame[frame.scope == "all"].iloc[0]
    assert (row.n, row.n_scored) == (2, 0) and np.isnan(row.accuracy) and np.isnan(row.mc_accuracy)
    assert row.note == "no public answers for this split: predictions only"
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(r["id"], r["score"], r["mc_correct"]) for r in records] == [("q_test_1", None, None), ("q_test_2", None, None)]
    submission = json.loads((out / "predictions_test-dense.json").read_text())
    assert set(submission) == {"q_test_1", "q_test_2"}
    for r in records:
        assert submission[r["id"]] == {"direct_answer": r["prediction"], "multiple_choice": r["choices"][r["mc_choice"]]}
    assert "0.00" not in (out / "table.md").read_text().split("| dense |")[1].split("\n")[0]
    assert json.loads((out / "meta.json").read_text())["submission_files"] == ["predictions_test-dense.json"]


# ---- 16: the rule depends on the data set, not on the number of references --------------------------
def sample(dataset, answers, **kw):
    return VQASample(id="s", question="q", answers=answers, image=None, dataset=dataset, **kw)


def test_each_data_set_is_scored_by_its_own_rule():
    # RefCOCO: any one of the referent's expressions is right, however many there are
    assert score("Red circle.", sample("refcoco", ["red circle", "circle top left", "the red one"])) == 1.0
    assert score("red circle", sample("refcoco", ["red circle", "circle top left"])) == 1.0
    assert score("blue circle", sample("refcoco", ["red circle", "circle top left", "the red one"])) == 0.0
    # A-OKVQA direct answer: min(#matches / 3, 1) over the 10 answers; difficult ones left out
    answers = ["bat"] * 2 + ["stick"] * 8
    assert score("bat", sample("aokvqa", answers)) == pytest.approx(2 / 3)
    assert score("stick", sample("aokvqa", answers)) == 1.0
    assert score("ball", sample("aokvqa", answers)) == 0.0
    assert score("bat", sample("aokvqa", answers, extra={"difficult_direct_answer": True})) is None
    assert multiple_choice_score(2, sample("aokvqa", answers, correct_choice=2)) == 1.0
    assert multiple_choice_score(1, sample("aokvqa", answers, correct_choice=2)) == 0.0
    assert multiple_choice_score(1, sample("aokvqa", [])) is None
    # VQA-RAD and shapes: exact match after normalisation, even with three identical references
    assert score("Liver", sample("vqa-rad", ["liver "])) == 1.0
    assert score("two", sample("shapes", ["2"])) == 1.0
    assert score("yes", sample("vqa-rad", ["yes", "yes", "yes"])) == 1.0 and \
           score("no", sample("vqa-rad", ["yes"])) == 0.0
    # no references: no score, never 0
    assert all(score("x", sample(d, [])) is None for d in ("vqa-rad", "aokvqa", "refcoco", "shapes"))
    with pytest.raises(ValueError, match="no scoring rule for data set 'okvqa'"):
        score("x", sample("okvqa", ["x"]))


def test_refcoco_parquet_rows_are_scored_alike_whatever_their_expression_count(tmp_path):
    buffer = io.BytesIO()
    demo_image(64).save(buffer, "JPEG")
    q = "Please carefully observe the area circled in the image and come up with a caption for the area."
    rows = [{"question_id": qid, "image": {"bytes": buffer.getvalue(), "path": "a.jpg"}, "question": q,
             "answer": answers, "segmentation": [0.0] * 8, "bbox": [7.0, 7.0, 18.0, 18.0], "iscrowd": 0,
             "file_name": "a.jpg"}
            for qid, answers in (("r3", ["red circle", "circle top left", "the red one"]),
                                 ("r2", ["red circle", "circle top left"]))]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "val-00000-of-00001.parquet")
    assert [score("red circle", s) for s in load_dataset("refcoco", tmp_path, "val").samples] == [1.0, 1.0]


# ---- 07: VQA-RAD's original release loads to the HF export's samples ---------------------------------
def write_vqa_rad_release(root):
    folder = root / "VQA_RAD Image Folder"
    folder.mkdir(parents=True)
    for name in ("synpic001.jpg", "synpic002.jpg", "synpic003.jpg"):
        demo_image(64).save(folder / name)
    rec = lambda qid, img, q, a, at, pt: {"qid": qid, "image_name": img, "question": q, "answer": a,  # noqa: E731
                                          "answer_type": at, "question_type": "PRES", "phrase_type": pt}
    records = [rec(1, "synpic001.jpg", "Is there a mass in the liver?", "Yes", "CLOSED", "freeform"),
               rec(2, "synpic001.jpg", "Is there a mass in the liver?", "Yes", "CLOSED", "freeform"),
               rec(3, "synpic002.jpg", "What organ is shown?", "Liver ", "OPEN", "para"),
               rec(4, "synpic002.jpg", "Is this an MRI?", "no", "CLOSED", "freeform"),
               rec(5, "synpic002.jpg", "What organ is shown?", "Liver ", "OPEN", "test_freeform"),
               rec(6, "synpic003.jpg", "Is the lesion on the left?", "yes", "CLOSED", "test_para")]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records))


def test_vqa_rad_release_drops_duplicates_and_test_overlap_from_train(tmp_path):
    write_vqa_rad_release(tmp_path / "data")
    train = load_dataset("vqa-rad", tmp_path / "data", "train")
    assert [s.id for s in train.samples] == ["1", "4"]
    assert train.cleaning["duplicate_triplets_in_train"] == {"n": 1, "qids": ["2"]}
    assert train.cleaning["train_triplets_also_in_test"] == {"n": 1, "qids": ["3"]}
    test = load_dataset("vqa-rad", tmp_path / "data", "test")
    assert [s.id for s in test.samples] == ["5", "6"]
    assert score("liver", test.samples[0]) == 1.0
    out = tmp_path / "out"
    result = invoke("eval", *TINY, "--dataset", "vqa-rad", "--data-dir", tmp_path / "data", "--split", "train",
                    "--pipelines", "dense", "--max-new-tokens", 1, "--out", out)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_samples"] == 2 and meta["data_cleaning"]["duplicate_triplets_in_train"]["n"] == 1
    import pandas as pd

    frame = pd.read_csv(out / "eval.csv")
    assert set(frame[frame.scope == "answer_type"].question_type) == {"CLOSED"}


# ---- 08: every PIL mode reaches the model as the model's own processor converts it -------------------
def _modes():
    base = Image.new("RGBA", (16, 12), (0, 0, 0, 0))
    base.paste((220, 30, 30, 255), (4, 4, 12, 10))
    base.paste((30, 60, 220, 128), (0, 0, 4, 4))  # half transparent
    palette = Image.new("P", (16, 12), 0)
    palette.putpalette([0, 0, 0, 220, 30, 30] + [0] * 762)
    palette.paste(1, (4, 4, 12, 10))
    palette.info["transparency"] = 0
    grey_t = base.convert("L")
    grey_t.info["transparency"] = 0
    rgb_t = base.convert("RGB")
    rgb_t.info["transparency"] = (0, 0, 0)
    return {"RGBA": base, "LA": base.convert("LA"), "PA": base.convert("PA"),
            "P+transparency": palette, "L+transparency": grey_t, "RGB+transparency": rgb_t,
            "RGB": base.convert("RGB"), "L": base.convert("L"), "1": base.convert("1"), "P": base.convert("P"),
            "CMYK": base.convert("RGB").convert("CMYK"), "YCbCr": base.convert("RGB").convert("YCbCr")}
    # I, I;16 and F are not the processors' convert("RGB") (which clips above 255): test_image_modes.py


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_image_mode_matches_transformers_conversion(mode, tmp_path):
    import inspect

    from transformers.image_transforms import convert_to_rgb

    if "return_numpy" not in inspect.signature(convert_to_rgb).parameters:
        pytest.skip("this transformers release's convert_to_rgb predates compositing transparency onto white")
    img = _modes()[mode]
    reference = convert_to_rgb(img, return_numpy=True)
    assert np.array_equal(np.asarray(open_image(img)), reference)
    if mode in ("RGBA", "LA", "P+transparency", "L"):  # what PNG keeps as written: through a file too
        path = tmp_path / "x.png"
        img.save(path, transparency=0) if mode == "P+transparency" else img.save(path)
        ref_file = convert_to_rgb(Image.open(path), return_numpy=True)
        assert np.array_equal(np.asarray(load_image(path)), ref_file)
        assert np.array_equal(np.asarray(open_image(path.read_bytes())), ref_file)


def test_a_transparent_picture_reaches_the_model_as_on_white(tiny):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((220, 30, 30, 255), (20, 20, 44, 44))
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    white.paste((220, 30, 30), (20, 20, 44, 44))
    a = tiny.adapter
    assert open_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert a.pixel_values([rgba], 64).equal(a.pixel_values([white], 64))  # also for images given directly


# ---- 14: the refer toolkit's documented layout is found; otherwise the places tried are listed --------


def test_refer_toolkit_layout_from_its_root_or_its_refcoco_folder(tmp_path, refer_layout):
    images = refer_layout(tmp_path / "data_root")
    for data_dir in (tmp_path / "data_root", tmp_path / "data_root" / "refcoco"):
        out = tmp_path / f"out-{data_dir.name}"
        result = invoke("grounding", *TINY, "--dataset", "refcoco", "--data-dir", data_dir, "--split", "testA",
                        "--k", 4, "--resolution", 64, "--out", out)
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (out / "grounding.jsonl").read_text().splitlines()]
        assert [(r["width"], r["height"], r["box"], r["iou"]) for r in records if r["pipeline"] == "oracle"] == \
               [(200, 100, [50.0, 25.0, 50.0, 25.0], 1.0)] * 2
        import pandas as pd

        rows = pd.read_csv(out / "grounding.csv").set_index(["question_type", "selector"])
        assert rows.loc[("all", "oracle"), "acc_iou_0_5"] == 100.0  # RefCOCO's IoU >= 0.5 rule
        share = np.mean([r["iou"] >= 0.5 for r in records if r["pipeline"] == "qgsa"]) * 100
        assert rows.loc[("all", "qgsa"), "acc_iou_0_5"] == pytest.approx(share)
    for path in images.iterdir():
        path.unlink()
    with pytest.raises(QGSAError) as err:
        load_dataset("refcoco", tmp_path / "data_root", "testA")
    message = str(err.value)
    assert "image COCO_train2014_000000000042.jpg not found; looked in" in message
    assert str(tmp_path / "data_root" / "images" / "mscoco" / "images" / "train2014") in message
    assert str(tmp_path / "data_root" / "refcoco" / "images" / "train2014") in message
