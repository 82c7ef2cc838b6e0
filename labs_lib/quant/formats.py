"""Quantization schemes: how many bytes a model's weights take in each, the configs vLLM reads,
and which settings each tier's lab runs.

Only the linear layers of the decoder blocks are quantized (attention q/k/v/o and the MLP's
gate/up/down, every expert of an MoE); the embeddings, the lm_head (unless tied to the
embeddings), the norms, biases and an MoE router stay 16-bit. For a linear layer with `k` inputs
and `n` outputs:

    weights  k n bits / 8
    scales   16-bit (W4A16) or fp32 (fp8, int8): one per output channel (per-channel), one per
             `group_size` inputs per output (per-group), or one per matrix (per-tensor)
    zeros    asymmetric int4 (AWQ): one 4-bit zero point per group and output, packed 8 per int32

GPTQ checkpoints also carry packed zeros and a `g_idx` for symmetric weights; the engines drop
them once loaded (symmetric int4 has the fixed zero 8), so the formula counts what the engine
holds, not what the file holds.

>>> from labs_lib.models import load_config
>>> cfg = load_config("Llama-3.1-8B")
>>> b = weight_bytes(cfg, "awq", group_size=128)
>>> round(b["total"] / 2**30, 2)  # vLLM 0.26's load log: 5.49 GiB (the memory delta of the load)
5.33
>>> round(weight_bytes(cfg, "bf16")["total"] / 2**30, 2)  # its log: 15.0 GiB
14.96
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import models, params

# The linear layers of one Llama/Qwen/Mistral decoder block, as HF names them.
ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
BLOCK_LINEARS = ATTN + MLP


@dataclass(frozen=True)
class Scheme:
    """How one linear layer's weight is stored in the engine.

    granularity: 'none' (16-bit), 'tensor', 'channel' (one scale per output) or 'group'.
    """

    name: str
    weight_bits: int
    granularity: str = "none"
    scale_bytes: int = 0
    zero_point: bool = False

    def linear_bytes(self, k: int, n: int, group_size: int | None = None) -> dict[str, float]:
        """Bytes of one k-input, n-output linear layer: weights, scales, zeros.

        >>> SCHEMES["awq"].linear_bytes(128, 8, group_size=64)  # 512 B + 2x8 fp16 + 2x8 nibbles
        {'weights': 512.0, 'scales': 32, 'zeros': 8.0}
        >>> SCHEMES["int8"].linear_bytes(128, 8)  # 1 B/weight + an fp32 scale per output
        {'weights': 1024.0, 'scales': 32, 'zeros': 0.0}
        >>> SCHEMES["fp8"].linear_bytes(128, 8)  # per tensor: one fp32 scale
        {'weights': 1024.0, 'scales': 4, 'zeros': 0.0}
        """
        w = k * n * self.weight_bits / 8
        if self.granularity == "none":
            return {"weights": w, "scales": 0, "zeros": 0.0}
        if self.granularity == "tensor":
            return {"weights": w, "scales": self.scale_bytes, "zeros": 0.0}
        if self.granularity == "channel":
            groups = 1
        else:
            if not group_size:
                raise ValueError(f"scheme {self.name!r} is per-group: pass group_size")
            if k % group_size:
                raise ValueError(f"group_size {group_size} does not divide the layer width {k}")
            groups = k // group_size
        zeros = groups * n * self.weight_bits / 8 if self.zero_point else 0.0
        return {"weights": w, "scales": groups * n * self.scale_bytes, "zeros": zeros}


SCHEMES: dict[str, Scheme] = {
    "bf16": Scheme("bf16", 16),
    "fp16": Scheme("fp16", 16),
    "fp8": Scheme("fp8", 8, "tensor", 4),  # vLLM online fp8 (GPU): fp8 e4m3, per-tensor scale
    "fp8_per_channel": Scheme("fp8_per_channel", 8, "channel", 4),  # vLLM-CPU online fp8
    "int8": Scheme("int8", 8, "channel", 4),  # W8A8 int8 (compressed-tensors int-quantized)
    "w4a16": Scheme("w4a16", 4, "group", 2),  # int4 symmetric, 16-bit group scales (CT, GPTQ)
    "gptq": Scheme("gptq", 4, "group", 2),  # sym: the engine drops the file's constant zeros
    "awq": Scheme("awq", 4, "group", 2, zero_point=True),  # asymmetric: 4-bit zero per group
}


def linear_shapes(cfg: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    """(name, inputs k, outputs n, how many in the model) of every quantized linear layer.

    >>> from labs_lib.models import load_config
    >>> [s for s in linear_shapes(load_config("Llama-3.1-8B")) if s[0] == "self_attn.k_proj"]
    [('self_attn.k_proj', 4096, 1024, 32)]
    """
    c = models._text_config(cfg)
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    nh = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or nh
    hd = models.head_dim(c)
    experts = c.get("num_local_experts") or 1
    return [("self_attn.q_proj", h, nh * hd, layers), ("self_attn.k_proj", h, kv * hd, layers),
            ("self_attn.v_proj", h, kv * hd, layers), ("self_attn.o_proj", nh * hd, h, layers),
            ("mlp.gate_proj", h, inter, layers * experts), ("mlp.up_proj", h, inter, layers * experts),
            ("mlp.down_proj", inter, h, layers * experts)]


def check_group_size(cfg: dict[str, Any], group_size: int) -> int:
    """`group_size` if it divides every quantized layer's input width; else a ValueError that
    names the widths and the sizes that would work.

    >>> from labs_lib.models import load_config
    >>> check_group_size(load_config("Llama-3.1-8B"), 128)
    128
    >>> smol = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    ...         "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152}
    >>> check_group_size(smol, 128)
    Traceback (most recent call last):
    ...
    ValueError: group_size 128 does not divide the quantized layers' input widths [576, 1536]; sizes that do: [32, 64, 192]
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"a per-group scheme needs group_size, an int >= 1, got {group_size!r}")
    widths = sorted({k for _, k, _, _ in linear_shapes(cfg)})
    if any(k % group_size for k in widths):
        ok = [g for g in (32, 64, 128, 192, 256) if all(k % g == 0 for k in widths)]
        raise ValueError(f"group_size {group_size} does not divide the quantized layers' input "
                         f"widths {widths}; sizes that do: {ok}")
    return group_size


