import numpy as np
import pytest

from labs_lib import timing


def test_summary_percentiles_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=501)
    s = timing.summarize(x)
    for q, got in zip((50, 90, 95, 99), (s.p50, s.p90, s.p95, s.p99), strict=True):
        assert got == pytest.approx(np.percentile(x, q))
    assert s.n == 501 and s.mean == pytest.approx(x.mean())
    assert (s.min, s.max) == (x.min(), x.max())


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
