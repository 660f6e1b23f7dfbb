"""The one results driver: the life cycle of a results folder, the same for every command that writes one.

    with Results(out, kind, settings) as res:   # lock the folder; refuse another kind of run or other
        ...                                      # settings; find a damaged file before any work starts
        res.write_meta(meta)                     # meta.json: environment, provenance, settings, notes
        done = res.done(TABLE)                   # rows already written (resume)
        res.append(TABLE, rows) / res.replace(TABLE, rows)
                                                 # tables and figures: report.render_folder(out), from the files

A `Table` (a CSV's file name, columns and the columns that name a row) is declared once, beside the
command that writes it; `qgsa report` reads the same declaration. Raises QGSAError (one line) for a folder
in use, of another kind or settings, or holding a damaged file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qgsa_bench import QGSAError
from qgsa_bench.results import META, append_rows, check_whole, locked, read_meta, read_rows, replace_rows, write_meta


@dataclass(frozen=True)
class Table:
    """A results CSV: `file` in the folder, its `columns` in order, and `key`: the columns naming a row
    (what a resumed run skips)."""

    file: str
    columns: tuple[str, ...]
    key: tuple[str, ...] = ()


class Results:
    """One results folder for one run of one command (`kind`, e.g. "eval"), tied to `settings`."""

    def __init__(self, out, kind: str, settings: dict):
        self.out = Path(out)
        self.kind = kind
        self.settings = json.loads(json.dumps(settings, default=str))  # as meta.json holds them
        self._lock = None

    def __enter__(self) -> "Results":
        self._lock = locked(self.out)
        self._lock.__enter__()
        try:
            self.check()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def check(self) -> None:
        """Refuse a folder that holds another kind of run, other settings or a damaged file."""
        meta = read_meta(self.out)
        if meta is not None and meta.get("kind") not in (None, self.kind):
            raise QGSAError(f"{self.out} holds a `{meta['kind']}` run, not `{self.kind}`: use another --out")
        if meta is not None and "settings" in meta:
            differs = [k for k, v in self.settings.items() if meta["settings"].get(k) != v]
            if differs:
                raise QGSAError(f"{self.out} holds results made with other settings ({', '.join(differs)} differ): "
                                f"use another --out, or delete that folder to start over")
        for path in sorted(self.out.glob("*.csv")):
            check_whole(path)

    def path(self, name: str) -> Path:
        return self.out / name

    def write_meta(self, meta: dict) -> dict:
        """meta.json (atomically), with this run's kind and settings; returns what was written."""
        meta = {**meta, "kind": self.kind, "settings": self.settings}
        write_meta(self.out, meta)
        return meta

    def done(self, table: Table) -> set[tuple]:
        """The `table.key` of every row already written (empty when the file does not exist yet)."""
        path = self.path(table.file)
        if not path.exists():
            return set()
        frame = read_rows(path, table.key)
        return set(zip(*(frame[c].tolist() for c in table.key)))

    def append(self, table: Table, rows: list[dict]) -> None:
        """Rows added as they are measured: an interrupted run keeps what it finished."""
        append_rows(self.path(table.file), rows, list(table.columns))

    def replace(self, table: Table, rows: list[dict]) -> None:
        """The whole file, atomically."""
        replace_rows(self.path(table.file), rows, list(table.columns))


__all__ = ["META", "Results", "Table"]
