import pytest

from labs_lib import kvcache, models, roofline

# Parameter totals published for the real checkpoints (sum of tensor sizes in their safetensors).
PUBLISHED_TOTALS = {
    "Llama-3.2-1B": 1_235_814_400, "Llama-3.1-8B": 8_030_261_248, "Llama-3.1-70B": 70_553_706_496,
    "Qwen2.5-0.5B": 494_032_768, "Qwen2.5-7B": 7_615_616_512, "Mistral-7B": 7_241_732_096,
    "Mixtral-8x7B": 46_702_792_704,
}


def test_registry_has_the_required_shapes():
    for name in PUBLISHED_TOTALS:
        assert name in models.known_models()


@pytest.mark.parametrize("name,total", PUBLISHED_TOTALS.items())
def test_param_count_matches_published_totals(name, total):
    assert models.param_count(models.load_config(name))["total"] == total


def _tiny(arch: str) -> dict:
    base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=300, max_position_embeddings=128)
    extra = {"llama": {"tie_word_embeddings": False}, "qwen2": {"tie_word_embeddings": True},
             "mistral": {"sliding_window": 32}, "mixtral": {"num_local_experts": 4,
                                                            "num_experts_per_tok": 2}}[arch]
    return {"model_type": arch, **base, **extra}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "mixtral"])
def test_param_count_matches_materialized_numel(arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = _tiny(arch)
    hf_cfg = AutoConfig.for_model(**cfg)
    model = AutoModelForCausalLM.from_config(hf_cfg)
    numel = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    assert models.param_count(cfg)["total"] == numel


def test_weight_bytes_per_dtype():
    cfg = models.load_config("Llama-3.1-8B")
    assert models.weight_bytes(cfg, "bf16") == 2 * 8_030_261_248
    assert models.weight_bytes(cfg, "int4") == 0.5 * 8_030_261_248
    with pytest.raises(ValueError, match="dtype must be one of"):
        models.weight_bytes(cfg, "int3")


def test_unknown_model_lists_known_names():
    with pytest.raises(models.UnknownModelError, match="Known models: .*Llama-3.1-8B.*tiny-llama"):
        models.resolve("Llama-9")
    with pytest.raises(ValueError):  # UnknownModelError is a ValueError
        models.resolve("")


def test_hub_id_without_network_names_offline_alternatives(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(models.HubUnavailableError, match="Llama-3.1-8B.*SmolLM2-135M-Instruct"):
        models.resolve("meta-llama/Llama-3.1-8B")


def test_shape_spec_is_random_weights_and_says_so():
    spec = models.resolve("Mistral-7B")
    assert spec.kind == "shape" and spec.load_format == "dummy" and spec.has_tokenizer
    assert "RANDOM weights" in spec.describe()
    assert (models.cache_dir() / "shapes" / "Mistral-7B" / "config.json").exists()


def test_tiny_model_has_a_working_tokenizer():
    from transformers import AutoTokenizer

    spec = models.resolve("tiny-llama")
    tok = AutoTokenizer.from_pretrained(spec.path)
    ids = tok("def main(): return 42")["input_ids"]
    assert 0 < len(ids) < 20 and max(ids) < spec.config["vocab_size"]
    assert tok.decode(ids) == "def main(): return 42"


def test_packaged_models_resolve_to_real_weights():
    smol = models.resolve("SmolLM2-135M-Instruct")
    assert not smol.random_weights and smol.config["model_type"] == "llama"
    assert 130e6 < models.param_count(smol.config)["total"] < 140e6
    minilm = models.resolve("all-MiniLM-L6-v2")
    assert not minilm.random_weights and minilm.config.get("hidden_size") == 384


def test_kv_bytes_hand_worked():
    # Llama-3.1-8B bf16: 2 x 32 layers x 8 kv heads x 128 dims x 2 bytes
    assert kvcache.kv_bytes_per_token(models.load_config("Llama-3.1-8B")) == 131_072
    assert kvcache.kv_bytes_per_token(models.load_config("Llama-3.1-8B"), "fp8") == 65_536
    assert kvcache.attention_kind(models.load_config("Llama-3.1-8B")) == "GQA"


def test_roofline_intensities_sit_where_the_lesson_says():
    cfg = models.load_config("Llama-3.1-8B")
    d1 = roofline.decode_step(cfg, 1, 1)
    assert d1["weight_bytes"] == models.weight_bytes(cfg, "bf16")
    assert 0.9 < d1["intensity"] < 1.1  # ~1 FLOP/byte in bf16
    assert roofline.prefill(cfg, 4096)["intensity"] > 1000
    assert roofline.decode_step(cfg, 64, 1024)["intensity"] > 10 * d1["intensity"]


def test_shape_tokenizer_covers_the_whole_vocabulary():
    from transformers import AutoTokenizer

    spec = models.resolve("Llama-3.2-1B")
    tok = AutoTokenizer.from_pretrained(spec.path)
    assert len(tok) == spec.config["vocab_size"] == 128256
    text = tok.decode([300, 128255])
    assert text.endswith("<x128255>")
