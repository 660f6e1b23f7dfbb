"""Timing statistics: exact facts of the summaries and intervals, and the A/A check under an injected,
deterministic load (a fake clock), not timed tests."""

import numpy as np
import pytest

from qgsa_bench.efficiency import stats, timing
from qgsa_bench.experiments.measure import Case
from qgsa_bench.experiments.runner import MIN_AUTO_ROUNDS, case_labels, measure_cases
from qgsa_bench.models.idefics3 import Idefics3Adapter

QUESTION = ["what color is the circle?"]


def test_summary_and_flags_are_exact():
    s = stats.summary([10, 10.1, 9.9, 10, 10.2, 9.8, 10.1, 9.9, 10, 10.3])
    assert (s["n"], s["median"], s["outliers"], s["unstable"]) == (10, 10.0, 0, False)
    assert s["dispersion"] == pytest.approx(1.4826 * 0.1 / 10)
    assert stats.summary([10.0] * 10)["outliers"] == 0
    tail = stats.summary([10.0] * 8 + [40.0, 41.0])  # MAD 0, yet a slow tail: counted against 0.1 % of the median
    assert (tail["dispersion"], tail["outliers"], tail["unstable"]) == (0.0, 2, True)
    noisy = stats.summary([10, 10.5, 9.5, 10.2, 9.8, 30, 10.1, 9.9, 10.3, 31])
    assert noisy["outliers"] == 2 and noisy["unstable"]  # 20 % outliers > 10 %
    spread = stats.summary([6, 8, 10, 12, 14])
    assert spread["dispersion"] == pytest.approx(1.4826 * 2 / 10) and spread["unstable"]
    assert spread["p10"] == pytest.approx(6.8) and spread["p90"] == pytest.approx(13.2)


def test_ratio_interval_is_paired_and_deterministic():
    rng = np.random.default_rng(1)
    load = rng.uniform(1, 5, size=40)  # a neighbour's load, the same within a round
    a, b = 10 * load, 5 * load * rng.uniform(0.98, 1.02, size=40)
    ratio, low, high = stats.ratio_interval(a, b)
    assert ratio == pytest.approx(np.median(a) / np.median(b)) and low < ratio < high
    assert (ratio, low, high) == stats.ratio_interval(a, b)  # seeded resampling
    assert stats.verdict(low, high) == "faster" and 1.8 < low and high < 2.2
    assert stats.verdict(0.97, 1.04) == stats.NO_DIFFERENCE and stats.verdict(0.5, 0.9) == "slower"
    assert stats.half_width(2.0, 1.9, 2.2) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="paired"):
        stats.ratio_interval([1, 2, 3], [1, 2])


def test_labels_number_a_repeated_pipeline():
    assert case_labels(["dense", "qgsa", "dense"]) == ["dense#1", "qgsa", "dense#2"]
    assert case_labels(["dense", "qgsa"]) == ["dense", "qgsa"]


class LoadedClock:
    """Fake time: each model call advances it by a cost proportional to its work, multiplied by the load
    of a neighbouring process that comes in bursts (seeded: 1x, or 2-8x for a while)."""

    def __init__(self, seed: int, busy: bool = True):
        rng = np.random.default_rng(seed)
        self.t, self.bursts = 0.0, []
        start = 0.0
        while busy and start < 1e4:
            start += rng.exponential(0.05)
            length = rng.exponential(0.05)
            self.bursts.append((start, start + length, rng.uniform(2, 8)))
            start += length

    def load(self) -> float:
        return next((f for s, e, f in self.bursts if s <= self.t < e), 1.0)

    def charge(self, units: float) -> None:
        self.t += units * 1e-4 * self.load()


@pytest.fixture
def clock(monkeypatch):
    def install(seed: int, busy: bool = True) -> LoadedClock:
        fake = LoadedClock(seed, busy)
        monkeypatch.setattr(timing, "now", lambda: fake.t)
        for name, units in (("patch_features", lambda args: args[0].shape[-1] * args[0].shape[-2] / 64),
                            ("prefill", lambda args: args[0].inputs_embeds.shape[1] * 4),
                            ("decode_step", lambda args: 8)):
            real = getattr(Idefics3Adapter, name)

            def charged(self, *args, _real=real, _units=units, **kwargs):
                fake.charge(_units(args))
                return _real(self, *args, **kwargs)

            monkeypatch.setattr(Idefics3Adapter, name, charged)
        return fake

    return install


def _cases(tiny, names):
    return [Case(label, tiny.engine.run(name)) for label, name in zip(case_labels(names), names)]


