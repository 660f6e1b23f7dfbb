"""Statistics of timed repetitions: per-case summaries, instability flags, and paired ratios with intervals.

Every timed comparison is a ratio of medians with a 95 % percentile-bootstrap interval, resampling
the *repetition rounds* (paired: in round r every case ran once, back to back, so a neighbour's load
or a clock change hits all cases of that round alike). This follows Kalibera & Jones, "Rigorous
benchmarking in reasonable time" (ISMM 2013), who recommend bootstrap intervals for ratios of
execution times, with the percentile interval of Efron & Tibshirani, "An Introduction to the
Bootstrap" (1993), ch. 13. Where the interval holds 1.0 the verdict is "no measurable difference" and
no speedup is claimed.

A case is flagged *unstable* when its robust dispersion (1.4826 x MAD / median, the normal-consistent
coefficient of variation) exceeds 10 %, or when more than 10 % of its samples are outliers (modified
z-score above 3.5: Iglewicz & Hoaglin, "How to Detect and Handle Outliers", 1993; with a MAD below
0.1 % of the median, deviations are scaled by 0.1 % of the median instead).
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
DISPERSION_LIMIT = 0.10  # robust coefficient of variation above this: unstable
OUTLIER_Z = 3.5  # modified z-score beyond this: an outlier
OUTLIER_SHARE_LIMIT = 0.10  # more outliers than this share: unstable
NO_DIFFERENCE = "no measurable difference"
# The percentile bootstrap is optimistic with few rounds: simulated A/A pairs under a shared load come out
# "different" 7.7 % of the time at 5 rounds, 4.0 % at 8, 2.5 % at 10 (benchmarks/aa_coverage.py). So
# --reps auto times at least this many rounds, and tables flag intervals from fewer.
FEW_ROUNDS = 10


def summary(samples) -> dict:
    """n, median, p10, p90, robust dispersion, outlier count and the unstable flag of one case's samples."""
    x = np.asarray(samples, dtype=float)
    median = float(np.median(x))
    mad = float(np.median(np.abs(x - median)))
    dispersion = 1.4826 * mad / median if median > 0 else float("nan")
    # MAD can be 0 (most samples equal, e.g. a coarse clock): deviations are then measured against 0.1 % of
    # the median, so that a slow tail still counts as outliers
    scale = max(mad, 1e-3 * abs(median))
    z = 0.6745 * np.abs(x - median) / scale if scale > 0 else np.zeros_like(x)
    outliers = int((z > OUTLIER_Z).sum())
    unstable = bool(dispersion > DISPERSION_LIMIT or outliers > OUTLIER_SHARE_LIMIT * len(x))
    return {"n": int(len(x)), "median": median, "p10": float(np.percentile(x, 10)),
            "p90": float(np.percentile(x, 90)), "dispersion": dispersion, "outliers": outliers,
            "unstable": unstable}


def ratio_interval(reference, other, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """median(reference) / median(other) and its percentile-bootstrap interval over paired rounds.

    `reference[r]` and `other[r]` must come from the same round r. A ratio above 1 means `other` is
    faster (a speedup of `other` over `reference`)."""
    ref, oth = np.asarray(reference, dtype=float), np.asarray(other, dtype=float)
    if ref.shape != oth.shape or ref.ndim != 1 or len(ref) < 2:
        raise ValueError(f"need two paired 1-d samples of length >= 2, got {ref.shape} and {oth.shape}")
    ratio = float(np.median(ref) / np.median(oth))
    rows = np.random.default_rng(seed).integers(0, len(ref), size=(resamples, len(ref)))
    boot = np.median(ref[rows], axis=1) / np.median(oth[rows], axis=1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return ratio, float(low), float(high)


def verdict(low: float, high: float) -> str:
    """'faster' / 'slower' (of the compared case against the reference) or no measurable difference."""
    if low <= 1.0 <= high:
        return NO_DIFFERENCE
    return "faster" if low > 1.0 else "slower"


def half_width(ratio: float, low: float, high: float) -> float:
    """The interval's larger half-width relative to the ratio (0.05: within 5 %)."""
    return max(high - ratio, ratio - low) / ratio
