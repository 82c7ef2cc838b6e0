"""Summaries of a serving run: latency percentiles, throughput, goodput and cost.

Definitions (as `vllm bench serve` uses them):
- TTFT: send -> first token. TPOT: (E2E - TTFT) / (n_out - 1), per request.
- ITL: gaps between consecutive tokens, pooled over all requests.
- E2E: send -> end of stream.
- throughput: completed requests (and tokens) / wall time of the measured phase.
- goodput: requests per second that met every SLO given (others count as failures).

>>> from labs_lib.client import RequestResult
>>> r = RequestResult(1, 0.0, ok=True, ttft=0.1, e2e=0.5, chunk_times=[0.1, 0.3, 0.5],
...                   chunk_tokens=[1, 1, 1], completion_tokens=3)
>>> round(r.tpot, 3), [round(x, 3) for x in r.itl]
(0.2, [0.2, 0.2])
"""

from __future__ import annotations

from typing import Any

from . import params, timing
from .loadtypes import LoadResult  # not from loadgen: loadgen builds on these summaries


def summarize_load(res: LoadResult) -> dict[str, Any]:
    """TTFT, TPOT, ITL, E2E summaries (seconds) and throughput of one load run.

    >>> from labs_lib.client import RequestResult
    >>> from labs_lib.loadtypes import Load, LoadResult
    >>> r = RequestResult(1, 0.0, ok=True, ttft=0.1, e2e=0.5, chunk_times=[0.1, 0.3, 0.5],
    ...                   chunk_tokens=[1, 1, 1])
    >>> s = summarize_load(LoadResult([r], Load("concurrency", concurrency=1), 0.5, 0, False))
    >>> s["n"], round(s["tpot"].p50, 3), s["output_tok_per_s"]
    (1, 0.2, 6.0)
    """
    ok = res.ok
    if not ok:
        errors = {r.error for r in res.results}
        raise RuntimeError(f"no request succeeded under {res.load.describe()}; errors: {errors}")
    out: dict[str, Any] = {
        "n": len(ok), "failed": len(res.results) - len(ok), "wall_s": res.wall_s,
        "ttft": timing.summarize([r.ttft for r in ok]),
        "e2e": timing.summarize([r.e2e for r in ok]),
        "req_per_s": len(ok) / res.wall_s,
        "output_tok_per_s": sum(r.n_out for r in ok) / res.wall_s,
        "total_tok_per_s": sum(r.n_out + (r.prompt_tokens or 0) for r in ok) / res.wall_s,
    }
    tpots = [r.tpot for r in ok if r.tpot is not None]
    itls = [x for r in ok for x in r.itl]
    out["tpot"] = timing.summarize(tpots) if tpots else None
    out["itl"] = timing.summarize(itls) if itls else None
    return out


def flat(summary: dict[str, Any], unit_scale: float = 1e3) -> dict[str, float]:
    """One flat dict (latencies in ms by default) for a DataFrame row or a record.

    >>> from labs_lib import timing
    >>> flat({"n": 2, "ttft": timing.summarize([0.1, 0.3]), "tpot": None})["ttft_p50"]
    200.0
    """
    row: dict[str, float] = {}
    for k, v in summary.items():
        if isinstance(v, timing.Summary):
            s = v.scaled(unit_scale)
            row.update({f"{k}_p50": s.p50, f"{k}_p90": s.p90, f"{k}_p99": s.p99,
                        f"{k}_mean": s.mean, f"{k}_n": s.n})
        elif v is not None:
            row[k] = v
    return row


def goodput(res: LoadResult, *, ttft_slo: float | None = None, tpot_slo: float | None = None,
            e2e_slo: float | None = None) -> dict[str, float]:
    """Requests/s (and fraction) that met every SLO given, in seconds.

    >>> from labs_lib.loadtypes import Load, LoadResult
    >>> from labs_lib.client import RequestResult
    >>> fast = RequestResult(1, 0.0, ok=True, ttft=0.1, e2e=1.0, chunk_times=[0.1], chunk_tokens=[1])
    >>> slow = RequestResult(2, 0.0, ok=True, ttft=0.9, e2e=1.0, chunk_times=[0.9], chunk_tokens=[1])
    >>> goodput(LoadResult([fast, slow], Load("concurrency", concurrency=2), 2.0, 0, False), ttft_slo=0.5)
    {'good': 1, 'total': 2, 'fraction': 0.5, 'goodput_req_per_s': 0.5}
    """
    slos = {"ttft": ttft_slo, "tpot": tpot_slo, "e2e": e2e_slo}
    for k, v in slos.items():
        if v is not None:
            params.positive_float(f"{k}_slo", v)

    def meets(r) -> bool:
        if not r.ok:
            return False
        for k, limit in slos.items():
            val = getattr(r, k)
            if limit is not None and (val is None or val > limit):
                return False
        return True

    good = sum(meets(r) for r in res.results)
    total = len(res.results)
    return {"good": good, "total": total, "fraction": good / total if total else 0.0,
            "goodput_req_per_s": good / res.wall_s}


def cost(res: LoadResult, *, price_in_per_1m: float, price_out_per_1m: float,
         gpu_hour_price: float | None = None) -> dict[str, float]:
    """Cost per request and per 1M tokens.

    API view: prices per 1M input and output tokens (what a provider charges).
    Operator view (with `gpu_hour_price`): what the measured throughput costs on this machine.

    >>> from labs_lib.loadtypes import Load, LoadResult
    >>> from labs_lib.client import RequestResult
    >>> r = RequestResult(1, 0.0, ok=True, ttft=0.1, e2e=1.0, chunk_times=[0.1], chunk_tokens=[1],
    ...                   prompt_tokens=1000, completion_tokens=500)
    >>> c = cost(LoadResult([r], Load("concurrency", concurrency=1), 1.0, 0, False),
    ...          price_in_per_1m=0.5, price_out_per_1m=1.5)
    >>> c["usd_per_request"], c["usd_per_1m_output_tokens_all_in"]
    (0.00125, 2.5)
    """
    params.positive_float("price_in_per_1m", price_in_per_1m)
    params.positive_float("price_out_per_1m", price_out_per_1m)
    ok = res.ok
    tin = sum(r.prompt_tokens or 0 for r in ok)
    tout = sum(r.n_out for r in ok)
    usd = (tin * price_in_per_1m + tout * price_out_per_1m) / 1e6
    out = {"requests": len(ok), "input_tokens": tin, "output_tokens": tout,
           "usd_per_request": usd / len(ok) if ok else float("nan"),
           "usd_per_1m_output_tokens_all_in": usd / tout * 1e6 if tout else float("nan")}
    if gpu_hour_price is not None:
        params.positive_float("gpu_hour_price", gpu_hour_price)
        usd_machine = gpu_hour_price * res.wall_s / 3600
        out["operator_usd_per_request"] = usd_machine / len(ok) if ok else float("nan")
        out["operator_usd_per_1m_output_tokens"] = usd_machine / tout * 1e6 if tout else float("nan")
    return out
