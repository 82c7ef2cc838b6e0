import json

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


def test_hub_id_offline_names_the_id_and_the_offline_options(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE with an empty hub cache: huggingface_hub itself says 'not cached'."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(models.HubUnavailableError,
                       match=r"'meta-llama/Llama-3.1-8B'.*Llama-3.1-8B.*SmolLM2-135M-Instruct.*local directory"):
        models.resolve("meta-llama/Llama-3.1-8B")


def _fake_hub(monkeypatch, tmp_path, error=None):
    import huggingface_hub

    cfg = {**models.load_config("Qwen2.5-0.5B")}
    calls = []

    def download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        if error is not None:
            raise error
        p = tmp_path / repo_id.replace("/", "--") / filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(cfg))
        return str(p)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def test_hub_id_resolves_through_huggingface_hub(monkeypatch, tmp_path):
    calls = _fake_hub(monkeypatch, tmp_path)
    spec = models.resolve("Qwen/Qwen2.5-0.5B-Instruct")
    assert calls == [("Qwen/Qwen2.5-0.5B-Instruct", "config.json")]
    assert spec.kind == "hub" and not spec.random_weights and spec.path == spec.source
    assert spec.vocab_size == 151936 and spec.slug == "Qwen--Qwen2.5-0.5B-Instruct"


def test_hub_id_that_does_not_exist_is_an_unknown_model(monkeypatch, tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    err = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # as raised on a 404
    Exception.__init__(err, "404 Client Error: Repository Not Found")
    _fake_hub(monkeypatch, tmp_path, err)
    with pytest.raises(models.UnknownModelError, match="hub has no model 'nobody/nothing'"):
        models.resolve("nobody/nothing")


def _config_dir(tmp_path, name="mymodel", **files):
    d = tmp_path / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(models.TINY_CONFIG))
    for fname, text in files.items():
        (d / fname.replace("__", ".")).write_text(text)
    return d


def test_local_directory_with_config_only_is_a_shape_model(tmp_path, monkeypatch):
    d = _config_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in ("./mymodel", str(d), "mymodel", d):  # relative, absolute, bare, PathLike
        spec = models.resolve(name)
        assert spec.kind == "local" and spec.random_weights and spec.has_tokenizer
        assert spec.source == str(d) and spec.name == "mymodel"
        assert "RANDOM weights" in spec.describe()
    assert (models.Path(spec.path) / "tokenizer.json").exists()  # a padded tokenizer was made
    assert models.resolve(spec.source).path == spec.path  # what workers get resolves the same


def test_local_directory_with_weights_is_real(tmp_path):
    d = _config_dir(tmp_path, model__safetensors="", tokenizer__json="{}")
    spec = models.resolve(str(d))
    assert spec.kind == "local" and not spec.random_weights and spec.load_format == "auto"
    assert spec.path == str(d) and spec.has_tokenizer


def test_path_to_a_config_json_is_a_shape_model(tmp_path):
    d = _config_dir(tmp_path, "some dir/with spaces")
    spec = models.resolve(str(d / "config.json"))
    assert spec.random_weights and spec.vocab_size == 4096
    assert " " not in spec.slug and "/" not in spec.slug


@pytest.mark.parametrize("make,match", [
    (lambda t: t / "missing", "does not exist"),
    (lambda t: (t / "empty").mkdir() or t / "empty", "has no config.json"),
    (lambda t: (t / "w.bin").write_text("x") and t / "w.bin", "not a config.json"),
])
def test_bad_local_paths_name_the_path(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises((FileNotFoundError, ValueError), match=match):
        models.resolve(str(path))


def test_multimodal_config_reads_the_text_config(tmp_path):
    text = {k: v for k, v in models.load_config("Llama-3.2-1B").items() if k != "architectures"}
    d = tmp_path / "vlm"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "text_config": {**text, "max_position_embeddings": 8192, "vocab_size": 128257},
        "vision_config": {"hidden_size": 1024}}))
    spec = models.resolve(str(d))
    assert spec.max_model_len == 8192 and spec.vocab_size == 128257
    assert models.param_count(spec.config)["total"] > 1e9


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-7B-Instruct", "../a b/c", "/x/y/", "a:b*c?",
                                  "ünïcode/mödel", "x" * 300])
def test_slugs_are_safe_file_names(name):
    s = models.slug(name)
    assert s and len(s) <= 110 and "/" not in s and ".." not in s.replace("...", "")
    assert all(c.isalnum() or c in "._-" for c in s)


def test_concurrent_resolution_is_safe(tmp_path, monkeypatch):
    """Several processes resolving one model at once, with an empty cache: all succeed."""
    import subprocess
    import sys

    monkeypatch.setenv("LABS_CACHE", str(tmp_path / "cache"))
    code = "from labs_lib import models; print(models.resolve('Llama-3.2-1B').path)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e[-500:] for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1
    left = [p.name for p in (tmp_path / "cache" / "shapes").iterdir() if p.name.startswith(".")]
    assert all(n.endswith(".lock") for n in left), left  # no temporary dir left behind


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
    assert d1["weight_bytes"] == 2 * 8_030_261_248  # every bf16 weight read once per step
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


def test_saved_random_weights_load_as_weights_and_say_random(tmp_path, monkeypatch):
    monkeypatch.setenv("LABS_CACHE", str(tmp_path))
    spec = models.save_random_weights(models.resolve(models.TINY), initializer_range=0.1, seed=3)
    again = models.resolve(spec.source)  # what a worker process does with spec.source
    for s in (spec, again):
        assert s.random_weights and s.saved_random and s.load_format == "auto"  # no dummy: the saved ones
        assert "RANDOM weights (saved once" in s.describe()
    assert models.save_random_weights(models.resolve(models.TINY), initializer_range=0.1, seed=3).path == spec.path
    assert json.loads((tmp_path / "random" / "tiny-llama-std0.1-seed3" / models.RANDOM_MARKER).read_text())["seed"] == 3
