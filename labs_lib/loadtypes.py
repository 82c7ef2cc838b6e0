"""What a load run is and what it returns: its arrival pattern (`Load`), the requests it sends
(`Request`) and its results (`LoadResult`).

These types sit below both `loadgen` (which drives a server with them) and `serving` (which
summarizes their results), so that neither of the two imports the other: loadgen uses serving's
summaries, serving needs only these types. Import them from `labs_lib.loadgen` as before.

>>> Load("gamma", rate=4, burstiness=0.5).describe()
'gamma 4 req/s, burstiness 0.5'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import params
from .client import RequestResult


@dataclass(frozen=True)
class Load:
    """How requests arrive.

    kind: 'concurrency' (a fixed number in flight), 'poisson' (rate req/s, exponential gaps) or
    'gamma' (rate req/s, gamma gaps with shape `burstiness`: < 1 burstier than Poisson, 1 equals
    Poisson, > 1 more regular). `concurrency` also caps the rate shapes when given.

    >>> Load("concurrency", concurrency=8).describe()
    'concurrency 8'
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
        """One line for a progress bar or a plot label.

        >>> Load("poisson", rate=2.5, concurrency=16).describe()
        'poisson 2.5 req/s, at most 16 in flight'
        """
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
    """The measured requests of one load run (warm-up excluded) and how long the run took.

    >>> r = RequestResult(1, 0.0, ok=True, ttft=0.1, e2e=0.5)
    >>> res = LoadResult([r, RequestResult(2, 0.0, error="HTTP 500")],
    ...                  Load("concurrency", concurrency=2), wall_s=0.5, warmup_n=0, stopped_early=False)
    >>> len(res.results), len(res.ok)
    (2, 1)
    """

    results: list[RequestResult]
    load: Load
    wall_s: float  # first send of a measured request to last completion
    warmup_n: int
    stopped_early: bool  # max_seconds cut the run short
    metrics: Any = None  # prom.Snapshot: the server's /metrics delta over the measured phase

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]
