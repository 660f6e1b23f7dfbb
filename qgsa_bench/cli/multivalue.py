"""Options that take several space-separated values (`--sizes 224 336 --batch 1 8`), and the command line
as typed (for meta.json).

Click gives an option one value: `--sizes 224 336` leaves 336 as a loose extra argument. A command made
with MULTI_VALUE_COMMAND keeps its tokens as typed; an option declared with `multi_value_option` (metavar
`INT...`) reads its values back from them, and any other loose argument is an error."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer
import typer.core

from qgsa_bench import QGSAError

RAW_ARGS = "qgsa_raw_args"  # where the command keeps its tokens (click's context meta)


class RawArgsCommand(typer.core.TyperCommand):
    """Keeps the tokens as typed, so that the values of multi-value options can be told apart."""

    def parse_args(self, ctx, args):
        ctx.meta[RAW_ARGS] = list(args)
        return super().parse_args(ctx, args)


# @app.command(..., **MULTI_VALUE_COMMAND): a command with options that take several values
MULTI_VALUE_COMMAND = {"cls": RawArgsCommand, "context_settings": {"allow_extra_args": True,
                                                                   "ignore_unknown_options": False}}


def multi_value_option(name: str, kind: str, help: str):
    """The type of an option taking several `kind` values (INT, NUMBER), space- or comma-separated."""
    return Annotated[list[str], typer.Option(name, metavar=f"{kind}...", help=help)]


def is_multi_value(param) -> bool:
    return str(getattr(param, "metavar", None) or "").endswith("...")


def _click(module: str):
    """A module of click itself, or of the copy newer typer releases vendor (typer._click)."""
    package = typer.Context.__mro__[1].__module__.rsplit(".", 1)[0]
    return importlib.import_module(f"{package}.{module}")


def current_context():
    return _click("globals").get_current_context()


def option_values(names, ctx=None) -> list[str] | None:
    """The values typed after any of the option `names` (up to the next option), or None if not given."""
    ctx = ctx or current_context()
    values, active = None, False
    for token in ctx.meta.get(RAW_ARGS, []):
        if token.startswith("-") and not token.lstrip("-").replace(".", "", 1).isdigit():
            name, eq, rest = token.partition("=")
            active = name in names
            if active:
                values = values if values is not None else []
                values += [rest] if eq else []
        elif active:
            values.append(token)
    return values


def _numbers(option: str, default: list[str], convert, wanted: str) -> list:
    """The numbers given to a multi-value option (space- or comma-separated), else those of `default`."""
    values = option_values((option,))
    numbers = []
    for token in (default if values is None else values):
        for part in str(token).split(","):
            if part.strip():
                try:
                    numbers.append(convert(part))
                except ValueError:
                    raise QGSAError(f"{option} takes {wanted}, got '{part}'") from None
    return numbers


def ints(option: str, default: list[str]) -> tuple[int, ...]:
    """Positive integers given to a multi-value option, else the default."""
    numbers = _numbers(option, default, int, f"integers (e.g. {option} 1 8 32)")
    if not numbers or any(n <= 0 for n in numbers):
        raise QGSAError(f"{option} needs positive integers, got {numbers or 'none'}")
    return tuple(numbers)


def image_sizes(option: str, default: list[str]) -> tuple[tuple[int, int], ...]:
    """WIDTHxHEIGHT sizes in px given to a multi-value option (e.g. 2048x2048 1920x1080), else the default.
    Raises QGSAError for anything else."""
    values = option_values((option,))
    sizes = []
    for token in (default if values is None else values):
        for part in str(token).split(","):
            width, x, height = part.strip().lower().partition("x")
            if not (x and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
                raise QGSAError(f"{option} takes sizes WIDTHxHEIGHT in px (e.g. {option} 2048x2048 1920x1080), "
                                f"got '{part}'")
            sizes.append((int(width), int(height)))
    return tuple(sizes)


def floats(option: str, default: list[str]) -> tuple[float, ...]:
    """Numbers given to a multi-value option, else the default."""
    return tuple(_numbers(option, default, float, f"numbers (e.g. {option} 0.04 0.1 0.25 0.5)"))


def no_stray_arguments(ctx) -> None:
    """Every loose argument Click left must be a value of one of the command's multi-value options."""
    multi = [p for p in ctx.command.params if is_multi_value(p)]
    claimed = [v for p in multi for v in (option_values(p.opts, ctx) or [])]
    stray = [a for a in ctx.args if a not in claimed]
    if stray:
        raise QGSAError(f"unexpected argument(s) {' '.join(stray)}: only "
                        f"{', '.join(max(p.opts, key=len) for p in multi)} take several values")


def command_line(ctx=None) -> str:
    """The invocation as typed (options given on the command line only), for meta.json."""
    import shlex

    ctx = ctx or current_context()
    source = _click("core").ParameterSource
    names, c = [], ctx
    while c.parent is not None:  # the subcommands' names, whatever the program was called (python3 -m ...)
        names.append(c.info_name)
        c = c.parent
    parts = ["qgsa", *reversed(names)]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != source.COMMANDLINE:
            continue
        value, opt = ctx.params[param.name], max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            parts.append(opt if value else (param.secondary_opts or [opt])[0])
        elif is_multi_value(param):  # --sizes 224 336 ...: as typed
            parts += [opt, *(option_values(param.opts, ctx) or [])]
        elif isinstance(value, (list, tuple)):
            for item in value:
                parts += [opt, str(item)]
        else:
            parts += [opt, str(value)]
    return " ".join(shlex.quote(p) for p in parts)
