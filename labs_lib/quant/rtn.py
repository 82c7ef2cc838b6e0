"""Round-to-nearest (RTN) quantization, int4 packing, and checkpoint writers that vLLM loads.

RTN is the simplest weight quantizer: per output channel (or per group of `group_size` inputs
of each output channel), pick a scale from the range, round every weight to the nearest level.
No calibration data, no error feedback (GPTQ) or activation-aware scaling (AWQ): the files below
are in the AWQ and GPTQ *formats*, filled by RTN, so their quality is RTN's.

- symmetric, b bits: scale = max|w| / ((2^b - 1) / 2), q = clamp(round(w / scale), -2^(b-1),
  2^(b-1) - 1), w' = q x scale. Since |w / scale| <= (2^b - 1)/2, every weight is within
  scale/2 of w' (the clamp moves only the value at the edge, by at most 1/2 a level).
- asymmetric: scale = (max - min) / (2^b - 1), zero = round(-min / scale), q = clamp(round(w /
  scale) + zero, 0, 2^b - 1), w' = (q - zero) x scale; again |w - w'| <= scale/2.

The scale is rounded to its storage dtype (fp16 / bf16 / fp32) before the weights are rounded,
so the bound holds for the stored scale (up to float rounding of w / scale at the edge).

>>> import torch
>>> w = torch.tensor([[0.5, -1.0, 0.25, 0.75]])
>>> q = quantize(w, bits=4)
>>> q.q.tolist(), q.scale.flatten().tolist()  # scale = 1.0 / 7.5
([[4, -7, 2, 6]], [0.13333334028720856])
>>> bool(((w - dequantize(q)).abs() <= q.scale / 2 + 1e-7).all())
True

Writers (`write_checkpoint`) turn a 16-bit HF safetensors checkpoint into a directory with the
format's tensors and `quantization_config`:

- AWQ (AutoAWQ GEMM): qweight int32 [k, n/8] packed along outputs in the order 0,2,4,6,1,3,5,7;
  qzeros int32 [k/g, n/8] (same packing); scales fp16 [k/g, n]. Asymmetric.
- GPTQ (AutoGPTQ, desc_act false, sym): qweight int32 [k/8, n] packed along inputs; qzeros
  int32 [k/g, n/8] holding zero - 1 = 7 ("v1" format); scales fp16 [k/g, n]; g_idx int32 [k].
- compressed-tensors int-quantized (W8A8 int8): weight int8 [n, k], weight_scale fp32 [n, 1].
- compressed-tensors pack-quantized (W4A16): weight_packed int32 [n, k/8] (the
  `compressed_tensors` package's packer), weight_scale bf16 [n, k/g], weight_shape int64 [2].
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import models, params
from . import formats

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's nibble order within an int32
LINEAR_RE = re.compile(r"^(?:model\.)?layers\.\d+\.(" + "|".join(
    re.escape(n) for n in formats.BLOCK_LINEARS) + r")\.weight$")


@dataclass
class QTensor:
    """A quantized [n, k] matrix: integer levels, scales [n, k/g] (g = k per channel) and,
    when asymmetric, zero points [n, k/g]. Signed levels when symmetric, unsigned otherwise."""

    q: torch.Tensor  # int32 levels, same shape as the weight
    scale: torch.Tensor  # [n, groups], in the storage dtype
    zero: torch.Tensor | None  # [n, groups] int32, or None (symmetric)
    bits: int
    group_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero is None


def quantize(w: torch.Tensor, bits: int = 4, group_size: int | None = None, *,
             symmetric: bool = True, scale_dtype: torch.dtype = torch.float32) -> QTensor:
    """RTN-quantize a [n, k] weight (outputs x inputs) per group of `group_size` inputs
    (None: per output channel). See the module docstring for the rules and the error bound.

    >>> import torch
    >>> q = quantize(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), bits=2, symmetric=False)
    >>> q.q.tolist(), q.zero.tolist(), dequantize(q).tolist()
    ([[0, 1, 2, 3]], [[0]], [[0.0, 1.0, 2.0, 3.0]])
    >>> quantize(torch.zeros(2, 6), group_size=4)
    Traceback (most recent call last):
    ...
    ValueError: group_size 4 does not divide the input width 6: choose a divisor of 6
    """
    params.int_in_range("bits", bits, 2, 8)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight [outputs, inputs], got shape {tuple(w.shape)}")
    n, k = w.shape
    g = k if group_size in (None, -1) else params.positive_int("group_size", group_size)
    if k % g:
        raise ValueError(f"group_size {g} does not divide the input width {k}: choose a divisor of {k}")
    x = w.detach().to(torch.float32).reshape(n, k // g, g)
    if symmetric:
        half = (2**bits - 1) / 2
        scale = (x.abs().amax(-1) / half).clamp_min(1e-10).to(scale_dtype)
        s = scale.to(torch.float32).unsqueeze(-1)
        q = torch.clamp(torch.round(x / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        zero = None
    else:
        lo, hi = x.amin(-1), x.amax(-1)
        scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-10).to(scale_dtype)
        s = scale.to(torch.float32).unsqueeze(-1)
        zero = torch.clamp(torch.round(-lo / scale.to(torch.float32)), 0, 2**bits - 1)
        q = torch.clamp(torch.round(x / s) + zero.unsqueeze(-1), 0, 2**bits - 1)
        zero = zero.to(torch.int32)
    return QTensor(q.reshape(n, k).to(torch.int32), scale, zero, bits, g)


def dequantize(t: QTensor) -> torch.Tensor:
    """The float32 [n, k] matrix a QTensor stands for."""
    n, k = t.q.shape
    q = t.q.reshape(n, k // t.group_size, t.group_size).to(torch.float32)
    if t.zero is not None:
        q = q - t.zero.unsqueeze(-1).to(torch.float32)
    return (q * t.scale.to(torch.float32).unsqueeze(-1)).reshape(n, k)


# --------------------------------------------------------------------------- 4-bit packing

def pack_int4(values: torch.Tensor, dim: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """Pack unsigned 4-bit values (0..15) 8 per int32 along `dim` (0 or 1); nibble i of each
    word holds element `order[i]` of its 8. Returns int32 (bit patterns wrap into negatives).

    >>> import torch
    >>> v = torch.arange(8).reshape(1, 8)
    >>> hex(pack_int4(v, 1)[0, 0].item() & 0xFFFFFFFF)
    '0x76543210'
    >>> hex(pack_int4(v, 1, AWQ_ORDER)[0, 0].item() & 0xFFFFFFFF)
    '0x75316420'
    """
    v = values.to(torch.int64).cpu().numpy()
    if v.min(initial=0) < 0 or v.max(initial=0) > 15:
        raise ValueError("pack_int4 takes unsigned 4-bit values in [0, 15]")
    if dim == 0:
        v = v.T
    rows, cols = v.shape
    if cols % 8:
        raise ValueError(f"the packed dimension ({cols}) must be a multiple of 8")
    v = v.reshape(rows, cols // 8, 8)[:, :, list(order)].astype(np.uint32)
    packed = np.zeros((rows, cols // 8), dtype=np.uint32)
    for i in range(8):
        packed |= v[:, :, i] << np.uint32(4 * i)
    out = packed.view(np.int32)
    return torch.from_numpy(np.ascontiguousarray(out.T if dim == 0 else out))


def unpack_int4(packed: torch.Tensor, dim: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """Inverse of `pack_int4`: int32 words -> unsigned 4-bit values (int32), 8 per word.

    >>> import torch
    >>> v = torch.randint(0, 16, (16, 24))
    >>> bool((unpack_int4(pack_int4(v, 0), 0) == v).all() and
    ...      (unpack_int4(pack_int4(v, 1, AWQ_ORDER), 1, AWQ_ORDER) == v).all())
    True
    """
    p = packed.cpu().numpy().view(np.uint32)
    if dim == 0:
        p = p.T
    rows, words = p.shape
    nib = np.stack([(p >> np.uint32(4 * i)) & np.uint32(0xF) for i in range(8)], axis=-1)
    out = np.empty_like(nib)
    out[:, :, list(order)] = nib
    out = out.reshape(rows, words * 8).astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(out.T if dim == 0 else out))


# ------------------------------------------------------------------- per-format tensors

def awq_tensors(w: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """AutoAWQ GEMM tensors of one [n, k] weight: qweight [k, n/8], qzeros [k/g, n/8], scales [k/g, n]."""
    t = quantize(w, 4, group_size, symmetric=False, scale_dtype=torch.float16)
    return {"qweight": pack_int4(t.q.T, 1, AWQ_ORDER), "qzeros": pack_int4(t.zero.T, 1, AWQ_ORDER),
            "scales": t.scale.T.contiguous()}


def awq_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                   group_size: int) -> torch.Tensor:
    """The [n, k] float32 weight of AWQ tensors (to check a written file)."""
    q = unpack_int4(qweight, 1, AWQ_ORDER).to(torch.float32)  # [k, n]
    z = unpack_int4(qzeros, 1, AWQ_ORDER).to(torch.float32).repeat_interleave(group_size, 0)
    return ((q - z) * scales.to(torch.float32).repeat_interleave(group_size, 0)).T


def gptq_tensors(w: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """AutoGPTQ tensors (sym, desc_act false) of one [n, k] weight: qweight [k/8, n] (levels
    stored + 8), qzeros [k/g, n/8] (zero 8 stored as 7: the "v1" convention), scales [k/g, n],
    g_idx [k]."""
    t = quantize(w, 4, group_size, symmetric=True, scale_dtype=torch.float16)
    n, k = w.shape
    zeros = torch.full((k // group_size, n), 7, dtype=torch.int32)
    return {"qweight": pack_int4((t.q + 8).T, 0), "qzeros": pack_int4(zeros, 1),
            "scales": t.scale.T.contiguous(),
            "g_idx": (torch.arange(k, dtype=torch.int32) // group_size)}


def gptq_dequantize(qweight: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """The [n, k] float32 weight of symmetric GPTQ tensors."""
    q = unpack_int4(qweight, 0).to(torch.float32) - 8  # [k, n]
    return (q * scales.to(torch.float32).repeat_interleave(group_size, 0)).T


def ct_int8_tensors(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """compressed-tensors int-quantized: weight int8 [n, k], weight_scale fp32 [n, 1]."""
    t = quantize(w, 8, None, symmetric=True, scale_dtype=torch.float32)
    return {"weight": t.q.to(torch.int8), "weight_scale": t.scale.contiguous()}


def ct_w4a16_tensors(w: torch.Tensor, group_size: int,
                     scale_dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """compressed-tensors pack-quantized: weight_packed int32 [n, k/8] packed by the
    `compressed_tensors` package, weight_scale [n, k/g], weight_shape [2]."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    t = quantize(w, 4, group_size, symmetric=True, scale_dtype=scale_dtype)
    return {"weight_packed": pack_to_int32(t.q.to(torch.int8), 4),
            "weight_scale": t.scale.contiguous(),
            "weight_shape": torch.tensor(list(w.shape), dtype=torch.int64)}