def default_group_size(cfg: dict[str, Any], preferred: int = 128) -> int:
    """`preferred` if it divides the layer widths, else the largest of 64 and 32 that does.

    >>> default_group_size({"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    ...     "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152})
    64
    """
    for g in (preferred, 64, 32):
        try:
            return check_group_size(cfg, g)
        except ValueError:
            continue
    raise ValueError(f"no group size in ({preferred}, 64, 32) divides this model's layer widths")


def weight_bytes(cfg: dict[str, Any], scheme: str, group_size: int | None = None,
                 dtype: str = "bf16") -> dict[str, float]:
    """Bytes of a model's weights in `scheme`: the quantized linear layers (weights, scales,
    zeros) plus everything that stays `dtype` (embeddings, untied lm_head, norms, biases).

    A hand-worked case: one layer, h=64, intermediate 128, 2 heads of 32 (kv 1), vocab 100, tied.
    Linears: q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x128, down 128x64 = 36,864 params;
    the rest: 6,400 embedding + 3 x 64 norms = 6,592 params in bf16 = 13,184 B.

    >>> tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
    ...         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
    ...         "vocab_size": 100, "tie_word_embeddings": True}
    >>> weight_bytes(tiny, "bf16")["total"]  # (36,864 + 6,592) x 2
    86912.0
    >>> b = weight_bytes(tiny, "int8")  # 36,864 x 1 B + fp32 scale per output (512 outputs)
    >>> b["weights"], b["scales"], b["other"], b["total"]
    (36864.0, 2048.0, 13184.0, 52096.0)
    >>> b = weight_bytes(tiny, "awq", group_size=32)  # 0.5 B/weight; per 32 inputs: fp16 + 4 bits
    >>> b["weights"], b["scales"], b["zeros"]  # 1152 groups x outputs: 2,304 B + 576 B
    (18432.0, 2304.0, 576.0)
    """
    s = SCHEMES[params.choice("scheme", scheme, SCHEMES)]
    if s.granularity == "group":
        check_group_size(cfg, group_size or 0)
    parts = {"weights": 0.0, "scales": 0.0, "zeros": 0.0}
    qparams = 0
    for _, k, n, count in linear_shapes(cfg):
        qparams += k * n * count
        for key, v in s.linear_bytes(k, n, group_size).items():
            parts[key] += v * count
    total_params = models.param_count(cfg)["total"]
    elt = models.BYTES_PER_PARAM[params.choice("dtype", dtype, ["bf16", "fp16", "fp32"])]
    if s.granularity == "none":  # 16-bit: every weight in `dtype`
        parts["weights"] = qparams * elt
    other = (total_params - qparams) * elt
    total = parts["weights"] + parts["scales"] + parts["zeros"] + other
    return {**parts, "other": float(other), "total": float(total), "quantized_params": qparams,
            "other_params": total_params - qparams, "bits_per_quantized_weight":
            8 * (total - other) / qparams}


# ------------------------------------------------------------------ quantization_config dicts

