"""VQA-RAD: the Hugging Face parquet export (flaviagiammarino/vqa-rad: image, question, answer;
splits train/test) or the original release (`VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/`;
a `phrase_type` starting with `test` marks the test split)."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.data.files import image_ref, parquet_files, read_json, read_parquet, require_fields
from qgsa_bench.data.types import VQASample

RELEASE_JSON = "VQA_RAD Dataset Public.json"
RELEASE_IMAGES = "VQA_RAD Image Folder"
SPLITS = ("train", "test")
CLOSED = {"yes", "no"}


def load(folder: Path, split: str) -> list[VQASample]:
    if split not in SPLITS:
        raise QGSAError(f"VQA-RAD splits are {', '.join(SPLITS)}, not '{split}'")
    files = parquet_files(folder, split)
    if files:
        samples = []
        for i, row in enumerate(read_parquet(files, ("image", "question", "answer"))):
            answer = str(row["answer"])
            samples.append(VQASample(
                id=f"{split}-{i}", question=row["question"], answers=[answer],
                image=image_ref(row["image"], folder),
                answer_type="CLOSED" if answer.strip().lower() in CLOSED else "OPEN",
                question_type="closed" if answer.strip().lower() in CLOSED else "open",
                split=split, dataset="vqa-rad"))
        return samples
    release = next(iter(folder.rglob(RELEASE_JSON)), None)
    if release is None:
        raise QGSAError(f"no VQA-RAD files for split '{split}' in {folder}: expected {split}-*.parquet (HF "
                        f"export) or '{RELEASE_JSON}' with '{RELEASE_IMAGES}/'")
    images = release.parent / RELEASE_IMAGES
    samples = []
    for record in read_json(release, "the VQA-RAD release JSON"):
        require_fields(record, ("qid", "image_name", "question", "answer", "answer_type", "phrase_type"),
                       f"{release} record")
        is_test = str(record["phrase_type"]).startswith("test")
        if is_test != (split == "test"):
            continue
        samples.append(VQASample(
            id=str(record["qid"]), question=record["question"], answers=[str(record["answer"])],
            image=images / record["image_name"], answer_type=str(record["answer_type"]).upper(),
            question_type=str(record.get("question_type", "")), split=split, dataset="vqa-rad"))
    return samples
