"""An async streaming client for OpenAI-compatible servers that times every token.

Per request it records the send time, time to first token (TTFT), the arrival time of every
token (so inter-token latencies, ITL), end-to-end latency (E2E) and the token counts the server
reports in its `usage` chunk (asked for with `stream_options.include_usage`). It uses httpx
directly, not the openai SDK, so the timed path holds nothing but HTTP and SSE parsing.

Token accounting is audited three ways: the server's `usage.completion_tokens`, the tokens seen
in the stream (`token_ids` per chunk when the server returns them, else one per non-empty
chunk), and, given a tokenizer, the re-tokenized text. `audit()` says when they disagree.

    async with StreamingClient(url, model) as c:
        r = await c.complete(prompt=[1, 2, 3], max_tokens=32)
    r.ttft, r.tpot, r.itl

A failed request is returned with its `error`, except when the server behind the URL is a
`labs_lib.procs.ManagedProcess` that has exited: then ServerExitedError says so, with the exit
code and the server log's last lines, instead of a bare "Connection refused".
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import params, procs


class SSEParser:
    """Incremental Server-Sent-Events parser: bytes in (split anywhere), `data:` payloads out.

    >>> p = SSEParser()
    >>> p.feed(b'data: {"a"') + p.feed(b': 1}\\n\\ndata: [DONE]\\n\\n')
    ['{"a": 1}', '[DONE]']
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[str]:
        # normalize on the whole buffer: a "\r\n" can be split across two reads
        self._buf = (self._buf + chunk).replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n\n", 1)
            data = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
            if data:
                events.append(b"\n".join(data).decode("utf-8"))
        return events


