"""RefCOCO: the lmms-lab parquet export (question_id, image, question, answer = referring expressions,
bbox [x, y, w, h]; splits val/test/testA/testB) or the refer toolkit's layout (lichengunc/refer:
`data_root/refcoco/refs(unc).p` + `instances.json`, COCO images in
`data_root/images/mscoco/images/train2014/`; splits train/val/testA/testB).

With the refer layout each referring expression is one sample: the question asks for the object
("What is {expression}?"), the answer is the COCO category name and the box is the referent's. The
parquet export keeps its own question and answers (every expression of the referent is a correct
answer). Generated `shapes` data written by `qgsa data shapes` uses the parquet layout with extra
`question_type` and `dataset` columns."""

from __future__ import annotations

import pickle
from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.data.files import find_image_folder, parquet_files, read_json, scan_parquet
from qgsa_bench.data.types import VQASample

HUB_REPO = "lmms-lab/RefCOCO"
SPLITS = ("train", "val", "test", "testA", "testB")
DEFAULT_SPLIT = "val"
PARQUET_COLUMNS = ("question_id", "image", "question", "answer", "bbox")
REFS = "refs(unc).p"
# where the refer toolkit (refer.py: IMAGE_DIR) and common copies of it keep COCO train2014
COCO_FOLDERS = ("images/mscoco/images/train2014", "images/mscoco/train2014", "images/train2014", "train2014",
                "mscoco/images/train2014", "coco/train2014", "coco/images/train2014", "images", "")


def hub_patterns(split: str) -> list[str]:
    return [f"*{split}-*.parquet", f"*{split}.parquet", "README.md"]


def load(folder: Path, split: str) -> tuple[list[VQASample], dict]:
    files = parquet_files(folder, split)
    if files:
        samples = []
        for row, cell in scan_parquet(files, PARQUET_COLUMNS, ("question_type", "dataset"), folder=folder):
            answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
            samples.append(VQASample(
                id=str(row["question_id"]), question=row["question"], answers=[str(a) for a in answers],
                image=cell, box=None if row["bbox"] is None else tuple(float(v) for v in row["bbox"]),
                question_type=str(row.get("question_type") or "refer"), split=split,
                dataset=str(row.get("dataset") or "refcoco")))
        return samples, {}
    refs_path = next(iter(folder.rglob(REFS)), None)
    if refs_path is None:
        raise QGSAError(f"no RefCOCO files for split '{split}' in {folder}: expected {split}-*.parquet "
                        f"(lmms-lab export) or the refer toolkit's '{REFS}' + instances.json + COCO images")
    return _load_refer(folder, refs_path, split), {}


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
    chosen = [ref for ref in refs if ref.get("split") == split]
    for ref in chosen:
        if ref.get("ann_id") not in anns or ref.get("image_id") not in images:
            raise QGSAError(f"ref {ref.get('ref_id')} points at an annotation or image missing from instances.json")
    if not chosen:
        return []
    roots = [folder, refs_path.parent, refs_path.parent.parent, folder.parent]
    coco = find_image_folder(roots, COCO_FOLDERS, images[chosen[0]["image_id"]]["file_name"],
                             f"RefCOCO {split} (COCO train2014 images)")
    samples = []
    for ref in chosen:
        ann, image = anns[ref["ann_id"]], images[ref["image_id"]]
        for j, sentence in enumerate(ref.get("sentences", [])):
            text = sentence.get("sent") or sentence.get("raw", "")
            samples.append(VQASample(
                id=f"{ref['ref_id']}-{j}", question=f"What is {text}?",
                answers=[categories.get(ref.get("category_id"), "")], image=coco / image["file_name"],
                box=tuple(float(v) for v in ann["bbox"]), question_type="refer", split=split,
                dataset="refcoco", extra={"expression": text}))
    return samples
