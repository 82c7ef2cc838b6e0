"""The profile: dtype per GPU generation, default model and KV plan per GPU memory."""

import pytest

from labs_lib import engine, models, tiers

# name, memory torch reports (bytes), compute capability: the GPUs the labs promise to run on
GPUS = {
    "T4": ("Tesla T4", 15.64e9, (7, 5)),
    "L4": ("NVIDIA L4", 23.66e9, (8, 9)),
    "A10G": ("NVIDIA A10G", 23.68e9, (8, 6)),
    "A100-40": ("NVIDIA A100-SXM4-40GB", 42.41e9, (8, 0)),
    "A100-80": ("NVIDIA A100-SXM4-80GB", 85.02e9, (8, 0)),
    "H100": ("NVIDIA H100 80GB HBM3", 85.03e9, (9, 0)),
    "H200": ("NVIDIA H200", 150.0e9, (9, 0)),
}
EXPECTED_MODEL = {"T4": "Llama-3.2-1B", "L4": "Llama-3.2-3B", "A10G": "Llama-3.2-3B",
                  "A100-40": "Llama-3.1-8B", "A100-80": "Llama-3.1-8B", "H100": "Llama-3.1-8B",
                  "H200": "Llama-3.1-8B"}


@pytest.mark.parametrize("gpu", GPUS)
def test_dtype_follows_the_gpu_generation(gpu):
    prof = tiers.for_gpu(*GPUS[gpu])
    assert prof.dtype == ("float16" if gpu == "T4" else "bfloat16")
    spec = models.resolve("Llama-3.2-1B")
    kw = engine.engine_kwargs(spec, prof, max_model_len=1024)
    assert kw["dtype"] == prof.dtype
    # the plan assumes the utilization the engine starts with by default
    assert tiers.plan(prof, spec) == tiers.plan(
        prof, spec, gpu_memory_utilization=kw["gpu_memory_utilization"])


@pytest.mark.parametrize("gpu", GPUS)
def test_default_model_fits_with_room_for_kv(gpu):
    prof = tiers.for_gpu(*GPUS[gpu])
    name = tiers.default_model(prof)
    assert name == EXPECTED_MODEL[gpu]
    spec = models.resolve(name)
    plan = tiers.plan(prof, spec)
    # weights at most WEIGHT_SHARE of memory, and KV for at least 16 sequences of 4k tokens
    assert plan.weights_bytes <= tiers.WEIGHT_SHARE * prof.gpu_memory
    assert plan.kv_tokens >= 16 * 4096, (gpu, name, plan)
    # and the estimate never promises more than memory x utilization minus weights
    assert (plan.kv_tokens * plan.kv_bytes_per_token
            < tiers.GPU_MEMORY_UTILIZATION * prof.gpu_memory - plan.weights_bytes)


def test_plan_matches_what_vllm_allocated_on_the_h100():
    """vLLM 0.26 on the H100, Llama-3.1-8B shape, util 0.85: 417,536 tokens (lab 03's record).
    The plan is for sizing: it must stay below what the engine gives, within 10 %."""
    plan = tiers.plan(tiers.for_gpu(*GPUS["H100"]), models.resolve("Llama-3.1-8B"))
    assert 0.90 * 417_536 < plan.kv_tokens < 417_536


def test_cpu_profile_plans_the_explicit_budget():
    spec = models.resolve("tiny-llama")
    plan = tiers.plan(tiers.CPU, spec, cpu_kv_bytes=64 * 2**20)
    # tiny-llama: 2 (K, V) x 4 layers x 2 kv heads x 64 dims x 2 bytes = 2,048 B/token
    assert (plan.kv_bytes_per_token, plan.kv_tokens) == (2048, 64 * 2**20 // 2048)
    # the CPU tier's default model writes real text and is small enough for a laptop's CPU
    cpu_model = models.resolve(tiers.default_model(tiers.CPU))
    assert not cpu_model.random_weights and models.param_count(cpu_model.config)["total"] < 200e6


def test_plan_keeps_only_what_fits():
    plan = tiers.Plan(1e9, 1000, kv_tokens=100_000, max_context=8192)
    assert plan.keep([512, 2048, 8192, 16384], lambda c: (16, c + 128)) == [512, 2048]
    assert plan.keep([1, 64, 256], lambda b: (b, 144)) == [1, 64, 256]


def test_profile_round_trips_through_json():
    import json

    prof = tiers.for_gpu(*GPUS["T4"])
    assert tiers.Profile.from_dict(json.loads(json.dumps(prof.to_dict()))) == prof


def test_gpu_profile_without_gpu_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible.*profile='auto' or 'cpu'"):
        tiers.resolve("gpu")
    assert tiers.resolve("auto") == tiers.CPU
    with pytest.raises(ValueError, match="profile must be one of"):
        tiers.resolve("tpu")


def test_engine_refuses_a_tier_its_vllm_build_cannot_run(monkeypatch):
    monkeypatch.setattr(engine, "vllm_build", lambda: "cpu")
    with pytest.raises(RuntimeError, match="CPU build of vLLM.*TIER=gpu make install"):
        engine.check_build(tiers.for_gpu(*GPUS["H100"]))
    engine.check_build(tiers.CPU)  # fine
    with pytest.raises(TypeError, match="Profile"):
        engine.engine_kwargs(models.resolve("tiny-llama"), "cpu")