def ct_w4a16_dequantize(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                        weight_shape: torch.Tensor, group_size: int) -> torch.Tensor:
    """The [n, k] float32 weight of pack-quantized tensors (the package's unpacker)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    q = unpack_from_int32(weight_packed, 4, torch.Size(weight_shape.tolist())).to(torch.float32)
    return q * weight_scale.to(torch.float32).repeat_interleave(group_size, 1)


FORMATS = ("awq", "gptq", "ct_int8", "ct_w4a16")


def format_tensors(fmt: str, w: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """The tensors that replace `<prefix>.weight` of one linear layer in format `fmt`."""
    params.choice("format", fmt, FORMATS)
    if fmt == "awq":
        return awq_tensors(w, group_size)
    if fmt == "gptq":
        return gptq_tensors(w, group_size)
    if fmt == "ct_int8":
        return ct_int8_tensors(w)
    return ct_w4a16_tensors(w, group_size)


# ----------------------------------------------------------------------------- writers

def write_checkpoint(src: str | Path, fmt: str, out: str | Path, group_size: int = 64) -> Path:
    """Write a `fmt` checkpoint of the 16-bit HF safetensors model in `src` to directory `out`
    (config.json with `quantization_config`, model.safetensors, tokenizer files). Every linear
    layer of the decoder blocks is quantized; embeddings, norms and lm_head are copied.

    The group size must divide every quantized layer's input width (SmolLM2-135M: 576 and 1536,
    so 64, not 128); a ValueError says so before any work.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    params.choice("format", fmt, FORMATS)
    src, out = Path(src), Path(out)
    cfg = json.loads((src / "config.json").read_text())
    formats.check_group_size(cfg, group_size)
    setting = {"awq": formats.AWQ, "gptq": formats.GPTQ, "ct_int8": formats.INT8,
               "ct_w4a16": formats.W4A16}[fmt]
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src} has no *.safetensors weights to quantize")
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    quantized = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            for name in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                t = st.get_tensor(name)
                if LINEAR_RE.match(name):
                    prefix = name[: -len(".weight")]
                    for key, v in format_tensors(fmt, t, group_size).items():
                        tensors[f"{prefix}.{key}"] = v.contiguous()
                    quantized += 1
                else:
                    tensors[name] = t.contiguous()
    if not quantized:
        raise ValueError(f"no decoder-block linear layer found in {src} (expected names like "
                         "model.layers.0.self_attn.q_proj.weight)")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg["quantization_config"] = formats.quant_config(setting, group_size)
    if fmt in ("awq", "gptq"):
        cfg["torch_dtype"] = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for p in src.iterdir():
        if p.is_file() and p.suffix != ".safetensors" and p.name != "config.json":
            shutil.copy2(p, out / p.name)
    return out


def checkpoint_path(spec: models.ModelSpec, fmt: str, group_size: int) -> Path:
    """Where `checkpoint_dir` keeps the `fmt` checkpoint of `spec` (written or not)."""
    return models.cache_dir() / "quant" / f"{spec.slug}-{fmt}-g{group_size}"


def checkpoint_dir(spec: models.ModelSpec, fmt: str, group_size: int) -> Path:
    """The `fmt` checkpoint of a real-weights model, written once into the models cache (safe
    with several processes at once) and reused: `<cache>/quant/<model>-<fmt>-g<group_size>`."""
    if spec.random_weights:
        raise ValueError(f"{spec.name} has random weights: quantize a real-weights checkpoint "
                         "(shape models take a config instead: formats.shape_dir)")
    target = checkpoint_path(spec, fmt, group_size)
    return models._materialize(target, "model.safetensors",
                               lambda tmp: write_checkpoint(spec.path, fmt, tmp, group_size))
