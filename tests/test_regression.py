"""The regression harness in quick mode: the CLI's FLOPs, accuracy and selections equal the committed
reference (benchmarks/regression/quick-reference.json; its README says how it was made and what the one-run
refactor changed). About two minutes on the 2-core CPU machine (CPU, offline)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_regression_matches_reference(tmp_path):
    script = REPO / "benchmarks" / "regression.py"
    reference = REPO / "benchmarks" / "regression" / "quick-reference.json"
    result = subprocess.run(
        [sys.executable, str(script), "quick", "--reference", str(reference), "--work", str(tmp_path / "work")],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"regression harness found differences:\n{result.stdout}\n{result.stderr}"
