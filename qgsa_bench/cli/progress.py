"""Long commands run under a Rich progress bar fed by the library's progress callback, then show what they
wrote: `run_and_show` is the one way every long command calls the library."""

from __future__ import annotations

import time
from pathlib import Path

from qgsa_bench.cli.app import console, err_console, show_markdown, warn


class RichProgress:
    """Adapts the library's progress callback (description, steps) to a Rich progress bar."""

    def __init__(self, get_time=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                            **({"get_time": get_time} if get_time else {}))  # tests: a fake clock
        self.task = None
        # Rich draws no bar when stderr is not a terminal (a log file): then print a plain line at each
        # phase and at most once a minute, so that a 30-minute run written to a log shows its progress.
        self.plain = not err_console.is_terminal
        self.done = self.total = 0
        self.last_line = time.monotonic()

    def __enter__(self):
        return self  # the bar starts at the first report: a command refused before any work prints nothing else

    def __exit__(self, *exc):
        if self.task is not None:
            self.bar.stop()
        return False

    def __call__(self, description: str, steps: int) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task(description, total=None)
        if steps < 0:  # the library announces the total as a negative step count
            if self.done:  # a new phase (timing, then accuracy): its own bar, so that the time left is
                # estimated from steps of its own kind, not from a phase whose steps take 100x longer
                self.bar.update(self.task, completed=self.total)
                self.task = self.bar.add_task(description, total=-steps)
            self.bar.update(self.task, total=-steps, completed=0, description=description)
            self.done, self.total = 0, -steps
        else:
            self.bar.update(self.task, advance=steps, description=description)
            self.done += steps
        if self.plain and (steps < 0 or time.monotonic() - self.last_line >= 60 or self.done == self.total):
            err_console.print(f"{description} [{self.done}/{self.total}]", highlight=False, soft_wrap=True,
                              markup=False)
            self.last_line = time.monotonic()


def run_and_show(run, *args, table: str | None = None, files: tuple[str, ...] = (), **kwargs):
    """`run(*args, progress=..., **kwargs)` under a progress bar; returns what it returns. With `table`, print
    that Markdown file of the folder it returns; with `files` (names or glob patterns), say which it wrote. Under a
    launch of several processes only the main process shows progress and what was written."""
    from qgsa_bench.experiments.parallel import is_main_process

    if not is_main_process():
        return run(*args, progress=None, **kwargs)
    with RichProgress() as progress:
        result = run(*args, progress=progress, **kwargs)
    if isinstance(result, Path):  # a results folder: its tables and figures, made by the report from its files
        from qgsa_bench.report.render import render_folder

        render_folder(result, warn=warn)
    if table:
        show_markdown(result / table)
    if files:
        console.print("wrote " + ", ".join(str(path) for pattern in files for path in sorted(result.glob(pattern))))
    return result
