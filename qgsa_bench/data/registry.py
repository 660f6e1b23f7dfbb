"""The data set registry (names users type, their hub repositories and splits) and loading with
--data-dir, --split, --limit and --skip-bad.

Without --data-dir a file data set comes from its published hub repository (`qgsa_bench.hub`); with
--data-dir DIR it is read from the published files in DIR; `--data-dir hf://datasets/OWNER/NAME[@REV]`
reads another hub repository (a mirror, a pinned revision) in the same published layout.
Images are not decoded while loading: each is opened when used (`LoadedData.open_images`), where an
unreadable one stops the run with one error, or under --skip-bad is dropped and counted."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType

from qgsa_bench import QGSAError
from qgsa_bench.data import aokvqa, refcoco, shapes, vqa_rad
from qgsa_bench.data.files import data_folder
from qgsa_bench.data.types import VQASample, open_image

_FILE_SETS: dict[str, ModuleType] = {"vqa-rad": vqa_rad, "aokvqa": aokvqa, "refcoco": refcoco}
DATASETS = (*_FILE_SETS, *shapes.GENERATED)  # shapes, shapes-hires: generated
HUB_REPOS = {name: module.HUB_REPO for name, module in _FILE_SETS.items()}


def splits_of(name: str) -> tuple[str, ...]:
    return tuple(shapes.SPLIT_OFFSET) if name in shapes.GENERATED else _FILE_SETS[name].SPLITS


def default_split(name: str) -> str:
    return "test" if name in shapes.GENERATED else _FILE_SETS[name].DEFAULT_SPLIT


@dataclass
class LoadedData:
    name: str
    split: str
    samples: list[VQASample]
    source: str  # the folder, hf://datasets/REPO@REVISION, or "generated (seed N)"
    skip_bad: bool = False
    skipped_ids: list[str] = field(default_factory=list)  # unreadable images dropped under --skip-bad
    cleaning: dict = field(default_factory=dict)  # what the loader dropped by the publisher's rules
    provenance: dict = field(default_factory=dict)  # hub repo and revision, when read from the hub

    @property
    def skipped(self) -> int:
        return len(self.skipped_ids)

    def open_images(self, samples: list[VQASample]) -> tuple[list[VQASample], list]:
        """(the samples whose image could be read, their RGB images). An unreadable image is one
        QGSAError, or under --skip-bad a dropped sample counted in `skipped_ids` (once per id)."""
        kept, images = [], []
        for sample in samples:
            try:
                images.append(open_image(sample.image))  # the error below names the sample
            except QGSAError as err:
                if not self.skip_bad:
                    raise QGSAError(f"{self.name}: sample {sample.id} has an unreadable or missing image: {err}; "
                                    f"fix it or pass --skip-bad") from None
                if sample.id not in self.skipped_ids:
                    self.skipped_ids.append(sample.id)
                continue
            kept.append(sample)
        return kept, images

    def meta(self) -> dict:
        """What meta.json records about the data read."""
        return {"dataset": self.name, "split": self.split, "data_source": self.source, **self.provenance,
                "n_samples": len(self.samples), "data_cleaning": self.cleaning,
                "skipped_bad": self.skipped, "skipped_bad_ids": self.skipped_ids}


def load_dataset(name: str, data_dir=None, split: str | None = None, limit: int | None = None,
                 skip_bad: bool = False, seed: int = 0) -> LoadedData:
    """Load the samples of `name` (images are opened later, with `LoadedData.open_images`)."""
    if name not in DATASETS:
        raise QGSAError(f"unknown dataset '{name}': use one of {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise QGSAError(f"--limit must be at least 1, got {limit}")
    split = split or default_split(name)
    if split not in splits_of(name):
        raise QGSAError(f"{name} has no split '{split}': use one of {', '.join(splits_of(name))}")
    if name in shapes.GENERATED:
        if data_dir is not None:
            raise QGSAError(f"--dataset {name} is generated from --seed and reads no files: to read shapes data written "
                            "by `qgsa data shapes --out DIR`, pass --dataset refcoco --data-dir DIR")
        n_images = shapes.DEFAULT_IMAGES if limit is None else math.ceil(limit / shapes.QUESTIONS_PER_IMAGE)
        samples = shapes.GENERATED[name](n_images, seed=seed, split=split)[:limit]
        return LoadedData(name, split, samples, f"generated (seed {seed})", skip_bad)
    module = _FILE_SETS[name]
    folder, source, provenance = _locate(name, module, data_dir, split)
    samples, cleaning = module.load(folder, split)
    if not samples:
        raise QGSAError(f"{name} split '{split}' in {source} has no samples")
    return LoadedData(name, split, samples[:limit], source, skip_bad, cleaning=cleaning, provenance=provenance)


def _locate(name: str, module: ModuleType, data_dir, split: str):
    """(folder holding the published files, source for meta.json, hub provenance)."""
    from qgsa_bench.hub import dataset_snapshot, parse_hub_uri

    hub = (module.HUB_REPO, None) if data_dir is None else parse_hub_uri(str(data_dir))
    if hub is None:
        folder = data_folder(data_dir, name)
        return folder, str(folder), {}
    repo, revision = hub
    way_out = (f"pass --data-dir DIR with {name}'s published files (the layouts are in the README), "
               f"or use --dataset shapes (generated, no files)")
    snap = dataset_snapshot(repo, module.hub_patterns(split), revision, way_out)
    return snap.folder, f"hf://datasets/{repo}@{snap.revision}", snap.provenance()

