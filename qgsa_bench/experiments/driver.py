"""The one results driver: the life cycle of a results folder, the same for every command that writes one.

    with Results(out, kind, settings, overwrite) as res:
        ...                                      # lock the folder; refuse another kind of run or other
                                                 # settings (or, with overwrite, empty it); find a damaged
                                                 # file before any work starts
        res.write_meta(meta)                     # meta.json: environment, provenance, settings, notes
        done = res.done(TABLE)                   # rows already written (resume)
        res.append(TABLE, rows) / res.replace(TABLE, rows)
        res.append_records(LOG, records)         # per-sample records (JSON lines), as each batch finishes
        res.finished("...")                      # nothing left to do: raises NothingToDo
                                                 # tables and figures: report.render_folder(out), from the files

A `Table` (a CSV's file name, columns and the columns that name a row) is declared once, beside the
command that writes it; `qgsa report` reads the same declaration. Raises QGSAError (one line) for a folder
in use, of another kind or settings, or holding a damaged file. A run that ends in an error or an
interruption before it wrote any row leaves the folder as it found it (its meta.json undone), so the
corrected command is never refused for settings it did not run with.

Under a launch of several processes (`parallel.join_world`), every process makes the same calls; the main
process alone locks, reads and writes the folder, and each call's value (or error) reaches every process
(`parallel.shared_outcome`), so all take the same path. `rank` (`--per-process` timing): every table written
gains a `rank` column holding it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import wraps
from pathlib import Path

from qgsa_bench import NothingToDo, QGSAError
from qgsa_bench.results import (HOLDER, LOCK, META, append_rows, check_whole, locked, read_meta, read_rows,
                                replace_rows, write_meta)


@dataclass(frozen=True)
class Table:
    """A results CSV: `file` in the folder, its `columns` in order, and `key`: the columns naming a row
    (what a resumed run skips)."""

    file: str
    columns: tuple[str, ...]
    key: tuple[str, ...] = ()


def shared(method):
    """A Results call made by every process: run by the main process alone (the outermost call), its value or
    error on every process (`parallel.shared_outcome`)."""

    @wraps(method)
    def call(self, *args, **kwargs):
        if self.world.size == 1 or self._inside:
            return method(self, *args, **kwargs)
        from qgsa_bench.experiments.parallel import shared_outcome

        def alone():
            self._inside = True
            try:
                return method(self, *args, **kwargs)
            finally:
                self._inside = False
        return shared_outcome(self.world, alone)

    return call


class Results:
    """One results folder for one run of one command (`kind`, e.g. "eval"), tied to `settings`. `world`: the
    processes sharing the run (default `parallel.joined()`); `rank`: the `rank` column of per-process rows."""

    def __init__(self, out, kind: str, settings: dict, overwrite: bool = False, world=None, rank: int | None = None):
        from qgsa_bench.experiments.parallel import joined

        self.world = world or joined()
        self.rank = rank
        self._inside = False
        self.out = Path(out)
        self.kind = kind
        self.settings = json.loads(json.dumps(settings, default=str))  # as meta.json holds them
        self.overwrite = overwrite
        self._lock = None
        self._meta_before: str | None = None
        self._rows_written = False
        self._entries_before: set[str] = set()

    def __enter__(self) -> "Results":
        self._enter()
        return self

    @shared
    def _enter(self) -> None:
        self._lock = locked(self.out)
        self._lock.__enter__()
        try:
            if self.overwrite:
                self.clear()
            self.check()
            meta = self.path(META)
            self._meta_before = meta.read_text() if meta.is_file() else None
            self._entries_before = self._entries()
        except BaseException:
            self._lock.__exit__(None, None, None)
            self._lock = None
            raise

    def __exit__(self, kind, value, traceback):
        if self._lock is None:  # not the main process of a launch: it never held the folder
            return False
        try:
            if kind is not None and not self._rows_written and self._entries() <= self._entries_before:
                # refused or interrupted before it wrote anything but meta.json: as it found the folder
                meta = self.path(META)
                if self._meta_before is None:
                    meta.unlink(missing_ok=True)
                else:
                    meta.write_text(self._meta_before)
        finally:
            return self._lock.__exit__(kind, value, traceback)

    def _entries(self) -> set[str]:
        return {p.name for p in self.out.iterdir()} - {LOCK, HOLDER, META, META + ".tmp"}

    def clear(self) -> None:
        """--overwrite: empty the folder of an earlier run (only a qgsa-bench results folder: one holding
        meta.json, or nothing). Raises QGSAError for a folder holding other files."""
        entries = [p for p in self.out.iterdir() if p.name not in (LOCK, HOLDER)]
        if entries and not self.path(META).is_file():
            raise QGSAError(f"--overwrite empties a results folder, and {self.out} holds files but no meta.json: "
                            f"it is not one; choose another --out")
        for entry in entries:
            if entry.is_dir():
                import shutil

                shutil.rmtree(entry)
            else:
                entry.unlink()

    def check(self) -> None:
        """Refuse a folder that holds another kind of run, other settings, files of no run or a damaged file."""
        meta = read_meta(self.out)
        if meta is None and [p for p in self.out.iterdir() if p.name not in (LOCK, HOLDER)]:
            raise QGSAError(f"{self.out} holds files but no meta.json (not a results folder, or a run's results "
                            f"without their provenance): use another --out, or --overwrite to empty it")
        if meta is not None and meta.get("kind") not in (None, self.kind):
            raise QGSAError(f"{self.out} holds a `{meta['kind']}` run, not `{self.kind}`: use another --out, "
                            f"or --overwrite to replace it")
        if meta is not None and "settings" in meta:
            differs = [k for k, v in self.settings.items() if meta["settings"].get(k) != v]
            if differs:
                raise QGSAError(f"{self.out} holds results made with other settings ({', '.join(differs)} "
                                f"{'differs' if len(differs) == 1 else 'differ'}): "
                                f"use another --out, or --overwrite to replace them")
        for path in sorted(self.out.glob("*.csv")):
            check_whole(path)

    @shared
    def meta(self) -> dict | None:
        """meta.json as the folder holds it now (None before the first write_meta)."""
        return read_meta(self.out)

    @shared
    def exists(self, name: str) -> bool:
        """Whether the folder holds file `name`."""
        return self.path(name).exists()

    @shared
    def write_text(self, name: str, text: str) -> None:
        """File `name` written whole (atomically) and listed in meta.json's `files`."""
        tmp = self.path(name + ".tmp")
        tmp.write_text(text)
        tmp.replace(self.path(name))
        self._wrote(name)

    def _columns(self, table: Table) -> list[str]:
        return [*table.columns, "rank"] if self.rank is not None else list(table.columns)

    def _ranked(self, rows: list[dict]) -> list[dict]:
        return rows if self.rank is None else [{**row, "rank": self.rank} for row in rows]

    def path(self, name: str) -> Path:
        """A file of this folder (a file written through `path` rather than append/replace/append_records is
        listed with `claim`)."""
        return self.out / name

    @shared
    def claim(self, *names: str) -> None:
        """Files this run wrote itself (a checkpoint, a JSON cross-check): listed in meta.json's `files`."""
        for name in names:
            self._wrote(name)

    @shared
    def write_meta(self, meta: dict) -> dict:
        """meta.json (atomically), with this run's kind, settings and `files` (every file its runs wrote, which
        `qgsa report` reads and nothing else); returns what was written."""
        before = read_meta(self.out) or {}
        meta = {**meta, "kind": self.kind, "settings": self.settings,
                "files": sorted(set(before.get("files", [])) | set(meta.get("files", [])))}
        write_meta(self.out, meta)
        return meta

    def _wrote(self, name: str) -> None:
        """`name` is this run's: listed in meta.json's `files` (at once, so an interrupted run lists it too)."""
        self._rows_written = True
        meta = read_meta(self.out)
        if meta is not None and name not in meta.get("files", []):
            write_meta(self.out, {**meta, "files": sorted({*meta.get("files", []), name})})

    @shared
    def done(self, table: Table) -> set[tuple]:
        """The `table.key` of every row already written (empty when the file does not exist yet)."""
        path = self.path(table.file)
        if not path.exists():
            return set()
        frame = read_rows(path, table.key)
        return set(zip(*(frame[c].tolist() for c in table.key)))

    @shared
    def rows(self, table: Table) -> list[dict]:
        """The rows of `table` written so far (none when the file does not exist), None where a cell is empty."""
        path = self.path(table.file)
        if not path.exists():
            return []
        frame = read_rows(path, table.key)
        return [{k: (None if v != v else v) for k, v in row.items()} for row in frame.to_dict("records")]

    @shared
    def append(self, table: Table, rows: list[dict]) -> None:
        """Rows added as they are measured: an interrupted run keeps what it finished."""
        self._wrote(table.file)
        append_rows(self.path(table.file), self._ranked(rows), self._columns(table))

    @shared
    def replace(self, table: Table, rows: list[dict]) -> None:
        """The whole file, atomically."""
        self._wrote(table.file)
        replace_rows(self.path(table.file), self._ranked(rows), self._columns(table))

    @shared
    def append_records(self, name: str, records: list[dict]) -> None:
        """Per-sample records added to the JSON-lines file `name` as each batch finishes (flushed and synced:
        an interrupted run keeps every whole line)."""
        import os

        self._wrote(name)
        with self.path(name).open("a") as handle:
            for record in records:
                handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @shared
    def read_records(self, name: str) -> list[dict]:
        """The whole lines of JSON-lines file `name` (none when it does not exist). A last line cut off by a
        crash is dropped from the file: its batch runs again."""
        path = self.path(name)
        if not path.is_file():
            return []
        text = path.read_text()
        whole, _, torn = text.rpartition("\n")
        if torn:
            path.write_text(whole + "\n" if whole else "")
        records = []
        for number, line in enumerate(whole.splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise QGSAError(f"{path} line {number} is not JSON: repair the file, or --overwrite to start "
                                f"over") from None
        return records

    @shared
    def records_by(self, name: str, field: str) -> dict[str, dict[str, dict]]:
        """The records of JSON-lines file `name` (`read_records`) as {record[field]: {record["id"]: record}}: what
        an interrupted run finished, per pipeline or case."""
        grouped: dict[str, dict[str, dict]] = {}
        for record in self.read_records(name):
            grouped.setdefault(record[field], {})[record["id"]] = record
        return grouped

    @shared
    def finished(self, what: str) -> None:
        """Nothing is left to do for this run: raises NothingToDo naming the folder and `what` it holds."""
        raise NothingToDo(f"{self.out} already holds {what}, finished: nothing to do (--overwrite runs it again)")


__all__ = ["META", "Results", "Table"]
