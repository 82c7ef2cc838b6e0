"""A mock OpenAI-compatible streaming server whose true latencies are known by construction.

It answers `/v1/completions` and `/v1/chat/completions` (streaming or not), `/v1/models`,
`/health` and `/metrics`, sleeping a TTFT drawn from one distribution and an ITL per token
from another. Uses:

- unit tests: the client must measure the TTFT/ITL the mock was told to produce;
- the client's own ceiling: with zero latencies, how many requests/s can this machine's client
  drive, and how wrong are its timings at that load (`loadgen.client_ceiling`).

Distributions are strings: "0.05" (constant seconds), "exp:0.05" (exponential, mean),
"lognormal:0.05:0.5" (median, sigma), "uniform:0.01:0.03".

Each request draws its latencies from its own generator, seeded from the server's seed, the
request (prompt or messages, and max_tokens) and how many identical requests came before it
(`planned_latencies`): requests in flight together cannot change each other's draws, whatever
order they arrive in, and a test can compute exactly what the mock slept for each request.

    with mock_server(ttft="0.05", itl="0.01") as url:
        ...  # an OpenAI-compatible endpoint at url

Run by hand: python -m labs_lib.mockserver --port 8000 --ttft 0.05 --itl exp:0.01
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterator

from . import params
from .procs import ManagedProcess, free_port


def parse_dist(spec: str) -> Callable[[random.Random], float]:
    """A sampler from a distribution string (seconds).

    >>> parse_dist("0.05")(random.Random(0))
    0.05
    >>> parse_dist("gauss:1")
    Traceback (most recent call last):
    ...
    ValueError: distribution must be 'C', 'exp:MEAN', 'lognormal:MEDIAN:SIGMA' or 'uniform:A:B' (seconds), got 'gauss:1'
    """
    err = ValueError("distribution must be 'C', 'exp:MEAN', 'lognormal:MEDIAN:SIGMA' or "
                     f"'uniform:A:B' (seconds), got {spec!r}")
    kind, *args = str(spec).split(":")
    try:
        nums = [float(a) for a in args]
        if not args:
            c = float(kind)
            if c < 0:
                raise err
            return lambda rng: c
    except ValueError:
        raise err from None
    import math

    if kind == "exp" and len(nums) == 1 and nums[0] > 0:
        return lambda rng: rng.expovariate(1 / nums[0])
    if kind == "lognormal" and len(nums) == 2 and nums[0] > 0 and nums[1] >= 0:
        return lambda rng: rng.lognormvariate(math.log(nums[0]), nums[1])
    if kind == "uniform" and len(nums) == 2 and 0 <= nums[0] <= nums[1]:
        return lambda rng: rng.uniform(nums[0], nums[1])
    raise err


def request_key(body: dict) -> str:
    """What identifies a request to the mock: its prompt (or chat messages) and max_tokens.

    >>> request_key({"prompt": [1, 2, 3], "max_tokens": 8, "stream": True})
    '[[1,2,3],null,8]'
    """
    return json.dumps([body.get("prompt"), body.get("messages"), _max_tokens(body)],
                      separators=(",", ":"), sort_keys=True)


def _max_tokens(body: dict) -> int:
    return int(body.get("max_tokens") or 16)


def planned_latencies(ttft: str, itl: str, body: dict, *, seed: int = 0,
                      repeat: int = 0) -> tuple[float, list[float]]:
    """(TTFT, the max_tokens - 1 gaps between tokens) in seconds that a mock started with
    `ttft`, `itl` and `seed` sleeps for the request `body`, the `repeat`-th (0-based) time it
    receives that same request (`request_key`).

    >>> body = {"prompt": "hi", "max_tokens": 4}
    >>> first, gaps = planned_latencies("0.05", "exp:0.01", body, seed=1)
    >>> first, len(gaps), gaps == planned_latencies("0.05", "exp:0.01", body, seed=1)[1]
    (0.05, 3, True)
    >>> gaps == planned_latencies("0.05", "exp:0.01", body, seed=1, repeat=1)[1]
    False
    """
    return _draw(parse_dist(ttft), parse_dist(itl), _max_tokens(body),
                 _request_rng(seed, request_key(body), repeat))


def _request_rng(seed: int, key: str, repeat: int) -> random.Random:
    return random.Random(f"{seed}|{repeat}|{key}")  # str seeds hash with SHA-512: stable


def _draw(ttft_s: Callable[[random.Random], float], itl_s: Callable[[random.Random], float],
          n: int, rng: random.Random) -> tuple[float, list[float]]:
    return ttft_s(rng), [itl_s(rng) for _ in range(n - 1)]


def _prompt_tokens(body: dict) -> int:
    p = body.get("prompt")
    if isinstance(p, list):
        return len(p) if (not p or isinstance(p[0], int)) else sum(len(x) for x in p)
    if isinstance(p, str):
        return len(p.split())
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))


def make_app(ttft: str, itl: str, *, seed: int = 0, split_events: bool = False,
             tokens_per_chunk: int = 1):
    """The aiohttp application (exposed for tests that run it in-process)."""
    from aiohttp import web

    ttft_s, itl_s = parse_dist(ttft), parse_dist(itl)
    params.positive_int("tokens_per_chunk", tokens_per_chunk)
    stats = {"requests": 0}
    seen: dict[bytes, int] = {}  # digest of a request key -> how many times it came

    async def sleep_until(t: float) -> None:
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        n = _max_tokens(body)
        n_in = _prompt_tokens(body)
        stats["requests"] += 1
        t0 = time.perf_counter()
        key = request_key(body)
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()  # keys can be long
        repeat = seen[digest] = seen.get(digest, -1) + 1
        first, gaps = _draw(ttft_s, itl_s, n, _request_rng(seed, key, repeat))
        rid = f"mock-{stats['requests']}"
        usage = {"prompt_tokens": n_in, "completion_tokens": n, "total_tokens": n_in + n}
        if not body.get("stream"):
            await sleep_until(t0 + first + sum(gaps))
            text = "".join(f" t{i}" for i in range(n))
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
                      else {"index": 0, "text": text})
            return web.json_response({"id": rid, "object": "completion", "model": body.get("model"),
                                      "choices": [choice], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: dict | str) -> None:
            data = f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
            if split_events:  # one event in two TCP writes: the client must reassemble it
                half = len(data) // 2
                await resp.write(data[:half])
                await asyncio.sleep(0.0005)
                await resp.write(data[half:])
            else:
                await resp.write(data)

        due, i = t0 + first, 0
        while i < n:
            k = min(tokens_per_chunk, n - i)
            for g in gaps[i:i + k - 1]:  # a chunk of k tokens leaves when its last token is due
                due += g
            await sleep_until(due)
            text = "".join(f" t{j}" for j in range(i, i + k))
            ids = [10 + (j % 1000) for j in range(i, i + k)]
            choice = ({"index": 0, "delta": {"content": text}} if chat
                      else {"index": 0, "text": text})
            if body.get("return_token_ids"):
                choice["token_ids"] = ids
            await send({"id": rid, "object": "text_completion", "choices": [choice]})
            i += k
            if i < n:
                due += gaps[i - 1]
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"id": rid, "object": "text_completion", "choices": [], "usage": usage})
        await send("[DONE]")
        await resp.write_eof()
        return resp

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "mock", "object": "model"}]})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=f"# TYPE mock:requests counter\nmock:requests_total {stats['requests']}\n")

    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions),
                    web.post("/v1/chat/completions", completions), web.get("/health", health),
                    web.get("/v1/models", models), web.get("/metrics", metrics)])
    return app


@contextlib.contextmanager
def mock_server(ttft: str = "0.05", itl: str = "0.01", *, seed: int = 0,
                split_events: bool = False, tokens_per_chunk: int = 1) -> Iterator[str]:
    """Run the mock in its own process (so it never competes with the client's event loop);
    yields its base URL. Bad distributions fail here, before anything starts. Its log goes to
    `<run folder>/logs/mockserver-PORT.log`, removed after a clean exit, kept after a failure."""
    import httpx

    from .records import run_dir  # here, not at the top: the server process needs no pandas

    parse_dist(ttft), parse_dist(itl)
    params.positive_int("tokens_per_chunk", tokens_per_chunk)
    port = free_port()
    cmd = [sys.executable, "-m", "labs_lib.mockserver", "--port", str(port), "--ttft", ttft,
           "--itl", itl, "--seed", str(seed), "--tokens-per-chunk", str(tokens_per_chunk)]
    if split_events:
        cmd.append("--split-events")
    url = f"http://127.0.0.1:{port}"
    logs = run_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with ManagedProcess(cmd, name="mockserver", url=url, grace=5,
                        log_path=logs / f"mockserver-{port}.log") as proc:
        proc.wait_until(lambda: httpx.get(url + "/health", timeout=1).status_code == 200,
                        timeout=60, what="serving /health", interval=0.05)
        yield url
    proc.log_path.unlink(missing_ok=True)  # reached only on a clean exit: a failure keeps it


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    ap = argparse.ArgumentParser(description="Mock OpenAI-compatible streaming server")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--ttft", default="0.05")
    ap.add_argument("--itl", default="0.01")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-events", action="store_true")
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        import uvloop  # a faster event loop where installed

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(a.ttft, a.itl, seed=a.seed, split_events=a.split_events,
                         tokens_per_chunk=a.tokens_per_chunk),
                host="127.0.0.1", port=a.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