def awq_config(group_size: int) -> dict[str, Any]:
    """AutoAWQ's GEMM format: 4-bit asymmetric, zero points, fp16 scales."""
    return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
            "version": "gemm", "modules_to_not_convert": None}


def gptq_config(group_size: int) -> dict[str, Any]:
    """AutoGPTQ's format, 4-bit symmetric, no act-order. `modules_in_block_to_quantize` is
    spelled out: without it vLLM 0.26 reads the list from the checkpoint's safetensors metadata,
    which a shape model lacks, and silently loads every layer unquantized."""
    return {"quant_method": "gptq", "bits": 4, "group_size": group_size, "desc_act": False,
            "sym": True, "lm_head": False, "checkpoint_format": "gptq",
            "modules_in_block_to_quantize": [list(BLOCK_LINEARS)]}


def ct_config(scheme: str, group_size: int | None = None) -> dict[str, Any]:
    """compressed-tensors: 'int8' = W8A8 int8 (`int-quantized`: int8 weights with an fp32 scale
    per output channel, int8 activations quantized per token at run time); 'w4a16' = int4
    symmetric weights per group with 16-bit scales, 16-bit activations (`pack-quantized`)."""
    params.choice("scheme", scheme, ["int8", "w4a16"])
    if scheme == "int8":
        fmt = "int-quantized"
        weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel",
                   "group_size": None, "dynamic": False, "observer": "minmax"}
        acts = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                "group_size": None, "dynamic": True, "observer": None}
    else:
        fmt = "pack-quantized"
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                   "group_size": group_size, "dynamic": False, "observer": "minmax"}
        acts = None
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": acts, "output_activations": None,
                                          "format": fmt}},
            "ignore": ["lm_head"], "kv_cache_scheme": None}


# ------------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Setting:
    """One engine configuration of the lab: how the weights are stored and the KV cache dtype.

    source: 'base' (the 16-bit model), 'online' (vLLM quantizes at load: `quantization=`), or
    'checkpoint' (a quantized model directory: a shape config on the GPU speed runs, a
    checkpoint written by `labs_lib.quant.rtn` for real weights).
    """

    name: str
    label: str
    scheme: str  # key of SCHEMES: the byte formula
    bits: int  # weight bits: the quality ordering
    source: str
    quantization: str | None = None  # vLLM's `quantization=` (online methods)
    checkpoint: str | None = None  # 'awq' | 'gptq' | 'ct_int8' | 'ct_w4a16'
    kv_cache_dtype: str = "auto"
    base: str | None = None  # for a KV-cache variant: the weight setting it extends

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Setting:
        return cls(**d)


BF16 = Setting("bf16", "bf16 (baseline)", "bf16", 16, "base")
FP8 = Setting("fp8", "fp8 W8A8 (online)", "fp8", 8, "online", quantization="fp8")
FP8_CH = Setting("fp8_per_channel", "fp8 per-channel (online)", "fp8_per_channel", 8, "online",
                 quantization="fp8_per_channel")
INT8 = Setting("int8_w8a8", "int8 W8A8 (compressed-tensors)", "int8", 8, "checkpoint",
               checkpoint="ct_int8")
W4A16 = Setting("w4a16", "int4 W4A16 (compressed-tensors)", "w4a16", 4, "checkpoint",
                checkpoint="ct_w4a16")
AWQ = Setting("awq", "int4 AWQ", "awq", 4, "checkpoint", checkpoint="awq")
GPTQ = Setting("gptq", "int4 GPTQ", "gptq", 4, "checkpoint", checkpoint="gptq")


def settings_for(prof: Any, part: str = "speed") -> list[Setting]:
    """The weight settings each tier's engine runs, in the lab's order (KV-cache variants come
    from `kv_variants` once the best weight setting is known).

    GPU: bf16, fp8 (online, per-tensor), int8 W8A8, AWQ and GPTQ int4 for speed on a shape model;
    quality on real weights adds W4A16. vLLM-CPU 0.32 has no per-tensor fp8 on the CPU (a missing
    op): fp8 runs there as `fp8_per_channel`, and W4A16 runs in both parts.

    >>> from labs_lib.tiers import CPU, for_gpu
    >>> [s.name for s in settings_for(CPU)]
    ['bf16', 'awq', 'gptq', 'int8_w8a8', 'w4a16', 'fp8_per_channel']
    >>> h100 = for_gpu("H100", 85e9, (9, 0))
    >>> [s.name for s in settings_for(h100)], [s.name for s in settings_for(h100, "quality")]
    (['bf16', 'fp8', 'int8_w8a8', 'awq', 'gptq'], ['bf16', 'fp8', 'int8_w8a8', 'w4a16', 'awq', 'gptq'])
    """
    params.choice("part", part, ["speed", "quality"])
    if not prof.gpu:
        return [BF16, AWQ, GPTQ, INT8, W4A16, FP8_CH]
    if part == "speed":
        return [BF16, FP8, INT8, AWQ, GPTQ]
    return [BF16, FP8, INT8, W4A16, AWQ, GPTQ]


