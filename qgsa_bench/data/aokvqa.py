"""A-OKVQA: the original JSON (aokvqa_v1p0_{split}.json: question_id, image_id, question, choices,
correct_choice_idx, direct_answers, difficult_direct_answer, rationales) with COCO 2017 images
(`$COCO_DIR/{split}2017/{image_id:012d}.jpg`, allenai/aokvqa's README), or the Hugging Face parquet
export (HuggingFaceM4/A-OKVQA, splits train/validation/test).

The test split's answers are private (the leaderboard's; allenai/aokvqa issues #3, #13): its records
have no correct_choice_idx / direct_answers. Such samples carry no references; `qgsa eval` then writes
predictions in the leaderboard's format and reports no accuracy."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.data.files import find_image_folder, parquet_files, read_json, require_fields, scan_parquet
from qgsa_bench.data.types import VQASample

HUB_REPO = "HuggingFaceM4/A-OKVQA"
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "val"
HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}
QUESTION = ("question_id", "question", "choices")
ANSWERS = ("correct_choice_idx", "direct_answers")  # absent from the test split (private)
OPTIONAL = ("difficult_direct_answer", "rationales")


def hub_patterns(split: str) -> list[str]:
    return [f"*{HF_SPLIT[split]}-*.parquet", f"*{HF_SPLIT[split]}.parquet", "README.md"]


def _sample(record: dict, image, split: str) -> VQASample:
    correct = record.get("correct_choice_idx")
    return VQASample(
        id=str(record["question_id"]), question=record["question"],
        answers=[str(a) for a in (record.get("direct_answers") or [])], image=image,
        question_type="difficult" if record.get("difficult_direct_answer") else "regular",
        choices=list(record.get("choices") or []), correct_choice=None if correct is None else int(correct),
        split=split, dataset="aokvqa", extra={"difficult_direct_answer": bool(record.get("difficult_direct_answer"))})


def load(folder: Path, split: str) -> tuple[list[VQASample], dict]:
    required = ("image", *QUESTION) + (ANSWERS if split != "test" else ())
    optional = OPTIONAL + (ANSWERS if split == "test" else ())
    files = parquet_files(folder, HF_SPLIT[split]) or parquet_files(folder, split)
    if files:
        return [_sample(row, cell, split) for row, cell in scan_parquet(files, required, optional, folder=folder)], {}
    name = f"aokvqa_v1p0_{split}.json"
    release = next(iter(folder.rglob(name)), None)
    if release is None:
        raise QGSAError(f"no A-OKVQA files for split '{split}' in {folder}: expected {HF_SPLIT[split]}-*.parquet "
                        f"(HF export) or {name} with a COCO folder {split}2017/")
    records = read_json(release, "the A-OKVQA JSON")
    for record in records:
        require_fields(record, ("image_id", *required[1:]), f"{release} record")
    if not records:
        return [], {}
    roots = [folder, release.parent, folder.parent, release.parent.parent]
    coco = find_image_folder(roots, (f"{split}2017", f"coco/{split}2017", f"images/{split}2017",
                                     f"datasets/coco/{split}2017", f"coco/images/{split}2017"),
                             f"{int(records[0]['image_id']):012d}.jpg", f"A-OKVQA {split} (COCO {split}2017 images)")
    return [_sample(r, coco / f"{int(r['image_id']):012d}.jpg", split) for r in records], {}