@dataclass
class RequestResult:
    """What one streamed request did, in seconds relative to its send time."""

    request_id: int
    send_time: float  # perf_counter() when the request was sent
    ok: bool = False
    error: str = ""
    ttft: float | None = None
    e2e: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # arrival of each token-bearing chunk
    chunk_tokens: list[int] = field(default_factory=list)  # tokens in that chunk
    text: str = ""
    prompt_tokens: int | None = None  # from usage
    completion_tokens: int | None = None  # from usage
    token_ids_seen: bool = False  # the server returned token_ids per chunk

    @property
    def streamed_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def n_out(self) -> int:
        """Output tokens: the server's usage count, else what the stream showed."""
        return self.completion_tokens if self.completion_tokens is not None else self.streamed_tokens

    @property
    def token_times(self) -> list[float]:
        """Arrival time of each token. A chunk of k tokens (speculative decoding, buffering)
        spreads them evenly over the gap since the previous chunk, so ITL is per token, not
        per chunk."""
        out: list[float] = []
        prev = self.ttft if self.ttft is not None else 0.0
        for i, (t, k) in enumerate(zip(self.chunk_times, self.chunk_tokens, strict=True)):
            if i == 0:
                out += [t] * k
            else:
                out += [prev + (t - prev) * (j + 1) / k for j in range(k)]
            prev = t
        return out

    @property
    def itl(self) -> list[float]:
        """Inter-token latencies (seconds), one per output token after the first."""
        tt = self.token_times
        return [b - a for a, b in zip(tt, tt[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (E2E - TTFT) / (n_out - 1), as vLLM's bench."""
        if not self.ok or self.ttft is None or self.e2e is None or self.n_out < 2:
            return None
        return (self.e2e - self.ttft) / (self.n_out - 1)

    @property
    def e2e_residual(self) -> float | None:
        """E2E - (TTFT + sum of ITLs): the time after the last token (usage chunk, [DONE], close).
        Near zero when the stream's timings account for the whole request."""
        if not self.ok or self.ttft is None or self.e2e is None:
            return None
        return self.e2e - (self.ttft + sum(self.itl))

    def audit(self, tokenizer: Any = None) -> dict[str, Any]:
        """Output-token counts from usage, the stream and (optionally) re-tokenized text."""
        out = {"usage": self.completion_tokens, "streamed": self.streamed_tokens,
               "token_ids_seen": self.token_ids_seen, "retokenized": None}
        if tokenizer is not None:
            out["retokenized"] = len(tokenizer(self.text, add_special_tokens=False)["input_ids"])
        out["stream_agrees"] = out["usage"] is None or out["usage"] == out["streamed"]
        out["retokenized_agrees"] = None if out["retokenized"] is None else out["retokenized"] == out["usage"]
        counts = {v for k, v in out.items() if k in ("usage", "streamed", "retokenized") and v is not None}
        out["agree"] = len(counts) <= 1
        return out

    def as_record(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "ok": self.ok, "error": self.error,
                "ttft": self.ttft, "tpot": self.tpot, "e2e": self.e2e, "n_out": self.n_out,
                "prompt_tokens": self.prompt_tokens, "streamed_tokens": self.streamed_tokens,
                "itl_mean": (sum(self.itl) / len(self.itl)) if self.itl else None}


def _chunk_tokens(choice: dict[str, Any]) -> tuple[int, str, bool]:
    """(tokens in this chunk, its text, whether token_ids were present)."""
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content") or ""
    ids = choice.get("token_ids")
    if ids:
        return len(ids), text, True
    return (1 if text else 0), text, False


# Idle pooled connections are dropped after this long, before the server drops them: vLLM's server
# (uvicorn) closes a keep-alive connection after VLLM_HTTP_TIMEOUT_KEEP_ALIVE = 5 s, httpx keeps
# one for 5 s too, and a request sent on a connection the server is closing just then fails with
# a ReadError (4 of 512 requests at concurrency 128 on the H200, after the level before had left
# its connections idle: results/gpu/h200/01_serving_metrics/NOTE.md).
KEEPALIVE_EXPIRY_S = 2.0


class StreamingClient:
    """One httpx connection pool to an OpenAI-compatible server; times streamed requests."""

    def __init__(self, base_url: str, model: str, *, timeout: float = 600.0,
                 max_connections: int = 1024, return_token_ids: bool = True):
        self.base_url, self.model = base_url.rstrip("/"), model
        self.return_token_ids = return_token_ids
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=30.0),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections, keepalive_expiry=KEEPALIVE_EXPIRY_S))
        self._next_id = 0

    async def __aenter__(self) -> StreamingClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._client.aclose()

    def _body(self, max_tokens: int, ignore_eos: bool, extra: dict[str, Any] | None) -> dict[str, Any]:
        params.positive_int("max_tokens", max_tokens)
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}, "temperature": 0.0,
                                "ignore_eos": ignore_eos}
        if self.return_token_ids:
            body["return_token_ids"] = True
        body.update(extra or {})
        return body

    async def complete(self, prompt: str | Sequence[int], max_tokens: int, *,
                       ignore_eos: bool = True, extra: dict[str, Any] | None = None) -> RequestResult:
        """Stream `/v1/completions` for a text or token-id prompt."""
        body = self._body(max_tokens, ignore_eos, extra)
        body["prompt"] = prompt if isinstance(prompt, str) else list(prompt)
        return await self._stream("/v1/completions", body)

    async def chat(self, messages: list[dict[str, str]], max_tokens: int, *,
                   ignore_eos: bool = True, extra: dict[str, Any] | None = None) -> RequestResult:
        """Stream `/v1/chat/completions`."""
        body = self._body(max_tokens, ignore_eos, extra)
        body["messages"] = messages
        return await self._stream("/v1/chat/completions", body)

    async def _stream(self, path: str, body: dict[str, Any]) -> RequestResult:
        self._next_id += 1
        parser = SSEParser()
        t0 = time.perf_counter()
        r = RequestResult(self._next_id, send_time=t0)
        texts: list[str] = []
        try:
            async with self._client.stream("POST", path, json=body) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread()).decode(errors="replace")[:500]
                    r.error = f"HTTP {resp.status_code}: {detail}"
                    r.e2e = time.perf_counter() - t0
                    return r
                async for raw in resp.aiter_raw():
                    now = time.perf_counter() - t0
                    for data in parser.feed(raw):
                        if data == "[DONE]":
                            continue
                        event = json.loads(data)
                        if event.get("usage"):
                            r.prompt_tokens = event["usage"].get("prompt_tokens")
                            r.completion_tokens = event["usage"].get("completion_tokens")
                        for choice in event.get("choices") or []:
                            k, text, had_ids = _chunk_tokens(choice)
                            if k == 0:
                                continue
                            if r.ttft is None:
                                r.ttft = now
                            r.chunk_times.append(now)
                            r.chunk_tokens.append(k)
                            r.token_ids_seen |= had_ids
                            texts.append(text)
            r.e2e = time.perf_counter() - t0
            r.text = "".join(texts)
            r.ok = r.ttft is not None
            if not r.ok:
                r.error = "stream ended without any token"
        except (httpx.HTTPError, json.JSONDecodeError, TimeoutError) as e:
            r.e2e = time.perf_counter() - t0
            r.error = f"{type(e).__name__}: {e}"
            if isinstance(e, httpx.TransportError):  # refused, reset: did our server die?
                await procs.raise_if_exited_async(self.base_url)
        return r
