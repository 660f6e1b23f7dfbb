"""How often the speedup interval calls two identical cases different (an A/A false positive), by the
number of timed rounds: simulated rounds with a load shared by the round (5 % spread) and per-run noise
(2 %), 400 trials per n, the interval of `qgsa_bench.efficiency.stats.ratio_interval`. This is why
--reps auto times at least 10 rounds (MIN_AUTO_ROUNDS) and why tables flag intervals from fewer.

    python3 benchmarks/aa_coverage.py      (output: results/cpu-aa-under-load/aa_coverage.txt)
"""

import numpy as np

from qgsa_bench.efficiency import stats

rng = np.random.default_rng(0)
print("rounds  A/A false positive rate (nominal 5 %)")
for n in (5, 6, 8, 10, 15, 20, 30):
    false = 0
    for trial in range(400):
        load = np.exp(rng.normal(0, 0.05, size=n))  # the same for both cases of a round
        a = 1000 * load * np.exp(rng.normal(0, 0.02, size=n))
        b = 1000 * load * np.exp(rng.normal(0, 0.02, size=n))
        _, low, high = stats.ratio_interval(a, b, seed=trial, resamples=500)
        false += not low <= 1.0 <= high
    print(f"{n:6d}  {false / 400:.3f}")
