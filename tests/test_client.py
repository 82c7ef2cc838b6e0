"""The measuring instrument, checked against a mock whose latencies are known by construction."""

import random

import numpy as np
import pytest

from labs_lib import loadgen, serving, workload
from labs_lib.client import RequestResult, SSEParser
from labs_lib.loadgen import Load, Request, run_load
from labs_lib.mockserver import mock_server, parse_dist

# Timing tolerance: loopback + event-loop scheduling on a loaded 2-core CI machine.
TOL = 0.015


def _run(url, n=24, tokens=20, c=4, prompt_len=8, **kw):
    reqs = [Request(p, tokens) for p in workload.token_prompts(n, prompt_len, vocab_size=1000)]
    warm = [Request(p, 2) for p in workload.warmup_prompts(2, prompt_len, vocab_size=1000)]
    return run_load(url, "mock", reqs, Load("concurrency", concurrency=c), warmup=warm,
                    progress=False, **kw)


def test_client_measures_known_ttft_and_itl():
    with mock_server("0.06", "0.012") as url:
        res = _run(url)
    s = serving.summarize_load(res)
    assert s["n"] == 24 and s["failed"] == 0
    assert s["ttft"].p50 == pytest.approx(0.06, abs=TOL)
    assert s["itl"].p50 == pytest.approx(0.012, abs=TOL / 3)
    assert s["tpot"].p50 == pytest.approx(0.012, abs=TOL / 3)
    assert s["e2e"].p50 == pytest.approx(0.06 + 19 * 0.012, abs=2 * TOL)
    for r in res.results:  # E2E = TTFT + sum(ITL) + the short tail after the last token
        assert 0 <= r.e2e_residual < TOL
        assert r.n_out == r.streamed_tokens == 20 and r.prompt_tokens == 8


def test_client_recovers_random_latency_distributions():
    with mock_server("exp:0.04", "lognormal:0.01:0.3", seed=3) as url:
        res = _run(url, n=40, tokens=30, c=8)
    itl = np.array([x for r in res.ok for x in r.itl])
    ttft = np.array([r.ttft for r in res.ok])
    true_itl_mean = 0.01 * np.exp(0.3**2 / 2)  # lognormal mean from median and sigma
    assert itl.mean() == pytest.approx(true_itl_mean, rel=0.2)
    assert ttft.mean() == pytest.approx(0.04, rel=0.5)  # 40 exponential draws: wide on purpose


def test_sse_events_split_across_network_writes():
    with mock_server("0.01", "0.002", split_events=True) as url:
        res = _run(url, n=8, tokens=15)
    assert all(r.ok and r.streamed_tokens == 15 and r.completion_tokens == 15 for r in res.results)
    assert all(r.audit()["agree"] for r in res.results)


