"""Will it fit, how many users, how fast: GPU memory and speed planned from a model's shape.

vLLM splits a GPU's memory at start-up (and prints the split, `kvcache.parse_vllm_log`):

    gpu_memory_utilization x memory = weights + peak activation + non-torch memory + KV cache

and captures CUDA graphs after that, in the memory the utilization leaves out (vLLM 0.26's
model runner for dense models; its older runner, used for MoE models, estimates the graphs
first and subtracts them too). `plan()` predicts each term from the model's config, the
weights' format, the tensor-parallel degree and the engine's settings; the KV cache is what is
left, in whole blocks. From it: does the model fit, how many KV tokens, how many sequences of
a context fit at once, how long a context a number of users can have, and the batch-1 decode
bound (every weight byte read once per token at the memory bandwidth).

- weights: `quant.formats.weight_bytes` (scales and zeros included), split over `tp` ranks;
  K/V projections are replicated where the model has fewer KV heads than ranks.
- peak activation: the profile run pushes `max_num_batched_tokens` (t) tokens through the
  model: t x (6 x intermediate + 6 x hidden) bytes (the gate/up output and its activation, and
  three hidden-wide buffers) + 0.05 GiB when compiled; and when torch.compile compiles cold
  (no compile cache yet) at least an embedding-sized block plus two hidden-wide buffers
  (vocab x hidden x 2 + 4.3 x hidden x t bytes) that a warm start does not allocate.
- CUDA graphs: 0.10 GiB + 0.16 MiB per piecewise graph piece (captured sizes x (layers + 1)) +
  0.47 B x layers x hidden x the sum of the FULL decode graphs' batch sizes (the captured sizes
  up to max_num_seqs); the weight format scales the per-piece part (fp8 0.71, int8 0.86, int4
  1.08: the same absolute change, 0.06-0.07 GiB for fp8, on a 0.5B and on 7-8B models, so it is
  per piece, not a share of the whole; refitted with the H200's five starts of lab 09).
- non-torch memory: `NON_TORCH_BYTES`, 0.22 GiB in every one of 53 engine starts on one H100
  (CUDA kernels and library handles loaded while profiling).
The coefficients are fits to 56 vLLM 0.26 start-ups kept under results/gpu/h100 and five under
results/gpu/h200 (three model
shapes, eight formats, 512 to 24k batched tokens, 8 to 1024 sequences): every compiled row
within about 10 %, most within 5 %.
These are the planner's assumptions, in one place; lab 09 checks every term against the engine.

`tp_step()` and `pp_step()` price a decode step split over GPUs: the all-reduces of tensor
parallelism (two per layer) on the GPUs' link, and the bubble of pipeline parallelism.

>>> from labs_lib.models import load_config
>>> p = plan(load_config("Llama-3.1-8B"), gpu("H100 SXM"), gpu_memory_utilization=0.85)
>>> p.fits, round(p.weights / 2**30, 2)  # vLLM 0.26 on an H100: "Model loading took 15.0 GiB"
(True, 14.96)
>>> plan(load_config("Llama-3.1-70B"), gpu("H100 SXM")).fits  # 141 GB of bf16 weights
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import hardware, kvcache, models, params
from .quant import formats

GiB = 2**30
GPU_BLOCK = 16  # vLLM's KV block on a GPU (tokens)
CPU_BLOCK = 128  # ... and on vLLM-CPU
NON_TORCH_BYTES = 0.22 * GiB  # vLLM 0.26 on an H100, every model: kernels and handles loaded while profiling
ACT_PER_TOKEN = (6.0, 6.0)  # peak activation bytes per batched token: x intermediate, x hidden
ACT_COMPILED = 0.05 * GiB  # ... plus this when the model runs compiled (not eager)
ACT_COLD_PER_TOKEN = 4.3  # a cold torch.compile: vocab x hidden x 2 B + this x hidden bytes per token
GRAPH_BASE, GRAPH_PER_PIECE, GRAPH_FULL = 0.10 * GiB, 0.16 * 2**20, 0.47  # CUDA-graph pool (fit)
GRAPH_SCALE = {"fp8": 0.71, "int8": 0.86, "gptq": 1.08, "awq": 1.08, "w4a16": 1.08}  # of the per-piece part
COMPILE_STATES = ("cold", "warm", "eager")
WEIGHT_DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "int8", "int4": "gptq"}


@dataclass(frozen=True)
class GPU:
    """What the planner needs of a GPU: memory, bandwidth, matmul rates, the link between GPUs.

    `measured` marks a GPU whose bandwidth and FLOP/s were measured on this machine (the host
    row of lab 09's table) rather than read from a datasheet."""

    name: str
    memory: float  # bytes
    bandwidth: float  # bytes/s
    flops: dict[str, float]  # dtype -> FLOP/s (dense)
    link: str
    link_bandwidth: float  # bytes/s per direction
    link_latency: float = 8e-6  # s per small all-reduce call on one host (assumed; lab 09 measures it)
    measured: bool = False


def _from_peak(p: hardware.Peak) -> GPU:
    flops = {d: p.flops(d) for d in ("bf16", "fp16", "fp8", "int8") if p.flops(d)}
    return GPU(p.name, p.mem_gb * 1e9, p.bandwidth, flops, p.link, p.link_gbs * 1e9, _latency(p.link))


def gpus() -> list[GPU]:
    """Every GPU of the datasheet table (`hardware.PEAKS`), B200 to T4.

    >>> [g.name for g in gpus()][:3]
    ['B200', 'H200', 'H100 NVL']
    """
    return [_from_peak(p) for p in hardware.PEAKS]


def gpu(name: str) -> GPU:
    """A GPU of the table by its name ('H100 SXM') or by a device name ('NVIDIA H100 80GB HBM3').

    >>> gpu("Tesla T4").memory / 1e9, gpu("Tesla T4").link
    (16.0, 'PCIe 3.0 x16')
    >>> gpu("MI300X")
    Traceback (most recent call last):
    ...
    ValueError: no datasheet row for GPU 'MI300X'; known: B200, H200, H100 NVL, H100 PCIe, H100 SXM, A100 80GB PCIe, A100 80GB SXM, A100 40GB, L40S, L4, A10G, T4 (or build a planner.GPU with its memory and bandwidth)
    """
    for p in hardware.PEAKS:
        if p.name == name:
            return _from_peak(p)
    p = hardware.published_peak(name)
    if p is None:
        raise ValueError(f"no datasheet row for GPU {name!r}; known: "
                         f"{', '.join(q.name for q in hardware.PEAKS)} (or build a planner.GPU with its "
                         "memory and bandwidth)")
    return _from_peak(p)


def measured_gpu(name: str, memory: float, bandwidth: float, flops_per_s: float, dtype: str = "bf16") -> GPU:
    """The GPU of this machine with its measured bandwidth and matmul rate for `dtype` (links from
    the datasheet row if there is one). The datasheet's other dtypes stay, each scaled by the
    measured share of the datasheet's `dtype` rate: the table then knows that this GPU runs fp8
    (an estimate of its rate, not a measurement; only `dtype` was timed).

    >>> g = measured_gpu("NVIDIA H200", 140e9, 4.1e12, 780e12)
    >>> g.flops["bf16"] == 780e12, round(g.flops["fp8"] / g.flops["bf16"], 2)
    (True, 2.0)
    """
    p = hardware.published_peak(name)
    link, link_bw = (p.link, p.link_gbs * 1e9) if p else ("PCIe 4.0 x16", 32e9)
    flops = {dtype: flops_per_s}
    if p and p.flops(dtype):
        share = flops_per_s / p.flops(dtype)
        flops = {**{d: f * share for d, f in _from_peak(p).flops.items()}, dtype: flops_per_s}
    return GPU(name, memory, bandwidth, flops, link, link_bw, _latency(link), measured=True)


def _latency(link: str) -> float:
    """Assumed latency of one small all-reduce on one host: about 8 us over NVLink (vLLM's
    custom all-reduce / NCCL's low-latency path), 20 us over PCIe. Lab 09 measures the engine's."""
    return 8e-6 if link.startswith("NVLink") else 20e-6


# ------------------------------------------------------------------------------ the terms

def weights_per_rank(cfg: dict[str, Any], dtype: str = "bf16", tp: int = 1, group_size: int | None = None) -> float:
    """Bytes of weights one of `tp` ranks holds in `dtype`: bf16, fp16, fp8, int8, int4 (GPTQ)
    or any scheme of `quant.formats.SCHEMES` (awq, w4a16, fp8_per_channel, ...).

    Everything is split `tp` ways (vocab-parallel embedding and lm_head, column/row-parallel
    linears) except the norms, which every rank keeps, and the K/V projections of a model with
    fewer KV heads than ranks: each rank then holds one whole KV head.

    >>> from labs_lib.models import load_config
    >>> cfg = load_config("Llama-3.1-8B")  # 8 KV heads
    >>> round(weights_per_rank(cfg, "bf16", tp=2) / weights_per_rank(cfg, "bf16"), 4)
    0.5
    >>> weights_per_rank(cfg, "bf16", tp=16) > weights_per_rank(cfg, "bf16") / 16  # K/V replicated
    True
    """
    scheme = WEIGHT_DTYPES.get(dtype, dtype)
    params.choice("dtype", scheme, [*WEIGHT_DTYPES, *formats.SCHEMES])
    tp = params.positive_int("tp", tp)
    c = models._text_config(cfg)
    if formats.SCHEMES[scheme].granularity == "group":
        group_size = group_size or formats.default_group_size(cfg)
    b = formats.weight_bytes(cfg, scheme, group_size, dtype="fp16" if dtype == "fp16" else "bf16")
    norms = models.param_count(cfg)["norms"] * (2 if dtype != "fp32" else 4)
    kv = c.get("num_key_value_heads") or c["num_attention_heads"]
    if tp <= kv:
        return (b["total"] - norms) / tp + norms
    k_proj = [s for s in formats.linear_shapes(cfg) if s[0] == "self_attn.k_proj"][0]
    per_kv = 2 * k_proj[1] * k_proj[2] * k_proj[3] / b["quantized_params"] * (b["total"] - b["other"])
    return (b["total"] - norms - per_kv) / tp + per_kv / kv + norms


def activation_bytes(cfg: dict[str, Any], tokens: int, tp: int = 1, compile: str = "cold") -> float:
    """vLLM's "peak activation" when it profiles `tokens` (max_num_batched_tokens) tokens, per
    rank, by how the model ran: "cold" (torch.compile compiled it: the first start of a shape),
    "warm" (loaded from the compile cache) or "eager" (enforce_eager, no compile). The intermediate
    width is that of the experts a token uses; intermediate and vocab are split `tp` ways.

    >>> from labs_lib.models import load_config
    >>> cfg = load_config("Llama-3.1-8B")  # the H100 reported 0.99, 1.10 and 1.77 GiB, cold
    >>> [round(activation_bytes(cfg, t) / 2**30, 2) for t in (512, 8192, 16384)]
    [0.99, 1.11, 1.74]
    >>> round(activation_bytes(cfg, 8192, compile="warm") / 2**30, 2)  # 0.88 from the cache
    0.89
    """
    params.positive_int("tokens", tokens)
    tp = params.positive_int("tp", tp)
    params.choice("compile", compile, COMPILE_STATES)
    c = models._text_config(cfg)
    inter = c["intermediate_size"] * max(1, c.get("num_experts_per_tok") or 1) / tp
    h = c["hidden_size"]
    run = tokens * (ACT_PER_TOKEN[0] * inter + ACT_PER_TOKEN[1] * h) + (0.0 if compile == "eager" else ACT_COMPILED)
    cold = c["vocab_size"] * h * 2 / tp + ACT_COLD_PER_TOKEN * h * tokens if compile == "cold" else 0.0
    return float(max(run, cold))


def capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> list[int]:
    """The batch sizes vLLM 0.26 captures CUDA graphs for by default: 1, 2, 4, every 8 up to
    248, every 16 from 256, up to min(2 x max_num_seqs, 512, max_num_batched_tokens).

    >>> len(capture_sizes(256, 8192)), capture_sizes(16, 8192)[-3:], len(capture_sizes(1024, 512))
    (51, [16, 24, 32], 51)
    """
    top = min(2 * params.positive_int("max_num_seqs", max_num_seqs), 512,
              params.positive_int("max_num_batched_tokens", max_num_batched_tokens))
    return [s for s in [1, 2, 4, *range(8, 256, 8), *range(256, 513, 16)] if s <= top]


def graph_bytes(cfg: dict[str, Any], sizes: list[int], max_num_seqs: int, dtype: str = "bf16", tp: int = 1) -> float:
    """CUDA-graph memory (vLLM 0.26, FULL_AND_PIECEWISE) for the captured batch `sizes`: a piecewise
    graph of layers + 1 pieces for each size, a FULL decode graph for each size up to
    `max_num_seqs`; [] (eager) is none. Per rank; the weight format scales the per-piece part.

    >>> from labs_lib.models import load_config
    >>> cfg = load_config("Llama-3.1-8B")  # the H100: 0.58 GiB at 256 sequences, 0.97 at 512
    >>> [round(graph_bytes(cfg, capture_sizes(n, 8192), n) / 2**30, 2) for n in (256, 512)]
    [0.61, 0.97]
    """
    if not sizes:
        return 0.0
    c = models._text_config(cfg)
    layers, h = c["num_hidden_layers"], c["hidden_size"]
    full = sum(s for s in sizes if s <= max_num_seqs)
    pieces = GRAPH_PER_PIECE * len(sizes) * (layers + 1) * GRAPH_SCALE.get(WEIGHT_DTYPES.get(dtype, dtype), 1.0)
    return GRAPH_BASE + pieces + GRAPH_FULL * layers * h / tp * full


# ------------------------------------------------------------------------------ the plan

@dataclass(frozen=True)
class MemoryPlan:
    """One model on one GPU (per rank with tensor parallelism): every term in bytes."""

    model: str
    gpu: str
    dtype: str
    kv_dtype: str
    tp: int
    total: float
    budget: float  # utilization x memory
    weights: float
    activation: float
    non_torch: float
    cuda_graphs: float
    kv_bytes: float  # what is left for the KV cache (may be < 0: does not fit)
    kv_bytes_per_token: int  # per rank
    block_size: int
    kv_tokens: int
    max_model_len: int
    bandwidth: float

    @property
    def fits(self) -> bool:
        """True if the weights leave room for at least one sequence of `max_model_len` tokens
        (vLLM refuses to start otherwise)."""
        return self.kv_tokens >= kvcache.blocks_needed(self.max_model_len, self.block_size) * self.block_size

    @property
    def reason(self) -> str:
        """Why it does not fit, or '' (with the change that would make it fit)."""
        if self.fits:
            return ""
        if self.kv_bytes <= 0:
            return (f"weights {self.weights / 1e9:,.1f} GB + activation and runtime "
                    f"{(self.activation + self.non_torch) / 1e9:,.1f} GB exceed {self.budget / 1e9:,.1f} GB "
                    "(utilization x memory): use a smaller dtype, more GPUs (tp) or a larger GPU")
        return (f"the KV cache holds {self.kv_tokens:,} tokens, fewer than one sequence of "
                f"max_model_len={self.max_model_len:,}: lower max_model_len or free memory")

    def max_concurrency(self, context: int) -> int:
        """Sequences of `context` tokens that fit in the KV cache at once (whole blocks)."""
        return max(0, self.kv_tokens) // (kvcache.blocks_needed(context, self.block_size) * self.block_size)

    def max_context(self, concurrency: int) -> int:
        """The longest context each of `concurrency` sequences can have (capped at the model's
        positions)."""
        per = max(0, self.kv_tokens) // params.positive_int("concurrency", concurrency)
        return min(per // self.block_size * self.block_size, self.max_model_len)

    def decode_bound(self, context: int = 0) -> float:
        """Seconds per token at batch 1, the bandwidth bound: this rank's weights and the
        sequence's KV cache read once (ranks read in parallel; communication not included)."""
        return (self.weights + context * self.kv_bytes_per_token) / self.bandwidth

    def terms(self) -> dict[str, float]:
        """The split in GiB, in vLLM's words."""
        return {k: getattr(self, k) / GiB for k in ("weights", "activation", "non_torch", "cuda_graphs", "kv_bytes")}


def positions(cfg: dict[str, Any]) -> int:
    """The longest sequence the model's positions allow (`max_position_embeddings`)."""
    return int(models._text_config(cfg).get("max_position_embeddings") or 0) or 1 << 20


def kv_bytes_per_token(cfg: dict[str, Any], kv_dtype: str = "bf16", tp: int = 1) -> int:
    """KV bytes per token one of `tp` ranks holds: its share of the KV heads (at least one).

    >>> from labs_lib.models import load_config
    >>> cfg = load_config("Llama-3.1-8B")
    >>> kv_bytes_per_token(cfg), kv_bytes_per_token(cfg, tp=2), kv_bytes_per_token(cfg, tp=16)
    (131072, 65536, 16384)
    """
    c = models._text_config(cfg)
    kv = c.get("num_key_value_heads") or c["num_attention_heads"]
    per_rank = max(1, kv // params.positive_int("tp", tp))
    return kvcache.kv_bytes_per_token(cfg, kv_dtype) * per_rank // kv


def plan(cfg: dict[str, Any], device: GPU, *, dtype: str = "bf16", kv_dtype: str | None = None, tp: int = 1,
         gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
         max_num_batched_tokens: int = 8192, max_num_seqs: int = 256, cuda_graphs: bool = True,
         compile: str = "cold", name: str = "") -> MemoryPlan:
    """The memory plan of `cfg` on `device` (per rank with `tp` ranks).

    `dtype`: the weights' format (bf16, fp16, fp8, int8, int4); `kv_dtype`: the KV cache's
    (bf16/fp16 like the activations unless fp8); `max_num_batched_tokens` and `max_num_seqs`
    as the engine will run (they set the activation peak and the captured graphs); `compile`:
    "cold" for a first start, "warm" when torch.compile's cache holds this shape
    (`kvcache.parse_vllm_log(...)["torch_compile"]` says which a start was);
    `cuda_graphs=False` for enforce_eager.

    >>> from labs_lib.models import load_config
    >>> h100 = measured_gpu("NVIDIA H100 80GB HBM3", 85.03e9, 2.9e12, 750e12)  # torch's total memory
    >>> p = plan(load_config("Llama-3.1-8B"), h100, max_model_len=4096)
    >>> p.kv_tokens, p.max_concurrency(4096)  # vLLM 0.26 allocated 417,536 tokens on it at 0.85
    (417952, 102)
    """
    params.positive_float("gpu_memory_utilization", gpu_memory_utilization, hi=1.0)
    c = models._text_config(cfg)
    kv_dtype = kv_dtype or ("fp16" if dtype == "fp16" else "bf16")
    max_model_len = min(max_model_len or positions(cfg), positions(cfg))
    weights = weights_per_rank(cfg, dtype, tp)
    activation = activation_bytes(cfg, max_num_batched_tokens, tp, compile if cuda_graphs else "eager")
    sizes = capture_sizes(max_num_seqs, max_num_batched_tokens) if cuda_graphs else []
    graphs = graph_bytes(cfg, sizes, max_num_seqs, dtype, tp)
    moe = (c.get("num_local_experts") or 1) > 1  # vLLM 0.26's older runner: graphs inside the budget
    budget = device.memory * gpu_memory_utilization
    kv = kvcache.kv_budget(device.memory, gpu_memory_utilization, weights=weights, activations=activation,
                           non_torch=NON_TORCH_BYTES, cuda_graphs=graphs if moe else 0.0)
    per_tok = kv_bytes_per_token(cfg, kv_dtype, tp)
    blocks = int(kv // (GPU_BLOCK * per_tok)) if kv > 0 else 0
    return MemoryPlan(name or c.get("_name_or_path", "") or "model", device.name, dtype, kv_dtype, tp,
                      device.memory, budget, weights, activation, NON_TORCH_BYTES, graphs, kv, per_tok,
                      GPU_BLOCK, blocks * GPU_BLOCK, max_model_len, device.bandwidth)


def cpu_plan(cfg: dict[str, Any], *, ram: float, bandwidth: float, kv_cache_bytes: float, dtype: str = "bf16",
             max_model_len: int | None = None, name: str = "") -> MemoryPlan:
    """The plan on a CPU (vLLM-CPU): the KV cache is the explicit `kv_cache_bytes`
    (VLLM_CPU_KVCACHE_SPACE) in blocks of 128 tokens, the rest of RAM holds the weights; the
    decode bound uses the measured DRAM `bandwidth`.

    >>> smol = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    ...         "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    ...         "vocab_size": 49152, "tie_word_embeddings": True, "max_position_embeddings": 8192}
    >>> p = cpu_plan(smol, ram=24e9, bandwidth=20e9, kv_cache_bytes=2**30)
    >>> p.kv_bytes_per_token, p.kv_tokens  # 2 x 30 x 3 x 64 x 2 B; 2^30 // (128 x 23,040) blocks
    (23040, 46592)
    """
    params.positive_float("ram", ram)
    params.positive_float("bandwidth", bandwidth)
    params.positive_float("kv_cache_bytes", kv_cache_bytes)
    weights = weights_per_rank(cfg, dtype)
    per_tok = kv_bytes_per_token(cfg, "bf16")
    kv = kv_cache_bytes if weights + kv_cache_bytes <= ram else ram - weights
    blocks = int(kv // (CPU_BLOCK * per_tok)) if kv > 0 else 0
    return MemoryPlan(name or "model", "cpu", dtype, "bf16", 1, ram, ram, weights, 0.0, 0.0, 0.0, kv, per_tok,
                      CPU_BLOCK, blocks * CPU_BLOCK, min(max_model_len or positions(cfg), positions(cfg)), bandwidth)


# ------------------------------------------------------------------ tensor and pipeline parallel

def allreduce_seconds(nbytes: float, ranks: int, link_bandwidth: float, latency: float) -> float:
    """One all-reduce of `nbytes` over `ranks` GPUs: a fixed `latency` per call (launch and
    synchronization; small messages pay little else) plus the bandwidth term of a ring, which
    moves 2 (n - 1) / n of the bytes over each link.

    >>> round(allreduce_seconds(8192, 2, 450e9, 8e-6) * 1e6, 2)  # 8 us + 8 KB at 450 GB/s
    8.02
    >>> allreduce_seconds(8192, 1, 450e9, 8e-6)
    0.0
    """
    n = params.positive_int("ranks", ranks)
    if n == 1:
        return 0.0
    return latency + 2 * (n - 1) / n * nbytes / link_bandwidth


def tp_step(cfg: dict[str, Any], device: GPU, tp: int, *, batch: int = 1, context: int = 0,
            dtype: str = "bf16", overhead: float = 0.0) -> dict[str, float]:
    """A decode step split `tp` ways: each rank reads its share of the weights and KV cache at
    the GPU's bandwidth (in parallel), then the ranks all-reduce the hidden state twice per
    layer (after attention and after the MLP): `batch` x hidden x 2 bytes each time.

    Returns the memory time, the communication time, their sum plus `overhead` (per-step work
    that does not shrink with more GPUs) and the speedup over one GPU.

    >>> from labs_lib.models import load_config
    >>> r = tp_step(load_config("Llama-3.1-8B"), gpu("H100 SXM"), 2)
    >>> round(r["memory_s"] * 1e3, 2), round(r["comm_s"] * 1e6, 1), round(r["speedup"], 2)  # ms, us, x
    (2.4, 513.2, 1.65)
    """
    params.positive_int("batch", batch)
    params.non_negative_int("context", context)
    c = models._text_config(cfg)

    def mem(t: int) -> float:
        return (weights_per_rank(cfg, dtype, t) + batch * context * kv_bytes_per_token(cfg, "bf16", t)) / device.bandwidth

    calls = 2 * c["num_hidden_layers"]
    comm = calls * allreduce_seconds(batch * c["hidden_size"] * 2, tp, device.link_bandwidth, device.link_latency)
    one = mem(1) + overhead
    total = mem(tp) + comm + overhead
    return {"tp": tp, "memory_s": mem(tp), "comm_s": comm, "overhead_s": overhead, "seconds": total,
            "comm_share": comm / total, "allreduces": calls, "speedup": one / total}


def pp_step(cfg: dict[str, Any], device: GPU, pp: int, *, batch: int = 1, microbatches: int = 1,
            dtype: str = "bf16") -> dict[str, float]:
    """Pipeline parallelism over `pp` GPUs for decoding: each GPU holds layers / pp and passes
    the hidden states (`batch` x hidden x 2 bytes) to the next. A sequence's next token needs
    its previous one back from the last stage, so one token still crosses every stage in turn:
    batch-1 latency does not improve (`latency_speedup` <= 1). Stages are kept busy only by
    other sequences: with `microbatches` groups of `batch` sequences in flight (vLLM keeps one
    per stage), a stage idles (pp - microbatches) / pp of the time when there are fewer groups
    than stages: the bubble. `throughput_speedup` compares with one GPU decoding one group at a
    time (the most sequences whose KV cache one GPU holds): the gain is the memory PP adds.

    >>> from labs_lib.models import load_config
    >>> r = pp_step(load_config("Llama-3.1-8B"), gpu("H100 SXM"), 4, microbatches=2)
    >>> r["bubble"], round(r["throughput_speedup"], 2), round(r["latency_speedup"], 3)
    (0.5, 1.99, 0.993)
    """
    params.positive_int("pp", pp)
    params.positive_int("batch", batch)
    m = params.positive_int("microbatches", microbatches)
    c = models._text_config(cfg)
    full = weights_per_rank(cfg, dtype) / device.bandwidth  # one GPU's decode step (bandwidth-bound)
    hop = device.link_latency + batch * c["hidden_size"] * 2 / device.link_bandwidth
    stage = full / pp + hop  # each stage reads its share of the weights, then hands on
    busy = min(m, pp) / pp
    return {"pp": pp, "microbatches": m, "stage_s": stage, "hop_s": hop, "token_latency_s": pp * stage,
            "bubble": 1 - busy, "throughput_speedup": busy * pp * full / (pp * stage),
            "latency_speedup": full / (pp * stage)}


# ------------------------------------------------------------------------------- the table

def table(models_: list[str], devices: list[GPU], dtypes: tuple[str, ...] = ("bf16", "fp8", "int4"),
          tps: tuple[int, ...] = (1, 2, 4, 8), contexts: tuple[int, ...] = (4096, 32768),
          gpu_memory_utilization: float = 0.90) -> list[dict[str, Any]]:
    """Rows of the sizing table: model x GPU x dtype x TP -> fits (one sequence of the shortest
    context), KV tokens, users at each context (sequences the KV cache holds at once; 0 past
    the model's positions), batch-1 decode bound (ms/token). fp8 on GPUs without fp8 tensor cores is
    skipped (vLLM would fall back to a weight-only kernel); TP degrees that do not divide the
    model's attention heads are skipped."""
    rows = []
    for name in models_:
        cfg = models.load_config(name)
        heads = models._text_config(cfg)["num_attention_heads"]
        for d in devices:
            for dt in dtypes:
                if dt == "fp8" and "fp8" not in d.flops:
                    continue
                wdt = "fp16" if dt == "bf16" and "bf16" not in d.flops else dt
                for t in tps:
                    if heads % t:
                        continue
                    p = plan(cfg, d, dtype=wdt, tp=t, gpu_memory_utilization=gpu_memory_utilization,
                             max_model_len=min(contexts), name=name)
                    row = {"model": name, "gpu": d.name, "dtype": wdt, "tp": t, "measured": d.measured,
                           "fits": p.fits, "weights_gb": p.weights / 1e9, "kv_tokens": p.kv_tokens,
                           "decode_ms": p.decode_bound() * 1e3 if p.fits else math.nan}
                    for ctx in contexts:  # past the model's positions: no such sequence
                        row[f"users@{ctx // 1024}k"] = p.max_concurrency(ctx) if ctx <= positions(cfg) else 0
                    rows.append(row)
    return rows
