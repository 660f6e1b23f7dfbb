"""RefCOCO: the lmms-lab parquet export (question_id, image, question, answer = referring expressions,
bbox [x, y, w, h]; splits val/test/testA/testB) or the refer toolkit's `refs(unc).p` + `instances.json`
with COCO images (splits train/val/testA/testB).

With the refer layout each referring expression is one sample: the question asks for the object
("What is {expression}?"), the answer is the COCO category name and the box is the referent's. The
parquet export keeps its own question and answers. Generated `shapes` data written by `qgsa data
shapes` uses the parquet layout with an extra `question_type` column."""

from __future__ import annotations

import pickle
from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.data.files import image_ref, parquet_files, read_json, read_parquet
from qgsa_bench.data.types import VQASample

PARQUET_COLUMNS = ("question_id", "image", "question", "answer", "bbox")
REFS = "refs(unc).p"


def load(folder: Path, split: str) -> list[VQASample]:
    files = parquet_files(folder, split)
    if files:
        samples = []
        for row in read_parquet(files, PARQUET_COLUMNS):
            answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
            samples.append(VQASample(
                id=str(row["question_id"]), question=row["question"], answers=[str(a) for a in answers],
                image=image_ref(row["image"], folder),
                box=None if row["bbox"] is None else tuple(float(v) for v in row["bbox"]),
                question_type=str(row.get("question_type") or "refer"), split=split,
                dataset=str(row.get("dataset") or "refcoco")))
        return samples
    refs_path = next(iter(folder.rglob(REFS)), None)
    if refs_path is None:
        raise QGSAError(f"no RefCOCO files for split '{split}' in {folder}: expected {split}-*.parquet "
                        f"(lmms-lab export) or the refer toolkit's '{REFS}' + instances.json + COCO images")
    return _load_refer(folder, refs_path, split)


def _load_refer(folder: Path, refs_path: Path, split: str) -> list[VQASample]:
    try:
        with refs_path.open("rb") as handle:
            refs = pickle.load(handle)
    except (pickle.UnpicklingError, EOFError, OSError) as err:
        raise QGSAError(f"cannot read {refs_path} ({err.__class__.__name__}): expected the refer toolkit's pickle") from err
    instances = read_json(refs_path.parent / "instances.json", "the refer toolkit's instances.json")
    anns = {a["id"]: a for a in instances.get("annotations", [])}
    images = {i["id"]: i for i in instances.get("images", [])}
    categories = {c["id"]: c["name"] for c in instances.get("categories", [])}
    coco = _coco_images(folder)
    samples = []
    for ref in refs:
        if ref.get("split") != split:
            continue
        ann, image = anns.get(ref["ann_id"]), images.get(ref["image_id"])
        if ann is None or image is None:
            raise QGSAError(f"ref {ref.get('ref_id')} points at an annotation or image missing from instances.json")
        for j, sentence in enumerate(ref.get("sentences", [])):
            text = sentence.get("sent") or sentence.get("raw", "")
            samples.append(VQASample(
                id=f"{ref['ref_id']}-{j}", question=f"What is {text}?",
                answers=[categories.get(ref.get("category_id"), "")], image=coco / image["file_name"],
                box=tuple(float(v) for v in ann["bbox"]), question_type="refer", split=split,
                dataset="refcoco", extra={"expression": text}))
    return samples


def _coco_images(folder: Path) -> Path:
    for candidate in (folder / "images" / "train2014", folder / "train2014", folder / "images", folder):
        if candidate.is_dir() and any(candidate.glob("*.jpg")):
            return candidate
    return folder / "images" / "train2014"
