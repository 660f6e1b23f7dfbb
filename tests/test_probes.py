"""The research probes in benchmarks/probes: each imports, has main(argv) and an argparse --help, takes its
paths as arguments; the two cheapest run end to end on the committed base with 4 questions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBES = ROOT / "benchmarks" / "probes"
NAMES = ["attr_budget_by_type", "fcomp_fit", "fill_probe", "lr_probe", "suff_probe"]
BASE = ROOT / "results" / "shapes" / "base-model"


def load(name: str):
    import sys

    if str(PROBES) not in sys.path:  # as when run from its folder: the probes share _common.py
        sys.path.insert(0, str(PROBES))
    spec = importlib.util.spec_from_file_location(f"probe_{name}", PROBES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_probe_is_listed():
    assert sorted(p.stem for p in PROBES.glob("*.py") if not p.stem.startswith("_")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_probe_imports_and_helps(name, capsys):
    module = load(name)
    assert callable(module.main)
    assert module.__doc__ and f"benchmarks/probes/{name}.py" in module.__doc__  # the exact command
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_probe_defaults_name_no_runs_folder(name):
    module = load(name)
    required = {"fill_probe": ["--checkpoint", "CKPT"], "lr_probe": ["1e-3"]}.get(name, [])
    args = vars(module.parse_args(required))
    assert args["out"] is None  # nothing is written unless asked
    assert not any(isinstance(v, str) and v.startswith("runs/") for v in args.values())


@pytest.fixture(scope="module")
def base():
    if not (BASE / "model.safetensors").is_file() or (BASE / "model.safetensors").stat().st_size < 10_000:
        pytest.skip("the committed base model (results/shapes/base-model) is not here")
    return str(BASE)


def test_attr_budget_by_type_runs(base, tmp_path):
    out = tmp_path / "attr.txt"
    lines = load("attr_budget_by_type").main(["--base", base, "--images", "2", "--out", str(out)])
    assert out.read_text().splitlines() == lines
    assert lines[0] == "question_type,cover,n,k_star_mean,k_star_std"
    rows = [line.split(",") for line in lines[1:]]
    assert {float(r[1]) for r in rows} == {0.5, 0.8}
    assert sum(int(r[2]) for r in rows if r[1] == "0.5") == 4  # 2 images, two questions each
    assert all(1 <= float(r[3]) <= 196 for r in rows)


def test_suff_probe_runs(base, tmp_path):
    out = tmp_path / "suff.txt"
    lines = load("suff_probe").main(["--base", base, "--images", "2", "--grid", "4", "196", "--out", str(out)])
    assert out.read_text().splitlines() == lines
    assert lines[0].startswith("question_type: k*")
    assert sum(int(line.split()[1]) for line in lines[1:]) == 4
