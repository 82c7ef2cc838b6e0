"""The planner's arithmetic on hand-worked cases: weights per rank, KV per rank, activation,
CUDA graphs, the fit/refuse boundary, the sizing table, and the TP/PP cost model."""

import math

import pytest

from labs_lib import models, parallel, planner

GiB = 2**30
LLAMA8 = models.load_config("Llama-3.1-8B")
# one layer, hidden 64, 2 heads of 32 (1 KV head), intermediate 128, vocab 100, tied, 1,024 positions
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 100, "tie_word_embeddings": True,
        "max_position_embeddings": 1024}


def test_weights_llama8b_bf16_split_over_two_ranks_keeps_the_norms_whole():
    total = 8_030_261_248 * 2  # the published 8.03B parameters in bf16
    norms = (2 * 32 * 4096 + 4096) * 2  # two RMSNorms per layer and the final one, replicated
    assert planner.weights_per_rank(LLAMA8, "bf16") == total
    assert planner.weights_per_rank(LLAMA8, "bf16", tp=2) == (total - norms) / 2 + norms


def test_weights_keep_one_kv_head_per_rank_past_the_kv_heads():
    # Llama-3.1-8B: k_proj and v_proj are 4096 x 1024 per layer (8 heads of 128); at tp=16 each
    # rank holds one whole KV head (1/8 of them), not 1/16
    kv = 2 * 32 * 4096 * 1024 * 2
    w16 = planner.weights_per_rank(LLAMA8, "bf16", tp=16)
    w8 = planner.weights_per_rank(LLAMA8, "bf16", tp=8)
    norms = (2 * 32 * 4096 + 4096) * 2
    assert w8 == pytest.approx((16_060_522_496 - norms) / 8 + norms)
    assert w16 == pytest.approx((16_060_522_496 - norms - kv) / 16 + kv / 8 + norms)


def test_weights_of_a_quantized_format_include_its_scales():
    # TINY in int8: 36,864 linear weights x 1 B + one fp32 scale per output (512 outputs), plus
    # 6,400 embedding + 3 x 64 norm parameters in bf16 (quant.formats' own hand-worked case)
    assert planner.weights_per_rank(TINY, "int8") == 36_864 + 2_048 + 13_184
    with pytest.raises(ValueError, match="dtype"):
        planner.weights_per_rank(TINY, "int3")


def test_kv_bytes_per_token_per_rank():
    # TINY: 2 (K, V) x 1 layer x 1 KV head x 32 x 2 B = 128 B; at tp=2 the one head is replicated
    assert planner.kv_bytes_per_token(TINY) == 128
    assert planner.kv_bytes_per_token(TINY, tp=2) == 128
    assert planner.kv_bytes_per_token(TINY, "fp8") == 64


def test_activation_by_compile_state():
    q = models.load_config("Qwen2.5-0.5B")  # vocab 151,936, hidden 896, intermediate 4,864
    per_token = 6 * 4864 + 6 * 896  # 34,560 B per batched token
    cold_floor = 151_936 * 896 * 2 + 4.3 * 896 * 512  # a cold compile: one embedding matrix and more
    assert planner.activation_bytes(q, 512) == pytest.approx(cold_floor)  # the H100: 0.26 GiB
    assert planner.activation_bytes(q, 512, compile="warm") == pytest.approx(512 * per_token + 0.05 * GiB)
    assert planner.activation_bytes(q, 24385) == pytest.approx(24385 * per_token + 0.05 * GiB)  # 0.83 GiB; 0.82-0.87
    assert planner.activation_bytes(q, 24385, compile="eager") == 24385 * per_token
    assert planner.activation_bytes(q, 24385, tp=2, compile="eager") == 24385 * (6 * 4864 / 2 + 6 * 896)
    with pytest.raises(ValueError, match="compile"):
        planner.activation_bytes(q, 512, compile="hot")


def test_graph_memory_counts_pieces_and_full_graphs():
    # TINY (1 layer, hidden 64), sizes 1, 2, 4, FULL graphs up to 2 sequences: 0.10 GiB +
    # 0.16 MiB x 3 sizes x 2 pieces + 0.47 B x 1 x 64 x (1 + 2)
    want = 0.10 * GiB + 0.16 * 2**20 * 3 * 2 + 0.47 * 64 * 3
    assert planner.graph_bytes(TINY, [1, 2, 4], 2) == pytest.approx(want)
    # fp8 changes the pieces only (0.06-0.07 GiB less on a 0.5B and on 8B models alike)
    assert planner.graph_bytes(TINY, [1, 2, 4], 2, dtype="fp8") == pytest.approx(want - 0.29 * 0.16 * 2**20 * 3 * 2)
    assert planner.graph_bytes(TINY, [], 2) == 0  # enforce_eager


