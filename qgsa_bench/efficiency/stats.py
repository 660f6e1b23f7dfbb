"""Statistics of timed repetitions: per-case summaries, instability flags, and paired ratios with intervals.

Every timed comparison is a ratio of medians with a 95 % percentile-bootstrap interval, resampling
the *repetition rounds* (paired: in round r every case ran once, back to back, so a neighbour's load
or a clock change hits all cases of that round alike). This follows Kalibera & Jones, "Rigorous
benchmarking in reasonable time" (ISMM 2013), who recommend bootstrap intervals for ratios of
execution times, with the percentile interval of Efron & Tibshirani, "An Introduction to the
Bootstrap" (1993), ch. 13. Where the interval holds 1.0 the verdict is "no measurable difference".

**Unstable** (`summary`) means the interval cannot be trusted as it stands, anchored to what the usual
benchmark tools warn on:

* the robust dispersion 1.4826 x MAD / median (a coefficient of variation, unitless; 1.4826 makes the
  MAD a standard deviation under normal noise) exceeds 10 %, pyperf's limit: `pyperf check` warns
  when the standard deviation is >= 10 % of the mean (psf/pyperf, pyperf/_cli.py, format_checks); or
* more than 10 % of the rounds are *severe outliers*: further from the median than 10 robust standard
  deviations (10 x 1.4826 x MAD), hyperfine's threshold (sharkdp/hyperfine, src/outlier_detection.rs:
  OUTLIER_THRESHOLD = 1.4826 * 10.0 on |x - median| / MAD; it warns "Statistical outliers were
  detected" on any such run; Iglewicz & Hoaglin's modified z-score, 0.6745 |x - median| / MAD, "How to
  Detect and Handle Outliers", 1993, is 10 there), and by more than 50 % of the median, pyperf's
  outlier check (it warns when the maximum is >= 50 % above the mean). The second bound keeps a small
  MAD from making ordinary deviations outliers: a MAD of ~0 (a coarse clock, a very quiet device), or
  15 rounds whose MAD happens to come out at half the spread's (a quiet 3.5 % case then has a 25 %
  slow round "beyond 10 robust standard deviations"), while a neighbour's burst (1.5x and more) counts.
  hyperfine and pyperf warn on a single such run; here one in ten rounds is allowed, since a median and
  the order-statistic interval of the verdicts (below) are moved little by a few.

Mild outliers (Iglewicz & Hoaglin's z > 3.5; pytest-benchmark's Tukey fences Q1 - 1.5 IQR, Q3 + 1.5 IQR
and its mean +- 1 standard deviation, reported in its "Outliers" column, pytest_benchmark/stats.py,
without a warning) are ordinary on a quiet machine: a few of 15 CPU rounds at 3.5 % dispersion sit
there. They move a median little and flag nothing here.

**Verdicts** (`compare`): a speedup ("faster" / "slower") is claimed where the bootstrap interval
excludes 1 and the pair is trustworthy: neither case unstable and at least FEW_ROUNDS rounds. Otherwise
the claim needs a distribution-free interval to exclude 1 as well (`distribution_free_interval`:
order statistics bound each case's median, no bootstrap and no normality, robust to a minority of
loaded rounds), and the verdict names the caveat; where that interval holds 1, or cannot be formed
(fewer than 7 rounds), the verdict is "not enough evidence" with the caveat (the ratio and its
bootstrap interval stay in their own columns).
"""

from __future__ import annotations

from math import comb

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
DISPERSION_LIMIT = 0.10  # robust coefficient of variation above this: unstable (pyperf: stdev >= 10 % of the mean)
ROBUST_SD = 1.4826  # MAD x this = the standard deviation under normal noise
OUTLIER_SDS = 10.0  # further from the median than this many robust standard deviations: a severe outlier (hyperfine)
OUTLIER_FLOOR = 0.05  # ... counted as at least this share of the median: outliers are >= 50 % off (pyperf)
OUTLIER_SHARE_LIMIT = 0.10  # more severe outliers than this share of the rounds: unstable
NO_DIFFERENCE = "no measurable difference"
NOT_ENOUGH = "not enough evidence"
CLAIMS = ("faster", "slower")
# The percentile bootstrap is optimistic with few rounds: simulated A/A pairs under a shared load come out
# "different" 7.7 % of the time at 5 rounds, 4.0 % at 8, 2.5 % at 10 (benchmarks/aa_coverage.py). So
# --reps auto times at least this many rounds, and a pair timed fewer rounds needs the distribution-free
# interval too before a speedup is claimed.
FEW_ROUNDS = 10


