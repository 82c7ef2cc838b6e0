import pytest

from labs_lib import hardware

NAMES = {  # what torch.cuda.get_device_name() prints -> table row
    "NVIDIA H100 80GB HBM3": "H100 SXM", "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL", "NVIDIA H200": "H200", "NVIDIA A100-SXM4-40GB": "A100 40GB",
    "NVIDIA A100-SXM4-80GB": "A100 80GB SXM", "NVIDIA A100 80GB PCIe": "A100 80GB PCIe",
    "Tesla T4": "T4", "NVIDIA L4": "L4", "NVIDIA A10G": "A10G", "NVIDIA L40S": "L40S",
}


@pytest.mark.parametrize("device_name,row", NAMES.items())
def test_published_peak_matches_device_names(device_name, row):
    assert hardware.published_peak(device_name).name == row


def test_peaks_table_is_consistent():
    for p in hardware.PEAKS:
        assert p.bandwidth_gbs > 0 and p.fp16_tflops > 0 and p.int8_tops >= p.fp16_tflops
        assert p.source
        # ridge points of datasheet GPUs are in the tens to hundreds of FLOP/byte
        assert 50 < p.fp16_tflops * 1e12 / p.bandwidth < 1000
    h100 = hardware.published_peak("NVIDIA H100 80GB HBM3")
    assert h100.flops("fp8") == pytest.approx(2 * h100.flops("bf16"), rel=1e-3)  # Hopper: 2x
    assert hardware.published_peak("Tesla T4").flops("bf16") is None
    with pytest.raises(ValueError, match="dtype"):
        hardware.PEAKS[0].flops("fp64")


def test_fingerprint_has_the_documented_keys():
    fp = hardware.fingerprint()
    for key in ("gpu_name", "gpu_count", "gpu_mem_gb", "gpu_sm_count", "gpu_compute_capability",
                "driver", "cuda", "torch", "vllm", "cpu_model", "cpu_cores_logical", "ram_gb"):
        assert key in fp
    assert fp["cpu_cores_logical"] >= 1 and fp["ram_gb"] > 0


def test_microbenchmarks_report_consistent_units():
    bw = hardware.measure_bandwidth("cpu", 8 << 20, warmup=1, repeats=3)
    assert bw["bytes_moved"] == 2 * (8 << 20) and bw["bandwidth"] > 1e8
    mm = hardware.measure_matmul("cpu", 128, "fp32", warmup=1, repeats=3)
    assert mm["flops"] == 2 * 128**3 and mm["flops_per_s"] > 1e6
    lin = hardware.measure_linear(4, 256, "cpu", "fp32", warmup=1, repeats=3)
    assert lin["flops"] == 2 * 4 * 256 * 256
    assert lin["bytes"] == (2 * 4 * 256 + 256 * 256) * 4
    assert lin["intensity"] == pytest.approx(524_288 / 270_336)  # ~1.94 FLOP/byte at 4 tokens


@pytest.mark.parametrize("kw,match", [({"nbytes": 10}, "nbytes"), ({"device": "tpu"}, "device")])
def test_microbenchmarks_reject_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        hardware.measure_bandwidth(**{"device": "cpu", **kw})


def test_fp8_probe_times_both_kernels_and_rejects_bad_input():
    r = hardware.fp8_matmul_slowdown(tokens=2, k=64, n=64, repeats=3)
    assert r["fp8_s"] > 0 and r["bf16_s"] > 0 and r["samples"][0] >= 3
    with pytest.raises(ValueError, match="tokens"):
        hardware.fp8_matmul_slowdown(tokens=0)


def test_decode_layers_counts_the_whole_model():
    # one layer: 16x32 and 32x16 (512 + 512 weights), a model of 3 layers, then a 16x10 head:
    # 3 x 1,024 + 160 = 3,232 fp32 weights whatever the number of copies timed
    r = hardware.measure_decode_layers([1, 2], [(16, 32), (32, 16)], "cpu", "fp32", layers=3, head=(16, 10),
                                       warmup=1, repeats=2)
    assert sorted(r) == [1, 2]
    assert r[1]["weight_bytes"] == r[2]["weight_bytes"] == 3232 * 4  # 12,928 B
    assert r[1]["flops"] == 2 * 1 * 3232 and r[2]["flops"] == 2 * 2 * 3232
    for g in r.values():
        assert g["n"] == 2 and g["seconds"] > 0 and g["copies"] == 3
        assert g["weight_bytes_per_s"] == pytest.approx(g["weight_bytes"] / g["seconds"])
        assert g["flops_per_s"] == pytest.approx(g["flops"] / g["seconds"])


def test_decode_layers_cap_sets_the_copies_not_the_bytes():
    shapes, head = [(16, 32), (32, 16)], (16, 10)  # a layer is 4,096 B in fp32
    one = hardware.measure_decode_layers([1], shapes, "cpu", "fp32", layers=3, head=head, max_weight_bytes=5000,
                                         warmup=0, repeats=1)
    assert one[1]["copies"] == 1  # 5,000 // 4,096: one copy timed, scaled to 3 layers
    assert one[1]["weight_bytes"] == (3 * 1024 + 160) * 4
    tight = hardware.measure_decode_layers([1], shapes, "cpu", "fp32", layers=2, max_weight_bytes=100,
                                           warmup=0, repeats=1)
    assert tight[1]["copies"] == 1 and tight[1]["weight_bytes"] == 2 * 1024 * 4  # at least one copy


def test_decode_layers_reports_the_head_apart_and_times_no_graph_on_a_cpu():
    r = hardware.measure_decode_layers([1], [(16, 32)], "cpu", "fp32", layers=2, head=(16, 10), warmup=0, repeats=1)
    g = r[1]
    assert g["graphs"] is False and g["layers"] == 2
    assert 0 < g["head_seconds"] < g["seconds"]  # the head is part of the pass, the layers the rest
    no_head = hardware.measure_decode_layers([1], [(16, 32)], "cpu", "fp32", warmup=0, repeats=1)[1]
    assert no_head["head_seconds"] == 0.0


def test_decode_layers_refuses_graphs_without_cuda():
    with pytest.raises(ValueError, match="graphs=True needs a CUDA device"):
        hardware.measure_decode_layers([1], [(8, 8)], "cpu", "fp32", graphs=True, repeats=1)


@pytest.mark.parametrize("kw,match", [({"shapes": []}, "shapes"), ({"batches": [0]}, "batches"),
                                      ({"shapes": [(0, 4)]}, "k"), ({"layers": 0}, "layers")])
def test_decode_layers_rejects_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        hardware.measure_decode_layers(**{"batches": [1], "shapes": [(8, 8)], "device": "cpu", "dtype": "fp32",
                                          "repeats": 1, **kw})


def test_measure_linear_sweep_times_every_layer_beside_the_peak():
    r = hardware.measure_linear_sweep([1, 4], 32, "cpu", "fp32", peak_n=32, warmup=1, repeats=3)
    assert set(r["layers"]) == {1, 4} and r["peak"]["n"] == 32
    for t, x in r["layers"].items():
        assert x["flops"] == 2 * t * 32 * 32 and x["bytes"] == (2 * t * 32 + 32 * 32) * 4
        assert x["summary"].n == 3
        assert x["peak_share"] == pytest.approx(x["flops_per_s"] / r["peak"]["flops_per_s"])
    with pytest.raises(ValueError, match="tokens"):
        hardware.measure_linear_sweep([0], 32, "cpu")