def test_aa_check_under_load_and_a_real_difference_found(tiny, images, clock):
    """dense#1 vs dense#2 under a bursty neighbour: no measurable difference; dense vs dense-bypass (4x the
    visual tokens, a longer prefill): measured as slower, with an interval excluding 1."""
    fake = clock(seed=3)
    rows, pairs = measure_cases(_cases(tiny, ["dense", "dense", "dense-bypass"]), images[:1], QUESTION, 64,
                                reps=40, warmup=1, decode_tokens=3, flops=False)
    by_pair = {(p["case_a"], p["case_b"]): p for p in pairs}
    assert by_pair[("dense#1", "dense#2")]["verdict"] == stats.NO_DIFFERENCE
    assert by_pair[("dense#1", "dense-bypass")]["verdict"] == "slower"
    assert by_pair[("dense#2", "dense-bypass")]["verdict"] == "slower"
    row = {r["case"]: r for r in rows}
    assert row["dense#2"]["speedup_verdict"] == stats.NO_DIFFERENCE
    assert row["dense-bypass"]["speedup_ci_high"] < 1.0 and row["dense-bypass"]["speedup_reference"] == "dense#1"
    assert all(r["unstable"] for r in rows)  # the load is seen and flagged
    assert any(f > 1 for _, _, f in fake.bursts if f)


def test_without_load_the_same_cases_are_stable_and_auto_stops_on_precision(tiny, images, clock):
    clock(seed=3, busy=False)
    rows, pairs = measure_cases(_cases(tiny, ["dense", "dense", "dense-bypass"]), images[:1], QUESTION, 64,
                                reps="auto", warmup=0, decode_tokens=3, flops=False)
    assert not any(r["unstable"] for r in rows)
    first = -(-MIN_AUTO_ROUNDS // 3) * 3  # judged after whole rotations of the 3 cases: 12 rounds
    assert rows[0]["n"] == first  # no noise: the first judgement is already precise
    assert rows[0]["reps_stopped"] == f"precision: every interval within 5% after {first} rounds"
    assert {p["verdict"] for p in pairs if p["case_b"] == "dense#2"} == {stats.NO_DIFFERENCE}


def test_auto_stops_at_the_deadline_when_intervals_stay_wide(tiny, images, clock):
    fake = clock(seed=5)
    rows, _ = measure_cases(_cases(tiny, ["dense", "dense", "qgsa"]), images[:1], QUESTION, 64, reps="auto",
                            warmup=0, decode_tokens=2, flops=False, deadline=0.0)
    assert rows[0]["reps_stopped"].startswith("--max-time spent after 12 rounds")
    assert fake.t > 0


class FakeCuda:
    """CUDA events and synchronize on the fake clock: counts synchronisations and events recorded."""

    def __init__(self, fake):
        self.fake, self.syncs, self.events = fake, 0, 0

    def event(self):
        outer = self

        class Event:
            def record(self):
                outer.events += 1
                self.t = outer.fake.t

            def elapsed_time(self, other):
                return (other.t - self.t) * 1000.0

        return Event()

    def synchronize(self):
        self.syncs += 1


def test_gpu_stages_are_marked_without_synchronising_between_them(tiny, images, clock, monkeypatch):
    """On GPU a run records an event at each stage boundary and synchronises once, at the end; the same
    run as one region records two events; the difference of the totals is the cost of observing."""
    import torch

    from qgsa_bench.experiments import measure
    from qgsa_bench.experiments.runner import time_run

    fake = clock(seed=1, busy=False)
    cuda = FakeCuda(fake)
    monkeypatch.setattr(measure, "clock_for", lambda device: timing.StageClock(
        torch.device("cuda"), event=cuda.event, synchronize=cuda.synchronize))
    pixels = tiny.adapter.pixel_values(images[:1], 64)
    case = Case("dense", tiny.engine.run("dense"))
    staged = measure.time_once(case, pixels, QUESTION, 3)
    assert (cuda.events, cuda.syncs) == (5, 1)
    stages = staged["vision_ms"] + staged["connector_ms"] + staged["prefill_ms"] + 2 * staged["decode_ms_per_token"]
    assert staged["latency_ms"] == pytest.approx(stages) and staged["prefill_ms"] > 0
    whole = measure.time_once(case, pixels, QUESTION, 3, stages=False)
    assert (cuda.events, cuda.syncs) == (7, 2) and np.isnan(whole["vision_ms"])
    assert whole["latency_ms"] == pytest.approx(staged["latency_ms"])  # fake work costs the same either way
    both = time_run(case, pixels, QUESTION, 3, cuda=True)
    assert (cuda.events, cuda.syncs) == (14, 4)
    assert both["staged_latency_ms"] == pytest.approx(both["latency_ms"])