def test_capture_sizes_follow_vllm_defaults():
    sizes = planner.capture_sizes(256, 8192)  # up to min(512, 512, 8192)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-2:] == [496, 512] and len(sizes) == 3 + 31 + 17
    assert planner.capture_sizes(8, 8192) == [1, 2, 4, 8, 16]  # up to 2 x max_num_seqs
    assert planner.capture_sizes(1024, 100)[-1] == 96  # ... and the step's token budget


def _device(memory: float) -> planner.GPU:
    return planner.GPU("test", memory, 1e12, {"bf16": 1e14}, "NVLink 4", 450e9)


def test_fit_refuse_boundary_is_one_block_of_max_model_len():
    # TINY bf16: weights 86,912 B; activation (eager) 2048 x (6 x 128 + 6 x 64) B;
    # one sequence of 1,024 tokens needs 64 blocks of 16 x 128 B = 131,072 B of KV
    kw = dict(gpu_memory_utilization=1.0, max_model_len=1024, max_num_batched_tokens=2048, compile="eager")
    rest = 86_912 + 2048 * (6 * 128 + 6 * 64) + planner.NON_TORCH_BYTES
    just = planner.plan(TINY, _device(rest + 131_072), **kw)
    short = planner.plan(TINY, _device(rest + 131_072 - 1), **kw)
    assert just.fits and just.kv_tokens == 1024 and just.max_concurrency(1024) == 1
    assert not short.fits and short.kv_tokens == 1008
    assert "max_model_len" in short.reason
    none = planner.plan(TINY, _device(rest / 2), **kw)
    assert not none.fits and none.kv_tokens == 0 and "exceed" in none.reason


def test_plan_llama8b_on_the_h100_host_matches_vllm_within_half_a_percent():
    # vLLM 0.26 on this H100 (85.03e9 B) at 0.85, 8,192 batched tokens: 417,536 KV tokens
    h100 = planner.measured_gpu("NVIDIA H100 80GB HBM3", 85.03e9, 2.9e12, 750e12)
    p = planner.plan(LLAMA8, h100, max_model_len=4096, max_num_batched_tokens=8192)
    assert h100.measured and h100.link == "NVLink 4"
    assert abs(p.kv_tokens / 417_536 - 1) < 0.005


def test_max_context_is_whole_blocks_capped_at_the_positions():
    p = planner.plan(TINY, _device(1e9), max_model_len=1024)
    assert p.max_context(1) == 1024
    per = p.kv_tokens // 10_000
    assert p.max_context(10_000) == per // 16 * 16


def test_cpu_plan_kv_is_the_explicit_budget_unless_ram_runs_out():
    p = planner.cpu_plan(TINY, ram=1e9, bandwidth=1e10, kv_cache_bytes=128 * 128 * 10)
    assert p.block_size == 128 and p.kv_tokens == 1280  # 10 blocks of 128 tokens x 128 B
    tight = planner.cpu_plan(TINY, ram=86_912 + 128 * 128 * 3, bandwidth=1e10, kv_cache_bytes=1e6)
    assert tight.kv_tokens == 384
    assert p.decode_bound() == 86_912 / 1e10


def test_allreduce_latency_plus_ring_bandwidth():
    # 4 ranks: each link carries 2 x 3/4 of the 4 MB = 6 MB, at 1 GB/s 6 ms, plus 10 us
    assert planner.allreduce_seconds(4e6, 4, 1e9, 1e-5) == pytest.approx(1e-5 + 6e-3)


def test_allreduce_line_recovers_the_model_it_fits():
    t = {str(n): {"p50": planner.allreduce_seconds(n, 2, 5e9, 7e-6)} for n in (512, 8192, 1 << 20)}
    line = parallel.allreduce_line(t, 2)
    assert line["latency_s"] == pytest.approx(7e-6) and line["link_bandwidth"] == pytest.approx(5e9)


