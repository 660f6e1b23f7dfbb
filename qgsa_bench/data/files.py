"""Reading the published file formats: parquet exports (Hugging Face) and JSON/pickle releases."""

from __future__ import annotations

import json
from pathlib import Path

from qgsa_bench import QGSAError


def data_folder(data_dir: str | Path | None, dataset: str) -> Path:
    if data_dir is None:
        raise QGSAError(f"{dataset} needs --data-dir: the folder holding its files (nothing is downloaded)")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise QGSAError(f"data folder not found: {folder}")
    return folder


def parquet_files(folder: Path, split: str) -> list[Path]:
    """Hugging Face export layout: [data/]{split}-00000-of-0000N[-hash].parquet or {split}.parquet."""
    found = sorted({*folder.rglob(f"{split}-*.parquet"), *folder.rglob(f"{split}.parquet")})
    return found


def read_parquet(files: list[Path], required: tuple[str, ...]):
    """Rows of the parquet files as a list of dicts, checking the published columns are there."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in files:
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several kinds for a damaged file
            raise QGSAError(f"cannot read {path} as parquet ({err.__class__.__name__})") from err
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise QGSAError(f"{path} lacks column(s) {', '.join(missing)}: expected {', '.join(required)}")
        rows.extend(table.to_pylist())
    return rows


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