@pytest.mark.parametrize("seed", range(5))
def test_sse_parser_any_split_points(seed):
    events = [f'{{"i": {i}, "text": "tok {i} é"}}' for i in range(20)] + ["[DONE]"]
    stream = "".join(f"data: {e}\r\n\r\n" if i % 3 == 0 else f"data: {e}\n\n"
                     for i, e in enumerate(events)).encode()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), 40))
    parser, got = SSEParser(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += parser.feed(stream[a:b])  # splits fall mid-line and mid-UTF-8 character
    assert got == events


def test_multi_token_chunks_count_tokens_not_chunks():
    """Speculative decoding sends several tokens per chunk: ITL must be per token."""
    with mock_server("0.02", "0.01", tokens_per_chunk=3) as url:
        res = _run(url, n=6, tokens=12, c=2)
    for r in res.results:
        assert len(r.chunk_tokens) == 4 and r.streamed_tokens == r.completion_tokens == 12
        assert len(r.itl) == 11
    itl = np.array([x for r in res.results for x in r.itl])
    assert itl.mean() == pytest.approx(0.01, abs=0.004)


def test_token_accounting_audit_flags_disagreement():
    words = lambda text, add_special_tokens=False: {"input_ids": text.split()}  # noqa: E731
    r = RequestResult(1, 0.0, ok=True, ttft=0.1, e2e=0.3, chunk_times=[0.1, 0.2],
                      chunk_tokens=[1, 1], text=" t0 t1", completion_tokens=2)
    assert r.audit(words) == {"usage": 2, "streamed": 2, "token_ids_seen": False, "retokenized": 2,
                              "stream_agrees": True, "retokenized_agrees": True, "agree": True}
    r.completion_tokens = 3  # the server says 3, the stream showed 2
    a = r.audit(words)
    assert (a["agree"], a["stream_agrees"], a["retokenized_agrees"]) == (False, False, False)
    r.completion_tokens, r.text = 2, " t0t1"  # text that re-tokenizes differently
    a = r.audit(words)
    assert (a["stream_agrees"], a["retokenized_agrees"], a["agree"]) == (True, False, False)


def test_http_error_is_reported_not_raised():
    import asyncio

    from labs_lib.client import StreamingClient

    async def go(url):
        async with StreamingClient(url, "mock") as c:
            return await c.complete([1], 4, extra={"stream": True, "max_tokens": "x"})

    with mock_server("0", "0") as url:
        bad = asyncio.run(go(url + "/nowhere"))
    assert not bad.ok and bad.error.startswith("HTTP 404")


def test_arrival_patterns_have_the_asked_rate_and_burstiness():
    n = 4000
    pois = np.diff(Load("poisson", rate=20).arrival_offsets(n, seed=1))
    bursty = np.diff(Load("gamma", rate=20, burstiness=0.25).arrival_offsets(n, seed=1))
    assert pois.mean() == pytest.approx(1 / 20, rel=0.08)
    assert bursty.mean() == pytest.approx(1 / 20, rel=0.15)
    cv = lambda x: x.std() / x.mean()  # noqa: E731
    assert cv(pois) == pytest.approx(1.0, rel=0.1)
    assert cv(bursty) == pytest.approx(2.0, rel=0.15)  # gamma CV = 1/sqrt(shape)


def test_rate_load_is_bounded_in_time():
    with mock_server("0.01", "0.001") as url:
        reqs = [Request([1, 2], 4)] * 200
        res = run_load(url, "mock", reqs, Load("poisson", rate=20), max_seconds=1.0,
                       progress=False)
    assert res.stopped_early and 5 < len(res.results) < 60


@pytest.mark.parametrize("kw,match", [
    ({"kind": "closed"}, "kind must be one of"), ({"kind": "concurrency"}, "concurrency"),
    ({"kind": "poisson", "rate": 0}, "rate"), ({"kind": "gamma", "rate": 1, "burstiness": -1}, "burstiness")])
def test_load_rejects_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        Load(**kw)


def test_mock_rejects_bad_distribution_before_starting():
    with pytest.raises(ValueError, match="distribution must be"):
        with mock_server("fast", "0.01"):
            pass
    assert parse_dist("uniform:0.1:0.2")(random.Random(0)) == pytest.approx(0.1, abs=0.1)


def test_goodput_and_cost_arithmetic():
    mk = lambda i, ttft, e2e: RequestResult(i, 0.0, ok=True, ttft=ttft, e2e=e2e,  # noqa: E731
                                            chunk_times=[ttft, e2e], chunk_tokens=[1, 1],
                                            prompt_tokens=100, completion_tokens=2)
    res = loadgen.LoadResult([mk(1, 0.1, 0.2), mk(2, 0.5, 0.6), mk(3, 0.1, 1.1)],
                             Load("concurrency", concurrency=3), 2.0, 0, False)
    g = serving.goodput(res, ttft_slo=0.2, tpot_slo=0.5)
    assert (g["good"], g["goodput_req_per_s"]) == (1, 0.5)  # #2 misses TTFT, #3 misses TPOT (1.0 s)
    c = serving.cost(res, price_in_per_1m=1.0, price_out_per_1m=4.0, gpu_hour_price=3.6)
    assert c["usd_per_request"] == pytest.approx((100 * 1.0 + 2 * 4.0) / 1e6)
    assert c["operator_usd_per_request"] == pytest.approx(3.6 * 2.0 / 3600 / 3)
    with pytest.raises(ValueError, match="ttft_slo"):
        serving.goodput(res, ttft_slo=-1)


def test_summaries_match_numpy_percentiles():
    rng = np.random.default_rng(0)
    results = []
    for i in range(50):
        ttft = float(rng.uniform(0.05, 0.2))
        times = list(ttft + np.cumsum(rng.uniform(0.01, 0.02, 10)))
        results.append(RequestResult(i, 0.0, ok=True, ttft=ttft, e2e=times[-1] + 0.001,
                                     chunk_times=[ttft, *times], chunk_tokens=[1] * 11))
    s = serving.summarize_load(loadgen.LoadResult(results, Load("concurrency", concurrency=1),
                                                  5.0, 0, False))
    ttfts = [r.ttft for r in results]
    assert s["ttft"].p99 == pytest.approx(np.percentile(ttfts, 99))
    assert s["itl"].n == 500 and s["tpot"].n == 50
    assert s["output_tok_per_s"] == pytest.approx(50 * 11 / 5.0)


def test_workload_prompts_share_exactly_the_asked_prefix():
    ps = workload.token_prompts(10, 64, vocab_size=5000, shared_prefix_len=32)
    assert all(p[:32] == ps[0][:32] for p in ps)
    assert len({tuple(p[32:34]) for p in ps}) == 10  # private parts differ from their first token
    # warm-up prompts share no leading tokens with measured ones: they cannot prime the cache
    measured = workload.token_prompts(50, 64, vocab_size=5000, seed=3)
    warm = workload.warmup_prompts(50, 64, vocab_size=5000)
    assert all(w[:2] != p[:2] for w in warm for p in measured)
    assert all(16 <= t < 5000 for p in ps for t in p)
    lens = workload.output_lengths(2000, dist="exponential", mean=50, lo=1, hi=400, seed=1)
    assert 40 < np.mean(lens) < 60 and min(lens) >= 1 and max(lens) <= 400


def test_mixed_classes_run_concurrently_and_report_separately():
    with mock_server("0.02", "0.01") as url:
        long_streams = [Request([1] * 8, 40)] * 4
        bursts = [Request([2] * 8, 2)] * 6
        t_long, t_burst = loadgen.run_mixed(
            url, "mock", [(long_streams, Load("concurrency", concurrency=4)),
                          (bursts, Load("poisson", rate=30))], progress=False)
    assert len(t_long.results) == 4 and len(t_burst.results) == 6
    assert all(r.n_out == 40 for r in t_long.results) and all(r.n_out == 2 for r in t_burst.results)
    # the bursts ran while the long streams were still going, not after them
    assert min(r.send_time for r in t_burst.results) < max(r.send_time + r.e2e for r in t_long.results)


def test_scrape_metrics_covers_only_the_measured_phase():
    with mock_server("0.005", "0.001") as url:
        reqs = [Request([1, 2], 3)] * 7
        res = run_load(url, "mock", reqs, Load("concurrency", concurrency=3),
                       warmup=[Request([3], 2)] * 4, progress=False, scrape_metrics=True)
    assert res.metrics.counter("mock:requests") == 7  # the 4 warm-up requests are excluded
