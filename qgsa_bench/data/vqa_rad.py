"""VQA-RAD: the Hugging Face parquet export (flaviagiammarino/vqa-rad: image, question, answer;
splits train/test) or the original release (`VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/`;
a `phrase_type` starting with `test` marks the test split).

Both layouts load to the same samples. The HF export's card: "The training set contains 3 duplicate
image-question-answer triplets. The training set also has 1 image-question-answer triplet in common
with the test set. After dropping these 4 image-question-answer triplets from the training set, the
dataset contains 2,244 question-answer pairs" (train 1,793, test 451). The export has them dropped
already; for the original release the same rule is applied here (triplets compared after trimming
spaces and case) and what was dropped is returned for meta.json."""

from __future__ import annotations

from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.data.files import find_image_folder, parquet_files, read_json, require_fields, scan_parquet
from qgsa_bench.data.types import VQASample

HUB_REPO = "flaviagiammarino/vqa-rad"
RELEASE_JSON = "VQA_RAD Dataset Public.json"
RELEASE_IMAGES = "VQA_RAD Image Folder"
SPLITS = ("train", "test")
DEFAULT_SPLIT = "test"
CLOSED = {"yes", "no"}
RELEASE_FIELDS = ("qid", "image_name", "question", "answer", "answer_type", "phrase_type")


def hub_patterns(split: str) -> list[str]:
    return [f"*{split}-*.parquet", f"*{split}.parquet", "README.md"]


def load(folder: Path, split: str) -> tuple[list[VQASample], dict]:
    files = parquet_files(folder, split)
    if files:
        samples = []
        for i, (row, cell) in enumerate(scan_parquet(files, ("image", "question", "answer"), folder=folder)):
            answer = str(row["answer"])
            closed = answer.strip().lower() in CLOSED
            samples.append(VQASample(
                id=f"{split}-{i}", question=row["question"], answers=[answer], image=cell,
                answer_type="CLOSED" if closed else "OPEN", question_type="closed" if closed else "open",
                split=split, dataset="vqa-rad"))
        return samples, {"cleaning": "none needed: the HF export has its duplicates and train/test overlap dropped"}
    release = next(iter(folder.rglob(RELEASE_JSON)), None)
    if release is None:
        raise QGSAError(f"no VQA-RAD files for split '{split}' in {folder}: expected {split}-*.parquet (HF "
                        f"export) or '{RELEASE_JSON}' with '{RELEASE_IMAGES}/'")
    return _load_release(folder, release, split)


def _triplet(record: dict) -> tuple[str, str, str]:
    return (str(record["image_name"]).strip(), str(record["question"]).strip().lower(),
            str(record["answer"]).strip().lower())


def _load_release(folder: Path, release: Path, split: str) -> tuple[list[VQASample], dict]:
    records = read_json(release, "the VQA-RAD release JSON")
    for record in records:
        require_fields(record, RELEASE_FIELDS, f"{release} record")
    is_test = [str(r["phrase_type"]).startswith("test") for r in records]
    chosen = [r for r, t in zip(records, is_test) if t == (split == "test")]
    dropped = {"duplicate_triplets_in_train": [], "train_triplets_also_in_test": []}
    if split == "train":  # the HF export's rule: clean the training set only
        test = {_triplet(r) for r, t in zip(records, is_test) if t}
        seen, kept = set(), []
        for record in chosen:
            key = _triplet(record)
            if key in test:
                dropped["train_triplets_also_in_test"].append(str(record["qid"]))
            elif key in seen:
                dropped["duplicate_triplets_in_train"].append(str(record["qid"]))
            else:
                seen.add(key)
                kept.append(record)
        chosen = kept
    if not chosen:
        return [], {}
    images = find_image_folder([release.parent, folder, folder.parent], (RELEASE_IMAGES, "images", ""),
                               str(chosen[0]["image_name"]), f"VQA-RAD ({release.name})")
    samples = [VQASample(
        id=str(r["qid"]), question=r["question"], answers=[str(r["answer"])], image=images / r["image_name"],
        answer_type=str(r["answer_type"]).strip().upper(), question_type=str(r.get("question_type", "")),
        split=split, dataset="vqa-rad", extra={"phrase_type": r["phrase_type"]}) for r in chosen]
    return samples, {"cleaning": "the HF export's rule (train: duplicate triplets and triplets in test dropped)",
                     **{k: {"n": len(v), "qids": v} for k, v in dropped.items()}}
