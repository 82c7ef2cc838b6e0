"""One plot style, and the plots the labs share (the roofline first).

Every figure has labelled axes with units; `save()` writes it to the run's figures folder,
so the executed notebook and the run folder hold the same picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

if matplotlib.get_backend().lower() == "agg" or not matplotlib.rcParams.get("backend"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .records import figures_dir

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def style() -> None:
    """The labs' matplotlib style (call once; labs_lib.setup() does)."""
    plt.rcParams.update({
        "figure.figsize": (7.5, 4.5), "figure.dpi": 100, "savefig.dpi": 130,
        "savefig.bbox": "tight", "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False, "font.size": 10, "axes.titlesize": 11, "legend.fontsize": 9,
        "axes.prop_cycle": matplotlib.cycler(color=COLORS),
    })


def save(fig: plt.Figure, name: str) -> Path:
    """Save `fig` as `<run_dir>/figures/<name>.png` and return the path."""
    path = figures_dir() / f"{name}.png"
    fig.savefig(path)
    return path


def _fmt_flops(x: float) -> str:
    for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g} FLOP/s"


def _fmt_bw(x: float) -> str:
    return f"{x / 1e12:.3g} TB/s" if x >= 1e12 else f"{x / 1e9:.3g} GB/s"


def roofline(
    *,
    bandwidth: float,
    peak_flops: float,
    published_bandwidth: float | None = None,
    published_flops: float | None = None,
    points: Sequence[dict[str, Any]] = (),
    title: str = "Roofline",
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Log-log roofline: attainable FLOP/s = min(peak, bandwidth x intensity).

    `bandwidth` (bytes/s) and `peak_flops` (FLOP/s) are the measured ceilings (solid);
    `published_*` the datasheet ones (dashed). Each point is a dict with 'intensity'
    (FLOP/byte), 'flops_per_s', 'label' and optional 'marker'/'color'; points without
    'flops_per_s' are drawn on the measured roof as predictions (hollow markers).
    """
    if bandwidth <= 0 or peak_flops <= 0:
        raise ValueError(f"bandwidth and peak_flops must be > 0, got {bandwidth}, {peak_flops}")
    ax = ax or plt.subplots()[1]
    ridge = peak_flops / bandwidth
    xs = [p["intensity"] for p in points] + [ridge]
    if published_flops and published_bandwidth:
        xs.append(published_flops / published_bandwidth)
    lo, hi = min(min(xs) / 4, 0.1), max(max(xs) * 4, ridge * 8)
    x = np.logspace(np.log10(lo), np.log10(hi), 300)
    ax.loglog(x, np.minimum(peak_flops, bandwidth * x), color="black", lw=2,
              label=f"measured: {_fmt_bw(bandwidth)}, {_fmt_flops(peak_flops)}")
    if published_flops and published_bandwidth:
        ax.loglog(x, np.minimum(published_flops, published_bandwidth * x), "--", color="gray",
                  lw=1.5, label=f"datasheet: {_fmt_bw(published_bandwidth)}, "
                                f"{_fmt_flops(published_flops)}")
    ax.axvline(ridge, color="black", ls=":", lw=1)
    ax.annotate(f"ridge {ridge:.0f} FLOP/B", (ridge, peak_flops), textcoords="offset points",
                xytext=(5, -15), fontsize=9)
    for i, p in enumerate(points):
        measured = p.get("flops_per_s") is not None
        y = p["flops_per_s"] if measured else min(peak_flops, bandwidth * p["intensity"])
        color = p.get("color", COLORS[(i + 1) % len(COLORS)])
        ax.scatter([p["intensity"]], [y], marker=p.get("marker", "o"), s=50, zorder=3,
                   facecolors=color if measured else "none", edgecolors=color,
                   label=p.get("label"))
    ax.set_xlabel("arithmetic intensity (FLOP / byte moved)")
    ax.set_ylabel("attainable throughput (FLOP/s)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return ax
