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
