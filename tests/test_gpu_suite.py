"""The GPU suite runs in CI on the CPU in --quick mode: the same script, the tiny model, two sizes."""

import json
import subprocess
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_quick_mode_writes_its_files(tmp_path):
    out = tmp_path / "suite"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "sweep-tiny.csv", "ablate.csv", "budget-llava.csv", "budget-selectors.csv", "meta.json", "report.md",
        "suite.log"])
    llava = pd.read_csv(out / "budget-llava.csv")
    assert set(llava.batch) == {1, 2} and len(llava) == 2 * (1 + 5 * 2)  # dense + 5 selectors x 2 budgets
    assert set(llava.budget) == {36, 16, 4} and llava.latency_ms_median.gt(0).all()
    selectors = pd.read_csv(out / "budget-selectors.csv")
    assert {"vision:1", "lm:1", "post-vision", "input", "tiles"} <= set(selectors.point)
    tiled = selectors[selectors.image_size == "200x150"]  # the split image: dense, global-only, 2 x 3 tile cases
    assert len(tiled) == 2 * (2 + 2 * 3) and set(tiled.batch) == {1, 2}
    sweep = pd.read_csv(out / "sweep-tiny.csv")
    # 4 eager pipelines x 2 sizes x 2 batches, then 3 pipelines eager and compiled at one size x 2 batches
    assert len(sweep) == 4 * 2 * 2 + 3 * 2 * 2 and set(sweep.batch) == {1, 2}
    assert set(sweep["compile"]) == {"none", "default"} and (sweep.recompilations_timed.dropna() == 0).all()
    assert {"speedup_ci_low", "unstable", "throughput_images_per_s", "formula_fastv_prefill"} <= set(sweep.columns)
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(meta["runs"]) == ["ablate", "budget-llava-b1", "budget-llava-b2", "budget-selectors",
                                    "budget-tiles-b1", "budget-tiles-b2", "sweep-tiny", "sweep-tiny-compiled"]
    log = (out / "suite.log").read_text()
    assert log.count(": exit 0 at") == 8 and "skipped" not in log
    report = (out / "report.md").read_text()
    assert "# sweep-tiny" in report and "/tmp" not in report
