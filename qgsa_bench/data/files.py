"""Reading the published file formats: parquet exports (Hugging Face) and JSON/pickle releases.

Parquet splits are read lazily: the scan reads the small columns only, row group by row group, and
each sample's image is a `ParquetCell` that reads its one cell when the image is opened. A split of
17k COCO images is never held in memory as bytes or as decoded images; the most held at once is one
row group of the image column (Hugging Face's `datasets` writes 100 rows per group for image data).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from qgsa_bench import QGSAError

_SHARD = re.compile(r"-(\d{5})-of-(\d{5})")


def data_folder(data_dir: str | Path, dataset: str) -> Path:
    folder = Path(data_dir)
    if not folder.is_dir():
        raise QGSAError(f"data folder not found: {folder} (give the folder holding {dataset}'s published files)")
    return folder


def parquet_files(folder: Path, split: str) -> list[Path]:
    """Hugging Face export layout: [data/]{split}-00000-of-0000N[-hash].parquet or {split}.parquet.

    Every shard 0..N-1 of an "-of-N" set must be there: a missing one means a partial download."""
    found = sorted({*folder.rglob(f"{split}-*.parquet"), *folder.rglob(f"{split}.parquet")})
    parents = sorted({p.parent for p in found})
    if len(parents) > 1:
        raise QGSAError(f"split '{split}' has parquet files in {len(parents)} folders under {folder} "
                        f"({', '.join(str(p) for p in parents[:3])}): two copies? point --data-dir at one of them")
    shards: dict[int, set[int]] = defaultdict(set)
    for path in found:
        match = _SHARD.search(path.name)
        if match:
            shards[int(match.group(2))].add(int(match.group(1)))
    for total, present in shards.items():
        missing = sorted(set(range(total)) - present)
        if missing:
            names = ", ".join(f"{split}-{i:05d}-of-{total:05d}" for i in missing[:3])
            raise QGSAError(f"split '{split}' in {folder} is incomplete: shard(s) {names} missing "
                            f"({len(present)} of {total} there); finish the download (delete the partial copy "
                            f"and rerun with network) or point --data-dir at a complete copy")
    return found


@dataclass(frozen=True)
class ParquetCell:
    """One image cell of a parquet file, read only when the image is opened."""

    path: Path
    row_group: int
    row: int  # within the row group
    folder: Path  # image paths in the cell are relative to the data folder
    column: str = "image"

    def value(self):
        """The cell as the loader would have seen it: image bytes, a Path, or None."""
        return image_ref(_row_group_column(self.path, self.row_group, self.column)[self.row].as_py(), self.folder)

    def __str__(self) -> str:
        return f"{self.path.name} row group {self.row_group} row {self.row}"


@lru_cache(maxsize=2)
def _row_group_column(path: Path, row_group: int, column: str):
    """One row group of one column (cached: samples are mostly opened in file order)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(row_group, columns=[column]).column(0)


def scan_parquet(files: list[Path], required: tuple[str, ...], optional: tuple[str, ...] = (),
                 image: str = "image", folder: Path | None = None) -> Iterator[tuple[dict, ParquetCell | None]]:
    """(row without the image, the row's image cell) for every row, reading the small columns only.

    `required` columns (the image column among them, if it is required) must be in every file;
    `optional` ones are read when present (missing: the row holds None)."""
    import pyarrow.parquet as pq

    for path in files:
        try:
            handle = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several kinds for a damaged file
            raise QGSAError(f"cannot read {path} as parquet ({err.__class__.__name__}): a damaged or partial "
                            f"download? delete it and download again") from err
        names = handle.schema_arrow.names
        missing = [c for c in required if c not in names]
        if missing:
            raise QGSAError(f"{path} lacks column(s) {', '.join(missing)}: expected {', '.join(required)}")
        columns = [c for c in (*required, *optional) if c in names and c != image]
        has_image = image in names
        for group in range(handle.num_row_groups):
            rows = handle.read_row_group(group, columns=columns).to_pylist() if columns else \
                [{} for _ in range(handle.metadata.row_group(group).num_rows)]
            for index, row in enumerate(rows):
                for name in optional:
                    row.setdefault(name, None)
                cell = ParquetCell(path, group, index, folder or path.parent, image) if has_image else None
                yield row, cell


def read_json(path: Path, what: str):
    if not path.is_file():
        raise QGSAError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise QGSAError(f"{path} is not valid JSON ({err.__class__.__name__}): expected {what}") from err


def require_fields(record: dict, fields: tuple[str, ...], where: str) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise QGSAError(f"{where} lacks field(s) {', '.join(missing)}: expected {', '.join(fields)}")


def image_ref(value, folder: Path):
    """A parquet image cell: a Hugging Face image struct {bytes, path} or a path string."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return folder / value["path"]
        return None
    if isinstance(value, str):
        return folder / value
    return value


def find_image_folder(roots: list[Path], subfolders: tuple[str, ...], probe: str, what: str) -> Path:
    """The first `root/sub` (in the order given) that holds the file `probe`; one error listing every place
    tried when none does. `roots` are where a user may have pointed --data-dir, and their parents."""
    tried = []
    for root in dict.fromkeys(roots):  # unique, in order
        for sub in subfolders:
            candidate = root / sub if sub else root
            if candidate in tried:
                continue
            tried.append(candidate)
            if (candidate / probe).is_file():
                return candidate
    raise QGSAError(f"{what}: image {probe} not found; looked in " + ", ".join(str(t) for t in tried)
                    + ". Put the images in one of these folders (or pass --data-dir at the layout's root)")