def test_tp_step_on_an_ideal_link_approaches_tp_and_latency_caps_it():
    ideal = planner.GPU("ideal", 1e11, 1e12, {"bf16": 1e15}, "ideal", 1e18, 0.0)
    r = planner.tp_step(LLAMA8, ideal, 4)
    assert r["comm_s"] == pytest.approx(0, abs=1e-9) and 3.99 < r["speedup"] < 4.0  # the norms stay whole
    slow = planner.GPU("slow", 1e11, 1e12, {"bf16": 1e15}, "slow", 1e18, 1e-3)  # 1 ms per all-reduce
    s = planner.tp_step(LLAMA8, slow, 2)
    assert s["comm_s"] == pytest.approx(64 * 1e-3)  # 2 all-reduces x 32 layers
    assert s["speedup"] < 1  # a slow link makes two GPUs slower than one


def test_pp_bubble_and_no_latency_gain():
    free = planner.GPU("free link", 1e11, 1e12, {"bf16": 1e15}, "ideal", 1e18, 0.0)
    two = planner.pp_step(LLAMA8, free, 4, microbatches=2)  # 2 groups in flight, 4 stages: half idle
    assert two["bubble"] == 0.5 and two["throughput_speedup"] == pytest.approx(2.0)
    full = planner.pp_step(LLAMA8, free, 4, microbatches=8)  # every stage busy: the 4 GPUs' memory pays
    assert full["bubble"] == 0 and full["throughput_speedup"] == pytest.approx(4.0)
    assert full["latency_speedup"] == pytest.approx(1.0)  # one token still crosses all 4 stages
    slow = planner.pp_step(LLAMA8, planner.gpu("T4"), 2, microbatches=2)  # PCIe hops cost latency
    assert slow["latency_speedup"] < 1.0 and slow["token_latency_s"] > slow["stage_s"]


def test_sizing_table_knows_what_fits():
    rows = planner.table(["Llama-3.1-70B", "Mixtral-8x7B"], [planner.gpu("H100 SXM"), planner.gpu("T4")])
    by = {(r["model"], r["gpu"], r["dtype"], r["tp"]): r for r in rows}
    assert not by[("Llama-3.1-70B", "H100 SXM", "bf16", 1)]["fits"]  # 141 GB of weights
    assert by[("Llama-3.1-70B", "H100 SXM", "bf16", 4)]["fits"]
    assert by[("Mixtral-8x7B", "H100 SXM", "fp8", 1)]["fits"]  # 47 GB in fp8
    assert ("Llama-3.1-70B", "T4", "bf16", 1) not in by and ("Llama-3.1-70B", "T4", "fp16", 1) in by  # no bf16
    assert not any(r["gpu"] == "T4" and r["dtype"] == "fp8" for r in rows)  # no fp8 tensor cores
    fits = by[("Llama-3.1-70B", "H100 SXM", "bf16", 4)]
    assert fits["users@32k"] == fits["kv_tokens"] // 32768 and math.isfinite(fits["decode_ms"])


def test_gpu_lookup():
    assert planner.gpu("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert planner.gpu("B200").link_bandwidth == 900e9
    with pytest.raises(ValueError, match="no datasheet row"):
        planner.gpu("Radeon")


def test_tp_env_and_head_checks():
    assert parallel.tp_env(2, gpu=True) == {}
    env = parallel.tp_env(2, cores=[2, 3])
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "2|3", "VLLM_HOST_IP": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    parallel.check_divides(models.load_config("Llama-3.1-8B"), 8)
    with pytest.raises(ValueError, match="KV heads"):
        parallel.check_divides({"num_attention_heads": 12, "num_key_value_heads": 6, "hidden_size": 64}, 4)


def test_compare_tokens_and_logprob_gap():
    assert parallel.compare_tokens([[1, 2]], [[1, 2]])["identical"]
    assert parallel.compare_tokens([[1, 2, 3]], [[1, 2]])["first_difference"] == [2]
    with pytest.raises(ValueError, match="same prompts"):
        parallel.compare_tokens([[1]], [[1], [2]])
    assert parallel.max_logprob_gap([[-1.0]], [[-1.25]]) == 0.25


def test_measured_host_keeps_the_datasheet_dtypes_so_the_table_plans_fp8_on_it():
    host = planner.measured_gpu("NVIDIA H200", 140e9, 4.1e12, 780e12)
    rows = planner.table(["Llama-3.1-8B"], [host], dtypes=["bf16", "fp8"], tps=[1], contexts=[4096])
    assert {r["dtype"] for r in rows} == {"bf16", "fp8"} and all(r["measured"] for r in rows)
    unknown = planner.measured_gpu("Some GPU", 16e9, 300e9, 65e12, "fp16")  # no datasheet row
    assert unknown.flops == {"fp16": 65e12}
