"""The data set registry (names users type) and loading with --split, --limit and --skip-bad."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qgsa_bench import QGSAError
from qgsa_bench.data import aokvqa, refcoco, shapes, vqa_rad
from qgsa_bench.data.files import data_folder
from qgsa_bench.data.types import VQASample

DATASETS = ("vqa-rad", "aokvqa", "refcoco", "shapes")
DEFAULT_SPLIT = {"vqa-rad": "test", "aokvqa": "val", "refcoco": "val", "shapes": "test"}
_FILE_LOADERS = {"vqa-rad": vqa_rad.load, "aokvqa": aokvqa.load, "refcoco": refcoco.load}


@dataclass
class LoadedData:
    name: str
    split: str
    samples: list[VQASample]
    source: str  # the folder, or "generated (seed N)"
    skipped: int = 0  # unreadable rows dropped under --skip-bad
    skipped_ids: list[str] = field(default_factory=list)


def load_dataset(name: str, data_dir=None, split: str | None = None, limit: int | None = None,
                 skip_bad: bool = False, seed: int = 0) -> LoadedData:
    """Load `name`; every image of the returned samples has been decoded once (bad ones skipped or fatal)."""
    if name not in DATASETS:
        raise QGSAError(f"unknown dataset '{name}': use one of {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise QGSAError(f"--limit must be at least 1, got {limit}")
    split = split or DEFAULT_SPLIT[name]
    if name == "shapes":
        if split not in shapes.SPLIT_OFFSET:
            raise QGSAError(f"shapes splits are {', '.join(shapes.SPLIT_OFFSET)}, not '{split}'")
        n_images = shapes.DEFAULT_IMAGES if limit is None else math.ceil(limit / shapes.QUESTIONS_PER_IMAGE)
        samples = shapes.generate(n_images, seed=seed, split=split)[:limit]
        return LoadedData(name, split, samples, f"generated (seed {seed})")
    folder = data_folder(data_dir, name)
    samples = _FILE_LOADERS[name](folder, split)
    if not samples:
        raise QGSAError(f"{name} split '{split}' in {folder} has no samples")
    kept, bad = [], []
    for sample in samples:
        if limit is not None and len(kept) >= limit:
            break
        try:
            sample.open_image()
        except QGSAError:
            if not skip_bad:
                raise QGSAError(f"{name}: sample {sample.id} has an unreadable or missing image "
                                f"({_describe(sample.image)}); fix it or pass --skip-bad") from None
            bad.append(sample.id)
            continue
        kept.append(sample)
    if not kept:
        raise QGSAError(f"{name} split '{split}': every image was unreadable ({len(bad)} skipped)")
    return LoadedData(name, split, kept, str(folder), len(bad), bad)


def _describe(image) -> str:
    if isinstance(image, (bytes, bytearray)):
        return f"{len(image)} bytes in the parquet file"
    return str(image)
