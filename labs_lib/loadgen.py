"""Load shapes for a streaming server: fixed concurrency, Poisson arrivals, bursty (gamma) arrivals.

Every run is bounded in count (the requests given) and in time (`max_seconds`: no new request
starts after it). Warm-up requests run first and are excluded from the results; use
`workload.warmup_prompts` so they do not prime the prefix cache for the measured prompts.

    load = Load("concurrency", concurrency=8)
    results = run_load(url, model, requests, load, warmup=warm)

`client_ceiling()` measures what the client itself can drive on this machine (against the mock),
so a server benchmark can show that the client was not the bottleneck.

If the server dies during a run (killed, out of memory), the run stops with
`procs.ServerExitedError`: the server's exit code and its log's last lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import params, procs
from .client import RequestResult, StreamingClient


@dataclass(frozen=True)
class Load:
    """How requests arrive.

    kind: 'concurrency' (a fixed number in flight), 'poisson' (rate req/s, exponential gaps) or
    'gamma' (rate req/s, gamma gaps with shape `burstiness`: < 1 burstier than Poisson, 1 equals
    Poisson, > 1 more regular). `concurrency` also caps the rate shapes when given.
    """

    kind: str
    concurrency: int | None = None
    rate: float | None = None
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        params.choice("kind", self.kind, ["concurrency", "poisson", "gamma"])
        if self.kind == "concurrency":
            params.positive_int("concurrency", self.concurrency)
        else:
            params.positive_float("rate", self.rate)
            params.positive_float("burstiness", self.burstiness)
            if self.concurrency is not None:
                params.positive_int("concurrency", self.concurrency)

    def arrival_offsets(self, n: int, seed: int = 0) -> list[float]:
        """Seconds after the start at which each of `n` requests is sent (0s for concurrency).

        >>> Load("poisson", rate=10).arrival_offsets(3, seed=1)[0] == 0.0
        True
        """
        params.positive_int("n", n)
        if self.kind == "concurrency":
            return [0.0] * n
        rng = np.random.default_rng(seed)
        shape = 1.0 if self.kind == "poisson" else self.burstiness
        gaps = rng.gamma(shape, 1.0 / (self.rate * shape), n - 1)
        return [0.0, *np.cumsum(gaps).tolist()]

    def describe(self) -> str:
        if self.kind == "concurrency":
            return f"concurrency {self.concurrency}"
        cap = f", at most {self.concurrency} in flight" if self.concurrency else ""
        b = f", burstiness {self.burstiness:g}" if self.kind == "gamma" else ""
        return f"{self.kind} {self.rate:g} req/s{b}{cap}"


@dataclass
class Request:
    """One request to send: a prompt (text or token ids) and its output length."""

    prompt: str | list[int]
    max_tokens: int


@dataclass
class LoadResult:
    results: list[RequestResult]
    load: Load
    wall_s: float  # first send of a measured request to last completion
    warmup_n: int
    stopped_early: bool  # max_seconds cut the run short
    metrics: Any = None  # prom.Snapshot: the server's /metrics delta over the measured phase

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]


async def _drive(client: StreamingClient, requests: Sequence[Request], load: Load,
                 max_seconds: float, progress: bool, seed: int, extra: dict[str, Any] | None,
                 label: str = "") -> LoadResult:
    """Send one class of requests with its arrival pattern on an open client."""
    bar = None
    if progress:
        from tqdm import tqdm  # plain text bar: readable in executed notebooks and logs

        bar = tqdm(total=len(requests), desc=label or load.describe(), leave=False, mininterval=5.0)
    sem = asyncio.Semaphore(load.concurrency or len(requests))
    offsets = load.arrival_offsets(len(requests), seed)
    start = time.perf_counter()
    deadline = start + max_seconds
    stopped = False

    async def one(req: Request, offset: float) -> RequestResult | None:
        nonlocal stopped
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with sem:
            if time.perf_counter() > deadline:
                stopped = True
                return None
            r = await client.complete(req.prompt, req.max_tokens, extra=extra)
        if bar is not None:
            bar.update(1)
        return r

    done = await asyncio.gather(*(one(r, o) for r, o in zip(requests, offsets, strict=True)))
    if bar is not None:
        bar.close()
    results = [r for r in done if r is not None]
    first = min((r.send_time for r in results), default=start)
    last = max((r.send_time + (r.e2e or 0) for r in results), default=start)
    return LoadResult(results, load, last - first, 0, stopped)


async def _run(url: str, model: str, classes: Sequence[tuple[Sequence[Request], Load]],
               warmup: Sequence[Request], max_seconds: float, progress: bool, seed: int,
               extra: dict[str, Any] | None, on_measure_start: Callable[[], Any] | None
               ) -> list[LoadResult]:
    async with StreamingClient(url, model) as client:
        if warmup:
            await asyncio.gather(*(client.complete(w.prompt, w.max_tokens, extra=extra)
                                   for w in warmup))
        if on_measure_start is not None:
            on_measure_start()
        out = await asyncio.gather(*(
            _drive(client, reqs, load, max_seconds, progress, seed + i, extra,
                   label=f"class {i}: {load.describe()}" if len(classes) > 1 else "")
            for i, (reqs, load) in enumerate(classes)))
    for r in out:
        r.warmup_n = len(warmup)
    return list(out)


def _run_sync(coro: Any) -> Any:
    """Run a coroutine to completion, also from inside Jupyter (where a loop is running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


def run_load(url: str, model: str, requests: Sequence[Request], load: Load, *,
             warmup: Sequence[Request] = (), max_seconds: float = 600.0, progress: bool = True,
             seed: int = 0, extra: dict[str, Any] | None = None,
             scrape_metrics: bool = False) -> LoadResult:
    """Send `requests` with the arrival pattern `load`; warm-up first, excluded from results.

    With `scrape_metrics`, the server's /metrics is read after warm-up and after the last
    request, and `result.metrics` holds the difference: counters and histograms of exactly the
    measured requests. Works from a notebook too (where an event loop is already running).
    """
    from . import prom

    if not requests:
        raise ValueError("requests must not be empty")
    params.positive_float("max_seconds", max_seconds)
    before: dict[str, Any] = {}
    hook = (lambda: before.update(snap=_scrape(url))) if scrape_metrics else None
    res = _run_sync(_run(url, model, [(list(requests), load)], list(warmup), max_seconds,
                         progress, seed, extra, hook))[0]
    if scrape_metrics:
        res.metrics = prom.delta(before["snap"], _scrape(url))
    return res


def _scrape(url: str) -> Any:
    """/metrics of `url`; a server that died says so (exit code, log) instead of a bare
    connection error."""
    import httpx

    from . import prom

    try:
        return prom.scrape(url)
    except httpx.TransportError:
        procs.raise_if_exited(url)
        raise


def run_mixed(url: str, model: str, classes: Sequence[tuple[Sequence[Request], Load]], *,
              warmup: Sequence[Request] = (), max_seconds: float = 600.0, progress: bool = True,
              seed: int = 0) -> list[LoadResult]:
    """Several request classes at once, each with its own arrival pattern (e.g. long-running
    decode streams while long prompts arrive); one LoadResult per class, in order."""
    if not classes or any(not reqs for reqs, _ in classes):
        raise ValueError("classes must be a non-empty list of (non-empty requests, Load)")
    params.positive_float("max_seconds", max_seconds)
    return _run_sync(_run(url, model, [(list(r), ld) for r, ld in classes], list(warmup),
                          max_seconds, progress, seed, None, None))


def client_ceiling(concurrencies: Sequence[int] = (1, 8, 32, 128), n_per_level: int = 200,
                   tokens: int = 16, *, ttft: float = 0.02, itl: float = 0.005) -> dict[str, Any]:
    """What this client can drive on this machine, against the mock server.

    1. With zero latency, requests/s and tokens/s at each concurrency: the ceiling is the best.
    2. With known latencies (ttft, itl), the timing error at the highest concurrency: how far
       the measured TTFT/ITL medians are from the truth when the client is busiest.
    """
    from .mockserver import mock_server
    from .serving import summarize_load

    params.positive_ints("concurrencies", concurrencies)
    reqs = [Request([1, 2, 3, 4], tokens) for _ in range(n_per_level)]
    warm = [Request([5, 6], 2)] * 4
    levels = []
    with mock_server("0", "0") as url:
        for c in concurrencies:
            res = run_load(url, "mock", reqs, Load("concurrency", concurrency=c), warmup=warm,
                           progress=False)
            levels.append({"concurrency": c, "req_per_s": len(res.ok) / res.wall_s,
                           "tok_per_s": sum(r.n_out for r in res.ok) / res.wall_s})
    best = max(levels, key=lambda x: x["req_per_s"])
    c_max = max(concurrencies)
    with mock_server(str(ttft), str(itl)) as url:
        res = run_load(url, "mock", reqs, Load("concurrency", concurrency=c_max), warmup=warm,
                       progress=False)
    s = summarize_load(res)
    return {"levels": levels, "max_req_per_s": best["req_per_s"],
            "max_tok_per_s": max(x["tok_per_s"] for x in levels),
            "timing_concurrency": c_max, "true_ttft": ttft, "true_itl": itl,
            "ttft_p50_error": s["ttft"].p50 - ttft, "itl_p50_error": s["itl"].p50 - itl,
            "ttft_p99_error": s["ttft"].p99 - ttft, "itl_p99_error": s["itl"].p99 - itl}
