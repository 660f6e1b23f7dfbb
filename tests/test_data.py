"""Loaders on small fixture files written in each published layout; the shapes generator."""

import io
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from qgsa_bench import QGSAError
from qgsa_bench.data import load_dataset, shapes


def png(color=(200, 10, 10), size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_vqa_rad_parquet_export(tmp_path):
    rows = [{"image": {"bytes": png(), "path": "a.jpg"}, "question": "is there a fracture?", "answer": "yes"},
            {"image": {"bytes": png(), "path": "b.jpg"}, "question": "what organ is shown?", "answer": "liver"}]
    write_parquet(tmp_path / "data" / "test-00000-of-00001-abc.parquet", rows)
    write_parquet(tmp_path / "data" / "train-00000-of-00001-abc.parquet", rows[:1])
    data = load_dataset("vqa-rad", tmp_path)  # default split: test
    assert [s.answers for s in data.samples] == [["yes"], ["liver"]]
    assert [s.answer_type for s in data.samples] == ["CLOSED", "OPEN"]
    assert data.samples[0].open_image().size == (40, 30)
    assert len(load_dataset("vqa-rad", tmp_path, split="train").samples) == 1
    assert len(load_dataset("vqa-rad", tmp_path, limit=1).samples) == 1


def test_vqa_rad_original_release(tmp_path):
    (tmp_path / "VQA_RAD Image Folder").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg")
    records = [
        {"qid": 1, "image_name": "synpic1.jpg", "question": "Is the lung normal?", "answer": "No",
         "answer_type": "CLOSED", "question_type": "ABN", "phrase_type": "freeform"},
        {"qid": 2, "image_name": "synpic1.jpg", "question": "Where is the mass?", "answer": "left lobe",
         "answer_type": "OPEN", "question_type": "POS", "phrase_type": "test_freeform"},
    ]
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(records))
    test = load_dataset("vqa-rad", tmp_path, split="test").samples
    assert [(s.id, s.answer_type, s.question_type) for s in test] == [("2", "OPEN", "POS")]
    assert [s.id for s in load_dataset("vqa-rad", tmp_path, split="train").samples] == ["1"]


def test_aokvqa_json_and_parquet(tmp_path):
    coco = tmp_path / "val2017"
    coco.mkdir()
    Image.new("RGB", (32, 32)).save(coco / "000000000042.jpg")
    record = {"question_id": "q1", "image_id": 42, "question": "What is the man holding?",
              "choices": ["bat", "ball", "glove", "hat"], "correct_choice_idx": 0,
              "direct_answers": ["bat"] * 7 + ["stick"] * 3, "difficult_direct_answer": False,
              "rationales": ["He swings it."]}
    (tmp_path / "aokvqa_v1p0_val.json").write_text(json.dumps([record]))
    sample = load_dataset("aokvqa", tmp_path).samples[0]
    assert (sample.choices, sample.correct_choice, len(sample.answers)) == (record["choices"], 0, 10)
    assert sample.image == coco / "000000000042.jpg"
    hf = tmp_path / "hf"
    write_parquet(hf / "data" / "validation-00000-of-00001.parquet",
                  [{**record, "image": {"bytes": png(), "path": None}}])
    assert load_dataset("aokvqa", hf, split="val").samples[0].choices == record["choices"]


