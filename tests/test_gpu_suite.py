"""The GPU suite runs in CI on the CPU in --quick mode: the same script, the tiny model, two sizes."""

import json
import subprocess
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_quick_mode_writes_its_eight_files(tmp_path):
    out = tmp_path / "suite"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "sweep-tiny.csv", "ablate.csv", "meta.json", "report.md", "fig2_latency_vs_resolution.png",
        "fig4_speedup.png", "suite.log"])
    sweep = pd.read_csv(out / "sweep-tiny.csv")
    assert len(sweep) == 2 * 2 * 10 and set(sweep.batch) == {1, 2}  # 5 pipelines, eager and compiled
    assert set(sweep["compile"]) == {"none", "default"} and (sweep.recompilations_timed.dropna() == 0).all()
    assert {"speedup_ci_low", "unstable", "throughput_images_per_s", "formula_fastv_prefill"} <= set(sweep.columns)
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(meta["runs"]) == ["ablate", "sweep-tiny"]
    report = (out / "report.md").read_text()
    assert "# sweep-tiny" in report and "/tmp" not in report
