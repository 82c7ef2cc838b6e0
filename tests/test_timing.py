import numpy as np
import pytest

from labs_lib import timing


def test_summary_percentiles_hand_worked():
    # 1..10 in any order: the q-th percentile sits at rank q/100 x 9 between order statistics,
    # so p90 is 9 + 0.1 x (10 - 9) = 9.1, p95 9.55, p99 9.91
    s = timing.summarize([7, 3, 10, 1, 9, 5, 2, 8, 4, 6])
    assert (s.p50, s.p90, s.p95, s.p99) == pytest.approx((5.5, 9.1, 9.55, 9.91))
    assert (s.n, s.mean, s.min, s.max) == (10, pytest.approx(5.5), 1.0, 10.0)
    one = timing.summarize([0.25])
    assert (one.p50, one.p99, one.n) == (0.25, 0.25, 1)


def test_bootstrap_interval_contains_median_and_narrows_with_n():
    rng = np.random.default_rng(2)
    small, big = rng.normal(10, 1, 30), rng.normal(10, 1, 3000)
    lo_s, hi_s = timing.bootstrap_median_ci(small)
    lo_b, hi_b = timing.bootstrap_median_ci(big)
    assert lo_s <= np.median(small) <= hi_s
    assert lo_b <= np.median(big) <= hi_b
    assert hi_b - lo_b < hi_s - lo_s


def test_measure_counts_warmup_and_repeats_separately():
    calls = []
    samples = timing.measure(lambda: calls.append(1), warmup=3, repeats=7)
    assert len(samples) == 7 and len(calls) == 10
    assert all(s >= 0 for s in samples)


def test_measure_max_seconds_stops_early():
    import time

    samples = timing.measure(lambda: time.sleep(0.02), warmup=0, repeats=1000, max_seconds=0.1)
    assert 3 <= len(samples) < 20


@pytest.mark.parametrize("kw", [{"warmup": -1}, {"repeats": 0}, {"repeats": 2.5}, {"repeats": True}])
def test_measure_rejects_bad_counts(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        timing.measure(lambda: None, **kw)


def test_summarize_empty_is_a_clear_error():
    with pytest.raises(ValueError, match="zero samples"):
        timing.summarize([])


def test_scaled_and_as_dict():
    s = timing.summarize([0.001, 0.002, 0.003]).scaled(1e3)
    assert s.p50 == pytest.approx(2.0)
    d = s.as_dict("ms_")
    assert d["ms_n"] == 3 and d["ms_median_ci_lo"] <= 2.0 <= d["ms_median_ci_hi"]
