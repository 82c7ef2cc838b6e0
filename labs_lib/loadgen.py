"""Load shapes for a streaming server: fixed concurrency, Poisson arrivals, bursty (gamma) arrivals.

Every run is bounded in count (the requests given) and in time (`max_seconds`: no new request
starts after it). Warm-up requests run first and are excluded from the results; use
`workload.warmup_prompts` so they do not prime the prefix cache for the measured prompts.

    load = Load("concurrency", concurrency=8)
    results = run_load(url, model, requests, load, warmup=warm)
    points = concurrency_sweep(url, model, [1, 4, 16], lambda c: requests[:4 * c], warmup=warm)
    rows = [p.row("concurrency") for p in points]  # client and server summaries, one row each

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

from . import params, procs, prom, serving
from .client import RequestResult, StreamingClient
from .loadtypes import Load, LoadResult, Request

__all__ = ["Load", "LoadResult", "Point", "Request", "client_ceiling", "concurrency_sweep",
           "progress_bar", "run_load", "run_mixed", "sweep"]  # Load, LoadResult, Request: loadtypes


def progress_bar(total: int, desc: str, *, unit: str = "point", leave: bool = True,
                 enabled: bool = True) -> Any:
    """A `tqdm.auto` bar: a widget in Jupyter where ipywidgets is installed, text elsewhere.

    It redraws at most every 5 s, so an executed notebook or a log keeps a few lines per bar,
    not one per update; its rate shows the time per `unit` (e.g. "12.3s/point").

    >>> bar = progress_bar(3, "demo", enabled=False)
    >>> bar.update(3); bar.close()
    """
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():  # no ipywidgets in a kernel: text bar, without a warning
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, mininterval=5.0,
                disable=not enabled)


async def _drive(client: StreamingClient, requests: Sequence[Request], load: Load,
                 max_seconds: float, progress: bool, seed: int, extra: dict[str, Any] | None,
                 label: str = "") -> LoadResult:
    """Send one class of requests with its arrival pattern on an open client."""
    bar = progress_bar(len(requests), label or load.describe(), unit="req",
                       leave=False) if progress else None
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


@dataclass
class Point:
    """One measured point of a sweep: its label, the raw result and what it means.

    `summary` is the client's (`serving.summarize_load`, seconds); `goodput` is
    `serving.goodput` under the sweep's SLOs (None without SLOs); `result.metrics` is the
    server's /metrics delta around exactly the measured requests, which `row()` summarizes
    (`prom.server_summary`) next to the client's numbers.
    """

    label: Any
    result: LoadResult
    summary: dict[str, Any]
    goodput: dict[str, float] | None = None

    def row(self, key: str = "point", unit_scale: float = 1e3) -> dict[str, Any]:
        """One flat dict for a DataFrame or a record: `key` = the label, the client's summary
        (`serving.flat`, latencies x `unit_scale`: ms), goodput, and the server's summary with
        its keys prefixed `server_` (same unit).

        >>> from labs_lib.client import RequestResult
        >>> r = RequestResult(1, 0.0, ok=True, ttft=0.1, e2e=0.3, chunk_times=[0.1, 0.2, 0.3],
        ...                   chunk_tokens=[1, 1, 1])
        >>> res = LoadResult([r], Load("concurrency", concurrency=1), 0.3, 0, False)
        >>> row = Point(1, res, serving.summarize_load(res)).row("concurrency")
        >>> row["concurrency"], row["n"], round(row["ttft_p50"], 1), round(row["output_tok_per_s"], 1)
        (1, 1, 100.0, 10.0)
        """
        out: dict[str, Any] = {key: self.label, **serving.flat(self.summary, unit_scale)}
        if self.goodput is not None:
            out.update(goodput_req_per_s=self.goodput["goodput_req_per_s"],
                       slo_met=self.goodput["fraction"])
        if self.result.metrics:
            out.update({f"server_{k}": v for k, v in
                        prom.server_summary(self.result.metrics, unit_scale).items()})
        return out


def sweep(url: str, model: str, points: Sequence[tuple[Any, Sequence[Request], Load]], *,
          warmup: Sequence[Request] = (), ttft_slo: float | None = None,
          tpot_slo: float | None = None, max_seconds: float = 600.0, progress: bool = True,
          desc: str = "sweep", extra: dict[str, Any] | None = None) -> list[Point]:
    """Run each (label, requests, load) in turn against one server; one `Point` each.

    Every point sends `warmup` first (excluded), then its requests, with the server's /metrics
    scraped right before and after the measured requests (`Point.result.metrics`). One progress bar for
    the whole sweep (points done, time per point, the last point's output tokens/s); the runs
    inside it show none. A point in which no request succeeded stops the sweep with the errors.

    >>> from labs_lib.mockserver import mock_server
    >>> with mock_server("0", "0") as url:
    ...     pts = sweep(url, "mock", [("short", [Request([1, 2], 2)] * 3, Load("concurrency", concurrency=3)),
    ...                               ("long", [Request([1, 2], 8)] * 2, Load("concurrency", concurrency=1))],
    ...                 progress=False)
    >>> [(p.label, p.summary["n"], p.result.results[0].n_out) for p in pts]
    [('short', 3, 2), ('long', 2, 8)]
    """
    if not points:
        raise ValueError("points must not be empty")
    out: list[Point] = []
    with progress_bar(len(points), desc, enabled=progress) as bar:
        for label, reqs, load in points:
            res = run_load(url, model, reqs, load, warmup=warmup, max_seconds=max_seconds,
                           progress=False, extra=extra, scrape_metrics=True)
            s = serving.summarize_load(res)
            g = (serving.goodput(res, ttft_slo=ttft_slo, tpot_slo=tpot_slo)
                 if ttft_slo is not None or tpot_slo is not None else None)
            out.append(Point(label, res, s, g))
            bar.set_postfix_str(f"{label}: {s['output_tok_per_s']:,.1f} tok/s", refresh=False)
            bar.update(1)
    return out


def concurrency_sweep(url: str, model: str, concurrencies: Sequence[int],
                      make_requests: Callable[[int], Sequence[Request]], *,
                      warmup: Sequence[Request] = (), ttft_slo: float | None = None,
                      tpot_slo: float | None = None, max_seconds: float = 600.0,
                      progress: bool = True) -> list[Point]:
    """A fixed-concurrency load at each level in `concurrencies`, on one server, in order.

    `make_requests(c)` gives the measured requests of level c (e.g. a few times c, so that the
    level runs at c in flight for most of its time). Each level sends `warmup` first; its
    `Point.label` is the concurrency. Use `Point.row("concurrency")` for a table.

    >>> from labs_lib.mockserver import mock_server
    >>> with mock_server("0", "0") as url:
    ...     pts = concurrency_sweep(url, "mock", [1, 4], lambda c: [Request([1, 2], 4)] * (2 * c),
    ...                             warmup=[Request([3], 2)], tpot_slo=1.0, progress=False)
    >>> [(p.label, p.summary["n"], p.goodput["fraction"]) for p in pts]
    [(1, 2, 1.0), (4, 8, 1.0)]
    """
    levels = params.positive_ints("concurrencies", concurrencies)
    points = [(c, list(make_requests(c)), Load("concurrency", concurrency=c)) for c in levels]
    return sweep(url, model, points, warmup=warmup, ttft_slo=ttft_slo, tpot_slo=tpot_slo,
                 max_seconds=max_seconds, progress=progress, desc="concurrency sweep")


def client_ceiling(concurrencies: Sequence[int] = (1, 8, 32, 128), n_per_level: int = 200,
                   tokens: int = 16, *, ttft: float = 0.02, itl: float = 0.005,
                   progress: bool = True) -> dict[str, Any]:
    """What this client can drive on this machine, against the mock server.

    1. With zero latency, requests/s and tokens/s at each concurrency: the ceiling is the best.
    2. With known latencies (ttft, itl), the timing error at the highest concurrency: how far
       the measured TTFT/ITL medians are from the truth when the client is busiest.
    """
    from .mockserver import mock_server  # here: the mock's module is not needed elsewhere

    params.positive_ints("concurrencies", concurrencies)
    reqs = [Request([1, 2, 3, 4], tokens) for _ in range(n_per_level)]
    warm = [Request([5, 6], 2)] * 4
    levels = []
    c_max = max(concurrencies)
    with progress_bar(len(concurrencies) + 1, "client ceiling", enabled=progress) as bar:
        with mock_server("0", "0") as url:
            for c in concurrencies:
                res = run_load(url, "mock", reqs, Load("concurrency", concurrency=c), warmup=warm,
                               progress=False)
                levels.append({"concurrency": c, "req_per_s": len(res.ok) / res.wall_s,
                               "tok_per_s": sum(r.n_out for r in res.ok) / res.wall_s})
                bar.update(1)
        with mock_server(str(ttft), str(itl)) as url:
            res = run_load(url, "mock", reqs, Load("concurrency", concurrency=c_max), warmup=warm,
                           progress=False)
            bar.update(1)
    best = max(levels, key=lambda x: x["req_per_s"])
    s = serving.summarize_load(res)
    return {"levels": levels, "max_req_per_s": best["req_per_s"],
            "max_tok_per_s": max(x["tok_per_s"] for x in levels),
            "timing_concurrency": c_max, "true_ttft": ttft, "true_itl": itl,
            "ttft_p50_error": s["ttft"].p50 - ttft, "itl_p50_error": s["itl"].p50 - itl,
            "ttft_p99_error": s["ttft"].p99 - ttft, "itl_p99_error": s["itl"].p99 - itl}