FP8_SLOWDOWN_LIMIT = 20.0  # an fp8 matmul this many times slower than bf16 is a reference loop, not a kernel


def runnable(settings: list[Setting], fp8_slowdown: float | None,
             limit: float = FP8_SLOWDOWN_LIMIT) -> tuple[list[Setting], dict[str, str]]:
    """The settings to run, and those skipped with the reason. A setting with fp8 weights is
    skipped where an fp8 matmul runs `limit` times or more slower than bf16 (`fp8_slowdown`, from
    `hardware.fp8_matmul_slowdown`; None = not measured, as on a GPU, where the engine picks
    tensor-core kernels): there one request takes minutes, and its speed would say nothing
    about fp8.

    >>> run, skipped = runnable([BF16, FP8_CH, INT8], 2700.0)
    >>> [s.name for s in run], list(skipped)
    (['bf16', 'int8_w8a8'], ['fp8_per_channel'])
    >>> [s.name for s in runnable([BF16, FP8_CH], 1.4)[0]]
    ['bf16', 'fp8_per_channel']
    """
    if fp8_slowdown is None or fp8_slowdown < limit:
        return list(settings), {}
    run, skipped = [], {}
    for st in settings:
        if st.scheme.startswith("fp8"):
            skipped[st.name] = (f"an fp8 matmul runs {fp8_slowdown:,.0f}x slower than bf16 on this CPU (PyTorch has "
                                f"no fast fp8 kernel for it; the limit is {limit:g}x): one request would take minutes. "
                                "It runs on CPUs with an fp8 kernel and on GPUs.")
        else:
            run.append(st)
    return run, skipped


def kv_variants(prof: Any, best: Setting) -> list[Setting]:
    """The KV-cache settings the lab adds on top of the best weight setting: fp8 on both tiers,
    and int8 per token and head on the CPU (a vLLM-CPU KV dtype).

    >>> from labs_lib.tiers import CPU
    >>> [(s.name, s.kv_cache_dtype, s.base) for s in kv_variants(CPU, AWQ)]
    [('awq+kv_fp8', 'fp8', 'awq'), ('awq+kv_int8', 'int8_per_token_head', 'awq')]
    """
    kinds = [("fp8", "fp8")] + ([] if prof.gpu else [("int8", "int8_per_token_head")])
    return [Setting(f"{best.name}+kv_{short}", f"{best.label} + {short} KV cache", best.scheme,
                    best.bits, best.source, best.quantization, best.checkpoint, kv, best.name)
            for short, kv in kinds]


# ------------------------------------------------------------------ shape models, quantized

def shape_dir(spec: models.ModelSpec, setting: Setting, group_size: int) -> Path:
    """A shape model's config.json with the setting's `quantization_config`, in the models
    cache: `models.resolve(path)` gives a random-weights spec that vLLM loads with
    `load_format="dummy"` at the quantized size. Online settings need no directory.

    >>> from labs_lib.models import resolve
    >>> d = shape_dir(resolve("Llama-3.2-1B"), GPTQ, 128)
    >>> json.loads((d / "config.json").read_text())["quantization_config"]["modules_in_block_to_quantize"][0][:2]
    ['self_attn.q_proj', 'self_attn.k_proj']
    """
    if setting.source != "checkpoint":
        raise ValueError(f"setting {setting.name!r} is {setting.source}: it needs no directory")
    check_group_size(spec.config, group_size)
    cfg = dict(spec.config)
    cfg["quantization_config"] = quant_config(setting, group_size)
    d = models.cache_dir() / "quant-shapes" / f"{spec.slug}-{setting.checkpoint}-g{group_size}"
    d.mkdir(parents=True, exist_ok=True)
    models._write_atomic_json(d / "config.json", cfg)
    return d


def quant_config(setting: Setting, group_size: int) -> dict[str, Any]:
    """The `quantization_config` of a checkpoint setting (shape models and real checkpoints)."""
    return {"awq": lambda: awq_config(group_size), "gptq": lambda: gptq_config(group_size),
            "ct_int8": lambda: ct_config("int8"),
            "ct_w4a16": lambda: ct_config("w4a16", group_size)}[setting.checkpoint]()


def describe_config(setting: Setting, group_size: int) -> str:
    """One line: what the engine is told (config or argument)."""
    if setting.source == "base":
        return "no quantization"
    if setting.source == "online":
        return f"quantization={setting.quantization!r} (vLLM quantizes at load)"
    return json.dumps(quant_config(setting, group_size))
