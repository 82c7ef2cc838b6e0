"""Read a Prometheus `/metrics` page (vLLM's `vllm:*` series) and compare phases.

    before = scrape(url)
    ...  # the measured phase
    after = scrape(url)
    d = delta(before, after)
    d.counter("vllm:prefix_cache_hits")          # hits during the phase
    d.histogram_quantile("vllm:time_to_first_token_seconds", 0.5)
    d.histogram_mean("vllm:time_to_first_token_seconds")
    server_summary(d)                            # the engine's view of the phase, in one dict

Counters and histograms are cumulative since the server started, so only differences between
two scrapes describe one phase. Parsing uses prometheus_client's text parser.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


@dataclass
class Snapshot:
    """All samples of one scrape: {(name, labels): value}."""

    samples: dict[Key, float]

    def _select(self, name: str, **labels: str) -> dict[Key, float]:
        want = set(labels.items())
        return {k: v for k, v in self.samples.items() if k[0] == name and want <= set(k[1])}

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels` (0 if none)."""
        return float(sum(self._select(name, **labels).values()))

    def info(self, name: str) -> dict[str, str] | None:
        """The labels of an info-style gauge (e.g. 'vllm:cache_config_info'), or None."""
        for (n, lab), _ in self.samples.items():
            if n == name:
                return dict(lab)
        return None

    def counter(self, name: str, **labels: str) -> float:
        """A counter by its family name ('vllm:prefix_cache_hits'; '_total' is added)."""
        base = name.removesuffix("_total")
        return self.value(base + "_total", **labels)

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """[(upper bound, cumulative count)] of a histogram, summed over other labels."""
        acc: dict[float, float] = defaultdict(float)
        for (_, lab), v in self._select(name + "_bucket", **labels).items():
            le = dict(lab)["le"]
            acc[math.inf if le in ("+Inf", "inf") else float(le)] += v
        return sorted(acc.items())

    def histogram_quantile(self, name: str, q: float, **labels: str) -> float:
        """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
        return histogram_quantile(q, self.buckets(name, **labels))

    def histogram_mean(self, name: str, **labels: str) -> float:
        """sum / count: exact, unlike quantiles, which buckets make coarse."""
        count = self.value(name + "_count", **labels)
        return self.value(name + "_sum", **labels) / count if count else math.nan

    def histogram_count(self, name: str, **labels: str) -> float:
        return self.value(name + "_count", **labels)


def parse(text: str) -> Snapshot:
    """Parse Prometheus text exposition format."""
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return Snapshot(samples)


def scrape(base_url: str, timeout: float = 10.0) -> Snapshot:
    import httpx

    r = httpx.get(base_url.rstrip("/") + "/metrics", timeout=timeout)
    r.raise_for_status()
    return parse(r.text)


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    """after - before for every sample (gauges too: read gauges from `after` directly)."""
    keys = set(before.samples) | set(after.samples)
    return Snapshot({k: after.samples.get(k, 0.0) - before.samples.get(k, 0.0) for k in keys})


# vLLM's per-request histograms (seconds) that `server_summary` reads: (key, metric family)
SERVER_LATENCIES = (
    ("ttft", "vllm:time_to_first_token_seconds"),  # arrival at the engine -> first token
    ("itl", "vllm:inter_token_latency_seconds"),  # one sample per decoded token after the first
    ("e2e", "vllm:e2e_request_latency_seconds"),  # arrival -> finished
    ("queue", "vllm:request_queue_time_seconds"),  # waiting before first scheduled
)


def server_summary(d: Snapshot, unit_scale: float = 1.0) -> dict[str, float]:
    """What vLLM's own /metrics say about one phase; `d` is `delta(before, after)`.

    Counts: `requests` completed (the `vllm:request_success` counter over every finished reason
    except 'abort' and 'error', so it counts what a client sees finish), prompt and generated
    tokens, preemptions. Latencies (seconds x `unit_scale`): the mean (exact: sum/count) of each
    histogram in SERVER_LATENCIES, and p50/p99 interpolated inside buckets (coarse). A metric the
    server does not export reads 0 (counters) or nan (latencies).

    >>> d = parse(
    ...     '# TYPE vllm:request_success counter\\n'
    ...     'vllm:request_success_total{finished_reason="length"} 3\\n'
    ...     'vllm:request_success_total{finished_reason="abort"} 1\\n'
    ...     '# TYPE vllm:time_to_first_token_seconds histogram\\n'
    ...     'vllm:time_to_first_token_seconds_bucket{le="0.1"} 1\\n'
    ...     'vllm:time_to_first_token_seconds_bucket{le="0.2"} 3\\n'
    ...     'vllm:time_to_first_token_seconds_bucket{le="+Inf"} 3\\n'
    ...     'vllm:time_to_first_token_seconds_count 3\\n'
    ...     'vllm:time_to_first_token_seconds_sum 0.45\\n')
    >>> s = server_summary(d, unit_scale=1e3)  # latencies in ms
    >>> s["requests"], round(s["ttft_mean"], 3), round(s["ttft_p50"], 3), s["preemptions"]
    (3.0, 150.0, 125.0, 0.0)
    """
    finished = d.counter("vllm:request_success")
    failed = sum(d.counter("vllm:request_success", finished_reason=r) for r in ("abort", "error"))
    out = {"requests": finished - failed,
           "prompt_tokens": d.counter("vllm:prompt_tokens"),
           "generation_tokens": d.counter("vllm:generation_tokens"),
           "preemptions": d.counter("vllm:num_preemptions")}
    for key, name in SERVER_LATENCIES:
        out[f"{key}_mean"] = d.histogram_mean(name) * unit_scale
        out[f"{key}_p50"] = d.histogram_quantile(name, 0.5) * unit_scale
        out[f"{key}_p99"] = d.histogram_quantile(name, 0.99) * unit_scale
    return out


def summary_from_delta(before: Snapshot, after: Snapshot, unit_scale: float = 1.0) -> dict[str, float]:
    """`server_summary` of the phase between two scrapes of the same server.

    >>> page = "# TYPE vllm:generation_tokens counter\\nvllm:generation_tokens_total {}\\n"
    >>> summary_from_delta(parse(page.format(10)), parse(page.format(74)))["generation_tokens"]
    64.0
    """
    return server_summary(delta(before, after), unit_scale)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Quantile from cumulative buckets [(le, count)], as Prometheus computes it.

    >>> round(histogram_quantile(0.5, [(0.1, 0.0), (0.2, 10.0), (float("inf"), 10.0)]), 6)
    0.15
    """
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # the quantile lies in the +Inf bucket: report its lower bound
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le
