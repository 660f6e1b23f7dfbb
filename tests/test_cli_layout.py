"""The command line's shape: every command's --help, instant imports, small modules, options read as typed."""

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from qgsa_bench.cli import app

runner = CliRunner()
PACKAGE = Path(__file__).resolve().parents[1] / "qgsa_bench"


def _command_paths(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _command_paths(command, (*prefix, name))


COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_every_command_is_listed():
    assert {path[0] for path in COMMANDS} == {"info", "ask", "sweep-resolution", "sweep-budget", "count-flops",
                                              "ablate", "report", "eval", "grounding", "train", "base-train", "data",
                                              "lmms-eval"}
    assert ("data", "shapes") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_help_runs(path):
    result = runner.invoke(app, [*path, "--help"], prog_name="qgsa")
    assert result.exit_code == 0, result.output
    assert f"Usage: qgsa {' '.join(path)}" in result.output and "list[str]" not in result.output


def test_multi_value_options_show_a_readable_metavar():
    for command, option, metavar in (("sweep-budget", "--budgets", "INT..."), ("sweep-budget", "--shares", "NUMBER..."),
                                     ("sweep-resolution", "--sizes", "INT..."), ("count-flops", "--budgets", "INT...")):
        line = next(line for line in runner.invoke(app, [command, "--help"]).output.splitlines() if option in line)
        assert metavar in line, line


def test_question_help_names_the_configs_default():
    from qgsa_bench.config import DEFAULT_QUESTION

    text = runner.invoke(app, ["sweep-budget", "--help"]).output.replace("│", " ")  # rich wraps inside its box
    assert f"'{DEFAULT_QUESTION}'" in " ".join(text.split())


@pytest.mark.parametrize("module, heavy", [("qgsa_bench.cli", ("torch", "matplotlib", "pandas", "qgsa_bench.config")),
                                           ("qgsa_bench.report", ("torch", "matplotlib", "qgsa_bench.efficiency"))])
def test_importing_loads_nothing_heavy(module, heavy):
    """`qgsa --help` stays instant: the CLI and the report load the library when a command runs."""
    code = (f"import sys, {module}; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_no_cli_or_report_module_over_400_lines():
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines())
             for folder in ("cli", "report") for p in (PACKAGE / folder).glob("*.py")}
    assert sizes and max(sizes.values()) <= 400, {str(p): n for p, n in sizes.items() if n > 400}


def test_command_line_is_recorded_as_typed(monkeypatch, tmp_path):
    """meta.json's command: single-value options with their value (eval --batch 4 lost its 4), multi-value
    options with all theirs."""
    import qgsa_bench.experiments.sweep as sweep
    import qgsa_bench.experiments.evaluate as evaluate
    from qgsa_bench.runtime import command_line

    seen = []

    def fake(cfg, progress=None, warn=None):
        seen.append((command_line(), cfg))
        raise typer.Exit(0)

    monkeypatch.setattr(evaluate, "run_eval", fake)
    monkeypatch.setattr(sweep, "run_sweep", fake)
    assert runner.invoke(app, ["eval", "--batch", "4", "--limit", "3", "--out", str(tmp_path)]).exit_code == 0
    assert seen[-1][0] == f"qgsa eval --limit 3 --batch 4 --out {tmp_path}"
    result = runner.invoke(app, ["sweep-resolution", "--model", "tiny", "--sizes", "64", "80", "--batch", "1", "2",
                                 "--question", "what shape?"])
    assert result.exit_code == 0, result.output
    line, cfg = seen[-1]
    assert line == "qgsa sweep-resolution --model tiny --sizes 64 80 --batch 1 2 --question 'what shape?'"
    assert cfg.sizes == (64, 80) and cfg.batches == (1, 2) and cfg.measure.model == "tiny"
    assert cfg.measure.question == "what shape?"


def test_a_loose_value_after_a_single_value_option_is_refused(tmp_path):
    """--batch takes one value in count-flops (several only in sweep-resolution): the 8 is not dropped silently."""
    result = runner.invoke(app, ["count-flops", "--model", "tiny", "--batch", "1", "8", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: unexpected argument(s) 8: only --budgets, --image-size, --tiles take several values"