def test_refcoco_parquet_and_refer_toolkit(tmp_path):
    write_parquet(tmp_path / "data" / "val-00000-of-00001.parquet", [
        {"question_id": "7", "image": {"bytes": png(), "path": "x.jpg"}, "question": "Describe the region.",
         "answer": ["man on left", "left guy"], "bbox": [1.0, 2.0, 10.0, 20.0], "iscrowd": 0, "file_name": "x.jpg"}])
    sample = load_dataset("refcoco", tmp_path).samples[0]
    assert sample.box == (1.0, 2.0, 10.0, 20.0) and sample.answers == ["man on left", "left guy"]

    refer = tmp_path / "refer"
    (refer / "images" / "train2014").mkdir(parents=True)
    Image.new("RGB", (50, 40)).save(refer / "images" / "train2014" / "COCO_train2014_000000000001.jpg")
    refs = [{"ref_id": 3, "ann_id": 10, "image_id": 1, "split": "testA", "category_id": 1,
             "sentences": [{"sent": "woman in red", "raw": "Woman in red"}, {"sent": "left woman"}]}]
    with (refer / "refs(unc).p").open("wb") as handle:
        pickle.dump(refs, handle)
    (refer / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 50, "height": 40}],
        "annotations": [{"id": 10, "image_id": 1, "bbox": [5, 6, 7, 8], "category_id": 1}],
        "categories": [{"id": 1, "name": "person"}]}))
    samples = load_dataset("refcoco", refer, split="testA").samples
    assert [(s.id, s.question, s.answers, s.box) for s in samples] == [
        ("3-0", "What is woman in red?", ["person"], (5.0, 6.0, 7.0, 8.0)),
        ("3-1", "What is left woman?", ["person"], (5.0, 6.0, 7.0, 8.0))]


def test_bad_files_give_one_clear_error_and_skip_bad_counts(tmp_path):
    with pytest.raises(QGSAError, match="data folder not found"):
        load_dataset("vqa-rad", tmp_path / "nope")
    with pytest.raises(QGSAError, match="hub data set 'HuggingFaceM4/A-OKVQA' is not in the Hugging Face cache"):
        load_dataset("aokvqa")
    with pytest.raises(QGSAError, match="no VQA-RAD files for split 'test'"):
        load_dataset("vqa-rad", tmp_path)
    with pytest.raises(QGSAError, match="unknown dataset 'coco'"):
        load_dataset("coco", tmp_path)
    write_parquet(tmp_path / "w" / "test-0.parquet", [{"image": {"bytes": png(), "path": None}, "question": "q"}])
    with pytest.raises(QGSAError, match="lacks column\\(s\\) answer: expected image, question, answer"):
        load_dataset("vqa-rad", tmp_path / "w")
    rows = [{"image": {"bytes": png(), "path": None}, "question": "q1", "answer": "a"},
            {"image": {"bytes": b"\x89PNG broken", "path": None}, "question": "q2", "answer": "b"},
            {"image": {"bytes": png(), "path": None}, "question": "q3", "answer": "c"}]
    write_parquet(tmp_path / "c" / "test-0.parquet", rows)
    data = load_dataset("vqa-rad", tmp_path / "c")  # images are checked when opened, not while loading
    with pytest.raises(QGSAError, match="sample test-1 has an unreadable or missing image.*--skip-bad"):
        data.open_images(data.samples)
    data = load_dataset("vqa-rad", tmp_path / "c", skip_bad=True)
    kept, images = data.open_images(data.samples)
    assert [s.question for s in kept] == ["q1", "q3"] and len(images) == 2 and data.skipped_ids == ["test-1"]
    data.open_images(data.samples)  # counted once per sample, however often it is opened
    assert data.skipped == 1 and data.meta()["skipped_bad_ids"] == ["test-1"]
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "aokvqa_v1p0_val.json").write_text("{not json")
    with pytest.raises(QGSAError, match="is not valid JSON"):
        load_dataset("aokvqa", tmp_path / "j")


def test_shapes_generator_is_deterministic():
    a, b = shapes.generate(5, seed=3), shapes.generate(5, seed=3)
    assert [(s.question, s.answers, s.box) for s in a] == [(s.question, s.answers, s.box) for s in b]
    assert np.array_equal(np.asarray(a[0].image), np.asarray(b[0].image))
    c = shapes.generate(5, seed=4)
    assert [s.question for s in a] != [s.question for s in c]
    assert [s.question for s in shapes.generate(5, seed=3, split="train")] != [s.question for s in a]