def summary(samples) -> dict:
    """One case's samples (any unit, e.g. ms): n, median, p10, p90 (the samples' unit), the robust
    dispersion (1.4826 MAD / median, unitless), the number of severe outliers and the unstable flag (see
    the module docstring for the rule and its sources)."""
    x = np.asarray(samples, dtype=float)
    median = float(np.median(x))
    mad = float(np.median(np.abs(x - median)))
    dispersion = ROBUST_SD * mad / median if median > 0 else float("nan")
    scale = max(ROBUST_SD * mad, OUTLIER_FLOOR * abs(median))
    outliers = int((np.abs(x - median) > OUTLIER_SDS * scale).sum()) if scale > 0 else 0
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


def median_rank(n: int, confidence: float) -> int | None:
    """The rank k for which [x_(k), x_(n+1-k)] (sorted samples, 1-based) covers the median with at least
    `confidence`, whatever the distribution: the largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence)/2
    (Le Boudec, "Performance Evaluation of Computer and Communication Systems", 2010, Thm 2.1; Conover,
    "Practical Nonparametric Statistics", 1999, sec. 3.2). None where even [min, max] falls short."""
    rank, below = None, 0.0
    for k in range(1, n // 2 + 1):
        below += comb(n, k - 1) / 2**n  # P(Binomial(n, 1/2) <= k - 1)
        if below > (1 - confidence) / 2:
            break
        rank = k
    return rank


def distribution_free_interval(reference, other) -> tuple[float, float]:
    """Bounds on median(reference) / median(other) that hold with at least 95 % probability without the
    bootstrap or any distribution: each median within its 97.5 % order-statistic interval (`median_rank`),
    both at once with >= 95 % (Bonferroni), the ratio between the extreme quotients. Unpaired, so a load
    that hit one case of a round does not tighten it. (0, inf) with fewer than 7 rounds."""
    ref, oth = np.sort(np.asarray(reference, dtype=float)), np.sort(np.asarray(other, dtype=float))
    k = median_rank(min(len(ref), len(oth)), 1 - (1 - CONFIDENCE) / 2)
    if k is None:
        return 0.0, float("inf")
    return float(ref[k - 1] / oth[len(oth) - k]), float(ref[len(ref) - k] / oth[k - 1])


def verdict(low: float, high: float) -> str:
    """What a trustworthy interval says: 'faster' / 'slower' (of the compared case against the reference) or
    no measurable difference. `compare` applies the caveats."""
    if low <= 1.0 <= high:
        return NO_DIFFERENCE
    return "faster" if low > 1.0 else "slower"


def caveats(reference, other) -> list[str]:
    """Why a pair's bootstrap interval cannot be trusted as it stands: unstable, too few rounds."""
    out = []
    if summary(reference)["unstable"] or summary(other)["unstable"]:
        out.append("unstable")
    n = min(len(reference), len(other))
    if n < FEW_ROUNDS:
        out.append(f"{n} rounds < {FEW_ROUNDS}")
    return out


def compare(reference, other, seed: int = 0) -> dict:
    """`other` against `reference` over paired rounds (latencies, e.g. ms): ratio (reference / other; above 1:
    `other` is faster), the 95 % bootstrap interval (ci_low, ci_high) and the verdict: 'faster', 'slower',
    NO_DIFFERENCE, a claim with its caveat held by the distribution-free interval ('faster (unstable;
    distribution-free 1.31–2.60)'), or NOT_ENOUGH with its caveat ('not enough evidence (unstable, 5
    rounds < 10)'). See the module docstring."""
    ratio, low, high = ratio_interval(reference, other, seed)
    said, why = verdict(low, high), caveats(reference, other)
    if said == NO_DIFFERENCE or not why:
        return {"ratio": ratio, "ci_low": low, "ci_high": high, "verdict": said}
    free_low, free_high = distribution_free_interval(reference, other)
    if verdict(free_low, free_high) == said:
        said = f"{said} ({', '.join(why)}; distribution-free {free_low:.2f}–{free_high:.2f})"
    else:
        said = f"{NOT_ENOUGH} ({', '.join(why)})"
    return {"ratio": ratio, "ci_low": low, "ci_high": high, "verdict": said}


def claimed(said) -> bool:
    """Whether a verdict claims a difference (faster or slower, with or without a caveat)."""
    return isinstance(said, str) and said.split(" (")[0] in CLAIMS


def half_width(ratio: float, low: float, high: float) -> float:
    """The interval's larger half-width relative to the ratio (0.05: within 5 %)."""
    return max(high - ratio, ratio - low) / ratio
