"""Timing done one way everywhere: warm-up, device synchronization, perf_counter, repeats.

A single `time.time()` pair around a GPU call measures how long it took to *queue* the work,
not to do it. `measure()` synchronizes the device before starting and before stopping each
sample, discards `warmup` calls (first calls pay for allocation, autotuning, JIT and caches),
and returns every sample so that `summarize()` can report percentiles with their sample count.

>>> s = measure(lambda: sum(range(1000)), warmup=2, repeats=20)
>>> summary = summarize(s)
>>> summary.n
20
>>> summary.min <= summary.p50 <= summary.p99 <= summary.max
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import params

PERCENTILES = (50, 90, 95, 99)


def synchronize(device: str | None = None) -> None:
    """Wait for all queued work on `device` ("cuda", "cpu" or None = cuda if present)."""
    try:
        import torch
    except ImportError:  # the timing module works without torch (mock-server tests)
        return
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 3,
    repeats: int = 10,
    device: str | None = None,
    max_seconds: float | None = None,
) -> list[float]:
    """Call `fn` `warmup` times untimed, then time `repeats` calls; seconds per call.

    Each sample is bracketed by `synchronize(device)`. `max_seconds` stops early (keeping at
    least 3 samples) so a slow machine cannot make a notebook run for hours.

    >>> len(measure(lambda: None, warmup=0, repeats=5))
    5
    """
    params.non_negative_int("warmup", warmup)
    params.positive_int("repeats", repeats)
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    start_all = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - t0)
        if max_seconds and len(samples) >= 3 and time.perf_counter() - start_all > max_seconds:
            break
    return samples


@dataclass(frozen=True)
class Summary:
    """Distribution of samples. `median_ci` is a bootstrap 95% interval for the median."""

    n: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    min: float
    max: float
    median_ci: tuple[float, float]

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        d = asdict(self)
        lo, hi = d.pop("median_ci")
        d.update(median_ci_lo=lo, median_ci_hi=hi)
        return {f"{prefix}{k}": v for k, v in d.items()}

    def scaled(self, factor: float) -> Summary:
        """The same summary in other units (e.g. factor=1e3 for seconds -> ms)."""
        lo, hi = self.median_ci
        return Summary(
            self.n,
            *(getattr(self, k) * factor for k in ("mean", "p50", "p90", "p95", "p99", "min", "max")),
            (lo * factor, hi * factor),
        )

    def __str__(self) -> str:
        lo, hi = self.median_ci
        return (
            f"n={self.n} p50={self.p50:.4g} [95% CI {lo:.4g}..{hi:.4g}] "
            f"p90={self.p90:.4g} p99={self.p99:.4g} mean={self.mean:.4g} "
            f"min={self.min:.4g} max={self.max:.4g}"
        )


def bootstrap_median_ci(
    samples: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval for the median.

    >>> bootstrap_median_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    """
    x = np.asarray(samples, dtype=float)
    if x.size == 0:
        raise ValueError("samples must not be empty")
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(x, size=(resamples, x.size), replace=True), axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(medians, [alpha, 1 - alpha])
    return float(lo), float(hi)


def summarize(samples: Sequence[float]) -> Summary:
    """n, mean, p50/p90/p95/p99 (linear interpolation, as numpy), min, max, median CI.

    >>> summarize([1, 2, 3, 4]).p50
    2.5
    """
    x = np.asarray(list(samples), dtype=float)
    if x.size == 0:
        raise ValueError("cannot summarize zero samples: the measurement produced no data")
    p = np.percentile(x, PERCENTILES)
    return Summary(
        n=int(x.size),
        mean=float(x.mean()),
        p50=float(p[0]),
        p90=float(p[1]),
        p95=float(p[2]),
        p99=float(p[3]),
        min=float(x.min()),
        max=float(x.max()),
        median_ci=bootstrap_median_ci(x),
    )