def test_shapes_boxes_match_the_drawn_pixels():
    for sample in shapes.generate(30, seed=1):
        objects = sample.extra["objects"]
        assert 2 <= len(objects) <= 5
        pixels = np.asarray(sample.image)
        for obj in objects:
            x, y, w, h = obj["box"]
            pad = pixels[max(y - 2, 0): y + h + 2, max(x - 2, 0): x + w + 2]
            ys, xs = np.nonzero((pad == shapes.COLORS[obj["color"]]).all(axis=-1))
            x0, y0 = max(x - 2, 0), max(y - 2, 0)
            assert (x0 + xs.min(), y0 + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (x, y, w, h)
        if sample.box is not None:
            assert list(sample.box) == objects[sample.extra["referent"]]["box"]


def test_shapes_patch_labels_follow_the_drawn_pixels():
    """Per 16 px patch: the colour/shape of the object covering most of it (>= 1/4), one centre per object."""
    colors, names = list(shapes.COLORS), list(shapes.SHAPES)
    for sample in shapes.generate(10, seed=5)[::2]:
        objects, pixels = sample.extra["objects"], np.asarray(sample.image)
        labels = shapes.patch_labels(objects, 224, 16)
        assert labels.shape == (3, 14, 14) and int(labels[2].sum()) == len(objects)
        for r in range(14):
            for c in range(14):
                cell = pixels[16 * r: 16 * r + 16, 16 * c: 16 * c + 16].reshape(-1, 3)
                share = {i: (cell == shapes.COLORS[o["color"]]).all(axis=1).mean() for i, o in enumerate(objects)}
                best = max(share, key=share.get) if share else None
                if best is None or share[best] < 0.25:
                    assert labels[0, r, c] == labels[1, r, c] == 0
                elif sum(o["color"] == objects[best]["color"] for o in objects) == 1:  # unambiguous by colour
                    assert labels[0, r, c] == colors.index(objects[best]["color"]) + 1
                    assert labels[1, r, c] == names.index(objects[best]["shape"]) + 1


def test_shapes_answers_follow_from_the_objects():
    for sample in shapes.generate(40, seed=2):
        objects, answer = sample.extra["objects"], sample.answers[0]
        words = sample.question.rstrip("?").split()
        if sample.question_type == "count":
            assert answer == str(sum(o["shape"] + "s" == words[2] for o in objects))
        elif sample.question_type == "exist":
            present = any(o["color"] == words[3] and o["shape"] == words[4] for o in objects)
            assert answer == ("yes" if present else "no")
        elif sample.question_type == "color":
            assert [o["color"] for o in objects if o["shape"] == words[-1]] == [answer]
        else:
            assert [o["shape"] for o in objects if o["color"] == words[4]] == [answer]


def test_shapes_parquet_roundtrip_through_the_refcoco_loader(tmp_path):
    samples = shapes.generate(3, seed=0, split="val")
    shapes.write_parquet(samples, tmp_path, "val")
    loaded = load_dataset("refcoco", tmp_path, split="val").samples
    assert [(s.question, s.answers, s.box, s.question_type) for s in loaded] == \
           [(s.question, s.answers, s.box, s.question_type) for s in samples]
    assert np.array_equal(np.asarray(loaded[0].open_image()), np.asarray(samples[0].image))


def test_two_copies_of_a_split_are_refused_not_merged(tmp_path):
    rows = [{"image": {"bytes": png(), "path": None}, "question": "q", "answer": "a"}]
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    write_parquet(tmp_path / "old" / "data" / "test-00000-of-00001.parquet", rows)
    with pytest.raises(QGSAError, match="split 'test' has parquet files in 2 folders .*point --data-dir at one"):
        load_dataset("vqa-rad", tmp_path)
    assert len(load_dataset("vqa-rad", tmp_path / "old").samples) == 1
