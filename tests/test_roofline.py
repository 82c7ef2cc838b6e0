"""The step models of labs 02 and 04: hand-worked cases and error paths."""

import pytest

from labs_lib import roofline
from labs_lib.models import load_config


def test_fit_overhead_line_through_the_extremes_only():
    # residuals 2 ms at batch 1 and 6 ms at batch 101: 2 ms - 40 us + 40 us per sequence; batch 50 ignored
    fixed, per_seq = roofline.fit_overhead({1: (0.003, 0.001), 50: (0.5, 0.0), 101: (0.010, 0.004)})
    assert fixed == pytest.approx(0.00196) and per_seq == pytest.approx(40e-6)


def test_fit_overhead_never_negative():
    # the large batch is explained better than the small one: no negative cost per sequence or per step
    assert roofline.fit_overhead({1: (0.003, 0.001), 64: (0.004, 0.0045)}) == (pytest.approx(0.002), 0.0)
    assert roofline.fit_overhead({1: (0.001, 0.002), 8: (0.001, 0.002)}) == (0.0, 0.0)


def test_fit_overhead_needs_two_batch_sizes():
    with pytest.raises(ValueError, match="two batch sizes"):
        roofline.fit_overhead({1: (0.003, 0.001)})


def test_predict_step_adds_the_terms_and_prices_kv_at_its_own_rate():
    step = {"bytes": 12e9, "flops": 2.2e12, "weight_bytes": 10e9, "kv_bytes": 2e9}
    r = roofline.predict_step(step, weight_seconds=0.005, bandwidth=2e12, flops_per_s=1e15,
                              linear_flops=2e12, overhead=0.001, kv_bandwidth=1e12)
    assert r["kv_s"] == pytest.approx(0.002)          # 2 GB at 1 TB/s, not at the 2 TB/s copy rate
    assert r["attention_s"] == pytest.approx(0.0002)  # 0.2 TFLOP beyond the matmuls at 1 PFLOP/s
    assert r["seconds"] == pytest.approx(0.005 + 0.002 + 0.0002 + 0.001)
    assert r["bound_by"] == "bandwidth"               # 12 GB / 2 TB/s = 6 ms > 2.2 ms of FLOPs > 1 ms


def test_predict_step_overlapped_takes_the_longer_of_host_and_device():
    step = {"bytes": 12e9, "flops": 2.2e12, "weight_bytes": 10e9, "kv_bytes": 2e9}
    kw = dict(weight_seconds=0.005, bandwidth=2e12, flops_per_s=1e15, linear_flops=2e12, kv_bandwidth=1e12,
              overlap=True)
    device = 0.005 + 0.002 + 0.0002
    hidden = roofline.predict_step(step, overhead=0.003, **kw)  # the host's 3 ms run under 7.2 ms of device work
    assert hidden["device_s"] == pytest.approx(device) and hidden["seconds"] == pytest.approx(device)
    assert hidden["bound_by"] == "bandwidth"
    host = roofline.predict_step(step, overhead=0.009, **kw)
    assert host["seconds"] == pytest.approx(0.009) and host["bound_by"] == "overhead"


def test_host_seconds_subtracts_the_probes_device_part_only_when_nothing_overlaps():
    g = {"seconds": 0.0033, "head_seconds": 0.0003, "layers": 30}  # 0.1 ms a layer
    assert roofline.host_seconds(0.002, g, overlap=True) == 0.002
    assert roofline.host_seconds(0.002, g, overlap=False) == pytest.approx(0.002 - 0.0001 - 0.0003)
    assert roofline.host_seconds(0.0002, g, overlap=False) == 0.0  # a probe faster than its device part: no host time


def test_step_seconds_rejects_bad_ceilings():
    with pytest.raises(ValueError):
        roofline.step_seconds({"bytes": 1.0, "flops": 1.0}, bandwidth=0, flops_per_s=1.0)
    with pytest.raises(ValueError, match="overhead"):
        roofline.step_seconds({"bytes": 1.0, "flops": 1.0}, bandwidth=1.0, flops_per_s=1.0, overhead=-1.0)


def test_serving_step_prefill_share_and_context():
    cfg = load_config("Llama-3.1-8B")
    s = roofline.serving_step(cfg, 64, prompt_len=512, out_lens=[128] * 4)
    assert s["prompts_per_step"] == pytest.approx(0.5)  # 64 slots, each freed every 128 steps
    assert s["context"] == pytest.approx(512 + 127 / 2)
    d = roofline.decode_step(cfg, 64, round(s["context"]))
    assert s["bytes"] == d["bytes"] and s["kv_bytes"] == d["kv_bytes"]


def test_weight_seconds_scales_by_bytes():
    assert roofline.weight_seconds({"seconds": 0.002, "weight_bytes": 1e9}, 3e9) == pytest.approx(0.006)


def test_decode_layer_shapes_fuse_qkv_and_gate_up():
    # Llama-3.1-8B: 32 heads + 2 x 8 kv heads of 128 = 6,144; gate_up 2 x 14,336 = 28,672
    assert roofline.decode_layer_shapes(load_config("Llama-3.1-8B")) == [
        ("self_attn.qkv_proj", 4096, 6144), ("self_attn.o_proj", 4096, 4096),
        ("mlp.gate_up_proj", 4096, 28672), ("mlp.down_proj", 14336, 4096)]
    # Qwen2.5-0.5B: 14 heads + 2 x 2 kv heads of 64 = 1,152; gate_up 2 x 4,864 = 9,728
    qwen = roofline.decode_layer_shapes(load_config("Qwen2.5-0.5B"))
    assert qwen[0] == ("self_attn.qkv_proj", 896, 1152) and qwen[2] == ("mlp.gate_up_proj", 896, 9728)
    assert qwen[3] == ("mlp.down_proj", 4864, 896)


def test_decode_layer_shapes_moe_lists_the_active_experts():
    shapes = roofline.decode_layer_shapes(load_config("Mixtral-8x7B"))  # top-2 of 8 experts
    assert [s[0] for s in shapes] == ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj",
                                      "mlp.down_proj", "mlp.gate_up_proj", "mlp.down_proj"]
    # 32 layers x (6,144 + 4,096 + 2 x (28,672 + 14,336)) x 4,096 = 12.62e9: the active params less embed, head, norms, router
    assert 32 * sum(k * n for _, k, n in shapes) == 12_616_466_432


def test_decode_gemm_times_every_layer_and_the_head_once():
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 100}
    # per layer: qkv 64x128 + o 64x64 + gate_up 64x256 + down 128x64 = 36,864; x 2 layers + head 64x100 = 80,128
    g = roofline.decode_gemm(tiny, [1, 3], "cpu", "fp32")
    assert g[1]["weight_bytes"] == 80_128 * 4 and g[3]["flops"] == 2 * 3 * 80_128
