"""What a run targets: the tier, the device, the engine's dtype, and sizes that fit the machine.

A notebook decides this once, from its `profile` parameter, and passes the result down; nothing
in the library looks at the hardware again to decide the tier:

    prof = tiers.resolve(profile)                   # the notebook parameter: auto, cpu or gpu
    spec = models.resolve(model or tiers.default_model(prof))
    plan = tiers.plan(prof, spec)                   # KV tokens this GPU should hold, ...
    with engine.offline_llm(spec, prof, max_model_len=4096) as llm: ...

- dtype: bf16 where the GPU has bf16 tensor cores (compute capability 8.0 and newer: A100, L4,
  H100, ...), fp16 before (a T4 is 7.5 and cannot run bf16); bf16 on the CPU tier.
- default model: the largest of a ladder of shape models whose weights take at most
  `WEIGHT_SHARE` of the GPU's memory and that leave KV room for `MIN_KV_TOKENS` (16 sequences
  of 4k tokens): Llama-3.1-8B on a 40 GB or larger GPU, Llama-3.2-3B on an L4 (24 GB),
  Llama-3.2-1B on a T4 (16 GB).
- `plan()`: the KV tokens to expect at a memory utilization (weights and a conservative
  allowance for activations, CUDA graphs and the runtime subtracted), from which labs size
  their sweeps. It is an estimate for sizing; labs compare with what the engine reports.

>>> t4 = for_gpu("Tesla T4", 15.6e9, (7, 5))
>>> t4.dtype, default_model(t4)
('float16', 'Llama-3.2-1B')
>>> h100 = for_gpu("NVIDIA H100 80GB HBM3", 85.0e9, (9, 0))
>>> h100.dtype, default_model(h100)
('bfloat16', 'Llama-3.1-8B')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from . import kvcache, models, params

LADDER = ("Llama-3.1-8B", "Llama-3.2-3B", "Llama-3.2-1B", "Qwen2.5-0.5B")
WEIGHT_SHARE = 0.45  # the default model's weights use at most this share of GPU memory
MIN_KV_TOKENS = 16 * 4096  # ... and leave KV room for at least this many tokens
GPU_MEMORY_UTILIZATION = 0.85  # the engine's default (engine.engine_kwargs), which plans assume
CPU_MODEL = models.SMOLLM2
GiB = 2**30


@dataclass(frozen=True)
class Profile:
    """The decision a notebook makes once: tier ('gpu'/'cpu'), device, dtype, GPU facts."""

    tier: str
    device: str  # 'cuda' | 'cpu'
    dtype: str  # vLLM/torch dtype name: 'bfloat16' | 'float16'
    gpu_name: str | None = None
    gpu_memory: int | None = None  # bytes of GPU 0
    compute_capability: tuple[int, int] | None = None

    @property
    def gpu(self) -> bool:
        return self.tier == "gpu"

    @property
    def short_dtype(self) -> str:
        """'bf16' or 'fp16': the key used by byte and FLOP tables."""
        return {"bfloat16": "bf16", "float16": "fp16"}.get(self.dtype, self.dtype)

    def describe(self) -> str:
        if not self.gpu:
            return f"tier=cpu, dtype {self.dtype}"
        cc = ".".join(map(str, self.compute_capability or ()))
        return (f"tier=gpu: {self.gpu_name} ({(self.gpu_memory or 0) / 1e9:.1f} GB, compute "
                f"capability {cc}), dtype {self.dtype}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON, to hand the same decision to a worker process (`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        cc = d.get("compute_capability")
        return cls(**{**d, "compute_capability": tuple(cc) if cc else None})


def engine_dtype(compute_capability: tuple[int, int] | None) -> str:
    """bf16 on GPUs with bf16 tensor cores (Ampere, 8.0, and newer) and on CPUs; fp16 before.

    >>> engine_dtype((7, 5)), engine_dtype((8, 0)), engine_dtype(None)
    ('float16', 'bfloat16', 'bfloat16')
    """
    if compute_capability is None:
        return "bfloat16"
    return "bfloat16" if tuple(compute_capability) >= (8, 0) else "float16"


def for_gpu(name: str, memory_bytes: float, compute_capability: tuple[int, int]) -> Profile:
    """The GPU profile of a given GPU (the one here, or one to plan for)."""
    return Profile("gpu", "cuda", engine_dtype(compute_capability), name, int(memory_bytes),
                   tuple(compute_capability))


CPU = Profile("cpu", "cpu", engine_dtype(None))


def resolve(profile: str = "auto") -> Profile:
    """The notebook's `profile` parameter ('auto', 'cpu', 'gpu') -> the Profile of this run.

    'gpu' where torch sees no CUDA device raises a RuntimeError that says what to do. 'cpu' on
    a GPU machine runs the CPU-sized lab on the CPU (microbenchmarks); an engine start then needs
    the CPU build of vLLM, and `labs_lib.engine` says so if this machine has the CUDA build.
    """
    params.choice("profile", profile, ["auto", "cpu", "gpu"])
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if profile == "gpu" and not has_gpu:
        raise RuntimeError(
            "profile='gpu' was asked for, but no CUDA GPU is visible to torch "
            "(torch.cuda.is_available() is False). Use profile='auto' or 'cpu' on this machine, "
            "or run on a machine with an NVIDIA GPU (`make install` there installs CUDA vLLM).")
    if profile == "cpu" or not has_gpu:
        return CPU
    p = torch.cuda.get_device_properties(0)
    return for_gpu(p.name, p.total_memory, (p.major, p.minor))


def default_model(prof: Profile) -> str:
    """The lab's default model for this profile: SmolLM2-135M (real weights) on the CPU; on a
    GPU the largest model of `LADDER` whose weights fit in `WEIGHT_SHARE` of its memory and
    whose `plan()` leaves at least `MIN_KV_TOKENS` of KV cache.

    >>> [default_model(for_gpu(n, gb * 1e9, (8, 0))) for n, gb in (("L4", 23.6), ("A100", 42.4))]
    ['Llama-3.2-3B', 'Llama-3.1-8B']
    """
    if not prof.gpu:
        return CPU_MODEL
    for name in LADDER:
        cfg = models.load_config(name)
        weights = models.weight_bytes(cfg, prof.short_dtype)
        kv = _gpu_kv_budget(prof, weights, GPU_MEMORY_UTILIZATION)
        if (weights <= WEIGHT_SHARE * (prof.gpu_memory or 0)
                and kv >= MIN_KV_TOKENS * kvcache.kv_bytes_per_token(cfg, prof.short_dtype)):
            return name
    return LADDER[-1]


@dataclass(frozen=True)
class Plan:
    """What a model on a profile should hold: the estimate labs size their sweeps from."""

    weights_bytes: float
    kv_bytes_per_token: int
    kv_tokens: int  # estimated KV cache capacity in tokens
    max_context: int  # longest sequence the model's positions allow

    def fits(self, batch: int, seq_len: int, share: float = 0.5) -> bool:
        """Do `batch` sequences of `seq_len` tokens fit in `share` of the KV estimate?"""
        return batch * seq_len <= share * self.kv_tokens and seq_len <= self.max_context

    def keep(self, values: Iterable[int], cost: Callable[[int], tuple[int, int]],
             share: float = 0.5) -> list[int]:
        """The `values` whose (batch, seq_len) = cost(value) fit (see `fits`), in order.

        >>> p = Plan(1e9, 1000, kv_tokens=10_000, max_context=4096)
        >>> p.keep([512, 2048, 8192], lambda c: (4, c))
        [512]
        """
        return [v for v in values if self.fits(*cost(v), share=share)]


def overhead_bytes(prof: Profile) -> float:
    """A conservative allowance for what is not weights or KV on a GPU: peak activations, CUDA
    graphs, the CUDA context and allocator slack (measured on an H100: about 1.5 GiB for an 8B
    model; the allowance is 2 GiB + 3 % of memory so that small GPUs are not over-planned)."""
    return 2 * GiB + 0.03 * (prof.gpu_memory or 0)


def _gpu_kv_budget(prof: Profile, weights: float, gpu_memory_utilization: float) -> float:
    """Bytes a GPU leaves for the KV cache: `kvcache.kv_budget` (memory x utilization minus
    the rest) with `overhead_bytes` standing for everything that is not weights."""
    return kvcache.kv_budget(prof.gpu_memory or 0, gpu_memory_utilization, weights=weights,
                             non_torch=overhead_bytes(prof))


def plan(prof: Profile, spec: models.ModelSpec, *,
         gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION,
         cpu_kv_bytes: float = 1 * GiB, kv_dtype: str | None = None) -> Plan:
    """Estimate the KV tokens `spec` gets on `prof` (GPU: at `gpu_memory_utilization`; CPU: an
    explicit KV budget of `cpu_kv_bytes`, as the CPU tier runs).

    >>> p = plan(for_gpu("H100", 85.0e9, (9, 0)), models.resolve("Llama-3.1-8B"))
    >>> 350_000 < p.kv_tokens < 450_000  # vLLM allocated 417,536 at 0.85 on an H100
    True
    """
    params.positive_float("gpu_memory_utilization", gpu_memory_utilization, hi=1.0)
    kv_dtype = kv_dtype or prof.short_dtype
    per_tok = kvcache.kv_bytes_per_token(spec.config, kv_dtype)
    weights = models.weight_bytes(spec.config, prof.short_dtype)
    if prof.gpu:
        budget = _gpu_kv_budget(prof, weights, gpu_memory_utilization)
    else:
        budget = cpu_kv_bytes
    return Plan(weights, per_tok, max(0, int(budget // per_tok)), spec.max_model_len)
