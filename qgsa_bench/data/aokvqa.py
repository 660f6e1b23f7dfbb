"""A-OKVQA: the original JSON (aokvqa_v1p0_{split}.json: question_id, image_id, question, choices,
correct_choice_idx, direct_answers, difficult_direct_answer, rationales) with a COCO image folder
({split}2017/{image_id:012d}.jpg), or the Hugging Face parquet export (HuggingFaceM4/A-OKVQA)."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.data.files import image_ref, parquet_files, read_json, read_parquet, require_fields
from qgsa_bench.data.types import VQASample

FIELDS = ("question_id", "question", "choices", "correct_choice_idx", "direct_answers")
SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def _sample(record: dict, image, split: str) -> VQASample:
    correct = record.get("correct_choice_idx")
    return VQASample(
        id=str(record["question_id"]), question=record["question"],
        answers=[str(a) for a in (record.get("direct_answers") or [])], image=image,
        question_type="difficult" if record.get("difficult_direct_answer") else "regular",
        choices=list(record.get("choices") or []), correct_choice=None if correct is None else int(correct),
        split=split, dataset="aokvqa")


def load(folder: Path, split: str) -> list[VQASample]:
    if split not in SPLITS:
        raise QGSAError(f"A-OKVQA splits are train, val (validation), test; not '{split}'")
    hf_split = "validation" if SPLITS[split] == "val" else SPLITS[split]
    files = parquet_files(folder, hf_split) or parquet_files(folder, split)
    if files:
        return [_sample(row, image_ref(row["image"], folder), split)
                for row in read_parquet(files, ("image", *FIELDS))]
    name = f"aokvqa_v1p0_{SPLITS[split]}.json"
    release = next(iter(folder.rglob(name)), None)
    if release is None:
        raise QGSAError(f"no A-OKVQA files for split '{split}' in {folder}: expected {hf_split}-*.parquet "
                        f"(HF export) or {name} with a COCO folder {SPLITS[split]}2017/")
    records = read_json(release, "the A-OKVQA JSON")
    coco = _coco_folder(folder, SPLITS[split])
    samples = []
    for record in records:
        require_fields(record, ("image_id", *FIELDS[:2]), f"{release} record")
        samples.append(_sample(record, coco / f"{int(record['image_id']):012d}.jpg", split))
    return samples


def _coco_folder(folder: Path, split: str) -> Path:
    for candidate in (folder / f"{split}2017", folder / "coco" / f"{split}2017", folder / "images" / f"{split}2017"):
        if candidate.is_dir():
            return candidate
    raise QGSAError(f"COCO image folder {split}2017/ not found in {folder} (nor in coco/ or images/)")
