"""Results-folder primitives: the folder lock, meta.json, CSV rows written whole, torn-file detection.

The life cycle every command follows is in driver.py (`Results`); `qgsa report` reads only these files.
"""

from __future__ import annotations

import csv
import json
import math
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from qgsa_bench import QGSAError

META = "meta.json"
LOCK = ".qgsa.lock"
HOLDER = ".qgsa.lock.json"  # who holds the lock: pid, command, since when


@contextmanager
def locked(out: Path):
    """Hold results folder `out` for the length of a run. A second run into the same folder is refused at
    once, naming the run that holds it (an OS file lock through `filelock`: released when the process
    ends, however it ends). A folder this run created and left holding nothing is removed again."""
    from filelock import FileLock, Timeout

    from qgsa_bench.runtime import command_line

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = json.loads((out / HOLDER).read_text())
        except (OSError, ValueError):
            holder = {}
        raise QGSAError(f"{out} is in use by another run (pid {holder.get('pid', '?')}, "
                        f"`{holder.get('command', '?')}`, since {holder.get('since', '?')}): wait for it to end, "
                        f"or use another --out") from None
    try:
        (out / HOLDER).write_text(json.dumps({"pid": os.getpid(), "command": command_line(),
                                              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        yield out
    finally:
        (out / HOLDER).unlink(missing_ok=True)
        lock.release()  # the lock file stays: deleting it could let two runs lock two different files
        if created and [p.name for p in out.iterdir()] == [LOCK]:
            (out / LOCK).unlink()
            out.rmdir()


def write_meta(out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    tmp.replace(out / META)


def read_meta(out: Path) -> dict | None:
    path = Path(out) / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise QGSAError(f"{path} is not valid JSON ({err.__class__.__name__}): repair or delete it") from err
    if not isinstance(meta, dict):
        raise QGSAError(f"{path} holds a JSON {type(meta).__name__}, not the object qgsa-bench writes: "
                        f"repair or delete it")
    return meta


def append_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _clean(row.get(k)) for k in columns})
        handle.flush()


def replace_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write `path` whole, atomically (temporary file + rename): a rerun replaces its own rows."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    append_rows(tmp, rows, columns)
    tmp.replace(path)


def _clean(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return ""
    if isinstance(value, float):
        return round(value, 6)
    return "" if value is None else value


def check_whole(path: Path) -> None:
    """QGSAError naming the fix when the CSV at `path` was cut off in the middle of a row."""
    if ends_mid_row(path):
        raise QGSAError(f"{path} ends in the middle of a row (a crash or a full disk while it was written): "
                        f"delete its last line, or the file, and rerun the command that made it")


def read_rows(path: Path, required: list[str] | tuple[str, ...] = ()):
    """A results CSV as a pandas DataFrame; one clear error for a missing file or column."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise QGSAError(f"results file not found: {path}")
    check_whole(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise QGSAError(f"cannot read {path} as CSV: {err.__class__.__name__}") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise QGSAError(f"{path} lacks the column(s) {', '.join(missing)}: is it a qgsa-bench results file?")
    return frame


def ends_mid_row(path: Path) -> bool:
    """Rows are written whole with their newline: a non-empty file without one at the end was cut off."""
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            return False
        handle.seek(size - 1)
        return handle.read(1) != b"\n"


def run_meta(built, **extra) -> dict:
    """meta.json's body for a results folder: environment, model provenance, the QGSA module, and notes
    (the results driver adds the run's kind and settings)."""
    from qgsa_bench.runtime import environment_meta

    return {
        **environment_meta(built.device, built.dtype),
        **built.loaded.provenance(),
        "qgsa_weights": built.qgsa_weights,
        "qgsa_config": built.module.config.to_dict(),  # incl. projection (w_vis | connector)
        **extra,
    }
