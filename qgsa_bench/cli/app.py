"""The Typer app, its two consoles, and what every command shares: the command line recorded for meta.json,
errors the user can act on (`QGSAError`) as one line on stderr with exit status 2, any other failure as one
line with exit status 1 (`QGSA_DEBUG=1` shows its traceback), warnings, small printers."""

from __future__ import annotations

import json
import os
import signal
import sys
from functools import wraps
from pathlib import Path
from typing import Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qgsa_bench import NothingToDo, QGSAError
from qgsa_bench.cli.multivalue import command_line, current_context, no_stray_arguments

# the Click that Typer runs on: its own copy (typer >= 0.20, `typer._click`) or the click package
_click = getattr(typer.core, "_click", None) or __import__("click")
_NoArgsIsHelp = getattr(_click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2
_Abort = getattr(typer.core, "Abort", None) or _click.exceptions.Abort  # Ctrl-C at a prompt, EOF


class OneLineErrors(typer.core.TyperGroup):
    """The app's command group: a usage error that Typer and Click find before a command runs (an unknown option, a
    missing or malformed value) is one `error:` line on stderr and exit status 2, as a QGSAError is, instead of
    Typer's box of several lines. Everything else (help, exits, Ctrl-C) is Click's standalone behaviour."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as help_asked:  # `qgsa` or a group alone: its help
            help_asked.show()
            sys.exit(help_asked.exit_code)
        except _click.ClickException as err:
            where = getattr(getattr(err, "ctx", None), "command_path", None)
            err_console.print(f"[red]error:[/red] {escape(err.format_message())}"
                              f"{escape(f' (see {where} --help)') if where else ''}", soft_wrap=True)
            sys.exit(err.exit_code)
        except _Abort:
            err_console.print("Aborted!", markup=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # a command's typer.Exit(code) comes back as its code


app = typer.Typer(
    cls=OneLineErrors,
    help="Question-Guided Sparse Attention (QGSA) for SmolVLM and LLaVA-1.5, beside the field's visual-token selectors, measured end to end.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def warn(message: str) -> None:
    """One warning line on stderr (under a launch of several processes: from the main process only)."""
    from qgsa_bench.experiments.parallel import is_main_process

    if not is_main_process():
        return
    err_console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", soft_wrap=True)  # one line, for logs too


def friendly(func):
    """Record the command line; refuse loose arguments; turn QGSAError into one clear line and exit status 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        from qgsa_bench.runtime import set_command_line

        try:  # SIGTERM ends a run as Ctrl-C does (only the main thread may set handlers)
            previous = signal.signal(signal.SIGTERM, _terminate)
        except ValueError:
            previous = None
        try:
            ctx = current_context()
            set_command_line(command_line(ctx))
            no_stray_arguments(ctx)
            return func(*args, **kwargs)
        except QGSAError as err:
            if _speaks(err):
                kept = _kept(func.__name__, kwargs.get("out")) if _lost(err) else ""
                err_console.print(f"[red]error:[/red] {escape(_from_process(str(err)))}"
                                  f"{escape('; ' + kept) if kept else ''}", soft_wrap=True)
            raise typer.Exit(2) from None
        except NothingToDo as done:
            if _speaks(done):
                console.print(escape(str(done)), soft_wrap=True)
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            if not _speaks(None):  # a launcher stopping every process: the main process says it
                raise typer.Exit(130) from None
            kept = _kept(func.__name__, kwargs.get("out"))
            said = f"interrupted{': ' + kept if kept else ''}"
            if func.__name__ in RESULTS_COMMANDS and not kept:  # the folder was left as it was found
                said = "interrupted before anything finished: rerun the same command to start again"
            err_console.print(said, soft_wrap=True, markup=False, highlight=False)
            raise typer.Exit(130) from None
        except Exception as err:  # a failure inside the tool or a library, not the user's input
            if os.environ.get("QGSA_DEBUG") or type(err).__module__.split(".")[0] in ("typer", "click"):
                raise  # typer's and click's own exits and usage errors (whichever click typer carries)
            kept = _kept(func.__name__, kwargs.get("out"))
            err_console.print(f"[red]error:[/red] {escape(_from_process(unexpected(err)))}"
                              f"{escape('; ' + kept) if kept else ''}", soft_wrap=True)
            raise typer.Exit(1) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _speaks(err) -> bool:
    """Whether this process prints `err` (None: an interruption): the main process always; another process of a
    launch only its own failures once the processes have joined (before, every process meets the same bad
    input), not one the main process reported for all (`echoed`), nor an interruption."""
    from qgsa_bench.experiments.parallel import is_main_process, joined

    return is_main_process() or (err is not None and not getattr(err, "echoed", False) and joined().size > 1)


def _lost(err) -> bool:
    """Whether `err` says that another process of the launch stopped (parallel.WorldLost)."""
    from qgsa_bench.experiments.parallel import WorldLost

    return isinstance(err, WorldLost)


def _from_process(message: str) -> str:
    """`message`, naming the process that says it under a launch of several processes."""
    from qgsa_bench.experiments.parallel import is_main_process, launched_rank

    return message if is_main_process() else f"process {launched_rank()}: {message}"


def _kept(name: str, out) -> str:
    """What an interrupted or failed results command left: its folder, resumable; '' for the others."""
    if name in RESULTS_COMMANDS and out is not None and Path(out).is_dir():
        return f"what finished is kept in {out}; rerun the same command to resume"
    return ""


# known failures of the libraries underneath, and what to do about them (matched in the exception's text)
UNEXPECTED_HINTS = (
    ("out of memory", "lower --batch or --resolution, or use --dtype bf16"),
    ("CUDAGraphs", "run with --compile default (Inductor without CUDA graphs)"),
)


def unexpected(err: BaseException) -> str:
    """One line for an exception that is no QGSAError: its kind, its message's first line, a hint where the
    failure is a known one, else where to look (QGSA_DEBUG=1 for the traceback)."""
    first = (str(err).strip().splitlines() or [""])[0][:300]
    hint = next((h for words, h in UNEXPECTED_HINTS if words.lower() in str(err).lower()), None)
    return (f"{type(err).__name__}: {first} (an unexpected failure, not a problem with your input: "
            f"{hint or 'rerun with QGSA_DEBUG=1 for the traceback and report it'})")


RESULTS_COMMANDS = {"eval_command", "grounding", "sweep_resolution", "sweep_budget", "count_flops_command", "ablate",
                    "train", "lmms_eval_command"}  # the commands writing a results folder (--out), which resume


def _terminate(signum, frame):
    raise KeyboardInterrupt


def command(name: Optional[str] = None, group: typer.Typer = app, **settings):
    """Register a command of `group` (the app, or a sub-command group such as `data`), `friendly`."""

    def register(func):
        return group.command(name, **settings)(friendly(func))

    return register


def show_markdown(path: Path) -> None:
    console.print(Path(path).read_text(), soft_wrap=True, markup=False)


def write_json(path: Optional[Path], data: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {path}")


def key_value_table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, str(value))
    return table


def text_or_none(value) -> str | None:
    """A path option as the configs hold it: text, or None when not given."""
    return None if value is None else str(value)
